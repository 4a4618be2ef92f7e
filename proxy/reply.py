"""The one place that renders errors, and the answer type every listener writes out.

Every error, the partner's or our own, gets the same envelope. A ``Reply`` is status, headers and
body, independent of the server that sends it (aiohttp today; any server adapter tomorrow).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from multidict import CIMultiDict

from proxy.errors import ProxyError


@dataclass(slots=True)
class Reply:
    status: int
    headers: CIMultiDict[str]
    body: bytes


def envelope(error: ProxyError, language: str, request_id: str) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "type": error.type,
                "code": error.code,
                "message": error.message(language),
                "partner_code": error.partner_code,
                "request_id": request_id,
            }
        }
    )


def error_reply(error: ProxyError, language: str, request_id: str) -> Reply:
    headers = CIMultiDict(error.headers)
    headers["X-Request-Id"] = request_id
    headers["Content-Type"] = "application/json"
    return Reply(error.status, headers, envelope(error, language, request_id))

"""The one place that renders errors: every error, the partner's or our own, gets the same envelope."""

from __future__ import annotations

import json

from aiohttp import web

from proxy.errors import ProxyError


def envelope(error: ProxyError, language: str, request_id: str) -> bytes:
    return json.dumps(
        {
            "error": {
                "type": error.type,
                "code": error.code,
                "message": error.message(language),
                "partner_code": error.partner_code,
                "request_id": request_id,
            }
        },
        ensure_ascii=False,
    ).encode()


def error_response(error: ProxyError, language: str, request_id: str) -> web.Response:
    headers = {"X-Request-Id": request_id, **error.headers}
    return web.Response(
        status=error.status,
        body=envelope(error, language, request_id),
        content_type="application/json",
        headers=headers,
    )

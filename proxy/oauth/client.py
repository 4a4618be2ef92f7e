"""The one HTTP call to the OAuth2 token endpoint (client-credentials grant).

This is one of the two network boundaries where aiohttp/asyncio exceptions become our types:
every failure leaves as ``TokenFetchError`` whose ``reason`` is a closed label set (it becomes the
``result`` label of ``partner_proxy_token_fetches_total``), chained ``from`` the original exception.
Nothing here retries, caches or backs off: that is the provider's job.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
from collections.abc import Callable
from typing import Final

import aiohttp

from proxy.config.models import CredentialsConfig, Secret
from proxy.oauth.token import Grant

TIMEOUT: Final = "timeout"
CONNECT_ERROR: Final = "connect_error"
HTTP_ERROR: Final = "http_error"
BAD_RESPONSE: Final = "bad_response"
REASONS: Final = (TIMEOUT, CONNECT_ERROR, HTTP_ERROR, BAD_RESPONSE)

# A token response is a few hundred bytes; anything far bigger is not one, and reading it unbounded
# would let a broken endpoint make us buffer arbitrary amounts.
MAX_BODY_BYTES: Final = 64 * 1024

# The token goes into an ``Authorization`` header: visible ASCII only (no spaces, no CR/LF).
# Tokopedia's tokens look like ``c:xxxx``, so this is deliberately wider than RFC 6750's b64token.
_TOKEN_CHARS: Final = re.compile(r"[\x21-\x7e]+")
_NUMBER: Final = re.compile(r"[0-9]+(\.[0-9]+)?")


class TokenFetchError(Exception):
    """The token endpoint did not give us a usable token. ``reason`` is one of ``REASONS``.

    The message names the reason (and HTTP status) only: never the credentials, the Basic header
    or anything from the response body, which could hold a token.
    """

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(f"token endpoint: {reason}" + (f" (HTTP {status})" if status is not None else ""))
        self.reason = reason
        self.status = status


class TokenClient:
    """Builds the request once from config; ``fetch()`` performs it and validates the answer."""

    def __init__(
        self,
        config: CredentialsConfig,
        *,
        session: aiohttp.ClientSession,
        clock: Callable[[], float],
    ) -> None:
        self._url = config.token_url
        self._session = session
        self._clock = clock
        basic = base64.b64encode(f"{config.client_id}:{config.client_secret.reveal()}".encode()).decode("ascii")
        # Kept wrapped so a repr of this object (or of its __dict__ in a debugger dump) stays clean.
        self._authorization = Secret("Basic " + basic)
        form = {"grant_type": "client_credentials"}
        if config.scope:
            form["scope"] = config.scope
        self._form: dict[str, str] = form
        self._timeout = aiohttp.ClientTimeout(total=config.timeout)

    def __repr__(self) -> str:
        return f"TokenClient(url={self._url!r})"

    async def fetch(self) -> Grant:
        """POST the grant; return the token or raise ``TokenFetchError``.

        ``issued_at`` is the wall time when the request was *sent*: the issuer's clock started no
        earlier than that, so ``issued_at + expires_in`` never overestimates the expiry.
        """
        headers = {"Authorization": self._authorization.reveal(), "Accept": "application/json"}
        sent_at = self._clock()
        try:
            async with self._session.post(
                self._url,
                data=self._form,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,  # a redirect would carry the Basic credentials elsewhere
                raise_for_status=False,
            ) as resp:
                if resp.status != 200:
                    raise TokenFetchError(HTTP_ERROR, resp.status)
                body = await _read_limited(resp)
        except TokenFetchError:
            raise
        except asyncio.TimeoutError as exc:  # also aiohttp's ServerTimeoutError / ConnectionTimeoutError
            raise TokenFetchError(TIMEOUT) from exc
        except (aiohttp.ClientConnectionError, aiohttp.InvalidURL, OSError) as exc:
            raise TokenFetchError(CONNECT_ERROR) from exc
        except aiohttp.ClientError as exc:  # malformed HTTP, broken payload, ...
            raise TokenFetchError(BAD_RESPONSE) from exc
        value, expires_in = _parse(body)
        return Grant(value=value, issued_at=sent_at, expires_at=sent_at + expires_in)


async def _read_limited(resp: aiohttp.ClientResponse) -> bytes:
    if resp.content_length is not None and resp.content_length > MAX_BODY_BYTES:
        raise TokenFetchError(BAD_RESPONSE)
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(16 * 1024):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise TokenFetchError(BAD_RESPONSE)
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(body: bytes) -> tuple[str, float]:
    """Return ``(access_token, expires_in)`` or raise ``bad_response``.

    An empty or garbled 200 is a failure, not a token (DESIGN.md section 3). Decode errors are not
    chained: a ``JSONDecodeError`` carries the whole body, which may contain a token.
    """
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise TokenFetchError(BAD_RESPONSE) from None
    if not isinstance(doc, dict):
        raise TokenFetchError(BAD_RESPONSE)
    value = doc.get("access_token")
    if not isinstance(value, str) or not _TOKEN_CHARS.fullmatch(value):
        raise TokenFetchError(BAD_RESPONSE)
    expires_in = _positive_number(doc.get("expires_in"))
    if expires_in is None:
        raise TokenFetchError(BAD_RESPONSE)
    return value, expires_in


def _positive_number(raw: object) -> float | None:
    """A JSON number (or a decimal string: some gateways quote it) that is finite and > 0."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        number = float(raw)
    elif isinstance(raw, str) and _NUMBER.fullmatch(raw):
        number = float(raw)
    else:
        return None
    return number if math.isfinite(number) and number > 0 else None

"""The sandbox partner: an aiohttp stand-in for Tokopedia's B2B ("SAT") API and token server.

It exists so the sidecar can be developed, demoed and tested end to end without partner
credentials, and so every partner failure can be produced on demand. Behaviour follows
``partner/tokopedia-b2b.md``; where the partner is undocumented it follows that file's
assumptions (section 6 catalogue, section 7 401-vs-P08 split).

Routes::

    POST /token                          OAuth2 client_credentials (Basic auth, or form fields)
    GET  /ping                           {"buildhash": "sandbox", "sandbox": true, "status": "ok"}
    GET  /v2/product-list[/]             bearer check, then fault injection, then the catalogue
    GET  /v2/account                     deposit balance           (these four: proxy.sandbox.api)
    POST /v2/inquiry                     bill of an is_inquiry product
    POST /v2/order                       checkout: signed body, balance drawn, Pending -> Success/Failed
    GET  /v2/order/{request_id}          check status, answer signed with the sandbox's own key
    GET  /_sandbox/stats                 counters for process-level tests
    POST /_sandbox/revoke                every issued token becomes unknown (-> 403 P08)
    POST /_sandbox/token-mode            {"mode": "500", "delay": 0.5}: token-server failures
    POST /_sandbox/reset                 zero counters and logs, token mode back to "ok"

Product-list order of checks: ``Authorization`` missing or not ``Bearer <token>`` -> 401
(``text/plain``, no JSON:API body); unknown, revoked or expired token -> 403 ``P08``; then a
fault from the ``X-Sandbox-Fault`` header or, failing that, the first fault token in
``product_code`` (grammar in :mod:`proxy.sandbox.catalogue`); then the product lookup
(empty/missing ``product_code`` -> all products; some found -> 200 with those; none -> 400 P04).

Token modes (``SandboxState.token_mode``), applied to every ``POST /token``:

========== ================================================================================
ok         normal OAuth2 behaviour
down       the connection is dropped with a TCP RST before any answer (what a dead token host
           looks like to a client mid-request; HTTP failures are covered by "500")
500        HTTP 500, JSON ``{"error": "server_error", ...}``
garbage    HTTP 200 claiming ``application/json`` with a body that is not JSON
empty      HTTP 200 ``{}``
no_expires HTTP 200 with a real, usable token but no ``expires_in``
slow       sleep ``token_delay`` seconds, then behave as "ok"
========== ================================================================================

Faults "down" and ``reset`` use the same mechanism: ``SO_LINGER`` 0 then ``transport.abort()``,
so the peer gets a reset, and the handler's later response write fails quietly inside aiohttp.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import time
from collections.abc import Callable
from typing import cast
from urllib.parse import unquote_plus

from aiohttp import hdrs, web
from multidict import CIMultiDict

from proxy.sandbox import api
from proxy.sandbox.catalogue import PRODUCTS, PRODUCTS_BY_CODE, InvalidFault, split_product_codes
from proxy.sandbox.replies import answer_fault, authorize, bearer_token as _bearer_token, json_reply as _json
from proxy.sandbox.replies import partner_error as _partner_error, pause as _pause
from proxy.sandbox.replies import request_fault as _request_fault, reset_connection as _reset_connection
from proxy.sandbox.state import (
    SANDBOX_STATE,
    TOKEN_MODES,
    ProductCall,
    SandboxSettings,
    SandboxState,
    TokenMode,
)

__all__ = [
    "SANDBOX_STATE",
    "TOKEN_MODES",
    "ProductCall",
    "SandboxSettings",
    "SandboxState",
    "TokenMode",
    "build_sandbox_app",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- handlers


def _product_list(codes: list[str]) -> web.Response:
    if not codes:
        return _json(200, {"data": [p.resource() for p in PRODUCTS]})
    found = [PRODUCTS_BY_CODE[c].resource() for c in codes if c in PRODUCTS_BY_CODE]
    if not found:
        return _partner_error("P04")
    return _json(200, {"data": found})



async def handle_ping(request: web.Request) -> web.Response:
    """Health check in the partner's shape."""
    return _json(200, {"buildhash": "sandbox", "sandbox": True, "status": "ok"})


def _token_error(status: int, error: str, description: str, basic: bool = False) -> web.Response:
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    if basic:
        headers["WWW-Authenticate"] = 'Basic realm="sandbox"'
    return _json(status, {"error": error, "error_description": description}, headers)


def _decode_basic(header: str) -> tuple[str, str] | None:
    """``(client_id, secret)`` from ``Basic base64(id:secret)``, or None if malformed.

    Parsed here rather than with ``aiohttp.BasicAuth.decode``, which is deprecated for removal in
    aiohttp 4 and decodes as latin-1 while ``aiohttp.encode_basic_auth`` encodes UTF-8.
    """
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(encoded.strip().encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        decoded = raw.decode("latin-1")
    client_id, sep, secret = decoded.partition(":")
    return (client_id, secret) if sep else None


def _credentials_match(state: SandboxState, client_id: str, secret: str) -> bool:
    """Constant-time compare, also accepting RFC 6749's form-encoded Basic credentials.

    Go's ``clientcredentials`` URL-escapes id and secret before Basic-encoding them, other
    clients do not; the real server must take both, so the sandbox does too.
    """
    expected_id = state.settings.client_id.encode()
    expected_secret = state.settings.client_secret.encode()
    for cid, sec in ((client_id, secret), (unquote_plus(client_id), unquote_plus(secret))):
        id_ok = hmac.compare_digest(cid.encode(), expected_id)
        secret_ok = hmac.compare_digest(sec.encode(), expected_secret)
        if id_ok and secret_ok:
            return True
    return False


async def handle_token(request: web.Request) -> web.StreamResponse:
    """OAuth2 client_credentials, with failure modes for token-client tests."""
    state = request.app[SANDBOX_STATE]
    state.token_requests += 1
    mode = state.token_mode
    if mode == "down":
        return _reset_connection(request)
    if mode == "500":
        return _token_error(500, "server_error", "sandbox token server failure (token_mode=500)")
    if mode == "garbage":
        return web.Response(
            status=200, body=b'{"access_token": "c:trunc', content_type="application/json"
        )
    if mode == "empty":
        return _json(200, {})
    if mode == "slow":
        await _pause(request, state.token_delay)

    form = await request.post()
    auth_header = request.headers.get(hdrs.AUTHORIZATION)
    if auth_header is not None:
        credentials = _decode_basic(auth_header)
        if credentials is None:
            return _token_error(401, "invalid_client", "Malformed Basic authorization header", True)
        client_id, secret = credentials
    else:
        client_id = str(form.get("client_id", ""))
        secret = str(form.get("client_secret", ""))
        if not client_id:
            return _token_error(401, "invalid_client", "Client authentication missing", True)
    if not _credentials_match(state, client_id, secret):
        return _token_error(401, "invalid_client", "Client authentication failed", True)

    grant_type = form.get("grant_type") or request.query.get("grant_type")
    if grant_type != "client_credentials":
        return _token_error(
            400, "unsupported_grant_type", "grant_type must be client_credentials"
        )

    token = state.issue_token()
    body: dict[str, object] = {
        "access_token": token,
        "expires_in": state.settings.expires_in,
        "token_type": "Bearer",
        # Extra fields Tokopedia's own SDK mock returns; clients must ignore them.
        "event_code": "",
        "last_login_type": "8",
        "sq_check": False,
    }
    if mode == "no_expires":
        del body["expires_in"]
    return _json(200, body, {"Cache-Control": "no-store", "Pragma": "no-cache"})


async def handle_product_list(request: web.Request) -> web.StreamResponse:
    """GET /v2/product-list: bearer check, then fault injection, then the catalogue."""
    state = request.app[SANDBOX_STATE]
    token = _bearer_token(request)
    state.product_calls.append(
        ProductCall(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=CIMultiDict(request.headers),
            token=token,
        )
    )
    refused = authorize(request)
    if refused is not None:
        return refused

    codes = split_product_codes(request.query.get("product_code"))
    try:
        fault = _request_fault(request, codes)
    except InvalidFault as exc:
        return _partner_error("P01", f"Invalid request: {exc}")

    if fault is None:
        return _product_list(codes)
    return await answer_fault(request, fault, lambda: _product_list([]))


# --------------------------------------------------------------------------- test control


async def handle_stats(request: web.Request) -> web.Response:
    """Counters for process-level tests that cannot reach the state object."""
    return _json(200, request.app[SANDBOX_STATE].stats())


async def handle_revoke(request: web.Request) -> web.Response:
    """Revoke every issued token (next product call with any of them -> 403 P08)."""
    request.app[SANDBOX_STATE].revoke_all()
    return _json(200, {"revoked": True})


async def handle_token_mode(request: web.Request) -> web.Response:
    """Set the token mode from ``{"mode": ..., "delay": ...}``; 400 on anything invalid."""
    state = request.app[SANDBOX_STATE]
    try:
        payload = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _json(400, {"error": "body must be JSON"})
    if not isinstance(payload, dict) or not isinstance(payload.get("mode"), str):
        return _json(400, {"error": 'expected {"mode": str, "delay": number?}'})
    delay = payload.get("delay")
    if delay is not None and (isinstance(delay, bool) or not isinstance(delay, int | float)):
        return _json(400, {"error": "delay must be a number of seconds"})
    try:
        state.set_token_mode(cast(str, payload["mode"]), delay)
    except ValueError as exc:
        return _json(400, {"error": str(exc)})
    return _json(200, {"mode": state.token_mode, "delay": state.token_delay})


async def handle_reset(request: web.Request) -> web.Response:
    """Zero counters and restore token mode "ok" (tokens stay valid; see SandboxState.reset)."""
    state = request.app[SANDBOX_STATE]
    state.reset()
    return _json(200, state.stats())


async def _signal_stopping(app: web.Application) -> None:
    app[SANDBOX_STATE].stopping.set()


def build_sandbox_app(
    settings: SandboxSettings | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> web.Application:
    """A fresh sandbox partner app with its own :class:`SandboxState` under ``SANDBOX_STATE``.

    ``clock`` (keyword-only) drives token expiry; tests pass a fake to time-travel.
    """
    app = web.Application()
    app[SANDBOX_STATE] = SandboxState(settings, clock)
    app.on_shutdown.append(_signal_stopping)
    app.router.add_post("/token", handle_token)
    app.router.add_get("/ping", handle_ping)
    app.router.add_get("/v2/product-list", handle_product_list)
    app.router.add_get("/v2/product-list/", handle_product_list)
    api.add_routes(app)
    app.router.add_get("/_sandbox/stats", handle_stats)
    app.router.add_post("/_sandbox/revoke", handle_revoke)
    app.router.add_post("/_sandbox/token-mode", handle_token_mode)
    app.router.add_post("/_sandbox/reset", handle_reset)
    return app

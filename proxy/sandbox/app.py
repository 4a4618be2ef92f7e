"""The sandbox partner: an aiohttp stand-in for Tokopedia's B2B ("SAT") API and token server.

It exists so the sidecar can be developed, demoed and tested end to end without partner
credentials, and so every partner failure can be produced on demand. Behaviour follows
``partner/tokopedia-b2b.md``; where the partner is undocumented it follows that file's
assumptions (section 6 catalogue, section 7 401-vs-P08 split).

Routes::

    POST /token                          OAuth2 client_credentials (Basic auth, or form fields)
    GET  /ping                           {"buildhash": "sandbox", "sandbox": true, "status": "ok"}
    GET  /v2/product-list[/]             bearer check, then fault injection, then the catalogue
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

import asyncio
import base64
import binascii
import hmac
import json
import logging
import secrets
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, cast, get_args
from urllib.parse import unquote_plus

from aiohttp import hdrs, web
from multidict import CIMultiDict

from proxy.sandbox.catalogue import (
    FAULT_HEADER,
    HANG_SECONDS,
    PRODUCTS,
    PRODUCTS_BY_CODE,
    DelayFault,
    ErrorFault,
    Fault,
    GarbageFault,
    HangFault,
    InvalidFault,
    ResetFault,
    StatusFault,
    error_document,
    is_fault_token,
    parse_fault,
    split_product_codes,
)

log = logging.getLogger(__name__)

TokenMode = Literal["ok", "down", "500", "garbage", "empty", "no_expires", "slow"]
TOKEN_MODES: Final[frozenset[str]] = frozenset(get_args(TokenMode))

# How often a sleeping handler looks whether its client went away. Small enough that a hang
# ends promptly after a client timeout, large enough to cost nothing.
_POLL_SECONDS: Final = 0.05


@dataclass
class SandboxSettings:
    """Static configuration of one sandbox instance.

    ``token_ttl`` is the real lifetime of issued tokens. ``expires_in`` in the JSON is an int of
    at least 1 (``max(1, int(token_ttl))``), so a sub-second TTL lets tests see a token expire
    before the client believes it has; a token is never advertised as living longer than 1 s
    beyond its real expiry.
    """

    client_id: str = "sandbox-client"
    client_secret: str = "sandbox-secret"
    token_ttl: float = 86400.0

    @property
    def expires_in(self) -> int:
        """The ``expires_in`` value the token endpoint reports."""
        return max(1, int(self.token_ttl))


@dataclass(frozen=True, slots=True)
class ProductCall:
    """One request that reached ``/v2/product-list``, recorded before any check.

    Tests use it to assert what the sidecar forwarded (query allowlist, stripped headers,
    which token was used on a retry).
    """

    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    token: str | None


class SandboxState:
    """Everything mutable about one sandbox app; stored under :data:`SANDBOX_STATE`.

    Tests reach in through ``app[SANDBOX_STATE]`` to inject failures and read what happened;
    process-level tests do the same through ``/_sandbox/*``. ``clock`` is injectable so token
    expiry can be tested without sleeping.
    """

    def __init__(
        self,
        settings: SandboxSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings: SandboxSettings = settings or SandboxSettings()
        self.clock: Callable[[], float] = clock
        self.token_requests: int = 0
        self.tokens_issued: list[str] = []
        self.product_calls: list[ProductCall] = []
        self.token_mode: str = "ok"
        self.token_delay: float = 0.0
        # token -> expiry on ``clock``; the only thing that makes a token valid.
        self._valid_tokens: dict[str, float] = {}
        # Set on app shutdown so sleeping handlers (hang, delay, slow) return at once instead of
        # holding the runner's cleanup for its whole shutdown timeout.
        self.stopping: asyncio.Event = asyncio.Event()

    # -- tokens ---------------------------------------------------------------------------

    def issue_token(self) -> str:
        """Mint a new distinct token valid for ``settings.token_ttl``; older tokens stay valid."""
        now = self.clock()
        self._valid_tokens = {t: exp for t, exp in self._valid_tokens.items() if exp > now}
        token = "c:" + secrets.token_urlsafe(24)
        self._valid_tokens[token] = now + self.settings.token_ttl
        self.tokens_issued.append(token)
        return token

    def token_is_valid(self, token: str) -> bool:
        """Known, not revoked and not expired on ``clock``."""
        expiry = self._valid_tokens.get(token)
        return expiry is not None and self.clock() < expiry

    def revoke_all(self) -> None:
        """Forget every issued token, so each one now answers 403 P08."""
        self._valid_tokens.clear()

    # -- test control ---------------------------------------------------------------------

    def set_token_mode(self, mode: str, delay: float | None = None) -> None:
        """Switch token-server behaviour, rejecting unknown modes (a typo must not pass as ok)."""
        if mode not in TOKEN_MODES:
            raise ValueError(f"unknown token mode {mode!r}; one of {sorted(TOKEN_MODES)}")
        if delay is not None:
            if delay < 0:
                raise ValueError("delay must be >= 0")
            self.token_delay = float(delay)
        self.token_mode = mode

    def reset(self) -> None:
        """Zero counters and logs and restore mode "ok".

        Issued tokens stay valid: a running sidecar keeps its cached token across a test's reset,
        and :meth:`revoke_all` exists for the other case.
        """
        self.token_requests = 0
        self.tokens_issued = []
        self.product_calls = []
        self.token_mode = "ok"
        self.token_delay = 0.0

    def stats(self) -> dict[str, object]:
        """The ``/_sandbox/stats`` document."""
        return {
            "token_requests": self.token_requests,
            "tokens_issued": len(self.tokens_issued),
            "product_calls": len(self.product_calls),
            "last_tokens": [call.token for call in self.product_calls],
        }


SANDBOX_STATE: Final = web.AppKey("sandbox_state", SandboxState)

# --------------------------------------------------------------------------- helpers


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer; ``json_response`` sets ``application/json``, as the partner does."""
    return web.json_response(body, status=status, headers=headers)


def _partner_error(code: str, detail: str | None = None) -> web.Response:
    status, body = error_document(code, detail)
    return _json(status, body)


def _reset_connection(request: web.Request) -> web.Response:
    """Drop the client's connection with a TCP RST and return a response that is never sent.

    ``SO_LINGER`` with a zero timeout turns ``close`` into a reset, which is what a crashed
    upstream or a middlebox kill looks like. Returning (rather than raising) lets aiohttp's
    own "client went away" path swallow the failed write, so nothing is logged as a server bug.
    """
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:  # pragma: no cover - platform without SO_LINGER; abort still closes
                pass
        transport.abort()
    return web.Response(status=500, text="connection reset by sandbox")


async def _pause(request: web.Request, seconds: float) -> bool:
    """Sleep up to ``seconds``; return early when the client disconnects or the app stops.

    Returns True if the full time elapsed. Needed because a runner built without
    ``handler_cancellation`` would otherwise keep a 300 s hang alive after its client gave up.
    """
    stopping = request.app[SANDBOX_STATE].stopping
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return True
        transport = request.transport
        if transport is None or transport.is_closing() or stopping.is_set():
            return False
        try:
            await asyncio.wait_for(stopping.wait(), timeout=min(_POLL_SECONDS, remaining))
        except TimeoutError:
            pass


def _product_list(codes: list[str]) -> web.Response:
    if not codes:
        return _json(200, {"data": [p.resource() for p in PRODUCTS]})
    found = [PRODUCTS_BY_CODE[c].resource() for c in codes if c in PRODUCTS_BY_CODE]
    if not found:
        return _partner_error("P04")
    return _json(200, {"data": found})


def _infrastructure_page(status: int) -> web.Response:
    """A non-JSON error page like a load balancer or WAF in front of the partner would send."""
    reason = web.Response(status=status).reason or "Error"
    html = (
        f"<html><head><title>{status} {reason}</title></head>"
        f"<body><center><h1>{status} {reason}</h1></center><hr><center>sandbox-lb</center>"
        "</body></html>\n"
    )
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return web.Response(status=status, text=html, content_type="text/html", headers=headers)


def _request_fault(request: web.Request, codes: list[str]) -> Fault | None:
    """The fault this request asks for: the header wins, else the first fault product code.

    Raises:
        InvalidFault: a reserved token is malformed.
    """
    header = request.headers.get(FAULT_HEADER, "").strip()
    if header:
        fault = parse_fault(header)
        if fault is None:
            raise InvalidFault(f"{FAULT_HEADER}: {header!r} is not a sandbox fault")
        return fault
    for code in codes:
        if is_fault_token(code):
            return parse_fault(code)
    return None


# --------------------------------------------------------------------------- handlers


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


def _bearer_token(request: web.Request) -> str | None:
    """The token of a well-formed ``Authorization: Bearer <token>``, else None."""
    header = request.headers.get(hdrs.AUTHORIZATION)
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or any(ch.isspace() for ch in token):
        return None
    return token


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
    if token is None:
        return web.Response(
            status=401,
            text="401: Unauthorized",
            headers={"WWW-Authenticate": 'Bearer realm="sandbox"'},
        )
    if not state.token_is_valid(token):
        return _partner_error("P08")

    codes = split_product_codes(request.query.get("product_code"))
    try:
        fault = _request_fault(request, codes)
    except InvalidFault as exc:
        return _partner_error("P01", f"Invalid request: {exc}")
    if fault is not None:
        log.info("sandbox fault injected: %s", fault)

    match fault:
        case None:
            return _product_list(codes)
        case ErrorFault(code=code):
            return _partner_error(code)
        case StatusFault(status=status):
            return _infrastructure_page(status)
        case DelayFault(seconds=seconds):
            if not await _pause(request, seconds):
                return _infrastructure_page(503)  # client gone or sandbox stopping
            return _product_list([])
        case HangFault():
            if not await _pause(request, HANG_SECONDS):
                return _infrastructure_page(503)
            return _product_list([])
        case ResetFault():
            return _reset_connection(request)
        case GarbageFault():
            return web.Response(
                status=500,
                body=b'{"errors": [{"code": "S00", "detail": "Internal Serv',
                content_type="application/json",
            )
    raise AssertionError(f"unhandled fault {fault!r}")  # pragma: no cover


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
    app.router.add_get("/_sandbox/stats", handle_stats)
    app.router.add_post("/_sandbox/revoke", handle_revoke)
    app.router.add_post("/_sandbox/token-mode", handle_token_mode)
    app.router.add_post("/_sandbox/reset", handle_reset)
    return app

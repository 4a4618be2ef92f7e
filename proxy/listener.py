"""The data listener's handler: route lookup, exchange setup, the chain, rendering, metrics, the log.

Everything that depends on config is read from the current ``Runtime``, taken once per request:
a reload that swaps the runtime mid-request does not change the request's config.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import HttpVersion11, web
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.commlog import CommunicationLog
from proxy.config.models import LogConfig
from proxy.errors import ExpectationFailed, ProxyError, RouteNotFound, TokenUnavailable
from proxy.exchange import Exchange, UpstreamResponse
from proxy.metrics import Metrics
from proxy.reply import error_response
from proxy.runtime import Runtime
from proxy.tracing import child_traceparent, pick_language, request_id_from

log = logging.getLogger("proxy.listener")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]



# Never forwarded: the app's own credentials and cookies, Host, hop-by-hop headers (RFC 9110 7.6.1),
# framing (re-done by the client), and the tracing headers we set ourselves.
DROP_HEADERS = frozenset(
    h.lower()
    for h in (
        "Authorization", "Cookie", "Host", "Connection", "Keep-Alive", "Proxy-Authenticate",
        "Proxy-Authorization", "Proxy-Connection", "TE", "Trailer", "Transfer-Encoding", "Upgrade",
        "Content-Length", "Expect", "Accept-Encoding", "X-Request-Id", "traceparent", "tracestate",
    )
)


class Listener:
    def __init__(self, runtime: Callable[[], Runtime], metrics: Metrics, commlog: CommunicationLog) -> None:
        self._runtime = runtime
        self._metrics = metrics
        self._commlog = commlog
        # The record's keys are fixed; when no configured redaction names one of them, the line is
        # built from a template (a fifth of the per-request CPU went to the generic dict + dumps path).
        self._fast_log = commlog.level <= logging.INFO and not commlog.redacts_any(PARTNER_CALL_FIELDS)
        self._request_counters: dict[tuple[str, int], object] = {}
        self._durations: dict[str, object] = {}

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue`` as aiohttp does it; any other expectation gets a 417 envelope."""
        if request.headers.get("Expect", "").lower() == "100-continue" and request.version == HttpVersion11:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
            return None
        return self._local_error(request, ExpectationFailed())

    def _local_error(self, request: web.Request, error: ProxyError) -> web.Response:
        runtime = self._runtime()
        table = next(iter(runtime.loaded.errors.values()))
        language = pick_language(request.headers.get("Accept-Language"), frozenset(table.languages()), table.default_language)
        response = error_response(error, language, request_id_from(request.headers.get("X-Request-Id")))
        self._count("unmatched", response.status, time.perf_counter())  # no route: no useful duration
        return response

    @web.middleware
    async def router_errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A target no resource can match (``CONNECT host:port`` has no path at all) still gets the
        envelope and a request id instead of aiohttp's text/plain 404."""
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return self._local_error(request, RouteNotFound())

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        runtime = self._runtime()
        headers = request.headers
        request_id = request_id_from(headers.get("X-Request-Id"))
        route = runtime.routes.match(request.path)
        if route is None:
            return self._local_error(request, RouteNotFound())
        language = route.language(headers.get("Accept-Language"))
        traceparent = child_traceparent(headers.get("traceparent"))
        ex = Exchange(
            request=request,
            route=route,
            request_id=request_id,
            language=language,
            traceparent=traceparent,
            started=started,
            upstream_headers=upstream_headers(headers, request_id, traceparent),
        )
        if route.query:
            query = request.rel_url.query
            ex.upstream_query = {name: query[name] for name in route.query if name in query}
        if self._commlog.debug_enabled:
            self._commlog.write(
                "partner_call_start",
                {"request_id": request_id, "traceparent": ex.traceparent, "route": route.name, "cluster": route.cluster, "method": request.method},
                logging.DEBUG,
            )
        upstream: UpstreamResponse | None = None
        try:
            upstream = await route.chain(ex)
        except ProxyError as exc:
            response = self._error(ex, exc)
        except Exception:  # a bug must still answer in the envelope, never a traceback
            log.exception("unhandled error on route %s (request %s)", route.name, request_id)
            response = self._error(ex, ProxyError("unhandled"))
        else:
            response = self._answer(ex, upstream)
        self._count(route.name, response.status, started)
        if ex.attempts:
            self._log(ex, response.status, upstream, runtime.loaded.proxy.log)
        return response

    def _answer(self, ex: Exchange, upstream: UpstreamResponse) -> web.Response:
        if upstream.error is not None:
            return self._error(ex, upstream.error)
        headers = {"X-Request-Id": ex.request_id}
        if upstream.content_type:
            headers["Content-Type"] = upstream.content_type
        return web.Response(status=upstream.status, body=upstream.body, headers=headers)

    def _error(self, ex: Exchange, error: ProxyError) -> web.Response:
        if ex.error_type is None:
            ex.error_type = error.type
        if isinstance(error, TokenUnavailable):
            ex.token_source = ex.token_source or "none"
        return error_response(error, ex.language, ex.request_id)

    def _count(self, route: str, status: int, started: float) -> None:
        key = (route, status)
        counter = self._request_counters.get(key)
        if counter is None:
            counter = self._metrics.requests.labels(route, str(status))
            self._request_counters[key] = counter
        counter.inc()  # type: ignore[attr-defined]
        hist = self._durations.get(route)
        if hist is None:
            hist = self._metrics.request_duration.labels(route)
            self._durations[route] = hist
        hist.observe(time.perf_counter() - started)  # type: ignore[attr-defined]

    def _log(self, ex: Exchange, status: int, upstream: UpstreamResponse | None, cfg: LogConfig) -> None:
        if self._fast_log and not cfg.capture_bodies:
            self._commlog.write_line(self._partner_call_line(ex, status))
            return
        if self._commlog.level > logging.INFO:
            return
        request = ex.request
        fields: dict[str, object] = {
            "request_id": ex.request_id,
            "traceparent": ex.traceparent,
            "route": ex.route.name,
            "client_id": request.headers.get("X-Client-Id", "")[:128] or None,
            "cluster": ex.route.cluster,
            "method": request.method,
            "upstream_path": ex.route.upstream_path,
            "attempts": ex.attempts,
            "status": status,
            "partner_status": ex.partner_status,
            "partner_code": ex.partner_code,
            "error_type": ex.error_type,
            "latency_ms": round((time.perf_counter() - ex.started) * 1000, 2),
            "token_source": ex.token_source,
            "token_retried": ex.token_retried,
            "breaker_state": ex.breaker_state,
        }
        if cfg.capture_bodies and upstream is not None:
            fields["response_body"] = self._commlog.body_excerpt(upstream.body, cfg.max_body_bytes)
        self._commlog.write("partner_call", fields)

    def _partner_call_line(self, ex: Exchange, status: int) -> str:
        """The ``partner_call`` record as one JSON line, same keys and order as the generic path.

        Safe to interpolate unescaped: request_id and traceparent (validated or generated in
        proxy.tracing), the method (an HTTP token: no quote or backslash), numbers and booleans.
        Everything else goes through json.dumps (route prefix precomputed per route)."""
        request = ex.request
        client_id = request.headers.get("X-Client-Id", "")[:128]
        return (
            f'{{"time":"{self._commlog.now()}","level":"info","event":"partner_call",'
            f'"request_id":"{ex.request_id}","traceparent":"{ex.traceparent}","route":{ex.route.log_route},'
            f'"client_id":{_json(client_id or None)},"cluster":{ex.route.log_cluster},"method":"{request.method}",'
            f'"upstream_path":{ex.route.log_upstream_path},'
            f'"attempts":{ex.attempts},"status":{status},"partner_status":{_json(ex.partner_status)},'
            f'"partner_code":{_json(ex.partner_code)},"error_type":{_json(ex.error_type)},'
            f'"latency_ms":{round((time.perf_counter() - ex.started) * 1000, 2)},"token_source":{_json(ex.token_source)},'
            f'"token_retried":{"true" if ex.token_retried else "false"},"breaker_state":{_json(ex.breaker_state)}}}'
        )


PARTNER_CALL_FIELDS = (
    "request_id", "traceparent", "route", "client_id", "cluster", "method", "upstream_path", "attempts", "status",
    "partner_status", "partner_code", "error_type", "latency_ms", "token_source", "token_retried", "breaker_state",
)


def _json(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)


def upstream_headers(headers: CIMultiDictProxy[str], request_id: str, traceparent: str) -> CIMultiDict[str]:
    """The app's headers minus everything a proxy must not forward, plus our tracing headers."""
    upstream = CIMultiDict[str]()
    drop = DROP_HEADERS
    connection = headers.get("Connection")
    if connection:  # RFC 9110 7.6.1: headers the Connection header names are hop-by-hop too
        drop = drop | {token.strip().lower() for token in connection.split(",")}
    for name, value in headers.items():
        if name.lower() not in drop:
            if not value.isascii():
                # The pure-Python parser hands non-UTF-8 bytes over as surrogates, which the
                # client cannot encode; forward them as replacement characters instead of a 500.
                value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            upstream.add(name, value)
    upstream["Accept-Encoding"] = "identity"  # success bodies pass through untouched, never re-encoded
    upstream["X-Request-Id"] = request_id
    upstream["traceparent"] = traceparent
    return upstream

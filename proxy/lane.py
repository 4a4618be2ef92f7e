"""The lane: the callback path's commonest request done on the parser's bytes.

Why: the callback path (``proxy.fastpath``) costs ~45 us of CPU per request on the benchmark, and
a minimal Python proxy on the same loop and parsers ~11 us (``bench/run.py``'s floor row). The
difference is mostly the data model, not the features: headers decoded to ``str`` into a
``CIMultiDict`` and back, the partner's header set built per request, a dozen objects and ~250
calls. For the requests that dominate traffic, a ``GET`` of a route that answers 2xx (the product
list, the balance, an order's status), this module keeps the bytes:

- the app's headers stay as llhttp gave them; one pass lower-cases each name into a dict and keeps
  the lines the partner gets (``proxy.headers.DROP_HEADERS`` and the route's own names dropped);
- the route's checks are ``ValidateRequest.accepts_raw``, the same rules on bytes;
- the partner request is one join: the route's request line and ``Host`` (encoded once), the app's
  kept lines, the route's headers, a fresh ``Date`` when the route sends one (``HttpDate``, encoded
  once a second) and ``Accept-Encoding`` (encoded once), the request id and
  trace context (``proxy.tracing``'s own functions), ``Authorization`` (encoded once per token by
  ``InjectCredentials.auth_line``). Same headers, same order, same bytes as ``upstream_headers``
  + ``wire_headers`` + ``Http11Pool.request_bytes`` (``tests/test_lane.py`` compares them);
- admission and accounting are the forwarder's own calls (``open_now``, ``succeeded``), the pool's
  (``start_bytes``), the metrics' (``RequestMetrics.record``) and the log's (``SuccessLine``,
  the ``partner_call`` record with the route's constant fields pre-encoded);
- the answer's pass-back policy is ``proxy.headers.answer_lines`` (``answer_headers`` on bytes),
  and the reply is ``proxy.h1.response.encode_passed``, byte for byte what ``encode_reply`` gives;
- a template route's path is matched by the route table itself (``Listener.lane``), its partner
  path filled from the same template (``Forwarder.path_template``); a route that verifies signed
  answers passes a 200 only when ``VerifyAnswer``'s own verifier accepts its signature.

Everything else is the existing code's, so that there is one behaviour:

- Before anything was sent, a request the lane does not take is handed, as the same bytes decoded,
  to the ordinary path (``H1Protocol`` and ``Listener.handle``), which then decides everything
  again: other methods, a query string with a fragment or non-ASCII bytes (any other query is
  put on the partner target as the ordinary path puts it: ``parse_query``, the route's
  allow-list, ``Forwarder.query_target``), a repeated header name, a ``Connection`` header other
  than ``keep-alive`` or ``close`` (one that names headers), ``Expect``/``Upgrade``/framing
  headers, a header the route sets (or ``Date``, on a route that sends its own), a check that fails (the ordinary path
  renders the 4xx), non-ASCII bytes, no token in memory, no idle connection or slot, a breaker
  that is not closed, a request pipelined behind another one.
- After sending, every outcome but a 200-202 with clean pass-back headers (a partner error, a
  timeout, a broken connection, a header the app's client would refuse, a 200 whose signature
  does not verify, which ``VerifyAnswer.check`` then refuses, counted once) is handed on: an
  ``Exchange`` is built for the request as it was sent, and ``Forwarder.answered``, ``FastCall``
  and ``Listener.finish_fast`` take it from there, with retries, token renewal, the errors.yaml
  rewrite and the envelope.

A route has a lane (``LaneRoute.of``) when it has a callback path, its path is plain ASCII (exact
or a template; a template route's request with a query string or an escape goes to the ordinary
path), and the runtime has tracing off and a plain log
policy (nothing scrubbed, no bodies, no debug records).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from time import perf_counter
from typing import Protocol

from proxy.accesslog import AccessLog, SuccessLine
from proxy.exchange import Downstream, Exchange
from proxy.fastpath import FastCall, FastRoute
from proxy.config.templates import parse_template
from proxy.h1.downstream import parse_query
from proxy.headers import DROP_HEADERS, HttpDate, answer_lines, upstream_headers, wire_headers
from proxy.oauth.token import Token
from proxy.reply import Reply
from proxy.request_metrics import RequestMetrics
from proxy.routing import match_template
from proxy.tracing import child_traceparent, forwarded_tracestate, request_id_from
from proxy.types import ACCOUNTING_BUG, CompiledRoute, FastEnd, Observer
from proxy.upstream.http11 import StrictAnswer
from proxy.upstream.transport import Event, Phase, UpstreamAnswer, UpstreamRequest, wire_error

log = logging.getLogger("proxy.lane")


class Listener(FastEnd, Protocol):
    """What the lane needs of ``proxy.listener.Listener``: the in-flight count the drain waits on,
    the callback path's counters and its end (``finish_fast``, for what is handed on)."""

    callback_requests: int
    lane_requests: int

    def enter(self) -> None: ...

    def leave(self) -> None: ...


class H1Protocol(Protocol):
    """What the lane needs of the app's connection (``proxy.h1.protocol.H1Protocol``)."""

    @property
    def listener(self) -> Listener: ...

    def lane_started(self, call: LaneCall) -> None: ...

    def lane_handed_on(self, call: LaneCall) -> Downstream: ...

    def lane_reply(self, reply: Reply) -> None: ...

    def lane_answer(
        self, status: int, passed: bytes, request_id: str, content_type: bytes, body: bytes, keep_alive: bool, then: Callable[[], None],
    ) -> None: ...


_DROP = frozenset(name.encode("ascii") for name in DROP_HEADERS)
# headers whose meaning the ordinary path works out (framing, 100-continue, protocol switches)
_NOT_HERE = frozenset((b"content-length", b"transfer-encoding", b"expect", b"upgrade"))
# The Connection values the lane takes: ones that name no header it would forward. Any other list
# makes the headers it names hop-by-hop (``headers.upstream_headers``): the ordinary path drops them.
_CONNECTION = frozenset((b"keep-alive", b"close"))
_SPACE = bytes(c for c in range(128) if chr(c).isspace())  # what the ordinary path's str.strip() strips
_ENCODING = b"Accept-Encoding: identity\r\n"
# A partner request's start: the request line and Host, the target, the allow-listed query
_Target = tuple[bytes, str, dict[str, str] | None]
# what the proxy itself sets on the partner request (a route header of that name is replaced)
_OURS = frozenset(("accept-encoding", "x-request-id", "traceparent", "tracestate", "authorization", "date"))


def _text(value: bytes) -> str:
    """A header value as ``H1Protocol`` decodes it for the ordinary path."""
    return value.decode("utf-8", "surrogateescape")


class DateLine:
    """The ``Date`` line of a route that sends one (``upstream.date``): ``HttpDate``'s value, the
    ordinary path's, encoded once per second."""

    __slots__ = ("_date", "text", "_line")

    def __init__(self) -> None:
        self._date = HttpDate()
        self.text = ""
        self._line = b""

    def __call__(self) -> bytes:
        text = self._date()
        if text is not self.text:  # HttpDate hands out the same str object all second
            self.text = text
            self._line = b"Date: " + text.encode("ascii") + b"\r\n"
        return self._line


class LaneRoute:
    """One route's lane, compiled with its runtime from the objects its callback path uses."""

    __slots__ = (
        "route", "fast", "forwarder", "validate", "credentials", "provider", "breaker", "pool", "timeout",
        "observers", "metrics", "line", "verify", "_signature", "_template", "_path_template",
        "_drop", "_set", "_tail", "_set_lines", "_date", "_pass_back", "_host", "_plain", "_queries",
    )

    def __init__(self, route: CompiledRoute, fast: FastRoute, observers: tuple[Observer, ...], metrics: RequestMetrics, line: SuccessLine | None) -> None:
        self.route = route
        self.fast = fast
        forwarder = self.forwarder = fast.forwarder
        cluster = forwarder.cluster
        self.validate = fast.validate
        self.credentials = fast.credentials
        self.provider = fast.credentials.provider if fast.credentials is not None else None
        self.breaker = cluster.breaker
        pool = cluster.pool
        assert pool is not None  # FastRoute.of: http11 only
        self.pool = pool
        self.timeout = cluster.config.timeout
        self.observers = observers
        self.metrics = metrics
        self.line = line  # None: the log level writes no partner_call records
        # the app's headers the ordinary path replaces in place: the route's own, and Date when the
        # route sends a fresh one (a request carrying one goes to it: another order on the wire)
        self._set = frozenset(name.lower().encode("ascii") for name, _ in route.set_headers) | ({b"date"} if route.date else set())
        self._drop = _DROP | self._set
        self._date = DateLine() if route.date else None
        self._host = f" HTTP/1.1\r\nHost: {pool.host_header}\r\n".encode("ascii")
        # (request line and Host, partner target, the allow-listed query) without a query string,
        # and per query string: apps repeat a few queries (a product code); bounded, so one minting
        # queries gets no cache
        target = forwarder.url.raw_path_qs
        self._plain: _Target = (b"GET " + target.encode("ascii") + self._host, target, None)
        self._queries: dict[bytes, _Target] = {}
        # upstream_headers' order: the app's lines, the route's, Date, Accept-Encoding, the ids
        self._set_lines = "".join(f"{name}: {value}\r\n" for name, value in route.set_headers).encode("ascii")
        self._tail = self._set_lines + _ENCODING
        self._pass_back = frozenset(name.encode("ascii") for name in forwarder.pass_back)
        # a template route (/v1/orders/{request_id}): its parameters, and the partner path they fill
        self._path_template = forwarder.path_template
        self._template = parse_template(route.path) if forwarder.path_template is not None else None
        # a route that verifies the partner's signed 200s (order status): VerifyAnswer's own verifier
        self.verify = fast.verify
        self._signature = fast.verify.header.encode("ascii") if fast.verify is not None else b""

    @classmethod
    def of(cls, route: CompiledRoute, observers: tuple[Observer, ...], metrics: RequestMetrics, access: AccessLog, tracing_on: bool) -> LaneRoute | None:
        """The route's lane, or None when some part of it would behave differently on bytes."""
        fast = route.fast
        if type(fast) is not FastRoute or tracing_on:
            return None
        if access.debug or (access.enabled and not access.plain):
            return None  # partner_call_start records, or a policy that scrubs or captures bodies
        forwarder = fast.forwarder
        path = route.path
        if not path.isascii() or any(c in path for c in "%?#"):
            return None
        if fast.validate is not None and "GET" not in fast.validate.methods:
            return None
        names = [name.lower() for name, _ in route.set_headers]
        if len(set(names)) != len(names) or not _OURS.isdisjoint(names):
            return None  # upstream_headers replaces such a header in place, and the credential filter too
        texts = [forwarder.url.raw_path_qs, forwarder.path_template or "", *(n + v for n, v in route.set_headers), *forwarder.pass_back]
        if fast.verify is not None:
            texts.append(fast.verify.header)
        if not all(t.isascii() for t in texts) or {"content-type", "x-request-id"} & forwarder.pass_back:
            return None  # downstream_headers would replace such a passed header: left to it
        line = access.success_line(route, "GET") if access.enabled else None
        return cls(route, fast, observers, metrics, line)

    def prepare(
        self, proto: H1Protocol, raw: list[tuple[bytes, bytes]], target: bytes, query: int, keep_alive: bool,
        http_version: Callable[[], str],
    ) -> LaneCall | None:
        """At the end of the request's head: the header pass and the route's checks. None: the
        ordinary path takes the request (and renders the error if a check failed).

        ``http_version`` is the parser's, asked only when the version can be other than 1.1 (it
        formats a new string per call): strict llhttp takes 0.9, 1.0, 1.1 and 2.0, and only 1.1
        keeps alive without a Connection header. ``query`` is the index of the target's ``?`` (-1:
        none); the target before it is the route's path."""
        started = perf_counter()
        params: dict[str, str] | None = None
        if self._template is None:
            upstream = self._plain if query < 0 else self._with_query(target[query + 1:])
            if upstream is None:
                return None
        else:
            if query >= 0:
                return None  # a template route's query: the ordinary path builds that target
            params = match_template(self._template, target.decode("ascii"))  # ASCII, no escapes: Listener.lane
            if params is None:
                return None
            path = self._path_template.format_map(params)  # type: ignore[union-attr]  # unreserved values
            upstream = (b"GET " + path.encode("ascii") + self._host, path, None)
        seen: dict[bytes, bytes] = {}
        parts = [upstream[0]]
        drop = self._drop
        for name, value in raw:
            lname = name.lower()
            seen[lname] = value
            if lname not in drop:
                if not value.isascii():  # the ordinary path re-encodes it (invalid UTF-8 as U+FFFD)
                    return None
                parts.append(b"%s: %s\r\n" % (name, value))
            elif lname in self._set and lname not in _DROP:
                # the ordinary path replaces such a header in place (another order on the wire)
                return None
        if len(seen) != len(raw) or not _NOT_HERE.isdisjoint(seen):
            return None
        connection = seen.get(b"connection")
        if connection is not None:
            token = connection.strip(_SPACE).lower()
            if token not in _CONNECTION or token in seen:  # a header named "close" would be hop-by-hop
                return None
        if self.validate is not None and not self.validate.accepts_raw("GET", seen):
            return None
        date = self._date
        if date is None:
            parts.append(self._tail)
            sent_date = None
        else:
            parts.append(self._set_lines)
            parts.append(date())
            parts.append(_ENCODING)
            sent_date = date.text
        version = "1.1" if keep_alive and connection is None else http_version()
        return LaneCall(proto, self, raw, parts, seen, keep_alive, version, started, target, upstream[1], upstream[2], sent_date, params)

    def _with_query(self, qs: bytes) -> _Target | None:
        """The partner request line for a query string, as the ordinary path builds its target
        (``Listener._exchange``'s allow-listed ``upstream_query``, ``Forwarder.query_target``);
        None for what the lane leaves to it (a fragment, non-ASCII bytes)."""
        hit = self._queries.get(qs)
        if hit is not None:
            return hit
        if b"#" in qs or not qs.isascii():
            return None
        entry = self._plain  # the ordinary path drops a query the route's allow-list has none of
        names = self.route.query
        query = parse_query(qs.decode("ascii")) if names else None
        if query:
            upstream_query = {name: query[name] for name in names if name in query}
            if upstream_query:
                target = self.forwarder.query_target(upstream_query)  # yarl's quoting: ASCII
                entry = (b"GET " + target.encode("ascii") + self._host, target, upstream_query)
            else:
                entry = (entry[0], entry[1], upstream_query)  # {}: what Listener._exchange sets
        if len(self._queries) < 1024:
            self._queries[qs] = entry
        return entry

    def signed(self, headers: list[tuple[bytes, bytes]], body: bytes) -> bool:
        """Whether a 200 carries a good signature, as ``VerifyAnswer.check`` decides it: the first
        header of the route's name, as the ordinary path decodes it (latin-1), over the raw body."""
        name = self._signature
        for hname, value in headers:
            if hname.lower() == name:
                return self.verify.verifier.verify(body, value.decode("latin-1"))  # type: ignore[union-attr]
        return False


def compile_lanes(
    routes: list[CompiledRoute], observers: tuple[Observer, ...], metrics: RequestMetrics, access: AccessLog, tracing_on: bool,
) -> tuple[Mapping[bytes, LaneRoute], Mapping[str, LaneRoute]]:
    """The runtime's lanes: an exact route's by its path as bytes (one dict lookup), a template
    route's by the route's name (``Listener.lane`` asks the route table which route a path is)."""
    exact: dict[bytes, LaneRoute] = {}
    templates: dict[str, LaneRoute] = {}
    for route in routes:
        lane = LaneRoute.of(route, observers, metrics, access, tracing_on)
        if lane is None:
            continue
        if lane._template is None:
            exact[route.path.encode("ascii")] = lane
        else:
            templates[route.name] = lane
    return exact, templates


class LaneCall:
    """One request on the lane: its state from the head to the reply, and the pool's ``on_done``."""

    __slots__ = (
        "proto", "lane", "raw", "parts", "seen", "keep_alive", "version", "started", "target",
        "upstream_target", "upstream_query", "date", "params", "token", "trial", "attempt_started", "breaker_state", "request_id", "traceparent", "tracestate",
        "status", "elapsed",
    )

    def __init__(
        self, proto: H1Protocol, lane: LaneRoute, raw: list[tuple[bytes, bytes]], parts: list[bytes],
        seen: dict[bytes, bytes], keep_alive: bool, version: str, started: float, target: bytes,
        upstream_target: str, upstream_query: dict[str, str] | None, date: str | None, params: dict[str, str] | None,
    ) -> None:
        self.proto = proto
        self.lane = lane
        self.raw = raw
        self.parts = parts  # the partner request so far: request line, Host, the app's kept lines, the route's
        self.seen = seen    # lower-case name -> value
        self.keep_alive = keep_alive
        self.version = version
        self.started = started
        self.target = target
        self.upstream_target = upstream_target  # the partner target, with the allow-listed query
        self.upstream_query = upstream_query
        self.date = date  # the Date sent (a retry after the hand-on re-sends it), or None
        self.params = params  # a template route's path parameters
        self.token: Token | None = None
        self.trial = False
        self.attempt_started = 0.0
        self.breaker_state = "closed"
        self.request_id = ""
        self.traceparent = ""
        self.tracestate: str | None = None
        self.status = 0  # a passed answer's, for ``account``
        self.elapsed = 0.0

    def start(self) -> bool:
        """At the request's end: send it. False, with nothing done: the ordinary path takes it."""
        lane = self.lane
        forwarder = lane.forwarder
        if lane.breaker.state != "closed" or not forwarder.can_start_now():
            return False
        token = None
        auth = b""
        if lane.provider is not None:
            # the last check: a peek counts a memory hit, and the ordinary path would peek again
            token = lane.provider.peek()
            if token is None:
                return False  # a token fetch waits: the task path
            line = lane.credentials.auth_line(token)  # type: ignore[union-attr]
            if line is None:
                return False  # a token wire_headers refuses (CR, LF): that path renders it (counted twice)
            auth = line
        seen = self.seen
        incoming = seen.get(b"x-request-id")
        request_id = request_id_from(_text(incoming) if incoming is not None else None)
        raw_parent = seen.get(b"traceparent")
        parent = _text(raw_parent) if raw_parent is not None else None
        traceparent = child_traceparent(parent)
        parts = self.parts
        parts.append(b"X-Request-Id: %s\r\ntraceparent: %s\r\n" % (request_id.encode("ascii"), traceparent.encode("ascii")))
        if parent:
            raw_state = seen.get(b"tracestate")
            tracestate = forwarded_tracestate(parent, _text(raw_state)) if raw_state is not None else None
            if tracestate:  # ASCII: forwarded_tracestate refuses anything else
                self.tracestate = tracestate
                parts.append(b"tracestate: %s\r\n" % tracestate.encode("ascii"))
        parts.append(auth)
        parts.append(b"\r\n")
        data = b"".join(parts)
        self.request_id, self.traceparent, self.token = request_id, traceparent, token
        listener = self.proto.listener
        listener.enter()
        try:
            self.trial, self.attempt_started = forwarder.open_now()
        except BaseException:  # cannot happen with the breaker closed; the ordinary path decides again
            listener.leave()
            return False
        listener.callback_requests += 1
        listener.lane_requests += 1
        self.proto.lane_started(self)
        if not lane.pool.start_bytes(data, "GET", lane.timeout, self):  # cannot happen (can_start_now)
            self(None, wire_error(Phase.NOT_SENT, Event.CLOSED, "GET", "no pooled connection ready"))
        return True

    def __call__(self, answer: StrictAnswer | None, error: BaseException | None) -> None:
        """The pool's outcome. The answer is read here and now: its connection is back in the pool."""
        if error is None:
            assert answer is not None
            status = answer.status
            body = answer.body_bytes()
            lane = self.lane
            # UpstreamResponse.ok: what the answer filters let through untouched; on a verify route a
            # 200 only with a good signature (any other 200 is handed on: VerifyAnswer.check refuses
            # it there, counted and notified once)
            if 200 <= status <= 202 and (lane.verify is None or status != 200 or lane.signed(answer.headers, body)):
                passed = answer_lines(answer.headers, lane._pass_back)
                if passed is not None:
                    self._passed(status, passed[0], passed[1], body)
                    return
            self._hand_on(UpstreamAnswer(status, answer.decoded_headers(), body), None)
            return
        self._hand_on(None, error)

    def _passed(self, status: int, content_type: bytes, passed: bytes, body: bytes) -> None:
        """A 200-202 passed through: what ``FastCall``, ``Listener.finish_fast`` and the observers
        do for it, on bytes. The answer is queued first and the metrics and log line run after it
        has been written (``Cork.after``): the app need not wait for our accounting."""
        lane = self.lane
        proto = self.proto
        try:
            lane.forwarder.succeeded(self.trial, self.attempt_started, status)
        finally:  # whatever happens, the drain must not wait for this request
            proto.listener.leave()
        self.status = status
        self.elapsed = perf_counter() - self.started
        proto.lane_answer(status, passed, self.request_id, content_type, body, self.keep_alive, self.account)

    def account(self) -> None:
        """The metrics and the ``partner_call`` line of a passed answer, once it is written. A bug
        here is logged (``proxy.listener.account``'s rule): the answer has already gone, and stands."""
        lane = self.lane
        try:
            lane.metrics.record(lane.route.name, self.status, self.elapsed)
            line = lane.line
            if line is not None:
                client = self.seen.get(b"x-client-id")
                line.write(
                    self.request_id, self.traceparent, _text(client) if client is not None else "", self.status, self.elapsed,
                    self.token.source if self.token is not None else None, self.breaker_state,
                )
        except Exception:
            log.exception(ACCOUNTING_BUG, lane.route.name, self.request_id)

    def _hand_on(self, answer: UpstreamAnswer | None, error: BaseException | None) -> None:
        """Any other outcome: the forwarder's, ``FastCall``'s and the listener's own code, with the
        objects they expect, built for the request as it was sent."""
        lane = self.lane
        route = lane.route
        proto = self.proto
        request = proto.lane_handed_on(self)
        headers = request.headers
        ex = Exchange(
            request, "GET", self.request_id, route.language(headers.get("Accept-Language")), self.traceparent, self.started,
            upstream_headers(headers, self.request_id, self.traceparent, self.tracestate, route.set_headers, self.date),
        )
        if self.token is not None:
            lane.credentials.attach(ex, self.token)  # type: ignore[union-attr]
        ex.attempts = 1
        ex.breaker_state = self.breaker_state
        if self.upstream_query is not None:
            ex.upstream_query = dict(self.upstream_query)  # the lane's copy is shared by its cache
        if self.params is not None:
            ex.path_params = self.params
        forwarder = lane.forwarder
        upstream = UpstreamRequest("GET", self.upstream_target, wire_headers(ex.upstream_headers), b"")
        done = FastCall(lane.fast, ex, self.token, proto.listener, route, lane.observers, proto.lane_reply)
        forwarder.answered(ex, upstream, self.trial, self.attempt_started, done, answer, error)

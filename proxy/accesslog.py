"""The access (communication) log as an observer: one ``partner_call`` record per request that
reached the partner, built from the finished exchange under the runtime's ``LogPolicy``."""

from __future__ import annotations

import logging
from time import perf_counter
from collections.abc import Callable
from typing import Any

import orjson
from multidict import istr

from proxy.commlog import CommunicationLog, LogPolicy, encode
from proxy.exchange import Exchange, UpstreamResponse
from proxy.types import CompiledRoute

# An ``istr`` key: multidict matches it without case-folding the name on every lookup (~20 ns
# less per record); a plain mapping sees the same string.
_CLIENT_ID = istr("X-Client-Id")

PARTNER_CALL_FIELDS = (
    "request_id", "traceparent", "route", "client_id", "cluster", "method", "upstream_path", "attempts", "status",
    "partner_status", "partner_code", "error_type", "latency_ms", "token_source", "token_retried", "breaker_state",
)


class AccessLog:
    """Built per runtime (the policy is config); the writer it hands lines to outlives reloads."""

    def __init__(self, writer: CommunicationLog, policy: LogPolicy) -> None:
        self.writer = writer
        self.policy = policy
        self.enabled = policy.enabled(logging.INFO)
        self.debug = policy.enabled(logging.DEBUG)
        # The record's keys are fixed: scrub only when the policy names one of them.
        self._scrub = policy.redacts_any(PARTNER_CALL_FIELDS)
        # The common case (nothing to scrub, no body capture) is one test per record, and the
        # writer's methods are bound once: on_finish runs for every request (a few tens of ns).
        self._plain = not self._scrub and not policy.capture_bodies
        self._now = writer.now
        self._write_line = writer.write_line

    @property
    def plain(self) -> bool:
        """Records are written as built: no field scrubbed, no body captured."""
        return self._plain

    def success_line(self, route: CompiledRoute, method: str) -> SuccessLine:
        """The route's pre-encoded success record, for ``proxy.lane`` (only under a plain policy)."""
        assert self._plain
        return SuccessLine(self._now, self._write_line, route, method)

    def on_start(self, ex: Exchange, route: CompiledRoute) -> None:
        if self.debug:
            self.writer.write(
                "partner_call_start",
                {"request_id": ex.request_id, "traceparent": ex.traceparent, "route": route.name, "cluster": route.cluster, "method": ex.method},
                logging.DEBUG,
                self.policy,
            )

    def on_finish(self, ex: Exchange, route: CompiledRoute | None, status: int, upstream: UpstreamResponse | None) -> None:
        if not ex.attempts or not self.enabled or route is None:
            return
        fields: dict[str, Any] = {
            "time": self._now(),
            "level": "info",
            "event": "partner_call",
            "request_id": ex.request_id,
            "traceparent": ex.traceparent,
            "route": route.name,
            "client_id": ex.downstream.headers.get(_CLIENT_ID, "")[:128] or None,
            "cluster": route.cluster,
            "method": ex.method,
            "upstream_path": route.upstream_path,
            "attempts": ex.attempts,
            "status": status,
            "partner_status": ex.partner_status,
            "partner_code": ex.partner_code,
            "error_type": ex.error_type,
            "latency_ms": round((perf_counter() - ex.started) * 1000, 2),
            "token_source": ex.token_source,
            "token_retried": ex.token_retried,
            "breaker_state": ex.breaker_state,
        }
        if self._plain:
            self._write_line(encode(fields))
            return
        if self._scrub:
            fields = self.policy.scrub(fields)
        if self.policy.capture_bodies and upstream is not None:
            fields["response_body"] = self.policy.body_excerpt(upstream.body)
        self._write_line(encode(fields))


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


class SuccessLine:
    """The ``partner_call`` record of one route's plain success, as ``on_finish`` writes it under a
    plain policy, with the route's constant fields encoded once: one attempt, the partner's status
    passed through, no partner code, no error, no token retry.

    Why: building the record's dict and encoding it costs ~1 us of the lane's ~25 us per request,
    and most of the record never changes for a route. The text is byte for byte ``encode()`` of
    ``on_finish``'s dict (``tests/test_lane.py`` compares them): the values put in raw are ours and
    JSON-safe (the log clock's time, a checked request id, a traceparent we formatted).
    """

    __slots__ = ("_now", "_write", "_route", "_middle", "_client_ids", "_texts")

    def __init__(self, now: Callable[[], str], write: Callable[[str], None], route: CompiledRoute, method: str) -> None:
        self._now = now
        self._write = write
        self._route = f',"route":{_json(route.name)},"client_id":'
        self._middle = (
            f',"cluster":{_json(route.cluster)},"method":{_json(method)},"upstream_path":{_json(route.upstream_path)},'
            '"attempts":1,"status":'
        )
        self._client_ids: dict[str, str] = {}  # X-Client-Id value -> its JSON text (apps send a few)
        self._texts: dict[str | None, str] = {}  # token source / breaker state -> JSON text

    def write(self, request_id: str, traceparent: str, client_id: str, status: int, seconds: float, token_source: str | None, breaker_state: str | None) -> None:
        client = self._client_ids.get(client_id)
        if client is None:
            client = _json(client_id[:128] or None)
            if len(self._client_ids) < 1024:  # bounded: an app minting ids per request gets no cache
                self._client_ids[client_id] = client
        texts = self._texts
        source = texts.get(token_source)
        if source is None:
            source = texts[token_source] = _json(token_source)
        breaker = texts.get(breaker_state)
        if breaker is None:
            breaker = texts[breaker_state] = _json(breaker_state)
        # Every field a str or an int and no conversion or format spec: mypyc builds the line with
        # one join. A ``!r`` here sends the whole f-string through ``str.format`` (~1 us). The
        # number is orjson's, as in ``on_finish``'s record: ``repr`` agrees with it only below 1e16
        # and only for some orjson releases (3.8 writes 1e16 where repr writes 1e+16).
        latency = _json(round(seconds * 1000, 2))
        self._write(
            f'{{"time":"{self._now()}","level":"info","event":"partner_call","request_id":"{request_id}",'
            f'"traceparent":"{traceparent}"{self._route}{client}{self._middle}{status},"partner_status":{status},'
            f'"partner_code":null,"error_type":null,"latency_ms":{latency},'
            f'"token_source":{source},"token_retried":false,"breaker_state":{breaker}}}'
        )

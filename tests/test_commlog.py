"""The communication log's own fast paths: each must write exactly what the plain version wrote."""

from __future__ import annotations

import random
import time
import types
from collections.abc import Iterator
from typing import Any

import pytest

from proxy import commlog
from proxy.accesslog import PARTNER_CALL_FIELDS
from proxy.commlog import LogPolicy, _Clock, encode


def reference(t: float) -> str:
    """The timestamp as formatted before the clock cached anything: the contract of ``_Clock.now``."""
    second = int(t)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(second))}.{int((t - second) * 1000):03d}Z"


def times() -> Iterator[float]:
    rng = random.Random(7)
    base = 1_767_225_599.0  # one second before a new year (a new minute, hour, day, month, year)
    t = base
    for _ in range(20_000):  # dense, as a busy worker calls it: many calls per millisecond
        t += rng.choice((0.0, 1e-7, 3e-6, 4e-5, 2e-4, 9e-4))
        yield t
    for k in range(3000):  # on and next to every millisecond boundary of three seconds
        edge = base + k / 1000
        yield from (edge, float.__sub__(edge, 2.5e-7), edge + 2.5e-7)
    for _ in range(2000):  # backwards, jumps, far future (a coarser float grid), before 1970, zero
        yield rng.choice((t - rng.random() * 5, t + rng.random() * 100, rng.uniform(1e11, 1e12), -rng.random() * 100, 0.0))


def test_cached_timestamps_are_exactly_the_formatted_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    now = 0.0
    monkeypatch.setattr(commlog.time, "time", lambda: now)
    hits = 0
    last = ""
    for now in times():
        got = clock.now()
        assert got == reference(now), now
        hits += got is last  # a hit hands back the cached string itself; formatting builds a new one
        last = got
    assert hits > 10_000  # the cache is used, not only correct


def reference_record(ex: Any, route: Any, status: int, upstream: Any, policy: LogPolicy, now: str, latency: float) -> str:
    """The partner_call line as ``AccessLog.on_finish`` built it before its fast path: the contract."""
    fields: dict[str, Any] = {
        "time": now, "level": "info", "event": "partner_call", "request_id": ex.request_id, "traceparent": ex.traceparent,
        "route": route.name, "client_id": ex.downstream.headers.get("X-Client-Id", "")[:128] or None, "cluster": route.cluster,
        "method": ex.method, "upstream_path": route.upstream_path, "attempts": ex.attempts, "status": status,
        "partner_status": ex.partner_status, "partner_code": ex.partner_code, "error_type": ex.error_type,
        "latency_ms": round(latency * 1000, 2), "token_source": ex.token_source, "token_retried": ex.token_retried,
        "breaker_state": ex.breaker_state,
    }
    if policy.redacts_any(PARTNER_CALL_FIELDS):
        fields = policy.scrub(fields)
    if policy.capture_bodies and upstream is not None:
        fields["response_body"] = policy.body_excerpt(upstream.body)
    return encode(fields)


LATENCIES = [0.0, 1e-9, 0.00001234, 0.000045, 0.000125, 0.000375, 0.0012345, 0.0049999, 0.005, 0.1234567, 0.9999949, 1.0, 12.3456789, 1e4]


@pytest.mark.parametrize(
    "policy",
    [LogPolicy.of(), LogPolicy.of(redact_fields=["client_id", "Request_Id"]), LogPolicy.of(capture_bodies=True, redact_fields=["secret"])],
    ids=["plain", "redacting", "capturing"],
)
def test_partner_call_records_are_the_reference_ones(monkeypatch: pytest.MonkeyPatch, policy: LogPolicy) -> None:
    from proxy import accesslog
    from tests.factories import frozen_log, texchange, tresponse

    writer, lines = frozen_log("2026-01-01T00:00:00.123Z")
    log = accesslog.AccessLog(writer, policy)
    route: Any = types.SimpleNamespace(name="get_products", cluster="tokopedia", upstream_path="/v1/products")
    hostile = 'x"}\n{"event":"forged"}\r\n\u2028\x00é' + "y" * 200
    for i, latency in enumerate(LATENCIES):
        name = ("X-Client-Id", "x-client-id", "X-CLIENT-ID")[i % 3]  # matched whatever the case
        ex = texchange(headers={"Content-Type": "application/json", name: hostile if i % 2 else "app-1"})
        ex.attempts, ex.partner_status, ex.partner_code, ex.error_type = 1 + i % 2, 200 if i % 3 else 502, None if i % 3 else "E1", None if i % 3 else "PartnerError"
        ex.token_source, ex.token_retried, ex.breaker_state = "memory", bool(i % 2), "closed"
        monkeypatch.setattr(accesslog, "perf_counter", lambda latency=latency, ex=ex: ex.started + latency)
        upstream = tresponse(body=b'{"secret": "s3cr3t", "ok": 1}')
        log.on_finish(ex, route, 200, upstream)
        want = reference_record(ex, route, 200, upstream, policy, writer.now(), (ex.started + latency) - ex.started)
        assert lines()[-1] == want
    assert len(lines()) == len(LATENCIES)
    assert all("s3cr3t" not in line for line in lines())
    assert sum('"client_id":"app-1"' in line for line in lines()) == len(LATENCIES) // 2 or policy.redact >= {"client_id"}

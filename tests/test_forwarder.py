"""The forwarder alone: retries, breaker, failure kinds and the header gate, against a FAKE transport (no network)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from multidict import CIMultiDict
from yarl import URL

from proxy.config.models import BreakerConfig, ClusterConfig, RetryConfig
from proxy.errors import CircuitOpen, ClusterOverflow, OutcomeUnknown, UpstreamError, UpstreamProtocolError, UpstreamTimeout, UpstreamUnreachable
from proxy.exchange import Exchange, UpstreamResponse
from proxy.metrics import Metrics
from proxy.upstream.breaker import BreakerGuard
from proxy.upstream.cluster import Cluster
from proxy.upstream.forwarder import Forwarder
from proxy.upstream.http11 import _Connection
from proxy.upstream.transport import Event, Phase, UpstreamAnswer, UpstreamRequest, wire_error
from tests.factories import texchange
from tests.transports import KeepTransport

Step = Callable[[UpstreamRequest], UpstreamAnswer]


class FakeTransport:
    """Plays one scripted step per send: an answer, or an exception to raise."""

    def __init__(self, *steps: UpstreamAnswer | UpstreamError) -> None:
        self.steps = list(steps)
        self.sent: list[UpstreamRequest] = []
        self.closed = False

    async def send(self, request: UpstreamRequest, *, timeout: float) -> UpstreamAnswer:
        self.sent.append(request)
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if isinstance(step, UpstreamError):
            raise step
        return step

    async def close(self) -> None:
        self.closed = True


def ok(status: int = 200, content_type: str = "application/json", **headers: str) -> UpstreamAnswer:
    return UpstreamAnswer(status, [("Content-Type", content_type), *headers.items()], b'{"data":[]}')


def forwarder(transport: FakeTransport, *, attempts: int = 3, fail_max: int = 5, **limits: Any) -> tuple[Forwarder, Cluster]:
    config = ClusterConfig(
        name="p", base_url="http://127.0.0.1:1/api", credentials=None, errors="p", client="http11",
        circuit_breaker=BreakerConfig(fail_max=fail_max, reset_timeout=30.0),
        retry=RetryConfig(attempts=attempts, backoff_base=0.001, backoff_max=0.001, budget_min_per_second=100.0),
        **limits,
    )
    metrics = Metrics()
    cluster = Cluster(config, metrics, BreakerGuard("p", config.circuit_breaker, metrics))
    cluster.transport = transport  # type: ignore[assignment]
    return Forwarder(cluster, URL("http://127.0.0.1:1/api/v2/x")), cluster


def exchange(method: str = "GET") -> Exchange:
    ex = texchange(method, "/v1/x", headers={})
    ex.upstream_headers = CIMultiDict({"Authorization": "Bearer t"})
    return ex


async def test_an_idempotent_failure_is_retried_and_the_request_is_built_once() -> None:
    transport = FakeTransport(UpstreamUnreachable("stale"), ok())
    fwd, _ = forwarder(transport)
    ex = exchange()
    response = await fwd(ex)
    assert response.status == 200 and ex.attempts == 2
    assert transport.sent[0] is transport.sent[1]
    assert transport.sent[0].target == "/api/v2/x" and ("Authorization", "Bearer t") in transport.sent[0].headers


@pytest.mark.parametrize("event", list(Event))
@pytest.mark.parametrize("phase", [Phase.SENT, Phase.ANSWERING])
async def test_a_post_is_never_retried(event: Event, phase: Phase) -> None:
    transport = FakeTransport(wire_error(phase, event, "POST", "x"), ok())
    fwd, _ = forwarder(transport, attempts=3)
    ex = exchange("POST")
    with pytest.raises(OutcomeUnknown):
        await fwd(ex)
    assert len(transport.sent) == 1 and ex.attempts == 1


async def test_a_post_5xx_is_not_retried_either() -> None:
    transport = FakeTransport(ok(500), ok())
    fwd, _ = forwarder(transport)
    assert (await fwd(exchange("POST"))).status == 500
    assert len(transport.sent) == 1


async def test_outcome_unknown_counts_toward_the_breaker_by_its_wire_kind() -> None:
    transport = FakeTransport(wire_error(Phase.SENT, Event.TIMEOUT, "POST", "hang"))
    fwd, cluster = forwarder(transport, fail_max=2)
    for _ in range(2):
        with pytest.raises(OutcomeUnknown):
            await fwd(exchange("POST"))
    assert cluster.breaker.state == "open"


async def test_timeouts_are_not_retried_by_default_and_count_as_timeout() -> None:
    transport = FakeTransport(UpstreamTimeout("slow"), ok())
    fwd, _ = forwarder(transport)
    with pytest.raises(UpstreamTimeout):
        await fwd(exchange())
    assert len(transport.sent) == 1  # retry.on defaults to connect_failure and 5xx


@pytest.mark.parametrize("value", ["text/plain\x01", "a\x00", "a\rb", "a\nb", "a\x7f", "a\x1f"])
@pytest.mark.parametrize("method,expected", [("GET", UpstreamProtocolError), ("POST", OutcomeUnknown)])
async def test_a_header_value_the_app_would_refuse_is_refused(value: str, method: str, expected: type[UpstreamError]) -> None:
    fwd, _ = forwarder(FakeTransport(ok(content_type=value)), attempts=0)
    with pytest.raises(expected):
        await fwd(exchange(method))


async def test_htab_and_obs_text_pass() -> None:
    fwd, _ = forwarder(FakeTransport(ok(content_type="text/plain;\tcharset=\xe9")))
    assert (await fwd(exchange())).content_type == "text/plain;\tcharset=\xe9"


async def test_max_requests_refuses_at_once() -> None:
    fwd, cluster = forwarder(FakeTransport(ok()), max_requests=1)
    cluster.enter()  # one request already in the cluster
    with pytest.raises(ClusterOverflow) as info:
        await fwd(exchange())
    assert info.value.threshold == "max_requests" and info.value.headers["Retry-After"] == "1"


def pooled(cluster: Cluster) -> _Connection:
    """One idle connection in the cluster's http11 pool, as a first request would leave it."""
    pool = cluster.pool
    assert pool is not None
    _, cork = pool._loop_and_cork()
    conn = _Connection(cluster.config.max_response_bytes, cork)
    conn.connection_made(KeepTransport())
    pool._idle.append(conn)
    return conn


async def test_the_callback_path_takes_one_request_and_one_slot_and_frees_both() -> None:
    """``Forwarder.start`` counts the request in and takes its connection slot without checking
    again (``can_start_now`` just did): both must be taken once and given back once, whether the
    partner answers or the breaker refuses the attempt."""
    fwd, cluster = forwarder(FakeTransport(ok()), max_requests=1, max_connections=1)
    limits = cluster.limits
    conn = pooled(cluster)
    outcomes: list[tuple[UpstreamResponse | None, BaseException | None]] = []
    assert fwd.can_start_now()
    fwd.start(exchange(), lambda response, error: outcomes.append((response, error)))
    assert (limits.requests, limits.active) == (1, 1)
    assert not fwd.can_start_now(), "the one request and the one slot are taken"
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
    assert len(outcomes) == 1 and outcomes[0][0] is not None and outcomes[0][0].status == 200
    assert (limits.requests, limits.active) == (0, 0)

    breaker = cluster.breaker  # opened for real (a compiled class: its admit cannot be patched)
    for _ in range(cluster.config.circuit_breaker.fail_max):
        breaker.record(False, cluster.config.circuit_breaker.failures[0])
    assert breaker.state == "open"
    assert fwd.can_start_now()
    with pytest.raises(CircuitOpen):
        fwd.start(exchange(), lambda response, error: outcomes.append((response, error)))
    assert (limits.requests, limits.active) == (0, 0) and len(outcomes) == 1
    assert fwd.can_start_now(), "the refused attempt gave its slot back"

"""Hot metric children (``proxy.metrics.HotCounter`` / ``HotHistogram``): the per-request series count
into plain numbers and are folded into prometheus-client at collection. The exposition must be
exactly what prometheus-client alone would show, at every collection, in one process and (through
the periodic and the final flush) with ``serve --workers N``."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry, generate_latest, multiprocess

from proxy.metrics import HotCounter, HotHistogram, Metrics
from tests.helpers import ROOT, make_rig, sandbox_app, shipped_config
from tests.process import Sidecar, get_products, metric_value

# Every kind of value: exact bucket bounds (le is <=), just above them, 0, negative, below the
# first bound, between bounds, the last finite bound, beyond it.
VALUES = [0.0, -1.0, 0.00001, 0.00005, 0.0000500001, 0.0001, 0.0003, 0.001, 0.0024999, 0.0025, 0.004,
          0.05, 0.25, 0.2500001, 1.0, 2.5, 9.99, 10.0, 29.9, 30.0, 30.0000001, 1e6]


def series(metrics: Metrics, *names: str) -> list[str]:
    """The exposition lines of these families, ``_created`` left out (a timestamp of the child)."""
    text = metrics.exposition().decode()
    return [
        line for line in text.splitlines()
        if line.startswith(names) and "_created" not in line.split(" ", 1)[0]
    ]


def hot_and_plain() -> tuple[Metrics, Metrics]:
    return Metrics(CollectorRegistry()), Metrics(CollectorRegistry())


def test_exposition_is_prometheus_clients_own_bucket_sum_count_total() -> None:
    hot, plain = hot_and_plain()
    counter = hot.hot_counter(hot.requests, "get_products", "200")
    hist = hot.hot_histogram(hot.request_duration, "get_products")
    upstream = hot.hot_histogram(hot.upstream_duration, "tokopedia", "200")
    for round_ in range(3):  # a collection between rounds: later flushes add only what is new
        for v in VALUES:
            counter.inc()
            hist.observe(v)
            upstream.observe(v)
            plain.requests.labels("get_products", "200").inc()
            plain.request_duration.labels("get_products").observe(v)
            plain.upstream_duration.labels("tokopedia", "200").observe(v)
        names = ("partner_proxy_requests_total", "# HELP partner_proxy_request", "# TYPE partner_proxy_request",
                 "partner_proxy_request_duration_seconds", "partner_proxy_upstream_request_duration_seconds")
        got, want = series(hot, *names), series(plain, *names)
        assert got == want  # bit-identical values, _sum included
        n = (round_ + 1) * len(VALUES)
        assert f'partner_proxy_requests_total{{route="get_products",status="200"}} {float(n)}' in got
        assert f'partner_proxy_request_duration_seconds_count{{route="get_products"}} {float(n)}' in got
        # 0, -1, 0.00001 and 0.00005 itself are <= the first bound
        assert f'partner_proxy_request_duration_seconds_bucket{{le="5e-05",route="get_products"}} {float(4 * (round_ + 1))}' in got


def test_request_metrics_observer_counts_what_prometheus_client_would(monkeypatch: pytest.MonkeyPatch) -> None:
    """``RequestMetrics.on_finish`` updates the hot children inline (no inc/observe call): the
    exposition must still be prometheus-client's own, per (route, status) and for unmatched ones."""
    import types

    from proxy import request_metrics
    from proxy.request_metrics import UNMATCHED, RequestMetrics

    hot, plain = hot_and_plain()
    observer = RequestMetrics(hot)
    clock = [0.0]
    monkeypatch.setattr(request_metrics, "perf_counter", lambda: clock[0])
    routes: list[Any] = [types.SimpleNamespace(name="get_products"), types.SimpleNamespace(name="create_order"), None]
    ex: Any = types.SimpleNamespace(started=100.0)
    for round_ in range(3):  # a collection between rounds: later flushes add only what is new
        for i, v in enumerate(VALUES):
            route, status = routes[i % 3], (200, 502, 404)[(i + round_) % 3]
            clock[0] = ex.started + v
            observer.on_finish(ex, route, status, None)
            name = route.name if route is not None else UNMATCHED
            plain.requests.labels(name, str(status)).inc()
            plain.request_duration.labels(name).observe(clock[0] - ex.started)
        names = ("partner_proxy_requests_total", "partner_proxy_request_duration_seconds")
        assert series(hot, *names) == series(plain, *names)
    assert hot.registry.get_sample_value("partner_proxy_requests_total", {"route": UNMATCHED, "status": "404"})


def test_a_collection_flushes_the_hot_children_no_explicit_flush_needed() -> None:
    """Fails if the flush in collect() goes: nothing here calls flush()."""
    m = Metrics(CollectorRegistry())
    counter = m.hot_counter(m.token_lookups, "tokopedia", "memory")
    hist = m.hot_histogram(m.upstream_duration, "tokopedia", "200")
    for _ in range(7):
        counter.inc()
        hist.observe(0.002)
    sample = m.registry.get_sample_value
    assert sample("partner_proxy_token_cache_lookups_total", {"provider": "tokopedia", "layer": "memory"}) == 7
    assert sample("partner_proxy_upstream_request_duration_seconds_count", {"cluster": "tokopedia", "status": "200"}) == 7
    assert sample("partner_proxy_upstream_request_duration_seconds_bucket", {"cluster": "tokopedia", "status": "200", "le": "0.001"}) == 0
    assert sample("partner_proxy_upstream_request_duration_seconds_bucket", {"cluster": "tokopedia", "status": "200", "le": "0.0025"}) == 7
    assert sample("partner_proxy_upstream_request_duration_seconds_sum", {"cluster": "tokopedia", "status": "200"}) == pytest.approx(0.014)
    text = generate_latest(m.registry).decode()  # what /metrics serves in one process
    assert 'partner_proxy_token_cache_lookups_total{layer="memory",provider="tokopedia"} 7.0' in text
    counter.inc(3)
    assert sample("partner_proxy_token_cache_lookups_total", {"provider": "tokopedia", "layer": "memory"}) == 10  # not 17
    # A collection of one metric alone flushes too (a restricted registry, a direct collect()).
    counter.inc()
    [family] = m.token_lookups.collect()
    assert [s.value for s in family.samples if s.name.endswith("_total") and s.labels["layer"] == "memory"] == [11]


def test_hot_and_direct_updates_of_one_child_add_up() -> None:
    """The token provider's memory series gets both: hot incs per request, a plain inc on a fetch."""
    m = Metrics(CollectorRegistry())
    hot = m.hot_counter(m.token_lookups, "p", "memory")
    hot.inc()
    m.token_lookups.labels("p", "memory").inc()
    hot.inc()
    assert m.registry.get_sample_value("partner_proxy_token_cache_lookups_total", {"provider": "p", "layer": "memory"}) == 3


def test_factories_bind_once_per_metric_and_labels_and_refuse_foreign_metrics() -> None:
    m = Metrics(CollectorRegistry())
    c = m.hot_counter(m.requests, "r", 200)
    assert m.hot_counter(m.requests, "r", "200") is c  # labels keyed as prometheus-client keys them
    assert m.hot_counter(m.requests, "r", "404") is not c
    assert isinstance(c, HotCounter) and isinstance(m.hot_histogram(m.request_duration, "r"), HotHistogram)
    other = Metrics(CollectorRegistry())
    assert m.hot_counter(other.requests, "r", "200") is not c  # the key is the metric object itself
    with pytest.raises(TypeError):
        m.hot_counter(m.request_duration, "r")  # type: ignore[arg-type]  # a histogram
    with pytest.raises(TypeError):
        m.hot_histogram(m.breaker_state, "c", "open")  # type: ignore[arg-type]  # a gauge: no flushing collect
    from prometheus_client import Counter

    with pytest.raises(TypeError):
        m.hot_counter(Counter("foreign", "not ours", ["a"], registry=None), "x")  # type: ignore[arg-type]


def test_non_finite_observations_read_as_prometheus_client_reads_them() -> None:
    hot, plain = hot_and_plain()
    h = hot.hot_histogram(hot.request_duration, "r")
    for v in (0.1, math.inf):
        h.observe(v)
        plain.request_duration.labels("r").observe(v)
    names = ("partner_proxy_request_duration_seconds",)
    assert series(hot, *names) == series(plain, *names)
    h.observe(0.2)  # a later flush must not turn +Inf - +Inf into NaN
    plain.request_duration.labels("r").observe(0.2)
    assert series(hot, *names) == series(plain, *names)
    assert 'partner_proxy_request_duration_seconds_sum{route="r"} +Inf' in series(hot, *names)


def test_a_collection_in_another_thread_while_the_loop_counts_loses_and_doubles_nothing() -> None:
    """The event loop is the only writer; a flush may still come from elsewhere (a thread calling
    generate_latest). Each flush adds what changed since the previous one, so nothing is counted
    twice or lost, with two collecting threads at once too."""
    m = Metrics(CollectorRegistry())
    counter = m.hot_counter(m.requests, "r", "200")
    hist = m.hot_histogram(m.request_duration, "r")
    stop = threading.Event()

    def collect() -> None:
        while not stop.is_set():
            generate_latest(m.registry)

    threads = [threading.Thread(target=collect) for _ in range(2)]
    for t in threads:
        t.start()
    n = 100_000
    try:
        for i in range(n):
            counter.inc()
            hist.observe(0.0003 if i % 2 else 0.003)
    finally:
        stop.set()
        for t in threads:
            t.join()
    sample = m.registry.get_sample_value
    assert sample("partner_proxy_requests_total", {"route": "r", "status": "200"}) == n
    assert sample("partner_proxy_request_duration_seconds_count", {"route": "r"}) == n
    assert sample("partner_proxy_request_duration_seconds_bucket", {"route": "r", "le": "0.0005"}) == n // 2
    assert sample("partner_proxy_request_duration_seconds_sum", {"route": "r"}) == pytest.approx(n // 2 * 0.0033)


# --- through the sidecar ---------------------------------------------------------------------------


@pytest.fixture
async def sandbox(aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(sandbox_app())


async def test_admin_metrics_after_requests_show_every_hot_series_exactly(aiohttp_client: Any, sandbox: TestServer) -> None:
    rig = await make_rig(aiohttp_client, sandbox, shipped_config(str(sandbox.make_url("")).rstrip("/")))
    n = 5
    for _ in range(n):
        assert (await rig.get()).status == 200
    text = await rig.metrics()
    assert metric_value(text, 'partner_proxy_requests_total{route="get_products",status="200"}') == n
    assert metric_value(text, 'partner_proxy_request_duration_seconds_count{route="get_products"}') == n
    assert metric_value(text, 'partner_proxy_request_duration_seconds_bucket{le="+Inf",route="get_products"}') == n
    assert metric_value(text, 'partner_proxy_upstream_request_duration_seconds_count{cluster="tokopedia",status="200"}') == n
    lookups = {layer: metric_value(text, f'partner_proxy_token_cache_lookups_total{{layer="{layer}",provider="tokopedia"}}')
               for layer in ("memory", "redis", "miss")}
    assert lookups == {"memory": n - 1, "redis": 0, "miss": 1}  # the first request fetched the token
    assert metric_value(text, 'partner_proxy_request_duration_seconds_sum{route="get_products"}') > 0


# --- multiprocess mode (serve --workers N) ---------------------------------------------------------

_WORKER = """
import json, sys
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from proxy.metrics import Metrics

def files():  # what a scrape in another worker reads
    r = CollectorRegistry()
    multiprocess.MultiProcessCollector(r)
    return r.get_sample_value("partner_proxy_requests_total", {"route": "r", "status": "200"}) or 0.0

m = Metrics()
assert m.multiprocess
c = m.hot_counter(m.requests, "r", "200")
h = m.hot_histogram(m.request_duration, "r")
for _ in range(5):
    c.inc()
    h.observe(0.001)
out = {"files_before_flush": files()}
text = m.exposition().decode()  # this worker's own scrape flushes first
out["own_scrape"] = [l for l in text.splitlines() if l.startswith('partner_proxy_requests_total{')]
c.inc(2)
out["files_after_scrape"] = files()
m.refresh_gauges()  # what Server._refresh_gauges runs once a second
out["files_after_tick"] = files()
print(json.dumps(out))
"""


def test_multiprocess_hot_counts_reach_the_files_at_a_scrape_and_each_tick(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", _WORKER], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["files_before_flush"] == 0  # why the periodic flush exists
    assert out["own_scrape"] == ['partner_proxy_requests_total{route="r",status="200"} 5.0']
    assert out["files_after_scrape"] == 5
    assert out["files_after_tick"] == 7
    registry = CollectorRegistry()  # and after the process is gone
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
    assert registry.get_sample_value("partner_proxy_request_duration_seconds_count", {"route": "r"}) == 5


def breaker_pids(text: str) -> set[str]:
    return {line.split('pid="')[1].split('"')[0] for line in text.splitlines() if line.startswith("partner_proxy_circuit_breaker_state{")}


@pytest.mark.process
@pytest.mark.timeout(120)
async def test_workers_flush_their_last_counts_when_they_stop(sandbox: TestServer, tmp_path: Path) -> None:
    """Requests answered just before SIGTERM (no 1 s tick since) are in the files the workers leave."""
    import aiohttp

    metrics_dir = tmp_path / "prom"
    sidecar = Sidecar(str(sandbox.make_url("")).rstrip("/"), args=("--workers", "2"), PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    try:
        await sidecar.start()
        n = 40
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
            # readyz answered from one worker; a SIGTERM before the other has its handlers kills it
            deadline = asyncio.get_running_loop().time() + 20
            while len(breaker_pids(await sidecar.metrics(fresh))) < 2:
                assert asyncio.get_running_loop().time() < deadline, "the second worker did not start"
                await asyncio.sleep(0.1)
            for _ in range(n):
                status, _ = await get_products(fresh, sidecar)
                assert status == 200
        assert await sidecar.stop() == 0
    finally:
        sidecar.kill()
        shutil.rmtree(sidecar.dir, ignore_errors=True)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))
    assert registry.get_sample_value("partner_proxy_requests_total", {"route": "get_products", "status": "200"}) == n
    assert registry.get_sample_value("partner_proxy_request_duration_seconds_count", {"route": "get_products"}) == n
    assert registry.get_sample_value("partner_proxy_upstream_request_duration_seconds_count", {"cluster": "tokopedia", "status": "200"}) == n

"""bench/fixed_rate.py against two real loopback servers: the target and, paired, the baseline it
is compared with, loaded in the same window and interleaved."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from bench import fixed_rate


def _app(name: str, seen: list[tuple[str, str, float]]) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        import time

        seen.append((name, request.headers.get("X-Who", ""), time.perf_counter()))
        return web.Response(text=name, status=200 if name == "baseline" or "fail" not in request.path else 503)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def _servers(seen: list[tuple[str, str, float]]) -> tuple[TestServer, TestServer]:
    target, baseline = TestServer(_app("target", seen), host="127.0.0.1"), TestServer(_app("baseline", seen), host="127.0.0.1")
    await target.start_server()
    await baseline.start_server()
    return target, baseline


async def test_the_baseline_is_loaded_at_the_same_rate_in_the_same_window_interleaved() -> None:
    seen: list[tuple[str, str, float]] = []
    target, baseline = await _servers(seen)
    try:
        out: dict[str, Any] = await fixed_rate.load(
            str(target.make_url("/v1/products")), {"X-Who": "app"}, rate=100, duration=0.5, warmup=2, timeout=5,
            baseline=str(baseline.make_url("/v2/product-list")), baseline_headers={"X-Who": "direct"},
        )
    finally:
        await target.close()
        await baseline.close()
    base = out["baseline"]
    assert out["sent"] == base["sent"] == 50
    assert out["ok"] == base["ok"] == 50 and out["errors"] == base["errors"] == {}
    assert out["p99_ms"] is not None and base["p99_ms"] is not None
    measured = [s for s in seen[4:]]  # after each side's two warm-up requests
    assert {(n, who) for n, who, _ in measured} == {("target", "app"), ("baseline", "direct")}
    # interleaved: each baseline request is sent half an interval (5 ms here) after the target's
    first_target, first_baseline = (min(t for n, _, t in measured if n == name) for name in ("target", "baseline"))
    assert first_target < first_baseline


async def test_without_a_baseline_only_the_target_is_loaded_and_its_failures_are_counted() -> None:
    seen: list[tuple[str, str, float]] = []
    target, baseline = await _servers(seen)
    try:
        out: dict[str, Any] = await fixed_rate.load(str(target.make_url("/fail")), {}, rate=100, duration=0.2, warmup=0, timeout=5)
    finally:
        await target.close()
        await baseline.close()
    assert "baseline" not in out
    assert out["sent"] == 20 and out["non_2xx"] == 20 and out["statuses"] == {"503": 20} and "503" in out["samples"]
    assert {n for n, _, _ in seen} == {"target"}

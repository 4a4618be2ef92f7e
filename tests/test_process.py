"""Process level: real `partner-proxy serve` subprocesses, the sandbox and Redis on loopback.

Covers the lifecycle (readiness, drain, reload) and the token lifecycle across replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Awaitable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from proxy.sandbox import SANDBOX_STATE, SandboxState
from tests.helpers import ERRORS, ROOT, patched_routes, sandbox_app
from tests.process import Sidecar, get_products, metric_value
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.process, pytest.mark.timeout(120)]

StartFn = Callable[..., Awaitable[Sidecar]]


@pytest.fixture
async def sandbox(aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(sandbox_app())


def partner(sandbox: TestServer) -> SandboxState:
    return sandbox.app[SANDBOX_STATE]


def base(sandbox: TestServer) -> str:
    return str(sandbox.make_url("")).rstrip("/")


@pytest.fixture
async def start(sandbox: TestServer) -> AsyncIterator[StartFn]:
    started: list[Sidecar] = []

    async def _start(redis_url: str = "", **kw: Any) -> Sidecar:
        sidecar = Sidecar(base(sandbox), redis_url, **kw)
        started.append(sidecar)
        return await sidecar.start()

    yield _start
    for s in started:
        try:
            await s.stop()
        finally:
            s.kill()
            shutil.rmtree(s.dir, ignore_errors=True)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=400)) as s:
        yield s


# --- lifecycle --------------------------------------------------------------------------------------

async def test_serve_end_to_end_and_clean_exit(start: StartFn, session: aiohttp.ClientSession, sandbox: TestServer) -> None:
    sidecar = await start()
    status, body = await get_products(session, sidecar)
    assert status == 200 and body is not None and body["data"]
    status, body = await get_products(session, sidecar, "?product_code=error-S03", **{"Accept-Language": "id"})
    assert status == 503 and body["error"]["message"] == "Produk sedang ditutup"  # type: ignore[index]
    text = await sidecar.metrics(session)
    assert metric_value(text, 'partner_proxy_requests_total{route="get_products",status="200"}') == 1
    sidecar.signal(signal.SIGTERM)
    sidecar.signal(signal.SIGTERM)
    assert await sidecar.wait() == 0
    # the communication log: one JSON line per partner call, on stdout
    lines = [line for line in sidecar.stdout().splitlines() if '"partner_call"' in line]
    assert len(lines) == 2


async def test_sigterm_drains_in_flight_requests(start: StartFn, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    routes = patched_routes(tmp_path, {"drain_timeout: 5s": "drain_timeout: 1500ms"})
    sidecar = await start(routes=routes)
    assert (await get_products(session, sidecar))[0] == 200  # token cached
    inflight = [asyncio.create_task(get_products(session, sidecar, "?product_code=delay-1000")) for _ in range(20)]
    await asyncio.sleep(0.3)
    sidecar.signal(signal.SIGTERM)
    await asyncio.sleep(0.2)
    async with session.get(sidecar.admin + "/readyz") as r:
        assert r.status == 503
        assert (await r.json())["draining"] is True
    # the data listener still serves during the drain (the app may call while the pod terminates)
    assert (await get_products(session, sidecar))[0] == 200
    results = await asyncio.gather(*inflight)
    assert [s for s, _ in results] == [200] * 20
    assert await sidecar.wait() == 0


async def test_invalid_config_refuses_to_start(tmp_path: Path, sandbox: TestServer) -> None:
    routes = patched_routes(tmp_path, {"timeout: 10s": "timeout: forever"})
    sidecar = Sidecar(base(sandbox), routes=routes)
    with pytest.raises(RuntimeError, match="exited 1"):
        await sidecar.start()
    assert f"{routes}:" in sidecar.stderr() and "not a duration" in sidecar.stderr()
    shutil.rmtree(sidecar.dir, ignore_errors=True)


# --- hot reload ---------------------------------------------------------------------------------------

X42_RULE = """    - codes: [X42]
      type: LimitExceededException
      code: LIMIT_EXCEEDED
      status: 429
      message: {en: "Limit exceeded.", id: "Batas terlampaui."}
"""


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 8.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.1)
    return False


async def test_errors_yaml_edit_is_hot_reloaded_and_a_broken_edit_is_rejected(start: StartFn, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    errors = tmp_path / "errors.yaml"
    shutil.copy(ERRORS, errors)
    routes = patched_routes(tmp_path, {})
    sidecar = await start(routes=routes, errors=errors)
    status, body = await get_products(session, sidecar, "?product_code=error-X42")
    assert status == 502 and body["error"]["type"] == "PartnerError"  # type: ignore[index]

    original = errors.read_text()
    atomic_write(errors, original.replace("  rules:\n", "  rules:\n" + X42_RULE, 1))

    async def x42_mapped() -> bool:
        s, b = await get_products(session, sidecar, "?product_code=error-X42")
        return s == 429 and b["error"]["type"] == "LimitExceededException"  # type: ignore[index]

    assert await eventually(x42_mapped)
    text = await sidecar.metrics(session)
    assert metric_value(text, 'partner_proxy_config_reloads_total{result="success"}') >= 1

    atomic_write(errors, original.replace("      status: 422", "      status: fourtwentytwo"))

    async def failure_counted() -> bool:
        return metric_value(await sidecar.metrics(session), 'partner_proxy_config_reloads_total{result="failure"}') >= 1

    assert await eventually(failure_counted)
    assert await x42_mapped()  # the running config stayed
    assert "fourtwentytwo" in sidecar.stderr() or "not a whole number" in sidecar.stderr()

    before = metric_value(await sidecar.metrics(session), 'partner_proxy_config_reloads_total{result="failure"}')
    sidecar.signal(signal.SIGHUP)

    async def hup_counted() -> bool:
        return metric_value(await sidecar.metrics(session), 'partner_proxy_config_reloads_total{result="failure"}') > before

    assert await eventually(hup_counted)  # SIGHUP always re-reads (still broken, so a failure)
    atomic_write(errors, original)
    assert await eventually(lambda: _x42_default(session, sidecar))


async def _x42_default(session: aiohttp.ClientSession, sidecar: Sidecar) -> bool:
    s, _ = await get_products(session, sidecar, "?product_code=error-X42")
    return s == 502


async def test_reload_keeps_the_token_and_configmap_symlink_swap_is_seen(start: StartFn, session: aiohttp.ClientSession, sandbox: TestServer, tmp_path: Path) -> None:
    # A ConfigMap volume: files are symlinks into a ..data dir that is swapped atomically.
    (tmp_path / "v1").mkdir()
    shutil.copy(ERRORS, tmp_path / "v1" / "errors.yaml")
    routes_text = patched_routes(tmp_path / "v1", {}).read_text()
    os.symlink("v1", tmp_path / "..data")
    os.symlink("..data/errors.yaml", tmp_path / "errors.yaml")
    os.symlink("..data/routes.yaml", tmp_path / "routes.yaml")
    sidecar = await start(routes=tmp_path / "routes.yaml", errors=tmp_path / "errors.yaml")
    assert (await get_products(session, sidecar))[0] == 200
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "routes.yaml").write_text(routes_text)
    (tmp_path / "v2" / "errors.yaml").write_text(ERRORS.read_text().replace("  rules:\n", "  rules:\n" + X42_RULE, 1))
    os.symlink("v2", tmp_path / "..data_tmp")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")

    async def x42_mapped() -> bool:
        s, _ = await get_products(session, sidecar, "?product_code=error-X42")
        return s == 429

    assert await eventually(x42_mapped)
    assert partner(sandbox).token_requests == 1  # the reload kept the provider and its token


# --- tokens across replicas ---------------------------------------------------------------------------

async def test_three_cold_replicas_fetch_one_token(start: StartFn, session: aiohttp.ClientSession, sandbox: TestServer, redis_url: str) -> None:
    sidecars = await asyncio.gather(*(start(redis_url) for _ in range(3)))
    results = await asyncio.gather(*(get_products(session, s) for s in sidecars for _ in range(100)))
    assert [s for s, _ in results] == [200] * 300
    assert partner(sandbox).token_requests == 1
    late = await start(redis_url)  # started after warm-up: takes the token from Redis
    assert (await get_products(session, late))[0] == 200
    assert partner(sandbox).token_requests == 1
    text = await late.metrics(session)
    assert metric_value(text, 'partner_proxy_token_cache_lookups_total{layer="redis"') >= 1


async def test_memory_hits_make_no_redis_commands(start: StartFn, session: aiohttp.ClientSession, redis_url: str) -> None:
    sidecar = await start(redis_url)
    assert (await get_products(session, sidecar))[0] == 200
    r = aioredis.from_url(redis_url)
    try:
        await r.config_resetstat()
        for _ in range(50):
            assert (await get_products(session, sidecar))[0] == 200
        stats = await r.info("commandstats")
    finally:
        await r.aclose()
    # only our own INFO call shows up: the 50 requests made no Redis command
    assert set(stats) <= {"cmdstat_info", "cmdstat_config|resetstat"}, stats


async def test_redis_killed_and_restarted_during_traffic(start: StartFn, session: aiohttp.ClientSession, sandbox: TestServer, redis_server: RedisServer, redis_url: str) -> None:
    sidecars = [await start(redis_url), await start(redis_url)]
    stop = asyncio.Event()
    statuses: list[int] = []

    async def traffic() -> None:
        while not stop.is_set():
            for s in sidecars:
                statuses.append((await get_products(session, s))[0])
            await asyncio.sleep(0.01)

    task = asyncio.create_task(traffic())
    await asyncio.sleep(0.5)
    redis_server.stop()
    await asyncio.sleep(1.0)
    partner(sandbox).revoke_all()  # forces a renew while Redis is down: fetch directly, still no failure
    await asyncio.sleep(1.0)
    redis_server.start()
    await asyncio.sleep(1.0)
    partner(sandbox).revoke_all()  # the renew after Redis is back stores the new token in Redis again
    await asyncio.sleep(1.0)
    stop.set()
    await task
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    r = aioredis.from_url(redis_url)
    try:
        stored = await r.get("partner-proxy:token:tokopedia")
    finally:
        await r.aclose()
    assert stored is not None and partner(sandbox).tokens_issued[-1].encode() in stored
    text = await sidecars[0].metrics(session)
    assert metric_value(text, "partner_proxy_redis_errors_total") >= 1


async def test_token_endpoint_down_serves_until_expiry_then_fails_fast(aiohttp_server: Any, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    sandbox = await aiohttp_server(sandbox_app(token_ttl=3.0))
    routes = patched_routes(tmp_path, {"refresh_before: 10m": "refresh_before: 1s"})
    sidecar = await Sidecar(base(sandbox), routes=routes).start()
    try:
        assert (await get_products(session, sidecar))[0] == 200
        partner(sandbox).set_token_mode("500")
        before = partner(sandbox).token_requests
        statuses = []
        loop = asyncio.get_running_loop()
        end = loop.time() + 5.0
        while loop.time() < end:
            statuses.append((await get_products(session, sidecar))[0])
            await asyncio.sleep(0.02)
        ok = statuses.index(503) if 503 in statuses else len(statuses)
        assert ok > 0 and set(statuses[:ok]) == {200}  # served while the token was valid
        assert set(statuses[ok:]) == {503}  # then AuthenticationFailure, never a 403 from an expired token
        status, body = await get_products(session, sidecar)
        assert status == 503 and body["error"]["type"] == "AuthenticationFailure"  # type: ignore[index]
        calls = partner(sandbox).token_requests - before
        assert 1 <= calls <= 8, calls  # backoff, not one call per request (~200 requests were made)
        text = await sidecar.metrics(session)
        assert metric_value(text, 'partner_proxy_token_fetches_total{provider="tokopedia",result="http_error"}') == calls
        assert metric_value(text, 'partner_proxy_partner_errors_total{cluster="tokopedia",partner_code="P08"') == 0
    finally:
        await sidecar.stop()
        shutil.rmtree(sidecar.dir, ignore_errors=True)


async def test_short_token_lifetimes_under_steady_traffic(aiohttp_server: Any, session: aiohttp.ClientSession, redis_url: str, tmp_path: Path) -> None:
    sandbox = await aiohttp_server(sandbox_app(token_ttl=2.0))
    routes = patched_routes(tmp_path, {"refresh_before: 10m": "refresh_before: 1s"})
    sidecars = [await Sidecar(base(sandbox), redis_url, routes=routes).start() for _ in range(3)]
    try:
        statuses: list[int] = []
        loop = asyncio.get_running_loop()
        end = loop.time() + 6.0
        while loop.time() < end:
            for s in sidecars:
                statuses.append((await get_products(session, s))[0])
            await asyncio.sleep(0.01)
        assert set(statuses) == {200}
        # the sandbox answers 403 P08 to any expired token: none was ever sent
        for s in sidecars:
            text = await s.metrics(session)
            assert metric_value(text, 'partner_proxy_partner_errors_total{cluster="tokopedia",partner_code="P08"') == 0
        fetches = partner(sandbox).token_requests
        assert 3 <= fetches <= 8, fetches  # about one per 2 s lifetime over ~6 s, across all replicas
    finally:
        for s in sidecars:
            await s.stop()
            shutil.rmtree(s.dir, ignore_errors=True)


async def test_demo_serves_sandbox_products_and_prints_curls(session: aiohttp.ClientSession) -> None:
    import subprocess
    import sys

    from tests.helpers import ROOT
    from tests.redis_server import free_port

    port, admin, sandbox_port = free_port(), free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "demo", "--port", str(port), "--admin-port", str(admin), "--sandbox-port", str(sandbox_port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        first = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
        assert b"demo is running" in first
        url = f"http://127.0.0.1:{port}/v1/products"
        async with session.get(url, headers={"Content-Type": "application/json", "X-Client-Id": "demo-app"}) as r:
            assert r.status == 200
            assert {p["id"] for p in (await r.json())["data"]} >= {"25k-xl"}
        async with session.get(url + "?product_code=error-S03", headers={"Content-Type": "application/json", "X-Client-Id": "demo-app", "Accept-Language": "id"}) as r:
            assert r.status == 503 and (await r.json())["error"]["message"] == "Produk sedang ditutup"
        # the demo wired keys on both sides: a signed checkout and a verified status work as printed
        h = {"Content-Type": "application/json", "X-Client-Id": "demo-app"}
        order = b'{"data":{"type":"order","id":"demo-order-1","attributes":{"product_code":"25k-xl","client_number":"081234567890"}}}'
        api = f"http://127.0.0.1:{port}/v1"
        async with session.post(api + "/orders", data=order, headers=h) as r:
            assert r.status == 200, await r.text()
        async with session.get(api + "/orders/demo-order-1", headers=h) as r:
            assert r.status == 200 and r.headers["Signature"], await r.text()
        async with session.post(api + "/orders", data=order, headers=h) as r:
            assert r.status == 409
    finally:
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0
    rest = proc.stdout.read().decode() if proc.stdout else ""
    assert f"curl -s -H 'Content-Type: application/json' -H 'X-Client-Id: demo-app' http://127.0.0.1:{port}/v1/products" in rest


async def test_two_workers_share_ports_metrics_and_one_token(start: StartFn, session: aiohttp.ClientSession, sandbox: TestServer, redis_url: str) -> None:
    sidecar = await start(redis_url, args=("--workers", "2"))
    # new connections per request so the kernel spreads them over both workers
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
        results = await asyncio.gather(*(get_products(fresh, sidecar) for _ in range(200)))
    assert [s for s, _ in results] == [200] * 200
    assert partner(sandbox).token_requests == 1  # shared through Redis
    # Summed over workers: the scraped worker's own counts are current, the other's are flushed to
    # its metric file once a second (proxy.metrics hot children), so they may take that long.
    served = 'partner_proxy_requests_total{route="get_products",status="200"}'
    deadline = asyncio.get_running_loop().time() + 3.0
    text = await sidecar.metrics(session)
    while metric_value(text, served) < 200 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
        text = await sidecar.metrics(session)
    assert metric_value(text, served) == 200
    pids = {line.split('pid="')[1].split('"')[0] for line in text.splitlines() if line.startswith("partner_proxy_circuit_breaker_state{")}
    assert len(pids) == 2  # one breaker per worker, each with exactly one state at 1
    for pid in pids:
        ones = [line for line in text.splitlines() if line.startswith("partner_proxy_circuit_breaker_state{") and f'pid="{pid}"' in line and line.endswith(" 1.0")]
        assert len(ones) == 1 and 'state="closed"' in ones[0]
    sidecar.signal(signal.SIGTERM)
    sidecar.signal(signal.SIGTERM)
    assert await sidecar.wait() == 0


async def test_sigterm_while_the_workers_start_is_a_clean_exit(sandbox: TestServer) -> None:
    """A pod deleted right after it started: the SIGTERM reaches workers still importing, before
    they have handlers. Nothing was in flight, so that is a clean stop (exit 0), not exit 241
    (-SIGTERM) for Kubernetes to report as a crash; and the supervisor waits for every worker."""
    sidecar = Sidecar(str(sandbox.make_url("")).rstrip("/"), args=("--workers", "2"))
    try:
        sidecar.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--config", str(sidecar.routes), "--errors", str(sidecar.errors), "--workers", "2"],
            cwd=ROOT, env=sidecar.env, stdout=sidecar.stdout_path.open("wb"), stderr=sidecar.stderr_path.open("wb"),
        )
        deadline = asyncio.get_running_loop().time() + 20
        children = Path(f"/proc/{sidecar.proc.pid}/task/{sidecar.proc.pid}/children")
        while len(children.read_text().split()) < 2:  # the workers were just spawned: still importing
            assert sidecar.proc.poll() is None, sidecar.stderr()
            assert asyncio.get_running_loop().time() < deadline, "the supervisor did not start its workers"
            await asyncio.sleep(0.01)
        sidecar.signal(signal.SIGTERM)
        assert await sidecar.wait() == 0, sidecar.stderr()
    finally:
        sidecar.kill()
        shutil.rmtree(sidecar.dir, ignore_errors=True)


# `partner-proxy serve` with one function wrapped so that it sends the process a signal first:
# a signal that arrives at exactly that point of the start-up.
SIGNAL_DURING = """
import os, signal, sys
import {module} as target
original = target.{name}
def sends_first(*args, **kwargs):
    os.kill(os.getpid(), signal.{sig})
    return original(*args, **kwargs)
target.{name} = sends_first
from proxy.cli import main
sys.exit(main())
"""


def _serve_with_signal(sidecar: Sidecar, where: str, sig: str) -> subprocess.Popen[bytes]:
    module, name = where.rsplit(".", 1)
    sidecar.proc = subprocess.Popen(
        [sys.executable, "-c", SIGNAL_DURING.format(module=module, name=name, sig=sig),
         "serve", "--config", str(sidecar.routes), "--errors", str(sidecar.errors)],
        cwd=ROOT, env=sidecar.env, stdout=sidecar.stdout_path.open("wb"), stderr=sidecar.stderr_path.open("wb"),
    )
    return sidecar.proc


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
async def test_a_stop_signal_while_the_config_is_read_is_a_clean_exit(sandbox: TestServer, sig: str) -> None:
    """One process, before its event loop exists: the signal's default action would end it with
    exit -15 (a crash to Kubernetes) or a KeyboardInterrupt traceback. Nothing is served yet, so
    it stops with exit 0 and says why."""
    sidecar = Sidecar(base(sandbox))
    try:
        _serve_with_signal(sidecar, "proxy.serve.load_config", sig)
        assert await sidecar.wait() == 0, sidecar.stderr()
        err = sidecar.stderr()
        assert f"signal {sig} while starting: stopped before serving" in err and "Traceback" not in err, err
    finally:
        sidecar.kill()
        shutil.rmtree(sidecar.dir, ignore_errors=True)


async def test_a_stop_signal_just_before_the_loop_takes_the_signals_drains_once_started(
        sandbox: TestServer, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """Inside the loop but before Server.run's handlers: remembered by the start-up handler and
    honoured as the loop's own, a drain with nothing in flight (readyz 503), then exit 0."""
    sidecar = Sidecar(base(sandbox), routes=patched_routes(tmp_path, {"drain_timeout: 5s": "drain_timeout: 1s"}))
    try:
        _serve_with_signal(sidecar, "proxy.logsetup.install_loop_handler", "SIGTERM")
        assert await sidecar.wait() == 0, sidecar.stderr()
        err = sidecar.stderr()
        assert "signal SIGTERM: draining for 1.0s" in err and "Traceback" not in err, err
    finally:
        sidecar.kill()
        shutil.rmtree(sidecar.dir, ignore_errors=True)


async def test_a_sighup_while_the_config_is_read_is_ignored(sandbox: TestServer, session: aiohttp.ClientSession) -> None:
    """SIGHUP's default action is to end the process; during start-up it is ignored instead, and
    the sidecar comes up and serves."""
    sidecar = Sidecar(base(sandbox))
    try:
        _serve_with_signal(sidecar, "proxy.serve.load_config", "SIGHUP")
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            assert sidecar.proc is not None and sidecar.proc.poll() is None, f"exited {sidecar.proc.returncode if sidecar.proc else None}: {sidecar.stderr()}"
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(sidecar.admin + "/readyz") as r:
                    if r.status == 200:
                        break
            assert asyncio.get_running_loop().time() < deadline, sidecar.stderr()
            await asyncio.sleep(0.05)
        status, _ = await get_products(session, sidecar)
        assert status == 200
        sidecar.signal(signal.SIGTERM)
        sidecar.signal(signal.SIGTERM)
        assert await sidecar.wait() == 0, sidecar.stderr()
    finally:
        sidecar.kill()
        shutil.rmtree(sidecar.dir, ignore_errors=True)


async def test_port_in_use_is_a_clear_error_not_a_traceback(sandbox: TestServer) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sidecar = Sidecar(base(sandbox), PROXY_LISTEN=f"127.0.0.1:{port}")
        with pytest.raises(RuntimeError, match="exited 1"):
            await sidecar._start(10)
    err = sidecar.stderr()
    assert "cannot listen" in err and "address already in use" in err and "Traceback" not in err
    shutil.rmtree(sidecar.dir, ignore_errors=True)

"""A reload that reports success has applied the whole config: log policy and drain timeout too.

Each test here failed before the runtime was compiled and swapped whole (the communication log and
the drain were built once at start-up while the reload was counted a success).
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.helpers import ROUTES, make_rig, patched_routes, sandbox_app, sandbox_env, shipped_config
from tests.process import Sidecar, get_products, metric_value


@pytest.fixture
async def sandbox(aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(sandbox_app())


def base(sandbox: TestServer) -> str:
    return str(sandbox.make_url("")).rstrip("/")


async def records(stream: io.StringIO, at_least: int) -> list[dict[str, Any]]:
    for _ in range(200):  # written by the log's background thread
        lines = [line for line in stream.getvalue().splitlines() if line]
        if len(lines) >= at_least:
            return [json.loads(line) for line in lines]
        await asyncio.sleep(0.01)
    raise AssertionError(f"only {stream.getvalue()!r}")


def with_log(tmp_path: Path, block: str) -> Path:
    return patched_routes(tmp_path, {"drain_timeout: 5s": f"drain_timeout: 5s\nlog: {block}"})


async def rig_and_stream(aiohttp_client: Any, sandbox: TestServer, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, io.StringIO]:
    for name, value in sandbox_env(base(sandbox)).items():  # a reload reads the process env
        monkeypatch.setenv(name, value)
    stream = io.StringIO()
    rig = await make_rig(aiohttp_client, sandbox, shipped_config(base(sandbox)), log_stream=stream)
    return rig, stream


async def test_a_reload_that_adds_a_redact_field_redacts_it_in_the_next_record(aiohttp_client: Any, sandbox: TestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rig, stream = await rig_and_stream(aiohttp_client, sandbox, monkeypatch)
    assert (await rig.get()).status == 200
    (before,) = await records(stream, 1)
    assert before["client_id"] == "app-1"
    routes = with_log(tmp_path, "{redact_fields: [client_id]}")
    assert await rig.state.reload(str(routes), str(rig.state.loaded.errors_path))
    assert (await rig.get()).status == 200
    after = (await records(stream, 2))[1]
    assert after["client_id"] == "[redacted]" and after["route"] == "get_products"


async def test_a_reload_of_log_level_applies(aiohttp_client: Any, sandbox: TestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rig, stream = await rig_and_stream(aiohttp_client, sandbox, monkeypatch)
    errors = str(rig.state.loaded.errors_path)
    assert await rig.state.reload(str(with_log(tmp_path, "{level: debug}")), errors)
    assert (await rig.get()).status == 200
    events = [r["event"] for r in await records(stream, 2)]
    assert events == ["partner_call_start", "partner_call"]  # debug adds the start record
    assert await rig.state.reload(str(with_log(tmp_path, "{level: warning}")), errors)
    assert (await rig.get()).status == 200
    await asyncio.sleep(0.1)  # past the log's flush interval: nothing more was written
    assert len(stream.getvalue().splitlines()) == 2


@pytest.mark.process
@pytest.mark.timeout(60)
async def test_a_reload_of_drain_timeout_applies_to_the_next_drain(sandbox: TestServer, tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES.read_text().replace("drain_timeout: 5s", "drain_timeout: 10m"))
    sidecar = Sidecar(base(sandbox), routes=routes)
    await sidecar.start()
    try:
        async with aiohttp.ClientSession() as session:
            assert (await get_products(session, sidecar))[0] == 200
            routes.write_text(ROUTES.read_text().replace("drain_timeout: 5s", "drain_timeout: 100ms"))
            sidecar.signal(signal.SIGHUP)
            for _ in range(200):
                if metric_value(await sidecar.metrics(session), 'partner_proxy_config_reloads_total{result="success"}') >= 1:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the reload was not counted")
        sidecar.signal(signal.SIGTERM)  # one signal: a full drain, by the reloaded timeout, not 10 minutes
        assert await sidecar.wait(timeout=30) == 0
        assert "draining for 0.1s" in sidecar.stderr()
    finally:
        sidecar.kill()
        shutil.rmtree(sidecar.dir, ignore_errors=True)

"""Every line ``serve`` writes is one JSON object: stdout (communication log) and stderr (operations).

The formatter itself is tested as a unit (tracebacks and stacks as fields, extras kept, level and
time names); then a busy ``serve`` process is driven through requests with partner faults, a
breaker that opens and notifies a dead Slack, a rejected reload, a good reload and a SIGTERM drain,
and every single line of both streams must parse.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import shutil
import signal
import threading
import warnings
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from proxy.logsetup import json_handler, loop_exception_handler, setup_logging
from tests.helpers import patched_routes, sandbox_app
from tests.otlp_receiver import closed_port_url
from tests.process import Sidecar, get_products, metric_value


def _capture() -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    logger = logging.getLogger("test.logs.unit")
    logger.handlers = [json_handler(out)]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, out


def test_records_are_json_with_tracebacks_and_extras_as_fields() -> None:
    logger, out = _capture()
    logger.info("two\nlines %s", "here", extra={"cluster": "tokopedia", "attempt": 2})
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    logger.warning("where", stack_info=True)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    first, second, third = (json.loads(line) for line in lines)
    assert list(first)[:4] == ["time", "level", "logger", "message"]
    assert first["level"] == "info" and first["logger"] == "test.logs.unit" and first["message"] == "two\nlines here"
    assert first["cluster"] == "tokopedia" and first["attempt"] == 2
    assert first["time"].endswith("+00:00")
    assert second["level"] == "error" and "ValueError: boom" in second["exc_info"] and "Traceback" in second["exc_info"]
    assert "Stack (most recent call last)" in third["stack"]


def test_warnings_threads_and_loop_errors_go_through_the_formatter() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    import sys

    hooks = (sys.excepthook, threading.excepthook, sys.unraisablehook)
    try:
        setup_logging("info", stream=out)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
        t = threading.Thread(target=lambda: 1 / 0, name="worker-x")
        t.start()
        t.join()
        loop = asyncio.new_event_loop()
        try:
            loop_exception_handler(loop, {"message": "Task exception was never retrieved", "exception": RuntimeError("lost"), "future": object()})
        finally:
            loop.close()
        sys.excepthook(KeyError, KeyError("k"), None)
    finally:
        logging.captureWarnings(False)
        sys.excepthook, threading.excepthook, sys.unraisablehook = hooks
        root.handlers, root.level = saved
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    by_logger = {r["logger"]: r for r in records}
    assert "deprecated thing" in by_logger["py.warnings"]["message"]
    thread = next(r for r in records if "worker-x" in r["message"])
    assert "ZeroDivisionError" in thread["exc_info"]
    loop_rec = by_logger["asyncio"]
    assert loop_rec["message"] == "Task exception was never retrieved" and "RuntimeError: lost" in loop_rec["exc_info"]
    assert "asyncio_future" in loop_rec
    assert any(r["level"] == "critical" and "KeyError" in r["message"] for r in records)


# ---- the process -----------------------------------------------------------------------------------


@pytest.fixture
async def sandbox(aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(sandbox_app())


def assert_every_line_is_json(text: str, stream: str) -> list[dict[str, Any]]:
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            doc = json.loads(line)
        except ValueError:
            raise AssertionError(f"{stream} line {n} is not JSON: {line[:300]!r}") from None
        assert isinstance(doc, dict), f"{stream} line {n} is not a JSON object"
        records.append(doc)
    return records


@pytest.mark.process
@pytest.mark.timeout(120)
async def test_every_line_of_a_busy_serve_is_json(sandbox: TestServer, tmp_path: Path) -> None:
    routes = patched_routes(tmp_path, {"fail_max: 5": "fail_max: 2", "drain_timeout: 5s": "drain_timeout: 1s"})
    url = str(sandbox.make_url("")).rstrip("/")
    sidecar = Sidecar(
        url, routes=routes,
        SLACK_WEBHOOK_URL=closed_port_url() + "/services/T/B/x",  # notifications fail: warnings logged
        PYTHONWARNINGS="always",
    )
    try:
        await sidecar.start()
        async with aiohttp.ClientSession() as session:
            for query in ("", "?product_code=25k-xl", "?product_code=error-S03", "?product_code=error-X42", "?product_code=not-exists", "?product_code=garbage", "?product_code=reset"):
                await get_products(session, sidecar, query)
            for _ in range(3):  # the breaker opens; a notification to the dead Slack fails
                await get_products(session, sidecar, "?product_code=status-500")
            async with session.get(sidecar.url) as r:  # refused locally (415), no envelope from the partner
                await r.read()
            # a rejected reload logs errors, a good one logs success
            good = routes.read_text()
            routes.write_text(good.replace("timeout: 10s", "timeout: forever"))
            sidecar.signal(signal.SIGHUP)
            await _until(lambda: _reloads(sidecar, session, "failure"), 1)
            routes.write_text(good)
            sidecar.signal(signal.SIGHUP)
            await _until(lambda: _reloads(sidecar, session, "success"), 1)
            inflight = asyncio.create_task(get_products(session, sidecar, "?product_code=delay-300"))
            await asyncio.sleep(0.1)
            sidecar.signal(signal.SIGTERM)
            await inflight
        assert await sidecar.wait() == 0
    finally:
        sidecar.kill()
    stdout = assert_every_line_is_json(sidecar.stdout(), "stdout")
    stderr = assert_every_line_is_json(sidecar.stderr(), "stderr")
    shutil.rmtree(sidecar.dir, ignore_errors=True)
    assert sum(1 for r in stdout if r.get("event") == "partner_call") >= 8
    assert {"time", "level", "logger", "message"} <= set(stderr[0])
    levels = {r["level"] for r in stderr}
    assert {"info", "warning", "error"} <= levels, levels
    assert any("reload rejected" in r["message"] for r in stderr)
    assert any("draining" in r["message"] for r in stderr)


async def _reloads(sidecar: Sidecar, session: aiohttp.ClientSession, result: str) -> float:
    return metric_value(await sidecar.metrics(session), f'partner_proxy_config_reloads_total{{result="{result}"}}')


async def _until(probe: Any, at_least: float, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while await probe() < at_least:
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.05)

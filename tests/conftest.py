from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.process import Sidecar
from tests.receivers import Receiver, start_receiver
from tests.redis_server import RedisServer


@pytest.fixture(scope="session", autouse=True)
def _sidecars_cleaned_up() -> Iterator[None]:
    """No test session leaves a sidecar process (or a --workers worker) or its log directory
    behind, even when a test failed before its own clean-up. Session-scoped: module fixtures keep
    sidecars running across their tests."""
    yield
    made, Sidecar.made[:] = list(Sidecar.made), []
    for sidecar in made:
        sidecar.kill()
        shutil.rmtree(sidecar.dir, ignore_errors=True)


_FIRST_SIDECAR = pytest.StashKey[int]()
_TAIL = 4000  # characters of each log kept in a failure report


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_FIRST_SIDECAR] = len(Sidecar.made)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test's report carries the logs of the sidecars it ran (made during the test, or
    still running from a module fixture): the session's clean-up removes their files, and a
    failure seen once on CI is otherwise not explained."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed:
        return
    first = item.stash.get(_FIRST_SIDECAR, len(Sidecar.made))
    for i, sidecar in enumerate(Sidecar.made):
        running = sidecar.proc is not None and sidecar.proc.poll() is None
        if i < first and not running:
            continue
        state = "running" if running else f"exit {sidecar.proc.returncode}" if sidecar.proc is not None else "not started"
        for name, path in (("stderr", sidecar.stderr_path), ("stdout", sidecar.stdout_path)):
            try:
                text = path.read_text(errors="replace")
            except OSError as exc:
                text = f"(unreadable: {exc})"
            report.sections.append((f"sidecar {i} data :{sidecar.port} admin :{sidecar.admin_port} ({state}) {name}", text[-_TAIL:]))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server per test session on a free loopback port; stopped at the end."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
async def redis_url(redis_server: RedisServer) -> AsyncIterator[str]:
    """The session's Redis, flushed before each test so tests do not see each other's tokens."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()  # a fault test may have stopped it
    client = aioredis.from_url(redis_server.url)
    try:
        await client.flushall()
    finally:
        await client.aclose()
    yield redis_server.url


@pytest.fixture
async def receiver(aiohttp_server: Any) -> AsyncIterator[Receiver]:
    """Loopback stand-ins for the three notification sinks, recording every post."""
    rec = await start_receiver(aiohttp_server)
    yield rec
    rec.release.set()  # let hanging handlers finish before the server shuts down

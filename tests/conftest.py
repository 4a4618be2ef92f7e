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

"""Resources across reloads: unchanged clusters are kept, replaced ones are closed only after a grace period."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from proxy.metrics import Metrics
from proxy.runtime import Resources
from tests.helpers import patched_routes, shipped_config


async def test_replaced_cluster_stays_open_for_requests_in_flight_then_closes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    resources = Resources(Metrics())
    short = patched_routes(tmp_path, {"timeout: 10s": "timeout: 100ms", "max_connections: 100": "max_connections: 100\n    pending_timeout: 100ms"})
    first = resources.build(shipped_config("http://127.0.0.1:1", routes=short))
    same = resources.build(shipped_config("http://127.0.0.1:1", routes=short))
    assert same.clusters["tokopedia"] is first.clusters["tokopedia"]  # unchanged config: same pool and breaker
    second = resources.build(shipped_config("http://127.0.0.1:1"))  # the cluster's timeout changed
    old, new = first.clusters["tokopedia"], second.clusters["tokopedia"]
    assert old is not new
    monkeypatch.setattr("proxy.runtime.RETIRE_MARGIN", 0.2)
    resources.retire_in_background()
    assert not old.transport._closed  # a request that started on it may still retry
    for _ in range(100):
        if old.transport._closed:
            break
        await asyncio.sleep(0.02)
    assert old.transport._closed  # closed after the longest such request could take (2 x (100 ms wait + 100 ms attempt) + margin)
    assert not new.transport._closed
    await resources.close()
    assert new.transport._closed

"""The config watcher: an edit made at any time after the running config was read is picked up."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from proxy.server import fingerprints, watch_files


class FakeState:
    def __init__(self) -> None:
        self.reloads = 0

    async def reload(self, routes: str, errors: str) -> bool:
        self.reloads += 1
        return True


async def test_edit_between_config_read_and_watcher_start_is_not_lost(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    routes, errors = tmp_path / "routes.yaml", tmp_path / "errors.yaml"
    routes.write_text("a: 1\n")
    errors.write_text("b: 1\n")
    read_at = fingerprints(str(routes), str(errors))  # what serve takes before loading the config
    # the edit lands while the server is still starting, before the watcher's first look
    tmp = tmp_path / "errors.tmp"
    tmp.write_text("b: 2  # a new rule\n")
    os.replace(tmp, errors)
    monkeypatch.setattr("proxy.server.WATCH_INTERVAL", 0.05)
    state, stop = FakeState(), asyncio.Event()
    task = asyncio.create_task(watch_files(state, str(routes), str(errors), stop, read_at))  # type: ignore[arg-type]
    for _ in range(100):
        if state.reloads:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await task
    assert state.reloads == 1


async def test_symlink_swap_is_a_change(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for version in ("v1", "v2"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "errors.yaml").write_text("same size\n")
        (tmp_path / version / "routes.yaml").write_text("same size\n")
    os.symlink("v1", tmp_path / "..data")
    for name in ("errors.yaml", "routes.yaml"):
        os.symlink(f"..data/{name}", tmp_path / name)
    routes, errors = str(tmp_path / "routes.yaml"), str(tmp_path / "errors.yaml")
    read_at = fingerprints(routes, errors)
    os.symlink("v2", tmp_path / "..data_tmp")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")  # the kubelet's atomic swap
    assert fingerprints(routes, errors) != read_at  # same size, maybe same mtime: the real path differs

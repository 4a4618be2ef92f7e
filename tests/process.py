"""Run ``partner-proxy serve`` as a real subprocess on free loopback ports, for process-level tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

from tests.helpers import ERRORS, JSON_HEADERS, ROOT, ROUTES, sandbox_env
from tests.redis_server import free_port


class Sidecar:
    # Every Sidecar made in this test session, for the autouse fixture in conftest.py: killed
    # (with its workers) and its log directory removed at the end, whether or not the test that
    # made it cleaned up itself.
    made: list[Sidecar] = []

    def __init__(self, sandbox_url: str, redis_url: str = "", *, routes: Path = ROUTES, errors: Path = ERRORS, args: tuple[str, ...] = (), **env: str) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        self.routes, self.errors = routes, errors
        self.args = args
        self.env = {
            **os.environ,
            **sandbox_env(sandbox_url, redis_url),
            "PROXY_LISTEN": f"127.0.0.1:{self.port}",
            "PROXY_ADMIN_LISTEN": f"127.0.0.1:{self.admin_port}",
            **env,
        }
        self.dir = Path(tempfile.mkdtemp(prefix="pp-sidecar-"))
        self.stdout_path = self.dir / "stdout.log"
        self.stderr_path = self.dir / "stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None
        Sidecar.made.append(self)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/products"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def new_ports(self) -> None:
        """Pick fresh ports: a port free when probed can be taken by another socket before we bind."""
        self.port, self.admin_port = free_port(), free_port()
        self.env["PROXY_LISTEN"] = f"127.0.0.1:{self.port}"
        self.env["PROXY_ADMIN_LISTEN"] = f"127.0.0.1:{self.admin_port}"

    def lost_port_race(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None and "address already in use" in self.stderr()

    async def start(self, timeout: float = 20.0) -> Sidecar:
        for _ in range(3):
            try:
                return await self._start(timeout)
            except RuntimeError:
                if not self.lost_port_race():
                    raise
                self.new_ports()
        return await self._start(timeout)

    async def _start(self, timeout: float) -> Sidecar:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--config", str(self.routes), "--errors", str(self.errors), *self.args],
            cwd=ROOT,
            env=self.env,
            stdout=self.stdout_path.open("wb"),
            stderr=self.stderr_path.open("wb"),
        )
        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession() as s:
            while asyncio.get_running_loop().time() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"sidecar exited {self.proc.returncode}: {self.stderr()}")
                try:
                    async with s.get(self.admin + "/readyz") as r:
                        if r.status == 200:
                            return self
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        self.kill()
        raise RuntimeError(f"sidecar not ready in {timeout}s: {self.stderr()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        deadline = asyncio.get_running_loop().time() + timeout
        while self.proc.poll() is None:
            if asyncio.get_running_loop().time() > deadline:
                self.kill()
                raise RuntimeError("sidecar did not exit")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    async def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        await asyncio.sleep(0.1)  # two signals sent back to back may be merged into one by the kernel
        self.signal(signal.SIGTERM)  # a second signal ends the drain at once
        return await self.wait()

    def kill(self) -> None:
        """SIGKILL the sidecar and every process under it: a ``--workers`` supervisor killed alone
        leaves its workers running, reparented to init, after a failed test."""
        if self.proc is not None and self.proc.poll() is None:
            below = descendants(self.proc.pid)  # before the kill: orphans no longer point at it
            self.proc.kill()
            self.proc.wait()
            for pid in below:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    async def metrics(self, session: aiohttp.ClientSession) -> str:
        async with session.get(self.admin + "/metrics") as r:
            return await r.text()


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (Linux /proc), children first."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            found += children
            todo += children
    return found


async def get_products(session: aiohttp.ClientSession, sidecar: Sidecar, query: str = "", **headers: str) -> tuple[int, dict[str, object] | None]:
    async with session.get(sidecar.url + query, headers={**JSON_HEADERS, **headers}) as r:
        body = await r.json(content_type=None)
        return r.status, body


def metric_value(text: str, prefix: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(prefix):
            total += float(line.rsplit(" ", 1)[1])
    return total

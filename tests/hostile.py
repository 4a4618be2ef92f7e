"""Shared pieces of the hostile-conditions suite (``tests/test_hostile_*.py``).

- ``running()``: a ``partner-proxy serve`` subprocess that is always stopped, quickly, and cleaned up;
- ``FakePartner``: a tiny scriptable partner on loopback for the faults the sandbox cannot produce
  (a body dripped past the timeout, an oversized body, a redirect to another host);
- ``Trap``: a listener on another loopback address that records whether anything connected to it;
- ``raw_exchange()``: bytes in, one parsed HTTP/1.x response out, over asyncio streams;
- small assertions on the error envelope and on ``/metrics``.

Everything binds 127.0.0.x only, and every loop here is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from tests.helpers import JSON_HEADERS, ROOT
from tests.process import Sidecar
from tests.redis_server import free_port

ENVELOPE_KEYS = {"type", "code", "message", "partner_code", "request_id"}


def base(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


# --- the sidecar subprocess -----------------------------------------------------------------------


async def stop_fast(sidecar: Sidecar, timeout: float = 20.0) -> int:
    """SIGTERM twice, 100 ms apart, and wait for the exit code.

    ``Sidecar.stop()`` sends both signals back to back; Linux coalesces a pending signal with an
    identical one, so the second is usually lost and every stop waits out the whole drain_timeout.
    """
    proc = sidecar.proc
    if proc is None or proc.poll() is not None:
        return proc.returncode if proc is not None else 0
    sidecar.signal(signal.SIGTERM)
    await asyncio.sleep(0.1)
    if proc.poll() is None:
        sidecar.signal(signal.SIGTERM)
    return await sidecar.wait(timeout)


@asynccontextmanager
async def running(sandbox_url: str, redis_url: str = "", **kw: Any) -> AsyncIterator[Sidecar]:
    sidecar = Sidecar(sandbox_url, redis_url, **kw)
    try:
        await sidecar.start()
        yield sidecar
    finally:
        try:
            await stop_fast(sidecar)
        finally:
            sidecar.kill()
            shutil.rmtree(sidecar.dir, ignore_errors=True)


@dataclass
class Answer:
    status: int
    headers: CIMultiDict[str]
    body: Any
    elapsed: float

    @property
    def error(self) -> dict[str, Any]:
        return assert_envelope(self)


async def call(session: aiohttp.ClientSession, sidecar: Sidecar, query: str = "", **headers: str) -> Answer:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with session.get(sidecar.url + query, headers={**JSON_HEADERS, **headers}) as r:
        raw = await r.read()
        try:
            body: Any = await r.json(content_type=None)
        except ValueError:
            body = raw
        return Answer(r.status, CIMultiDict(r.headers), body, loop.time() - started)


def assert_envelope(answer: Answer) -> dict[str, Any]:
    """The one error shape, with ``request_id`` equal to the ``X-Request-Id`` header."""
    assert answer.headers.get("Content-Type", "").startswith("application/json"), answer.headers
    assert isinstance(answer.body, dict) and set(answer.body) == {"error"}, answer.body
    error = answer.body["error"]
    assert set(error) == ENVELOPE_KEYS, error
    assert error["request_id"] == answer.headers["X-Request-Id"]
    return error


async def assert_healthy(session: aiohttp.ClientSession, sidecar: Sidecar) -> None:
    """The process is alive and serves a normal request end to end."""
    assert sidecar.proc is not None and sidecar.proc.poll() is None, sidecar.stderr()[-2000:]
    async with session.get(sidecar.admin + "/healthz") as r:
        assert r.status == 200
    answer = await call(session, sidecar)
    assert answer.status == 200, answer.body
    assert isinstance(answer.body, dict) and answer.body.get("data")


async def until(predicate: Any, timeout: float, interval: float = 0.1) -> bool:
    """Poll an async predicate until true or ``timeout`` seconds passed (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(interval)
    return False


# --- /metrics --------------------------------------------------------------------------------------

_SAMPLE_RE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+\S+)?$")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Parse Prometheus text format into (name, labels, value); comments skipped."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        assert m, f"unparseable metrics line: {line!r}"
        labels = dict(_LABEL_RE.findall(m.group("labels") or ""))
        out.append((m.group("name"), labels, float(m.group("value"))))
    return out


def total(text: str, name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples(text) if n == name and all(lab.get(k) == x for k, x in labels.items()))


# --- a scriptable partner and a trap ----------------------------------------------------------------


def _track(tasks: set[asyncio.Task[Any]]) -> None:
    task = asyncio.current_task()
    if task is not None:
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def _close(server: asyncio.Server | None, tasks: set[asyncio.Task[Any]]) -> None:
    """Stop listening and end every connection handler (Python 3.11 has no ``close_clients``)."""
    if server is not None:
        server.close()
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if server is not None:
        await server.wait_closed()


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]


@dataclass
class FakePartner:
    """A raw HTTP/1.1 partner on 127.0.0.1 whose answer is picked by ``mode``.

    ``ok``                200 ``{"data": []}``
    ``drip``              headers (Content-Length 4096), then 4 bytes every 200 ms (bounded: 60 writes)
    ``oversized-cl``      200 with Content-Length ``oversize`` and that many bytes
    ``oversized-chunked`` 200, chunked, ``oversize`` bytes in 16 KiB chunks, no Content-Length
    ``redirect``          302 ``Location: <redirect_to>``
    """

    mode: str = "ok"
    redirect_to: str = ""
    oversize: int = 100_000
    seen: list[Seen] = field(default_factory=list)
    drips: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakePartner:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        await _close(self._server, self._tasks)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _track(self._tasks)
        try:
            for _ in range(100):  # keep-alive, bounded
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, _, v = line.partition(":")
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0") or 0)
                if length:
                    await reader.readexactly(min(length, 1 << 20))
                self.seen.append(Seen(method, target, headers))
                if not await self._answer(writer):
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            writer.close()

    async def _answer(self, w: asyncio.StreamWriter) -> bool:
        """Write the answer for ``mode``; False when the connection must not be reused."""
        mode = self.mode
        if mode == "ok":
            body = b'{"data": [{"type": "product", "id": "fake"}]}'
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await w.drain()
            return True
        if mode == "redirect":
            w.write(f"HTTP/1.1 302 Found\r\nLocation: {self.redirect_to}\r\nContent-Length: 0\r\n\r\n".encode())
            await w.drain()
            return True
        if mode == "oversized-cl":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % self.oversize)
            w.write(b"x" * self.oversize)
            await w.drain()
            return True
        if mode == "oversized-chunked":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            left = self.oversize
            while left > 0:
                n = min(left, 16384)
                w.write(b"%x\r\n%s\r\n" % (n, b"x" * n))
                left -= n
                await w.drain()
            w.write(b"0\r\n\r\n")
            await w.drain()
            return True
        if mode == "drip":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n")
            await w.drain()
            for _ in range(60):  # at most 12 s, far past any timeout under test
                await asyncio.sleep(0.2)
                if w.is_closing():
                    break
                w.write(b'{"d"')
                self.drips += 1
                await w.drain()
            return False
        raise AssertionError(f"unknown mode {mode!r}")


@dataclass
class Trap:
    """A listener on another loopback address: records every connection and every byte sent to it."""

    host: str = "127.0.0.2"
    connections: int = 0
    received: bytes = b""
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> Trap:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        await _close(self._server, self._tasks)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _track(self._tasks)
        self.connections += 1
        try:
            self.received += await asyncio.wait_for(reader.read(65536), 2)
        except (TimeoutError, ConnectionError):
            pass
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        writer.close()


# --- raw HTTP/1.x over asyncio streams ---------------------------------------------------------------


@dataclass
class RawResponse:
    status: int | None  # None: no (final) response arrived
    version: str
    headers: dict[str, str]
    body: bytes
    closed: bool  # the server closed the connection (EOF or reset) within the read window

    @property
    def answered(self) -> bool:
        return self.status is not None


def _parse_head(head: bytes) -> tuple[str, int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, status, *_ = lines[0].split(" ", 2) + [""]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return version, int(status), headers


async def raw_exchange(host: str, port: int, data: bytes, timeout: float = 3.0) -> RawResponse:
    """Send ``data`` on a fresh connection; read one final response (1xx skipped) or until EOF/timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    reader, writer = await asyncio.open_connection(host, port)
    buf = b""
    closed = False
    try:
        try:
            writer.write(data)
            await writer.drain()
        except ConnectionError:
            closed = True  # the server may reject and close while we are still writing
        while not closed:
            head_end = buf.find(b"\r\n\r\n")
            if head_end >= 0:
                version, status, headers = _parse_head(buf[:head_end])
                rest = buf[head_end + 4 :]
                if 100 <= status < 200:
                    buf = rest
                    continue
                length = headers.get("content-length")
                if length is not None and len(rest) >= int(length):
                    return RawResponse(status, version, headers, rest[: int(length)], False)
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                chunk = await asyncio.wait_for(reader.read(65536), left)
            except TimeoutError:
                break
            except ConnectionError:
                chunk = b""
            if not chunk:
                closed = True
                break
            buf += chunk
        head_end = buf.find(b"\r\n\r\n")
        if head_end >= 0:
            version, status, headers = _parse_head(buf[:head_end])
            if status >= 200:
                return RawResponse(status, version, headers, buf[head_end + 4 :], closed)
        return RawResponse(None, "", {}, buf, closed)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass


# --- synchronous process control, for module-scoped fixtures ------------------------------------------


def _get_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:  # loopback test URL only
            return int(r.status)
    except (OSError, ValueError):
        return None


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited {proc.returncode} before {url} answered")
        if _get_status(url) == 200:
            return
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{url} not ready in {timeout}s")


def start_sync(sidecar: Sidecar, timeout: float = 20.0) -> Sidecar:
    """``Sidecar.start()`` without an event loop (module-scoped fixtures run outside the test's loop)."""
    for _ in range(3):
        try:
            return _start_sync(sidecar, timeout)
        except RuntimeError:
            if not sidecar.lost_port_race():
                raise
            sidecar.new_ports()
    return _start_sync(sidecar, timeout)


def _start_sync(sidecar: Sidecar, timeout: float) -> Sidecar:
    sidecar.proc = subprocess.Popen(
        [
            sys.executable, "-m", "proxy", "serve", "--config", str(sidecar.routes), "--errors", str(sidecar.errors),
            *getattr(sidecar, "args", ()),
        ],
        cwd=ROOT,
        env=sidecar.env,
        stdout=sidecar.stdout_path.open("wb"),
        stderr=sidecar.stderr_path.open("wb"),
    )
    try:
        wait_ready(sidecar.admin + "/readyz", sidecar.proc, timeout)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}; sidecar stderr: {sidecar.stderr()[-2000:]}") from exc
    return sidecar


def stop_sync(sidecar: Sidecar) -> int:
    proc = sidecar.proc
    try:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.1)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            return proc.wait(20)
        return proc.returncode if proc is not None else 0
    finally:
        sidecar.kill()
        shutil.rmtree(sidecar.dir, ignore_errors=True)


def start_sandbox_process(timeout: float = 20.0) -> tuple[subprocess.Popen[bytes], str]:
    """``partner-proxy sandbox`` as a subprocess on a free loopback port: (process, base URL)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "sandbox", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/ping", proc, timeout)
    return proc, url

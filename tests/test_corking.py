"""``proxy.corking.Cork``: writes wait for the end of the loop iteration, in order, per owner."""

from __future__ import annotations

import asyncio
from typing import Any
import socket

import pytest

from proxy.corking import Cork


class Recorder(asyncio.WriteTransport):
    """Records what reaches it, in order, into a log shared by every recorder."""

    def __init__(self, name: str, log: list[tuple[str, str]], fail: bool = False) -> None:
        super().__init__()
        self.name = name
        self.log = log
        self.fail = fail
        self.closing = False
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.fail:
            raise RuntimeError("broken transport")
        self.log.append((self.name, bytes(data).decode()))

    def write_eof(self) -> None:
        self.log.append((self.name, "<eof>"))

    def close(self) -> None:
        self.closing = True
        self.log.append((self.name, "<close>"))

    def abort(self) -> None:
        self.closing = self.aborted = True

    def is_closing(self) -> bool:
        return self.closing


async def test_writes_wait_for_the_iteration_and_keep_their_order() -> None:
    log: list[tuple[str, str]] = []
    cork = Cork(asyncio.get_running_loop())
    a, b = Recorder("a", log), Recorder("b", log)
    cork.write(a, b"1")
    cork.write(b, b"x")
    cork.write(a, b"2")
    cork.write_eof(a)
    cork.close(b)
    assert log == [], "nothing is written before the loop iteration ends"
    await asyncio.sleep(0)
    assert log == [("a", "1"), ("b", "x"), ("a", "2"), ("a", "<eof>"), ("b", "<close>")]


class CountingLoop:
    """The running loop, counting the callbacks scheduled on it (the cork's flushes). A wrapper, not
    a ``Cork`` subclass: the cork may be compiled (setup.py), and compiled classes take no Python
    subclasses."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.scheduled = 0

    def call_soon(self, callback: Any, *args: Any) -> asyncio.Handle:
        self.scheduled += 1
        return self.loop.call_soon(callback, *args)


async def test_one_flush_per_iteration_however_many_writes() -> None:
    loop = CountingLoop(asyncio.get_running_loop())
    cork = Cork(loop)  # type: ignore[arg-type]
    log: list[tuple[str, str]] = []
    t = Recorder("t", log)
    for i in range(100):
        cork.write(t, str(i).encode())
    await asyncio.sleep(0)
    assert loop.scheduled == 1
    assert [d for _, d in log] == [str(i) for i in range(100)]
    cork.write(t, b"next")  # the next iteration schedules its own flush
    await asyncio.sleep(0)
    assert loop.scheduled == 2 and log[-1] == ("t", "next")


async def test_a_transport_closed_before_the_flush_is_skipped() -> None:
    log: list[tuple[str, str]] = []
    cork = Cork(asyncio.get_running_loop())
    gone, alive = Recorder("gone", log), Recorder("alive", log)
    cork.write(gone, b"lost")
    cork.write(alive, b"kept")
    gone.abort()  # e.g. the peer reset the connection: its protocol already settled
    await asyncio.sleep(0)
    assert log == [("alive", "kept")]


async def test_a_broken_transport_does_not_hold_back_the_others(caplog: pytest.LogCaptureFixture) -> None:
    log: list[tuple[str, str]] = []
    cork = Cork(asyncio.get_running_loop())
    broken, fine = Recorder("broken", log, fail=True), Recorder("fine", log)
    cork.write(broken, b"boom")
    cork.write(fine, b"ok")
    await asyncio.sleep(0)
    assert log == [("fine", "ok")]
    assert broken.aborted, "a transport whose write raised is aborted, not left half-written"
    assert "write to a transport failed" in caplog.text


async def test_work_queued_after_runs_once_the_iterations_writes_are_out() -> None:
    log: list[tuple[str, str]] = []
    loop = CountingLoop(asyncio.get_running_loop())
    cork = Cork(loop)  # type: ignore[arg-type]
    a, b = Recorder("a", log), Recorder("b", log)
    cork.write(a, b"answer")
    cork.after(lambda: log.append(("after", "1")))
    cork.write(b, b"written after the after() call, still before it runs")
    cork.after(lambda: log.append(("after", "2")))
    assert log == []
    await asyncio.sleep(0)
    assert log == [("a", "answer"), ("b", "written after the after() call, still before it runs"), ("after", "1"), ("after", "2")]
    assert loop.scheduled == 1, "one flush carries the writes and the work after them"


async def test_work_queued_after_with_nothing_to_write_still_runs() -> None:
    # the lane's accounting when the app's connection closed before its answer
    ran: list[str] = []
    cork = Cork(asyncio.get_running_loop())
    cork.after(lambda: ran.append("accounted"))
    await asyncio.sleep(0)
    assert ran == ["accounted"]


async def test_work_after_that_raises_is_logged_and_the_rest_still_runs(caplog: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []
    cork = Cork(asyncio.get_running_loop())

    def broken() -> None:
        raise RuntimeError("an accounting bug")

    cork.after(broken)
    cork.after(lambda: ran.append("second"))
    await asyncio.sleep(0)
    assert ran == ["second"]
    assert "work queued after the answers failed" in caplog.text and "an accounting bug" in caplog.text


async def test_flush_now_writes_what_is_queued() -> None:
    # H1Server.close flushes before it aborts the connections
    log: list[tuple[str, str]] = []
    cork = Cork(asyncio.get_running_loop())
    t = Recorder("t", log)
    cork.write(t, b"answer")
    cork.flush()
    assert log == [("t", "answer")]
    await asyncio.sleep(0)  # the scheduled flush finds nothing left
    assert log == [("t", "answer")]


async def test_on_a_real_socket_the_bytes_and_the_close_arrive_in_order() -> None:
    loop = asyncio.get_running_loop()
    server_side, client_side = socket.socketpair()
    server_side.setblocking(False)
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, server_side)
    cork = Cork(loop)
    try:
        cork.write(transport, b"HTTP/1.1 200 OK\r\n")  # type: ignore[arg-type]
        cork.write(transport, b"Content-Length: 0\r\n\r\n")  # type: ignore[arg-type]
        cork.close(transport)
        await asyncio.sleep(0.05)
        client_side.settimeout(2)
        received = b""
        while chunk := client_side.recv(4096):
            received += chunk
        assert received == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "everything written before the close, then EOF"
    finally:
        client_side.close()
        transport.close()

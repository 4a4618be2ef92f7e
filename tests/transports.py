"""A transport that only keeps what is written: for driving a ``Protocol`` in process, with no
socket and no loop polling (``bench/hotpath.py``, ``tests/test_lane.py``)."""

from __future__ import annotations

import asyncio
from typing import Any


class KeepTransport(asyncio.Transport):
    """Counts writes and keeps the last one; with ``keep_all``, every byte (``take()`` empties
    it). Closes only when told."""

    def __init__(self, keep_all: bool = False) -> None:
        super().__init__()
        self.keep_all = keep_all
        self.last = b""
        self.writes = 0
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.last = bytes(data)
        self.writes += 1
        if self.keep_all:
            self.data += data

    def take(self) -> bytes:
        out = bytes(self.data)
        self.data.clear()
        return out

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

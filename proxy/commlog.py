"""The communication log: one JSON line per partner exchange, written by a thread, never by the loop.

Why this shape (measured, see bench/): the stdlib ``QueueHandler`` path cost about a fifth of the
sidecar's CPU per request, and formatting in the writer thread made that thread hold the GIL for
whole switch intervals, which showed up as milliseconds of p99 latency on the loop. So:

- the loop formats each record (``orjson.dumps`` of a small dict, about a microsecond) and appends it
  to a buffer; every ``FLUSH_INTERVAL`` the whole batch goes to the writer thread in one hand-over;
- the writer thread only writes and flushes (the GIL is released during the system call), so a
  slow or blocked stdout never stalls a request;
- the buffer is bounded: past ``max_pending_bytes`` records are dropped and counted, rather than
  growing memory without limit while stdout is stuck.

orjson escapes CR/LF and control characters, so a header value cannot forge a second record.
Values are redacted by key (``LogPolicy``, compiled per runtime) before they are formatted:
secrets never reach the buffer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any

import orjson

REDACTED = "[redacted]"
_ALWAYS_REDACT = frozenset({"authorization", "access_token", "token", "client_secret", "api_key", "password", "cookie"})
# How long records wait in the loop's buffer: batches amortize the hand-over to the writer thread
# (one wake-up per batch instead of per request) and keep records in order.
FLUSH_INTERVAL = 0.02
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

log = logging.getLogger("proxy.commlog")


# ``.000Z`` .. ``.999Z``: a table lookup instead of an f-string with a format spec per record.
_MILLIS: tuple[str, ...] = tuple(f".{ms:03d}Z" for ms in range(1000))


class _Clock:
    """ISO-8601 UTC timestamps with milliseconds, called once per record (~0.45 us formatted each time).

    A busy worker writes many records per millisecond, so the last string is kept with the closed
    range ``[lo, hi]`` of ``time.time()`` values known to format to it: a hit is one float
    comparison. The range is sound because, within one second, the text is a non-decreasing
    function of ``t`` (``t - second`` is exact there, a product rounds monotonically, ``int``
    too): if both ends format to the same text, every ``t`` between them does. ``hi`` is checked,
    not assumed, so whatever float arithmetic does near a boundary, a hit returns exactly what
    formatting ``t`` would. The seconds part is formatted once per second.

    Each cache is one tuple, replaced in one assignment: a caller on another thread reads a range
    and its text (or a second and its prefix) that belong together, never half of an update.
    """

    __slots__ = ("_second", "_last")

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")
        self._last: tuple[float, float, str] = (1.0, 0.0, "")  # an empty range: the first call formats

    def now(self) -> str:
        t = time.time()
        lo, hi, text = self._last
        if lo <= t <= hi:
            return text
        return self._format(t)

    def _format(self, t: float) -> str:
        second = int(t)
        cached, prefix = self._second
        if second != cached:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, prefix)
        ms = int((t - second) * 1000)
        text = prefix + _MILLIS[ms] if 0 <= ms < 1000 else f"{prefix}.{ms:03d}Z"
        # The end of this millisecond, 1 us short of it (a margin for the rounding of the sum); if
        # that point is not provably in the same millisecond of the same second, cache only ``t``.
        hi = second + (ms + 1) / 1000 - 1e-6
        if not (hi >= t and int(hi) == second and int((hi - second) * 1000) == ms):
            hi = t
        self._last = (t, hi, text)
        return text


@dataclass(frozen=True, slots=True)
class LogPolicy:
    """What a config's ``log:`` block decides, compiled once per runtime and swapped with it.

    The writer below outlives reloads; the policy does not, so a reload that adds a redact field
    applies to the very next record.
    """

    level: int = logging.INFO
    redact: frozenset[str] = _ALWAYS_REDACT
    capture_bodies: bool = False
    max_body_bytes: int = 2048

    @classmethod
    def of(cls, *, level: str = "info", redact_fields: Iterable[str] = (), capture_bodies: bool = False, max_body_bytes: int = 2048) -> LogPolicy:
        return cls(
            level=_LEVELS.get(level.lower(), logging.INFO),
            redact=_ALWAYS_REDACT | {f.lower() for f in redact_fields},
            capture_bodies=capture_bodies,
            max_body_bytes=max_body_bytes,
        )

    def enabled(self, level: int) -> bool:
        return level >= self.level

    def redacts_any(self, keys: Iterable[str]) -> bool:
        return any(k.lower() in self.redact for k in keys)

    def scrub(self, fields: dict[str, Any]) -> dict[str, Any]:
        redact = self.redact
        if not any(k.lower() in redact for k in fields):
            return fields
        return {k: (REDACTED if k.lower() in redact and v else v) for k, v in fields.items()}

    def body_excerpt(self, body: bytes) -> str:
        """A captured body, capped and with configured sensitive JSON fields redacted (opt-in only)."""
        limit = self.max_body_bytes
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return body[:limit].decode("utf-8", "replace")
        return json.dumps(self._redact_json(doc), ensure_ascii=False)[:limit]

    def _redact_json(self, doc: Any) -> Any:
        if isinstance(doc, dict):
            return {k: (REDACTED if k.lower() in self.redact else self._redact_json(v)) for k, v in doc.items()}
        if isinstance(doc, list):
            return [self._redact_json(v) for v in doc]
        return doc


def encode(record: dict[str, Any]) -> str:
    """One JSON line. orjson escapes CR/LF and every control character, so no value can forge a record."""
    return orjson.dumps(record, default=str).decode()


class CommunicationLog:
    """The writer: ``start()`` before use (the data app's cleanup_ctx does it); ``stop()`` flushes.

    Long-lived across reloads; what to write and what to redact is the caller's ``LogPolicy``.
    """

    def __init__(
        self,
        *,
        stream: IO[str] | None = None,
        redact_fields: Iterable[str] = (),
        level: str = "info",
        max_pending_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self._stream = stream
        self.policy = LogPolicy.of(level=level, redact_fields=redact_fields)  # for write() callers without their own
        self._clock = _Clock()
        # The record's timestamp: the clock's own method, not a method that calls it (one frame per
        # record less, ~60 ns).
        self.now: Callable[[], str] = self._clock.now
        self._buffer: list[str] = []
        self._flush_scheduled = False
        self._pending = 0  # bytes handed to the thread and not yet written
        self._pending_lock = threading.Lock()
        self._max_pending = max_pending_bytes
        self.dropped = 0
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._writer is None:
            self._writer = threading.Thread(target=self._run, name="commlog-writer", daemon=True)
            self._writer.start()

    def stop(self) -> None:
        self._flush()
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join(timeout=5)
            self._writer = None

    # -- writing ---------------------------------------------------------------------------------

    def write(self, event: str, fields: dict[str, Any], level: int = logging.INFO, policy: LogPolicy | None = None) -> None:
        policy = policy or self.policy
        if not policy.enabled(level):
            return
        record: dict[str, Any] = {"time": self._clock.now(), "level": logging.getLevelName(level).lower(), "event": event}
        record.update(policy.scrub(fields))
        self.write_line(encode(record))

    def write_line(self, line: str) -> None:
        """Queue one ready-made JSON line (the caller escaped every value it took from input)."""
        self._buffer.append(line)
        if not self._flush_scheduled:
            try:
                asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self._flush)
                self._flush_scheduled = True
            except RuntimeError:  # no loop (a CLI or a unit test): hand it over now
                self._flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._buffer:
            return
        chunk = "\n".join(self._buffer) + "\n"
        count = len(self._buffer)
        self._buffer = []
        with self._pending_lock:
            if self._pending + len(chunk) > self._max_pending:
                self.dropped += count
                return
            self._pending += len(chunk)
        if self._writer is None:
            self._write(chunk)
        else:
            self._queue.put(chunk)

    def _run(self) -> None:
        while True:
            chunk = self._queue.get()
            if chunk is None:
                return
            self._write(chunk)

    def _write(self, chunk: str) -> None:
        try:
            stream = self._stream or sys.stdout
            stream.write(chunk)
            stream.flush()
        except Exception:  # a broken stdout must not kill the writer; the records are lost, say so once
            if not self.dropped:
                log.exception("communication log write failed")
            self.dropped += chunk.count("\n")
        finally:
            with self._pending_lock:
                self._pending -= len(chunk)

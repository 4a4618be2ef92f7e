"""The communication log: one JSON line per partner exchange, written off the event loop.

Records are dicts handed to a ``QueueHandler``; a ``QueueListener`` thread serializes and writes
them, so a slow or blocked stdout never stalls a request. ``json.dumps`` escapes CR/LF and control
characters, so a value taken from a header cannot forge a second record. Values are redacted by
key before they are queued: secrets never reach the queue.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
import time
from collections.abc import Iterable
from typing import IO, Any

REDACTED = "[redacted]"
_ALWAYS_REDACT = frozenset({"authorization", "access_token", "token", "client_secret", "api_key", "password", "cookie"})


class _PassThroughQueueHandler(logging.handlers.QueueHandler):
    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record  # formatting happens in the listener thread, not on the loop


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = record.msg if isinstance(record.msg, dict) else {"message": record.getMessage()}
        return json.dumps(payload, ensure_ascii=True, separators=(",", ":"), default=str)


class _Sink(logging.Handler):
    """Writes formatted lines to a stream; the stream is looked up at emit time (tests swap stdout)."""

    def __init__(self, stream: IO[str] | None) -> None:
        super().__init__()
        self._stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = self._stream or sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


class CommunicationLog:
    """Start with ``start()``; ``stop()`` flushes what is queued."""

    def __init__(self, *, stream: IO[str] | None = None, redact_fields: Iterable[str] = (), level: str = "info") -> None:
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        sink = _Sink(stream)
        sink.setFormatter(_JsonFormatter())
        self._listener = logging.handlers.QueueListener(self._queue, sink)
        self._logger = logging.Logger("proxy.partner_call")  # not registered globally: one per app
        self._logger.propagate = False
        self._logger.addHandler(_PassThroughQueueHandler(self._queue))
        self._logger.setLevel(level.upper())
        self.redact = _ALWAYS_REDACT | {f.lower() for f in redact_fields}
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._listener.start()
            self._started = True

    def stop(self) -> None:
        if self._started:
            self._listener.stop()
            self._started = False

    @property
    def debug_enabled(self) -> bool:
        return self._logger.isEnabledFor(logging.DEBUG)

    def _scrub(self, record: dict[str, Any]) -> dict[str, Any]:
        return {k: (REDACTED if k.lower() in self.redact and v else v) for k, v in record.items()}

    def body_excerpt(self, body: bytes, limit: int) -> str:
        """A captured body, capped and with configured sensitive JSON fields redacted (opt-in only)."""
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

    def write(self, event: str, fields: dict[str, Any], level: int = logging.INFO) -> None:
        if not self._logger.isEnabledFor(level):
            return
        record = {"time": _iso_now(), "level": logging.getLevelName(level).lower(), "event": event}
        record.update(self._scrub(fields))
        self._logger.log(level, record)


def _iso_now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"

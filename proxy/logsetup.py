"""Operational logs of ``serve``: one JSON object per line on stderr, tracebacks as a field.

Every record becomes ``{"time", "level", "logger", "message", ...extra}``; an exception's text goes
in ``exc_info`` and a stack in ``stack``, never as raw lines, so a log shipper reads every line as
one event. The formatter is python-json-logger's (``json.dumps`` with ``ensure_ascii``: a CR/LF in
a message cannot forge a second line). The communication log on stdout is not touched: it is
``proxy.commlog``'s own fast path.

What would otherwise write raw text to stderr is routed through the same handler: Python warnings
(``logging.captureWarnings``), uncaught exceptions in the main thread (``sys.excepthook``) and in
other threads (``threading.excepthook``), unraisable exceptions (``sys.unraisablehook``, e.g. an
error in ``__del__``), and the event loop's exception handler (``install_loop_handler``: a task
whose exception nobody retrieved, a failing callback).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from types import TracebackType
from typing import IO, Any

from pythonjsonlogger.json import JsonFormatter

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR, "critical": logging.CRITICAL}
_MAX_CONTEXT = 300  # asyncio context values are reprs of tasks and futures: capped

log = logging.getLogger("proxy")


class _Formatter(JsonFormatter):
    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger", "stack_info": "stack"},
            timestamp="time",
            json_ensure_ascii=True,
        )

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        level = log_data.get("level")
        if isinstance(level, str):
            log_data["level"] = level.lower()  # the same spelling as the communication log
        # "time" first: the order a person reads a line in (json keeps insertion order)
        return {"time": log_data.pop("time", None), **log_data}


def json_handler(stream: IO[str] | None = None) -> logging.Handler:
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(_Formatter())
    return handler


def setup_logging(level: str = "info", stream: IO[str] | None = None) -> None:
    """Make the root logger write JSON lines to ``stream`` (stderr) and catch what bypasses logging."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(json_handler(stream))
    root.setLevel(_LEVELS.get(level.lower(), logging.INFO))
    # proxy.otel.processor reports failed exports itself, rate-limited and counted; the SDK
    # exporter would log an error line per failed batch (every second while a collector is down).
    logging.getLogger("opentelemetry.exporter").setLevel(logging.CRITICAL)
    logging.captureWarnings(True)
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook
    sys.unraisablehook = _unraisablehook


def _excepthook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    logging.getLogger("proxy").critical("uncaught exception: %s", kind.__name__, exc_info=(kind, value, tb))


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback) if args.exc_value is not None else None
    logging.getLogger("proxy").error("uncaught exception in thread %s: %s", name, args.exc_type.__name__, exc_info=exc_info)


def _unraisablehook(unraisable: Any) -> None:
    value = unraisable.exc_value
    exc_info = (type(value), value, unraisable.exc_traceback) if value is not None else None
    where = unraisable.err_msg or "Exception ignored"
    logging.getLogger("proxy").warning("%s: %s", where, _cap(repr(unraisable.object)), exc_info=exc_info)


def _cap(text: str) -> str:
    return text if len(text) <= _MAX_CONTEXT else text[: _MAX_CONTEXT - 1] + "…"


def loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """``loop.set_exception_handler`` target: the context as JSON fields, the exception as ``exc_info``."""
    exc = context.get("exception")
    extra = {f"asyncio_{k}": _cap(repr(v)) for k, v in context.items() if k not in ("message", "exception")}
    exc_info = (type(exc), exc, exc.__traceback__) if isinstance(exc, BaseException) else None
    logging.getLogger("asyncio").error(context.get("message") or "unhandled exception in the event loop", exc_info=exc_info, extra=extra)


def install_loop_handler(loop: asyncio.AbstractEventLoop | None = None) -> None:
    (loop or asyncio.get_running_loop()).set_exception_handler(loop_exception_handler)

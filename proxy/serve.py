"""Run one sidecar process: read the config, set up logging and the loop, serve until drained.

``partner-proxy serve`` calls it directly; ``serve --workers N`` calls it in each worker process.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from types import FrameType

from proxy.config import load_config
from proxy.errors import ConfigError

EXIT_OK, EXIT_INVALID = 0, 1


def setup_logging(level: str = "info") -> None:
    # Operational logs go to stderr as JSON lines (proxy/logsetup.py); stdout carries the
    # communication log (one JSON line per call).
    from proxy.logsetup import setup_logging as setup

    setup(level)


def use_uvloop() -> None:
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def print_problems(exc: ConfigError) -> None:
    for problem in exc.problems:
        print(problem, file=sys.stderr)
    print(f"{len(exc.problems)} problem(s); nothing was started", file=sys.stderr)


class StartupSignals:
    """SIGTERM, SIGINT and SIGHUP before the event loop's handlers exist.

    Why: their default actions end the process on the spot. A pod deleted while its sidecar reads
    the config would exit -15, which Kubernetes reports as a crash (SIGINT: a KeyboardInterrupt
    traceback), and a SIGHUP sent by a config tool would kill it. Until the loop takes the signals
    over (``Server.run``), a stop is remembered and honoured as soon as it can be, with nothing
    served yet and so nothing lost, and a SIGHUP is ignored: the watcher compares with the files
    as they were read, so an edit made meanwhile is still picked up.
    """

    def __init__(self) -> None:
        self.pending: int | None = None

    def install(self) -> StartupSignals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._remember)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        return self

    def _remember(self, signum: int, frame: FrameType | None) -> None:
        if self.pending is None:
            self.pending = signum


def serve_one(routes: str, errors: str, *, reuse_port: bool = False) -> int:
    early = StartupSignals().install()
    from proxy.server import Server, fingerprints

    read_at = fingerprints(routes, errors)  # before reading: an edit from now on is a change
    try:
        loaded = load_config(routes, errors)
    except ConfigError as exc:
        print_problems(exc)
        return EXIT_INVALID
    setup_logging(loaded.proxy.log.level)
    for note in loaded.notes:
        if note.startswith("warning: "):
            logging.getLogger("proxy.config").warning("%s", note.removeprefix("warning: "))
    if early.pending is not None:
        logging.getLogger("proxy.server").info("signal %s while starting: stopped before serving", signal.Signals(early.pending).name)
        return EXIT_OK
    use_uvloop()

    async def main() -> int:
        from proxy.logsetup import install_loop_handler

        install_loop_handler()
        server = Server(loaded, reuse_port=reuse_port, read_at=read_at)
        return await server.run(routes, errors, pending_signal=lambda: early.pending)

    try:
        return asyncio.run(main())
    except OSError as exc:  # a port in use or not ours to bind: say which, no traceback
        print(f"partner-proxy: cannot listen ({loaded.proxy.listen} / {loaded.proxy.admin.listen}): {exc.strerror or exc}", file=sys.stderr)
        return EXIT_INVALID

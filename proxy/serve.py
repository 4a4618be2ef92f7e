"""Run one sidecar process: read the config, set up logging and the loop, serve until drained.

``partner-proxy serve`` calls it directly; ``serve --workers N`` calls it in each worker process.
"""

from __future__ import annotations

import asyncio
import logging
import sys

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


def serve_one(routes: str, errors: str, *, reuse_port: bool = False) -> int:
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
    use_uvloop()

    async def main() -> int:
        from proxy.logsetup import install_loop_handler

        install_loop_handler()
        return await Server(loaded, reuse_port=reuse_port, read_at=read_at).run(routes, errors)

    try:
        return asyncio.run(main())
    except OSError as exc:  # a port in use or not ours to bind: say which, no traceback
        print(f"partner-proxy: cannot listen ({loaded.proxy.listen} / {loaded.proxy.admin.listen}): {exc.strerror or exc}", file=sys.stderr)
        return EXIT_INVALID

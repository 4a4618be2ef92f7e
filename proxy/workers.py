"""``serve --workers N``: N sidecar processes sharing the listeners through SO_REUSEPORT.

Why processes: one Python event loop uses one core. The kernel spreads new connections over the
workers; each keeps its own pools, breakers and in-process token (one token fetch is still shared
through Redis when ``REDIS_URL`` is set). Metrics use prometheus-client's multiprocess mode, so a
scrape of any worker reports the sum over all of them.

The parent only supervises: it forwards SIGTERM/SIGINT/SIGHUP, restarts a worker that dies
unexpectedly (at most ``MAX_RESTARTS`` times a minute, then gives up so Kubernetes restarts the pod),
and exits 0 when every worker drained cleanly.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

log = logging.getLogger("proxy.workers")

MAX_RESTARTS = 5


def _worker_main(routes: str, errors: str) -> None:
    # Imported here: the worker is a fresh (spawned) interpreter whose prometheus-client must see
    # PROMETHEUS_MULTIPROC_DIR before any metric exists.
    from proxy.serve import serve_one

    raise SystemExit(serve_one(routes, errors, reuse_port=True))


def _prepare_metrics_dir() -> tuple[str, bool]:
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    path = given or tempfile.mkdtemp(prefix="partner-proxy-metrics-")
    Path(path).mkdir(parents=True, exist_ok=True)
    for stale in Path(path).glob("*.db"):  # counters from a previous run must not be added again
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path, given is None


def run_workers(count: int, routes: str, errors: str) -> int:
    metrics_dir, owned = _prepare_metrics_dir()
    ctx = multiprocessing.get_context("spawn")
    stopping = False
    workers: list[BaseProcess] = []
    restarts: list[float] = []

    def spawn() -> BaseProcess:
        proc = ctx.Process(target=_worker_main, args=(routes, errors), name="partner-proxy-worker")
        proc.start()
        return proc

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for w in workers:
            if w.is_alive() and w.pid is not None:
                os.kill(w.pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    try:
        workers.extend(spawn() for _ in range(count))
        log.info("started %d workers: %s", count, [w.pid for w in workers])
        if stopping:  # the signal came before the workers existed: it was forwarded to none of them
            forward(signal.SIGTERM, None)
        exit_code = 0
        while workers:
            for w in list(workers):
                w.join(timeout=0.2)
                if w.exitcode is None:
                    continue
                workers.remove(w)
                _mark_dead(w.pid)
                if stopping:
                    if w.exitcode in (-signal.SIGTERM, -signal.SIGINT):
                        # Ended by the signal we forwarded before it had its handlers: it was still
                        # starting (they are installed before its listeners open), so nothing was
                        # in flight and nothing was lost.
                        log.info("worker %s stopped while starting", w.pid)
                        continue
                    exit_code = exit_code or (w.exitcode or 0)
                    continue
                now = time.monotonic()
                restarts[:] = [t for t in restarts if now - t < 60] + [now]
                if len(restarts) > MAX_RESTARTS:
                    log.error("workers keep dying (last exit %s); stopping all", w.exitcode)
                    stopping = True
                    exit_code = 1
                    forward(signal.SIGTERM, None)
                    continue
                log.warning("worker %s exited %s; starting a new one", w.pid, w.exitcode)
                workers.append(spawn())
        return exit_code
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()
        if owned:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _mark_dead(pid: int | None) -> None:
    if pid is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)

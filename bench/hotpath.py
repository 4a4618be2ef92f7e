"""The Python cost of one request through the data listener, without the kernel and the loop.

``bench/run.py`` measures the whole sidecar against nginx on loopback: the truth, but noisy on a
shared machine (another process on the core moves CPU per request by tens of percent). This
harness measures only what our code costs, so that two versions can be compared in seconds:

- the shipped config, compiled as ``serve`` compiles it (every filter, metrics, the communication
  log into a buffer, the token in process memory, Redis configured but never reached);
- one ``H1Protocol`` on a transport that keeps what is written, and one pooled partner connection
  on a transport that answers nothing; the loop runs but never polls a socket;
- each request: the app's request bytes into ``data_received``, the partner's answer (the bench
  upstream's product list) into the partner connection's ``data_received``, the app's answer
  checked.

Printed: µs per request (best of ``--repeat``), and with ``--profile`` the functions by own time
(cProfile: its overhead inflates small functions; use it for where, not how much). This is not the
sidecar's CPU per request (no system calls, no event loop, no kernel); bench/run.py is.

    python bench/hotpath.py [--n 20000] [--repeat 5] [--profile] [--path /v1/products]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proxy.app import build_state  # noqa: E402
from proxy.config import load_config  # noqa: E402
from proxy.h1.protocol import H1Protocol  # noqa: E402
from proxy.h1.server import H1Server  # noqa: E402
from proxy.listener import Listener  # noqa: E402
from proxy.oauth.token import Grant  # noqa: E402
from proxy.upstream.http11 import _Connection  # noqa: E402
from tests.transports import KeepTransport  # noqa: E402

REQUEST = (
    b"GET /v1/products HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
    b"X-Client-Id: bench\r\n\r\n"
)


def partner_answer() -> bytes:
    body = b'{"data":[' + b",".join(b'{"type":"product","id":"%d","attributes":{"price":10000}}' % i for i in range(8)) + b"]}"
    return (
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Tue, 01 Dec 2026 09:00:00 GMT\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: keep-alive\r\n\r\n" % len(body)
    ) + body


async def main(args: argparse.Namespace) -> int:
    env = {
        "TOKOPEDIA_BASE_URL": "http://127.0.0.1:9/api",  # never connected: the pool gets a fake connection
        "TOKOPEDIA_TOKEN_URL": "http://127.0.0.1:9/token",
        "TOKOPEDIA_CLIENT_ID": "bench-client",
        "TOKOPEDIA_CLIENT_SECRET": "bench-secret",
        "TOKOPEDIA_PRIVATE_KEY": "", "TOKOPEDIA_PUBLIC_KEY": "",
        "REDIS_URL": "redis://127.0.0.1:9/0",
        "PROXY_LISTEN": "127.0.0.1:0", "PROXY_ADMIN_LISTEN": "127.0.0.1:0",
    }
    from tests.keys import keys_for_tests  # the suite's key pairs: the signed routes must compile

    keys = keys_for_tests()
    env["TOKOPEDIA_PRIVATE_KEY"], env["TOKOPEDIA_PUBLIC_KEY"] = keys.account_private_pem, keys.sandbox_public_pem
    loaded = load_config(ROOT / "config" / "routes.yaml", ROOT / "config" / "errors.yaml", env=env)
    log = io.StringIO()
    state = build_state(loaded, log_stream=log)
    await state.open()
    try:
        runtime = state.current()
        for provider in runtime.providers.values():
            now = time.time()
            provider._adopt(Grant("c:bench-token", now, now + 86400), "fetch")  # what a first fetch leaves in memory
        cluster = next(iter(runtime.clusters.values()))
        pool = cluster.pool
        assert pool is not None, "the bench needs the http11 transport"
        _, partner_cork = pool._loop_and_cork()
        conn = _Connection(cluster.config.max_response_bytes, partner_cork)
        partner = KeepTransport()
        conn.connection_made(partner)
        pool._idle.append(conn)

        listener = Listener(state.current)
        server = H1Server(listener)
        proto = H1Protocol(server)
        app = KeepTransport()
        proto.connection_made(app)
        request = REQUEST.replace(b"/v1/products", args.path.encode())
        answer = partner_answer()

        app_cork = server.cork

        def one() -> None:
            proto.data_received(request)
            partner_cork.flush()  # what the loop does once per iteration
            if conn.busy:
                conn.data_received(answer)
                app_cork.flush()
            else:  # the coroutine path took it: let the loop run it
                raise SystemExit("the request did not reach the partner connection synchronously (not on the callback path)")

        one()
        if not app.last.startswith(b"HTTP/1.1 200 "):
            print(app.last[:400].decode("latin-1"))
            return 1

        commlog = state.resources.commlog

        def run(n: int) -> float:
            # this thread's CPU time (the log writer's thread and other processes excluded: steadier
            # than wall time on a shared machine); the log buffer handed to the writer every 500
            # requests, as the loop's 20 ms flush would at ~25k req/s
            t = time.thread_time()
            for i in range(n):
                one()
                if i % 500 == 499:
                    commlog._flush()
            return (time.thread_time() - t) / n * 1e6

        run(min(2000, args.n))
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            run(args.n)
            prof.disable()
            stats = pstats.Stats(prof, stream=sys.stdout)
            stats.sort_stats(args.sort).print_stats(args.top)
        best = min(run(args.n) for _ in range(args.repeat))
        print(f"{args.path}: {best:.2f} µs per request (Python only, best of {args.repeat} x {args.n}); "
              f"{partner.writes} partner writes, {app.writes} app writes")
    finally:
        await state.close()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--path", default="/v1/products")
    parser.add_argument("--sort", default="tottime", help="cProfile sort key (tottime, ncalls, cumtime)")
    parser.add_argument("--top", type=int, default=30)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    sys.exit(asyncio.run(main(parser.parse_args())))

"""A loopback OTLP/HTTP traces sink for ``bench/run.py --tracing``: answers 200 to POST /v1/traces.

It reads each export body and answers with an empty ``ExportTraceServiceResponse`` (zero bytes is a
valid empty protobuf message), counting exports and bytes; it never decodes spans, so its own CPU
stays small (it is pinned beside redis, away from the measured servers). ``GET /stats`` returns
``{"exports": N, "bytes": B}``.

    python bench/otlp_sink.py --port 4318
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from aiohttp import web

STATS = web.AppKey("stats", dict)


async def traces(request: web.Request) -> web.Response:
    body = await request.read()
    stats = request.app[STATS]
    stats["exports"] += 1
    stats["bytes"] += len(body)
    return web.Response(body=b"", content_type="application/x-protobuf")


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATS])


def build_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATS] = {"exports": 0, "bytes": 0}
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/stats", stats)
    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    web.run_app(build_app(), host=args.host, port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The floor for any aiohttp proxy: a bare pass-through, used by ``bench/run.py`` as target (c).

``GET /v1/products`` -> ``GET <upstream>`` on one ``ClientSession`` created at startup, reads the
whole body and returns it with the upstream's status and ``Content-Type``. No validation, no
token, no metrics, no logging (access log off). Runs under uvloop when it is installed, like the
sidecar. Whatever partner-proxy costs above this is the price of its filters.

    python bench/bare_aiohttp.py --port 8081 --upstream http://127.0.0.1:9090/v2/product-list
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

SESSION = web.AppKey("session", ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def products(request: web.Request) -> web.Response:
    async with request.app[SESSION].get(request.app[UPSTREAM]) as resp:
        body = await resp.read()
        return web.Response(
            body=body,
            status=resp.status,
            headers={"Content-Type": resp.headers.get("Content-Type", "application/octet-stream")},
        )


async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
    # Same pool cap as the sidecar's shipped cluster (max_connections: 100).
    async with ClientSession(connector=TCPConnector(limit=100), timeout=ClientTimeout(total=10)) as session:
        app[SESSION] = session
        yield


def build_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream
    app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/v1/products", products)
    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="full URL of the upstream product list")
    args = parser.parse_args()
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        print("bare_aiohttp: uvloop not installed, using the asyncio loop", file=sys.stderr)
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(build_app(args.upstream), host=args.host, port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())

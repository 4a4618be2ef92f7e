"""The sandbox partner: a local stand-in for Tokopedia's B2B API, with fault injection.

Used by ``partner-proxy sandbox`` and ``partner-proxy demo`` and by the test suite, so app
developers can produce every partner error without partner credentials.

Fault tokens, usable through the sidecar as ``product_code=<token>`` or as the request header
``X-Sandbox-Fault: <token>`` (the header wins). They take effect only after the bearer check,
so a fault request still needs a valid token:

- ``error-<CODE>``: the partner's JSON:API error for CODE, e.g. ``error-S03`` (400),
  ``error-P08`` (403), ``error-S00`` (500), ``error-S01`` (503), ``error-X42`` (unknown, 400).
- ``status-<NNN>``: HTTP NNN (200-599) with a ``text/html`` page, e.g. ``status-429``.
- ``delay-<ms>``: wait that many milliseconds (at most 60000), then the full product list.
- ``hang``: no answer for 300 s (for client-timeout tests).
- ``reset``: the connection is reset (TCP RST), no HTTP answer.
- ``garbage``: HTTP 500 labelled ``application/json`` with a body that is not JSON.
- checkout only (``POST /v2/order``): ``order-reset`` (order taken, then a reset),
  ``fail-<CODE>`` (order settles Failed with CODE), ``sign-missing`` / ``sign-bad`` (its status
  answers carry no / a wrong signature). On checkout ``hang`` and ``delay-`` take the order
  first; ``reset`` and the error faults take nothing. :mod:`proxy.sandbox.api` has the table.

A malformed reserved token (``status-99``, ``delay-soon``) answers 400 ``P01`` so typos are loud.
See :mod:`proxy.sandbox.app` for routes, token modes and the ``/_sandbox/*`` control endpoints,
and :mod:`proxy.sandbox.api` for account, inquiry, checkout and check status.
"""

from __future__ import annotations

from aiohttp import web

from proxy.sandbox.app import (
    SANDBOX_STATE,
    TOKEN_MODES,
    ProductCall,
    SandboxSettings,
    SandboxState,
    build_sandbox_app,
)

__all__ = [
    "SANDBOX_STATE",
    "TOKEN_MODES",
    "ProductCall",
    "SandboxSettings",
    "SandboxState",
    "build_sandbox_app",
    "run_sandbox",
]


async def run_sandbox(
    host: str, port: int, settings: SandboxSettings | None = None
) -> web.AppRunner:
    """Serve a fresh sandbox on ``host:port`` and return the started runner.

    The caller owns cleanup (``await runner.cleanup()``). ``port=0`` picks a free port; read it
    from ``runner.addresses``. ``handler_cancellation`` is on so a client that gives up on a
    ``hang`` also ends the server-side wait, and the app's shutdown hook wakes any still
    sleeping so cleanup does not wait out the runner's shutdown timeout.
    """
    runner = web.AppRunner(build_sandbox_app(settings), handler_cancellation=True)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner

"""The admin listener (read-only): /healthz, /readyz, /metrics, /config, /breakers."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from proxy.config.models import Secret
from proxy.state import STATE, ProxyState


def _plain(value: Any) -> Any:
    """Config objects as JSON-ready data; every Secret prints as *** (or empty when unset)."""
    if isinstance(value, Secret):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    return value


def redacted_config(state: ProxyState) -> dict[str, Any]:
    loaded = state.loaded
    tables = {
        name: {
            "default_language": t.default_language,
            "rules": [
                {
                    "line": r.line,
                    "codes": list(r.exact) + [x.text for x in r.ranges],
                    "http_status": list(r.http_status),
                    "type": r.type,
                    "code": r.code,
                    "status": r.status,
                    "invalidate_token": r.invalidate_token,
                    "retry": r.retry,
                    "notify": r.notify,
                }
                for r in t.rules
            ],
            "default": {"type": t.default.type, "code": t.default.code, "status": t.default.status},
        }
        for name, t in loaded.errors.items()
    }
    return {"routes_file": loaded.routes_path, "errors_file": loaded.errors_path, "config": _plain(loaded.proxy), "errors": tables}


def breakers(state: ProxyState) -> dict[str, str]:
    if state.runtime is None:
        return {}
    return {name: c.breaker.state for name, c in state.runtime.clusters.items()}


def build_admin_app(state: ProxyState) -> web.Application:
    app = web.Application()
    app[STATE] = state

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(request: web.Request) -> web.Response:
        # Partner health is deliberately not part of readiness: a partner outage must not take
        # every pod out of the Service (the breaker answers fast instead).
        body = {"ready": state.ready, "draining": state.draining, "breakers": breakers(state)}
        return web.json_response(body, status=200 if state.ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=state.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def config(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(redacted_config(state), indent=2, default=str), content_type="application/json")

    async def breakers_view(request: web.Request) -> web.Response:
        return web.json_response(breakers(state))

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/config", config)
    app.router.add_get("/breakers", breakers_view)
    return app

"""Real HTTP receivers on loopback standing in for Slack, Datadog and New Relic."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

SLACK_PATH = "/services/T0SECRETTEAM/B0SECRETHOOK/sl4ckW3bh00kS3cretPath"
DD_PATH = "/api/v1/events"
NR_PATH = "/v1/accounts/4242/events"
DD_KEY = "dd-api-key-0123456789abcdef"
NR_KEY = "nr-insert-key-NRII-fedcba9876543210"
SECRETS = (DD_KEY, NR_KEY, "sl4ckW3bh00kS3cretPath", "B0SECRETHOOK", "T0SECRETTEAM")


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


@dataclass
class Receiver:
    """Records every POST per sink; ``mode[sink]`` is "ok", "500", "hang" or "429".

    "429" answers ``429`` with ``Retry-After: retry_after`` to the first ``limited[sink]`` posts
    of that sink (Slack's rate limit), then as "ok".
    """

    server: TestServer | None = None
    got: dict[str, list[Recorded]] = field(default_factory=lambda: {"slack": [], "datadog": [], "newrelic": []})
    mode: dict[str, str] = field(default_factory=lambda: {"slack": "ok", "datadog": "ok", "newrelic": "ok"})
    release: asyncio.Event = field(default_factory=asyncio.Event)
    retry_after: str = "1"
    limited: dict[str, int] = field(default_factory=lambda: {"slack": 1, "datadog": 1, "newrelic": 1})

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    def handler(self, sink: str) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            raw = await request.read()
            self.got[sink].append(Recorded(request.path, dict(request.headers), raw))
            mode = self.mode[sink]
            if mode == "hang":
                try:
                    await asyncio.wait_for(self.release.wait(), timeout=2.0)
                except TimeoutError:
                    pass
            if mode == "500":
                return web.Response(status=500, text="boom")
            if mode == "429" and self.limited[sink] > 0:
                self.limited[sink] -= 1
                return web.Response(status=429, text="rate_limited", headers={"Retry-After": self.retry_after})
            return web.json_response({"status": "ok"}, status=202 if sink != "slack" else 200)

        return handle


async def start_receiver(aiohttp_server: Any) -> Receiver:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/services/{rest:.*}", rec.handler("slack"))
    app.router.add_post(DD_PATH, rec.handler("datadog"))
    app.router.add_post(NR_PATH, rec.handler("newrelic"))
    # No access log: the receiver plays Slack, and its own log of the webhook path is not ours to judge.
    rec.server = await aiohttp_server(app, access_log=None)
    return rec

"""Factories for tests: the shipped config pointed at a loopback sandbox, and a sidecar around it."""

from __future__ import annotations

import asyncio
import atexit
import io
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestClient, TestServer
from yarl import URL

from proxy.admin import build_admin_app
from proxy.app import build_data_app, build_state, data_server
from proxy.config import LoadedConfig, load_config
from proxy.h1.limits import H1Limits
from proxy.h1.server import H1Server
from proxy.listener import Listener
from proxy.sandbox import SANDBOX_STATE, SandboxState
from proxy.state import ProxyState
from tests.keys import keys_for_tests

ROOT = Path(__file__).resolve().parent.parent
ROUTES = ROOT / "config" / "routes.yaml"
ERRORS = ROOT / "config" / "errors.yaml"

# PARTNER_PROXY_TEST_CLIENT=aiohttp runs the whole suite with ``clusters.<name>.client: aiohttp``
# (the shipped routes.yaml with its commented ``client:`` line switched on), so both upstream
# transports pass every test, subprocess ones included.
_CLIENT_MARK = "  # PARTNER_PROXY_TEST_CLIENT"
TEST_CLIENT = os.environ.get("PARTNER_PROXY_TEST_CLIENT", "")
if TEST_CLIENT:
    _text, _n = re.subn(r"^    # client: http11.*$", f"    client: {TEST_CLIENT}{_CLIENT_MARK}", ROUTES.read_text(), count=1, flags=re.M)
    assert _n == 1, "routes.yaml has no '    # client: http11' line to switch"
    ROUTES = Path(tempfile.mkdtemp(prefix="partner-proxy-client-")) / "routes.yaml"
    ROUTES.write_text(_text)
    atexit.register(shutil.rmtree, ROUTES.parent, True)  # the switched copy goes with the session
CLIENT_ID, CLIENT_SECRET = "sandbox-client", "sandbox-secret"
JSON_HEADERS = {"Content-Type": "application/json", "X-Client-Id": "app-1"}


def sandbox_env(sandbox_url: str, redis_url: str = "", **extra: str) -> dict[str, str]:
    keys = keys_for_tests()
    return {
        "TOKOPEDIA_PRIVATE_KEY": keys.account_private_pem,  # the sidecar signs checkouts with it
        "TOKOPEDIA_PUBLIC_KEY": keys.sandbox_public_pem,    # ... and verifies status answers with it
        "TOKOPEDIA_BASE_URL": sandbox_url,
        "TOKOPEDIA_TOKEN_URL": sandbox_url + "/token",
        "TOKOPEDIA_CLIENT_ID": CLIENT_ID,
        "TOKOPEDIA_CLIENT_SECRET": CLIENT_SECRET,
        "REDIS_URL": redis_url,
        "PROXY_LISTEN": "127.0.0.1:0",
        "PROXY_ADMIN_LISTEN": "127.0.0.1:0",
        **extra,
    }


def shipped_config(sandbox_url: str, redis_url: str = "", routes: str | Path = ROUTES, errors: str | Path = ERRORS, **extra: str) -> LoadedConfig:
    return load_config(routes, errors, env=sandbox_env(sandbox_url, redis_url, **extra))


def patched_routes(tmp_path: Path, replacements: dict[str, str]) -> Path:
    """A copy of the shipped routes.yaml with text replaced (e.g. a breaker setting for a test)."""
    text = ROUTES.read_text()
    for old, new in replacements.items():
        assert old in text, f"{old!r} not in routes.yaml"
        text = text.replace(old, new)
    if TEST_CLIENT and len(re.findall(r"^    client:", text, flags=re.M)) > 1:
        text = "\n".join(line for line in text.split("\n") if not line.endswith(_CLIENT_MARK))  # the test's own choice wins
    path = tmp_path / "routes.yaml"
    path.write_text(text)
    return path


@dataclass
class Rig:
    """One sidecar (data + admin apps as test clients) in front of one sandbox partner."""

    client: TestClient
    admin: TestClient
    state: ProxyState
    sandbox: TestServer

    @property
    def partner(self) -> SandboxState:
        return self.sandbox.app[SANDBOX_STATE]

    async def get(self, query: str = "", headers: dict[str, str] | None = None, **kw: Any) -> Any:
        h = dict(JSON_HEADERS)
        h.update(headers or {})
        return await self.client.get("/v1/products" + query, headers=h, **kw)

    async def metrics(self) -> str:
        r = await self.admin.get("/metrics")
        return await r.text()


class H1TestServer(BaseTestServer):
    """The data listener as ``serve`` runs it (``proxy.h1`` on a real loopback socket), in the shape
    ``aiohttp_client`` takes: the state opens on start and closes with the client, like the data app's
    cleanup_ctx did."""

    def __init__(self, state: ProxyState, limits: H1Limits | None = None) -> None:
        super().__init__(host="127.0.0.1")
        self.state = state
        self.limits = limits
        self.h1: H1Server | None = None
        self.listener: Listener | None = None

    async def _make_runner(self, **kwargs: Any) -> Any:  # pragma: no cover - not an aiohttp runner
        raise NotImplementedError

    @property
    def started(self) -> bool:
        return self.h1 is not None

    async def start_server(self, loop: Any = None, **kwargs: Any) -> None:
        if self.h1 is not None:
            return
        await self.state.open()
        self.listener = Listener(self.state.current)
        state = self.state
        # fixed limits if the test gave some, else the running config's (``listener:``), as serve does
        self.h1 = H1Server(self.listener, self.limits if self.limits is not None else (lambda: state.current().limits))
        await self.h1.start("127.0.0.1", 0)
        self.port = self.h1.port
        self.scheme = "http"
        self._root = URL(f"http://127.0.0.1:{self.port}")

    async def close(self) -> None:
        if self.h1 is not None and not self._closed:
            self._closed = True
            await self.h1.close()
            await self.state.close()
            self._root = None


def data_test_server(state: ProxyState) -> BaseTestServer | web.Application:
    """What ``aiohttp_client`` gets for the data listener: the h1 server, or the aiohttp app when the
    suite runs with ``PARTNER_PROXY_DATA_SERVER=aiohttp``."""
    return build_data_app(state) if data_server() == "aiohttp" else H1TestServer(state)


async def make_rig(aiohttp_client: Any, sandbox: TestServer, loaded: LoadedConfig, log_stream: io.StringIO | None = None) -> Rig:
    # a StringIO by default: keep the communication log out of pytest's output
    state = build_state(loaded, log_stream=log_stream if log_stream is not None else io.StringIO())
    client = await aiohttp_client(data_test_server(state))
    state.data_up = True
    admin = await aiohttp_client(build_admin_app(state))
    state.admin_up = True
    return Rig(client, admin, state, sandbox)


def sandbox_app(**settings: Any) -> web.Application:
    from proxy.sandbox import SandboxSettings, build_sandbox_app

    settings.setdefault("keys", keys_for_tests().sandbox)  # the pairs sandbox_env gives the sidecar
    return build_sandbox_app(SandboxSettings(CLIENT_ID, CLIENT_SECRET, **settings))


async def partner_calls(stream: io.StringIO, at_least: int, tries: int = 300) -> list[dict[str, Any]]:
    """The ``partner_call`` records in a communication log stream, once there are ``at_least``
    (the log's background thread writes them a little later)."""
    for _ in range(tries):
        lines = [json.loads(line) for line in stream.getvalue().splitlines() if line]
        calls = [r for r in lines if r.get("event") == "partner_call"]
        if len(calls) >= at_least:
            return calls
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {at_least} partner_call records: {stream.getvalue()!r}")


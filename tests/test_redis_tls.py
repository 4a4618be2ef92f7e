"""The shared token cache on a TLS-only Redis with ACL users: real ``partner-proxy serve`` processes.

One TLS redis-server per module (port 0, tls-port only, a CA made by openssl for this run); the
sidecars connect as the ``partner-proxy`` ACL user that has exactly the minimal ACL of
docs/deploy.md, with the whole URL read from ``REDIS_URL_FILE`` as in the Kubernetes example.
Also here: what ``check`` and start-up say about a wrong URL.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from proxy.config import load_config
from proxy.errors import ConfigError
from proxy.sandbox import SANDBOX_STATE, SandboxState
from tests.helpers import ERRORS, ROOT, ROUTES, sandbox_app, sandbox_env
from tests.process import Sidecar, get_products, metric_value
from tests.redis_topologies import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    SIDECAR_ACL_BASE,
    SIDECAR_PASSWORD,
    SIDECAR_USER,
    Pki,
    RedisProc,
    acl_log,
    make_pki,
    start_tls,
    temp_root,
)

pytestmark = [pytest.mark.process, pytest.mark.redis_topology, pytest.mark.timeout(90)]

KEY = "partner-proxy:token:tokopedia"


@pytest.fixture(scope="module")
def tls_root() -> Iterator[Path]:
    root = temp_root("pp-tls-")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pki(tls_root: Path) -> Pki:
    return make_pki(tls_root)


@pytest.fixture(scope="module")
def tls_node(tls_root: Path, pki: Pki) -> Iterator[RedisProc]:
    node = start_tls(tls_root, pki)
    yield node
    node.stop()


@pytest.fixture
async def admin(tls_node: RedisProc, pki: Pki) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(
        host="127.0.0.1", port=tls_node.port, username=ADMIN_USER, password=ADMIN_PASSWORD,
        ssl=True, ssl_ca_certs=str(pki.ca), decode_responses=True,
    )
    await client.flushall()
    await client.acl_log_reset()
    yield client
    await client.aclose()


@pytest.fixture
async def sandbox(aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(sandbox_app())


def partner(sandbox: TestServer) -> SandboxState:
    return sandbox.app[SANDBOX_STATE]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=400)) as s:
        yield s


@pytest.fixture
async def sidecars(sandbox: TestServer, tmp_path: Path) -> AsyncIterator[list[Sidecar]]:
    """Sidecars started by the test (``sidecar_with_url_file``); stopped and cleaned up here."""
    started: list[Sidecar] = []
    yield started
    for s in started:
        try:
            await s.stop()
        finally:
            s.kill()
            shutil.rmtree(s.dir, ignore_errors=True)


def tls_url(port: int, pki: Pki, *, password: str = SIDECAR_PASSWORD, ca: Path | None = None, client_cert: bool = True) -> str:
    url = f"rediss://{SIDECAR_USER}:{password}@127.0.0.1:{port}/0?ssl_ca_certs={ca or pki.ca}"
    if client_cert:
        url += f"&ssl_certfile={pki.client_cert}&ssl_keyfile={pki.client_key}"
    return url


async def sidecar_with_url_file(started: list[Sidecar], sandbox: TestServer, url: str, directory: Path) -> Sidecar:
    """A sidecar whose REDIS_URL comes from a file (REDIS_URL_FILE), as from a Kubernetes Secret volume."""
    directory.mkdir(parents=True, exist_ok=True)
    url_file = directory / "redis-url"
    url_file.write_text(url + "\n")  # a Secret file often ends with a newline; it is dropped
    sidecar = Sidecar(str(sandbox.make_url("")).rstrip("/"), REDIS_URL_FILE=str(url_file))
    sidecar.env.pop("REDIS_URL")  # set, even empty, REDIS_URL wins over REDIS_URL_FILE
    started.append(sidecar)
    return await sidecar.start()


def log_lines(sidecar: Sidecar, needle: str) -> list[str]:
    # Substring match, not json.loads: cli.py's log format renders the message with %r, which is
    # not JSON for most messages (reported separately; not this module's to fix).
    return [line for line in sidecar.stderr().splitlines() if needle in line]


# --- the happy path -----------------------------------------------------------------------------


async def test_three_cold_sidecars_share_one_fetch_over_tls_with_the_minimal_acl(
    sidecars: list[Sidecar], sandbox: TestServer, session: aiohttp.ClientSession, tls_node: RedisProc, pki: Pki,
    admin: aioredis.Redis, tmp_path: Path,
) -> None:
    url = tls_url(tls_node.port, pki)
    replicas = await asyncio.gather(*(sidecar_with_url_file(sidecars, sandbox, url, tmp_path / f"s{i}") for i in range(3)))
    results = await asyncio.gather(*(get_products(session, s) for s in replicas for _ in range(50)))
    assert [s for s, _ in results] == [200] * 150
    assert partner(sandbox).token_requests == 1
    stored = await admin.get(KEY)
    assert stored is not None and partner(sandbox).tokens_issued[-1] in stored
    late = await sidecar_with_url_file(sidecars, sandbox, url, tmp_path / "late")
    assert (await get_products(session, late))[0] == 200
    assert partner(sandbox).token_requests == 1
    text = await late.metrics(session)
    assert metric_value(text, 'partner_proxy_token_cache_lookups_total{layer="redis"') >= 1
    for s in [*replicas, late]:
        assert metric_value(await s.metrics(session), "partner_proxy_redis_errors_total") == 0
    # Nothing the sidecars sent was refused by the ACL (a refused command would be logged here).
    assert await admin.acl_log() == []
    clients = await admin.client_list()
    assert {c["user"] for c in clients if c["user"] != ADMIN_USER} == {SIDECAR_USER}


# --- a server that rejects us: logged once, counted, never a failed request --------------------------


@pytest.mark.parametrize(
    ("case", "phrase"),
    [
        ("wrong_ca", "TLS handshake failed"),
        ("wrong_password", "authentication rejected"),
        ("no_password", "authentication"),
    ],
)
async def test_rejected_tls_or_password_is_logged_once_and_served_anyway(
    case: str, phrase: str, sidecars: list[Sidecar], sandbox: TestServer, session: aiohttp.ClientSession,
    tls_node: RedisProc, pki: Pki, tmp_path: Path,
) -> None:
    if case == "wrong_ca":
        url = tls_url(tls_node.port, pki, ca=pki.other_ca)
    elif case == "wrong_password":
        url = tls_url(tls_node.port, pki, password="not-the-password")
    else:
        url = f"rediss://127.0.0.1:{tls_node.port}/0?ssl_ca_certs={pki.ca}"
    sidecar = await sidecar_with_url_file(sidecars, sandbox, url, tmp_path / "s")
    statuses = [(await get_products(session, sidecar))[0] for _ in range(10)]
    partner(sandbox).revoke_all()  # a renewal while Redis refuses us: fetched directly
    statuses += [(await get_products(session, sidecar))[0] for _ in range(10)]
    assert statuses == [200] * 20
    assert partner(sandbox).token_requests == 2
    text = await sidecar.metrics(session)
    assert metric_value(text, "partner_proxy_redis_errors_total") >= 3  # get, set, delete at least
    lines = log_lines(sidecar, phrase)
    assert len(lines) == 1, sidecar.stderr()  # once for the outage, not per request or per command
    assert "not-the-password" not in sidecar.stderr() and SIDECAR_PASSWORD not in sidecar.stderr()


# --- check and start-up: a wrong URL is named, without its password --------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://u:hunter2@h:6379/0", "scheme 'http' is not supported"),
        ("redis+sentinel://u:hunter2@h:26379,h2:26379", "needs the Sentinel service (master) name"),
        ("rediss://u:hunter2@h:6380/0?ssl_ca_certs=/nonexistent/ca.crt", "ssl_ca_certs=/nonexistent/ca.crt: no such file"),
        ("rediss://u:hunter2@h:6380/0?ssl_certfile=/etc/hostname", "needs both ssl_certfile and ssl_keyfile"),
        ("redis://u:hunter2@h:6379/0?ssl_ca_certs=/etc/hostname", "is not TLS; use rediss://"),
        ("redis+cluster://u:hunter2@h:7000/3", "has no databases"),
        ("redis://u:hunter2@h:6379/0?sentinel_password=x", "not a Sentinel URL"),
        ("redis://u:hunter2@h:6379/0?socket_timeout=1", "unknown query parameter socket_timeout"),
        ("redis://u:hunter2/0", "the port is not a number"),
        ("redis://h1:6379,h2:6379/0", "takes one host"),
    ],
)
def test_bad_redis_url_is_an_error_naming_the_part(url: str, expected: str) -> None:
    env = sandbox_env("http://127.0.0.1:1", url)
    with pytest.raises(ConfigError) as info:
        load_config(ROUTES, ERRORS, env=env)
    text = str(info.value)
    assert f"{ROUTES}:17: token_cache.redis_url: " in text and expected in text, text
    assert "hunter2" not in text


def test_unreadable_ca_file_from_redis_url_file_refuses_start_and_check(tmp_path: Path) -> None:
    url_file = tmp_path / "redis-url"
    url_file.write_text("rediss://partner-proxy:hunter2@redis.example:6380/0?ssl_ca_certs=/etc/redis-ca/ca.crt\n")
    env = {k: v for k, v in sandbox_env("http://127.0.0.1:1").items() if k != "REDIS_URL"}
    env["REDIS_URL_FILE"] = str(url_file)
    import os

    full_env = {**os.environ, **env}
    full_env.pop("REDIS_URL", None)
    for cmd in (["check"], ["serve"]):
        out = subprocess.run(
            [sys.executable, "-m", "proxy", *cmd, "--config", str(ROUTES), "--errors", str(ERRORS)],
            cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=60, check=False,
        )
        assert out.returncode != 0, cmd
        both = out.stdout + out.stderr
        assert "token_cache.redis_url: ssl_ca_certs=/etc/redis-ca/ca.crt: no such file" in both, both
        assert "hunter2" not in both


def test_good_urls_of_every_topology_load(pki: Pki) -> None:
    for url in (
        f"rediss://{SIDECAR_USER}:pw@127.0.0.1:6380/0?ssl_ca_certs={pki.ca}&ssl_certfile={pki.client_cert}&ssl_keyfile={pki.client_key}",
        "redis+sentinel://u:pw@10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26379/mymaster/0",
        f"rediss+sentinel://u:pw@s1:26379,s2/mymaster?ssl_ca_certs={pki.ca}&sentinel_password=spw",
        "redis+cluster://u:pw@c1:7000,c2:7001,c3:7002",
        f"rediss+cluster://u:pw@clustercfg.example:6379?ssl_ca_certs={pki.ca}",
        "unix:///run/redis/redis.sock?db=1",
    ):
        cfg = load_config(ROUTES, ERRORS, env=sandbox_env("http://127.0.0.1:1", url)).proxy
        assert cfg.token_cache.redis_url.reveal() == url


def test_the_documented_acl_is_the_one_the_tests_use() -> None:
    doc = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    assert SIDECAR_ACL_BASE in doc
    assert "+client|setinfo" in doc and "+cluster|slots +command" in doc


def test_acl_log_helper_sees_denials(tls_node: RedisProc, pki: Pki) -> None:
    """The ACL check above is only evidence if a denied command does show up in ACL LOG."""
    out = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(tls_node.port), "--tls", "--cacert", str(pki.ca),
         "--user", SIDECAR_USER, "--pass", SIDECAR_PASSWORD, "--no-auth-warning", "GET", "other:key"],
        capture_output=True, text=True, timeout=10, check=False,
    )
    assert "NOPERM" in out.stdout + out.stderr
    assert "other:key" in acl_log(tls_node.port, tls=pki)

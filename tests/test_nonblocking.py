"""Nothing blocks the event loop: blockbuster turns any blocking call made from proxy code while the
loop runs (file, socket, sleep, os.stat ...) into an error, over the paths a request can take.
``tests.blocking`` adds the TLS set-up calls that read files inside OpenSSL (a CA bundle, a client
certificate), which stock blockbuster cannot see."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer
from tests.blocking import no_blocking_calls
from tests.helpers import ERRORS, make_rig, patched_routes, sandbox_app, sandbox_env, shipped_config
from tests.process import metric_value
from tests.redis_topologies import SIDECAR_PASSWORD, SIDECAR_USER, make_pki, start_tls, temp_root, tls_query


@pytest.fixture(scope="module")
def tls_redis_url() -> Iterator[str]:
    """A TLS-only redis-server (CA and client certificate from openssl), as the sidecar's ACL user."""
    root = temp_root("pp-nb-tls-")
    pki = make_pki(root)
    node = start_tls(root, pki)
    try:
        yield f"rediss://{SIDECAR_USER}:{SIDECAR_PASSWORD}@127.0.0.1:{node.port}/0" + tls_query(pki)
    finally:
        node.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def sandbox(aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(sandbox_app())


async def test_request_paths_make_no_blocking_calls(aiohttp_client: Any, sandbox: TestServer, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    errors = tmp_path / "errors.yaml"
    shutil.copy(ERRORS, errors)
    routes = patched_routes(tmp_path, {"fail_max: 5": "fail_max: 2"})
    base = str(sandbox.make_url("")).rstrip("/")
    rig = await make_rig(aiohttp_client, sandbox, shipped_config(base, redis_url, routes=routes, errors=errors))
    with no_blocking_calls(["proxy"]):
        # cold token (Redis lock, endpoint, Redis write), then memory hits
        assert (await rig.get()).status == 200
        assert (await rig.get("?product_code=25k-xl", headers={"Accept-Language": "id"})).status == 200
        # mapped errors, unmapped, P08 renew + retry, 401 renew + retry, bad request
        for query, status in (("?product_code=error-S03", 503), ("?product_code=error-X42", 502), ("?product_code=error-P08", 403), ("?product_code=status-401", 502)):
            assert (await rig.get(query)).status == status
        assert (await rig.client.get("/v1/products")).status == 415
        # the money routes: body schema, a signed checkout (signing runs off the loop), a verified status
        body = b'{"data":{"type":"order","id":"nb-1","attributes":{"product_code":"25k-xl","client_number":"081234567890"}}}'
        headers = {"Content-Type": "application/json", "X-Client-Id": "app-1"}
        assert (await rig.client.post("/v1/orders", data=body, headers=headers)).status == 200
        assert (await rig.client.post("/v1/orders", data=b"{}", headers=headers)).status == 400
        assert (await rig.client.get("/v1/orders/nb-1", headers=headers)).status == 200
        assert (await rig.client.get("/v1/balance", headers=headers)).status == 200
        rig.partner.revoke_all()
        assert (await rig.get()).status == 200
        # the breaker opens, then short-circuits
        for _ in range(3):
            await rig.get("?product_code=status-500")
        assert (await rig.get()).status == 503
        # admin endpoints and a reload (the file is read in a thread)
        for path in ("/metrics", "/config", "/readyz", "/breakers"):
            assert (await rig.admin.get(path)).status == 200
        for name, value in sandbox_env(base, redis_url).items():  # a reload reads the process env
            monkeypatch.setenv(name, value)
        errors.write_text(errors.read_text().replace("status: 422", "status: 409"))
        assert await rig.state.reload(str(routes), str(errors))
        assert rig.state.current().loaded.errors["tokopedia"].match("U01", 400).rule.status == 409
        assert (await rig.get()).status == 503  # the breaker of the unchanged cluster survived the reload


@pytest.mark.redis_topology
async def test_a_tls_token_cache_makes_no_blocking_calls(aiohttp_client: Any, sandbox: TestServer, tls_redis_url: str) -> None:
    """redis-py's per-connection TLS context read the CA bundle and the certificate files on the
    loop for every new Redis connection; the client's one context is built before the loop serves."""
    base = str(sandbox.make_url("")).rstrip("/")
    ca = tls_redis_url.split("ssl_ca_certs=")[1].split("&")[0]
    rig = await make_rig(aiohttp_client, sandbox, shipped_config(base, tls_redis_url))
    with no_blocking_calls(["proxy"]):
        # cold: the lock, the fetch and the write open TLS connections; then a renewal
        statuses = [r.status for r in await asyncio.gather(*(rig.get() for _ in range(10)))]
        rig.partner.revoke_all()
        statuses.append((await rig.get()).status)
    assert statuses == [200] * 11
    assert rig.partner.token_requests == 2
    text = await (await rig.admin.get("/metrics")).text()
    # a blocking call inside redis-py surfaces as a counted Redis error, the token then fetched directly
    assert metric_value(text, "partner_proxy_redis_errors_total") == 0
    # and the token went through Redis: the renewed one is stored there
    check = aioredis.from_url(tls_redis_url.split("?")[0], ssl_ca_certs=str(ca))
    try:
        stored = await check.get("partner-proxy:token:tokopedia")
    finally:
        await check.aclose()
    assert isinstance(stored, bytes) and rig.partner.tokens_issued[-1] in stored.decode()


@pytest.mark.redis_topology
async def test_a_reload_onto_a_tls_token_cache_builds_its_context_off_the_loop(
    aiohttp_client: Any, sandbox: TestServer, tls_redis_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reload that changes ``token_cache`` builds the new Redis client, whose TLS context reads
    the CA bundle and the client certificate: in a thread, not on the loop that serves."""
    base = str(sandbox.make_url("")).rstrip("/")
    rig = await make_rig(aiohttp_client, sandbox, shipped_config(base))  # no Redis yet
    assert (await rig.get()).status == 200
    for name, value in sandbox_env(base, tls_redis_url).items():  # a reload reads the process env
        monkeypatch.setenv(name, value)
    with no_blocking_calls(["proxy"]):
        assert await rig.state.reload(str(rig.state.loaded.routes_path), str(ERRORS))
        rig.partner.revoke_all()  # the next request renews its token: through the new TLS store
        assert (await rig.get()).status == 200
    text = await (await rig.admin.get("/metrics")).text()
    assert metric_value(text, "partner_proxy_redis_errors_total") == 0

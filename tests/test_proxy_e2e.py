"""The whole sidecar (data + admin apps) against the real sandbox partner on loopback."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from tests.helpers import ERRORS, JSON_HEADERS, Rig, make_rig, patched_routes, sandbox_app, shipped_config


@pytest.fixture
async def sandbox(aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(sandbox_app())


@pytest.fixture
async def rig(aiohttp_client: Any, sandbox: TestServer) -> Rig:
    return await make_rig(aiohttp_client, sandbox, shipped_config(str(sandbox.make_url("")).rstrip("/")))


def base(sandbox: TestServer) -> str:
    return str(sandbox.make_url("")).rstrip("/")


async def envelope(resp: Any) -> dict[str, Any]:
    assert resp.headers["Content-Type"].startswith("application/json")
    body = await resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"type", "code", "message", "partner_code", "request_id"}
    assert body["error"]["request_id"] == resp.headers["X-Request-Id"]
    return body["error"]


# --- success path -----------------------------------------------------------------------------

async def test_product_list_passes_through_unchanged(rig: Rig, sandbox: TestServer) -> None:
    resp = await rig.get()
    assert resp.status == 200
    body = await resp.read()
    assert resp.headers["Content-Type"].startswith("application/json")
    # the same bytes the partner sends for the same call
    call = rig.partner.product_calls[-1]
    direct = await rig.client.session.get(
        sandbox.make_url("/v2/product-list"), headers={"Authorization": f"Bearer {call.token}"}
    )
    assert body == await direct.read()
    products = json.loads(body)["data"]
    assert {p["id"] for p in products} >= {"25k-xl", "kta-bank-dbs"}
    assert resp.headers["X-Request-Id"]


async def test_upstream_path_query_allowlist_and_headers(rig: Rig) -> None:
    resp = await rig.get(
        "?product_code=25k-xl&debug=1&admin=true",
        headers={
            "Authorization": "Bearer app-own-secret",
            "Cookie": "session=abc",
            "X-Request-Id": "req-123",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "X-Custom": "kept",
        },
    )
    assert resp.status == 200
    assert resp.headers["X-Request-Id"] == "req-123"
    data = (await resp.json())["data"]
    assert [p["id"] for p in data] == ["25k-xl"]
    call = rig.partner.product_calls[-1]
    assert call.path == "/v2/product-list"  # exactly the configured path, no trailing slash
    assert call.query == {"product_code": "25k-xl"}  # not debug/admin
    assert call.headers["Authorization"] != "Bearer app-own-secret"
    assert call.headers["Authorization"] == f"Bearer {rig.partner.tokens_issued[-1]}"
    assert "Cookie" not in call.headers
    assert call.headers["X-Request-Id"] == "req-123"
    assert call.headers["X-Custom"] == "kept"
    version, trace_id, span_id, flags = call.headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", "0af7651916cd43dd8448eb211c80319c", "01")
    assert span_id != "b7ad6b7169203331"


async def test_request_id_generated_and_unsafe_one_replaced(rig: Rig) -> None:
    resp = await rig.get(headers={"X-Request-Id": "bad id with spaces"})
    rid = resp.headers["X-Request-Id"]
    assert rid != "bad id with spaces" and len(rid) == 32
    assert rig.partner.product_calls[-1].headers["X-Request-Id"] == rid


async def test_token_is_fetched_once_and_cached(rig: Rig) -> None:
    for _ in range(5):
        assert (await rig.get()).status == 200
    assert rig.partner.token_requests == 1
    assert len({c.token for c in rig.partner.product_calls}) == 1


async def test_charset_parameter_is_accepted(rig: Rig) -> None:
    resp = await rig.get(headers={"Content-Type": "application/json; charset=utf-8"})
    assert resp.status == 200


# --- validation ---------------------------------------------------------------------------------

async def test_wrong_method_is_405_with_allow(rig: Rig) -> None:
    resp = await rig.client.post("/v1/products", headers=JSON_HEADERS, data=b"{}")
    assert resp.status == 405
    assert resp.headers["Allow"] == "GET"
    err = await envelope(resp)
    assert err["type"] == "MethodNotAllowed" and err["partner_code"] is None
    assert rig.partner.product_calls == []


async def test_method_is_checked_before_content_type(rig: Rig) -> None:
    resp = await rig.client.delete("/v1/products")
    assert resp.status == 405


async def test_missing_json_content_type_is_415(rig: Rig) -> None:
    resp = await rig.client.get("/v1/products", headers={"X-Client-Id": "a", "Content-Type": "text/plain"})
    assert resp.status == 415
    assert (await envelope(resp))["type"] == "UnsupportedMediaType"
    resp = await rig.client.get("/v1/products", headers={"X-Client-Id": "a"})
    assert resp.status == 415


async def test_missing_client_id_is_400(rig: Rig) -> None:
    resp = await rig.client.get("/v1/products", headers={"Content-Type": "application/json", "Accept-Language": "id"})
    assert resp.status == 400
    err = await envelope(resp)
    assert err["code"] == "MISSING_HEADER"
    assert "X-Client-Id" in err["message"] and "Header wajib" in err["message"]
    assert rig.partner.product_calls == []


async def test_unknown_path_is_404_envelope(rig: Rig) -> None:
    for path in ("/v1/other", "/v1/products/", "/v1/products/../x", "/V1/PRODUCTS"):
        resp = await rig.client.get(path, headers=JSON_HEADERS)
        assert resp.status == 404, path
        assert (await envelope(resp))["type"] == "RouteNotFound"
    assert rig.partner.product_calls == []


# --- the shipped error mapping, both languages ---------------------------------------------------

MAPPINGS = [
    # (fault, status, type, code, partner_code)
    ("error-U01", 422, "BillNotValidException", "BILL_NOT_VALID", "U01"),
    ("error-U03", 422, "BillNotValidException", "BILL_NOT_VALID", "U03"),
    ("error-P01", 403, "ForbiddenException", "PARTNER_FORBIDDEN", "P01"),
    ("error-P19", 403, "ForbiddenException", "PARTNER_FORBIDDEN", "P19"),
    ("not-exists", 403, "ForbiddenException", "PARTNER_FORBIDDEN", "P04"),
    ("error-S00", 503, "ProductClosedException", "PRODUCT_CLOSED", "S00"),
    ("error-S03", 503, "ProductClosedException", "PRODUCT_CLOSED", "S03"),
    ("error-S04", 503, "ProductClosedException", "PRODUCT_CLOSED", "S04"),
    ("error-P08", 403, "ForbiddenException", "TOKEN_REJECTED", "P08"),
    ("error-X42", 502, "PartnerError", "PARTNER_ERROR", "X42"),
    ("error-U04", 502, "PartnerError", "PARTNER_ERROR", "U04"),
    ("status-418", 502, "PartnerError", "PARTNER_ERROR", None),
    ("status-401", 502, "AuthenticationFailure", "AUTHENTICATION_FAILED", None),
]


@pytest.mark.parametrize("fault,status,type_,code,partner_code", MAPPINGS)
@pytest.mark.parametrize("language,marker", [("en", "The "), ("id-ID,id;q=0.9,en;q=0.8", "")])
async def test_shipped_error_mapping(rig: Rig, fault: str, status: int, type_: str, code: str, partner_code: str | None, language: str, marker: str) -> None:
    resp = await rig.get(f"?product_code={fault}", headers={"Accept-Language": language})
    assert resp.status == status
    err = await envelope(resp)
    assert (err["type"], err["code"], err["partner_code"]) == (type_, code, partner_code)
    table = rig.state.loaded.errors["tokopedia"]
    rule = table.match(partner_code, 0 if partner_code else int(fault.split("-")[1])).rule
    expected_lang = "en" if language == "en" else "id"
    assert err["message"] == rule.messages[expected_lang]
    assert err["message"].startswith(marker)


async def test_unknown_language_falls_back_to_default(rig: Rig) -> None:
    resp = await rig.get("?product_code=error-S03", headers={"Accept-Language": "fr-FR,de;q=0.5"})
    assert (await envelope(resp))["message"] == "The product is closed right now."


async def test_partner_errors_are_counted_with_code_labels(rig: Rig) -> None:
    await rig.get("?product_code=error-S03")
    await rig.get("?product_code=error-X42")
    text = await rig.metrics()
    assert 'partner_proxy_partner_errors_total{cluster="tokopedia",partner_code="S03",type="ProductClosedException"} 1.0' in text
    assert 'partner_proxy_partner_errors_total{cluster="tokopedia",partner_code="X42",type="PartnerError"} 1.0' in text
    assert 'partner_proxy_partner_unmapped_errors_total{cluster="tokopedia"} 1.0' in text


# --- token invalidation -----------------------------------------------------------------------------

async def test_revoked_token_p08_is_renewed_and_retried_once(rig: Rig) -> None:
    assert (await rig.get()).status == 200
    old = rig.partner.tokens_issued[-1]
    rig.partner.revoke_all()
    resp = await rig.get()
    assert resp.status == 200  # the retry with a fresh token succeeded
    calls = rig.partner.product_calls
    assert calls[-2].token == old
    assert calls[-1].token != old and calls[-1].token == rig.partner.tokens_issued[-1]
    assert rig.partner.token_requests == 2


async def test_p08_twice_returns_the_mapped_error_after_one_retry(rig: Rig) -> None:
    before = len(rig.partner.product_calls)
    resp = await rig.get("?product_code=error-P08")
    assert resp.status == 403
    assert (await envelope(resp))["partner_code"] == "P08"
    calls = rig.partner.product_calls[before:]
    assert len(calls) == 2  # the first try and exactly one retry
    assert calls[0].token != calls[1].token  # after a P08 the next partner call carries a new token


async def test_partner_401_is_retried_then_authentication_failure(rig: Rig) -> None:
    before = len(rig.partner.product_calls)
    resp = await rig.get("?product_code=status-401")
    assert resp.status == 502
    assert (await envelope(resp))["type"] == "AuthenticationFailure"
    assert len(rig.partner.product_calls) - before == 2


async def test_bad_client_secret_gives_authentication_failure(aiohttp_client: Any, sandbox: TestServer) -> None:
    loaded = shipped_config(base(sandbox), TOKOPEDIA_CLIENT_SECRET="wrong-secret")
    rig = await make_rig(aiohttp_client, sandbox, loaded)
    resp = await rig.get()
    assert resp.status == 503
    assert resp.headers["Retry-After"].isdigit()
    err = await envelope(resp)
    assert err["type"] == "AuthenticationFailure"
    assert "wrong-secret" not in json.dumps(err)
    assert rig.partner.product_calls == []


async def test_token_shared_through_redis(aiohttp_client: Any, sandbox: TestServer, redis_url: str) -> None:
    loaded = shipped_config(base(sandbox), redis_url)
    first = await make_rig(aiohttp_client, sandbox, loaded)
    assert (await first.get()).status == 200
    second = await make_rig(aiohttp_client, sandbox, loaded)  # another "replica"
    assert (await second.get()).status == 200
    assert first.partner.token_requests == 1
    r = aioredis.from_url(redis_url)
    try:
        raw = await r.get("partner-proxy:token:tokopedia")
    finally:
        await r.aclose()
    assert raw is not None and first.partner.tokens_issued[-1].encode() in raw


# --- transport failures ------------------------------------------------------------------------------

async def test_hanging_partner_gives_504(aiohttp_client: Any, sandbox: TestServer, tmp_path: Any) -> None:
    routes = patched_routes(tmp_path, {"timeout: 10s": "timeout: 300ms", "attempts: 1": "attempts: 0"})
    rig = await make_rig(aiohttp_client, sandbox, shipped_config(base(sandbox), routes=routes))
    resp = await rig.get("?product_code=hang")
    assert resp.status == 504
    assert (await envelope(resp))["type"] == "GatewayTimeout"


async def test_closed_port_gives_502(aiohttp_client: Any, sandbox: TestServer) -> None:
    from tests.redis_server import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    loaded = shipped_config(dead, TOKOPEDIA_TOKEN_URL=base(sandbox) + "/token")
    rig = await make_rig(aiohttp_client, sandbox, loaded)
    resp = await rig.get()
    assert resp.status == 502
    assert (await envelope(resp))["code"] == "UPSTREAM_UNREACHABLE"


async def test_reset_connection_gives_502(rig: Rig) -> None:
    resp = await rig.get("?product_code=reset")
    assert resp.status == 502
    assert (await envelope(resp))["type"] == "BadGateway"


async def test_non_json_5xx_is_partner_error_and_retried(rig: Rig) -> None:
    before = len(rig.partner.product_calls)
    resp = await rig.get("?product_code=status-500")
    assert resp.status == 502
    err = await envelope(resp)
    assert err["type"] == "PartnerError" and err["partner_code"] is None
    assert len(rig.partner.product_calls) - before == 2  # retry.attempts: 1 on 5xx for GET


# --- admin ---------------------------------------------------------------------------------------------

async def test_admin_endpoints(rig: Rig) -> None:
    await rig.get()
    assert (await rig.admin.get("/healthz")).status == 200
    ready = await rig.admin.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["breakers"] == {"tokopedia": "closed"}
    text = await rig.metrics()
    assert 'partner_proxy_requests_total{route="get_products",status="200"} 1.0' in text
    assert 'partner_proxy_request_duration_seconds_count{route="get_products"} 1.0' in text
    assert 'partner_proxy_circuit_breaker_state{cluster="tokopedia",state="closed"} 1.0' in text
    cfg = await (await rig.admin.get("/config")).text()
    assert "sandbox-secret" not in cfg and '"client_secret": "***"' in cfg
    rig.state.draining = True
    assert (await rig.admin.get("/readyz")).status == 503


async def test_reload_that_replaces_a_cluster_lets_in_flight_requests_finish(aiohttp_client: Any, sandbox: TestServer, tmp_path: Any) -> None:
    """A reload retires the old cluster (its pool and breaker); requests still using it must finish."""
    routes = patched_routes(tmp_path, {})
    rig = await make_rig(aiohttp_client, sandbox, shipped_config(base(sandbox), routes=routes))
    assert (await rig.get()).status == 200
    slow = asyncio.create_task(rig.get("?product_code=delay-500"))
    await asyncio.sleep(0.2)
    routes.write_text(routes.read_text().replace("timeout: 10s", "timeout: 9s"))  # a changed cluster
    from tests.helpers import sandbox_env
    import os

    env = sandbox_env(base(sandbox))
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert await rig.state.reload(str(routes), str(ERRORS))
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    resp = await slow
    assert resp.status == 200, await resp.text()
    assert (await rig.get()).status == 200  # and the new cluster serves


async def test_aiohttp_client_option_serves_the_same_contract(aiohttp_client: Any, sandbox: TestServer, tmp_path: Any) -> None:
    """``clusters.<name>.client: aiohttp`` (the fallback to aiohttp's ClientSession) behaves the same."""
    routes = patched_routes(tmp_path, {"    max_connections: 100": "    max_connections: 100\n    client: aiohttp", "timeout: 10s": "timeout: 300ms"})
    rig = await make_rig(aiohttp_client, sandbox, shipped_config(base(sandbox), routes=routes))
    assert rig.state.current().clusters["tokopedia"].pool is None
    resp = await rig.get("?product_code=25k-xl")
    assert resp.status == 200 and [p["id"] for p in (await resp.json())["data"]] == ["25k-xl"]
    resp = await rig.get("?product_code=error-S03", headers={"Accept-Language": "id"})
    assert resp.status == 503 and (await envelope(resp))["message"] == "Produk sedang ditutup"
    assert (await rig.get("?product_code=hang")).status == 504
    assert (await rig.get("?product_code=reset")).status == 502
    rig.partner.revoke_all()
    assert (await rig.get()).status == 200


def test_unknown_client_option_is_a_config_error(tmp_path: Any) -> None:
    from proxy.config import load_config
    from proxy.errors import ConfigError
    from tests.helpers import sandbox_env

    routes = patched_routes(tmp_path, {"    max_connections: 100": "    max_connections: 100\n    client: curl"})
    with pytest.raises(ConfigError, match="'curl' is not one of http11, aiohttp"):
        load_config(routes, ERRORS, env=sandbox_env("http://127.0.0.1:1"))

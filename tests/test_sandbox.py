"""The sandbox partner behaves like the partner notes say, and every fault is reachable.

Everything runs on loopback through real HTTP (``aiohttp_client`` / ``run_sandbox``), because
the point of the sandbox is what a client sees on the wire: statuses, content types, bodies and
dropped connections.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote_plus

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.sandbox import (
    SANDBOX_STATE,
    SandboxSettings,
    SandboxState,
    build_sandbox_app,
    run_sandbox,
)
from proxy.sandbox.catalogue import (
    PRODUCTS,
    DelayFault,
    ErrorFault,
    GarbageFault,
    HangFault,
    InvalidFault,
    ResetFault,
    StatusFault,
    parse_fault,
    split_product_codes,
)

MakeClient = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]

BASIC = aiohttp.encode_basic_auth("sandbox-client", "sandbox-secret")
FORM = {"grant_type": "client_credentials"}
ALL_IDS = [p.code for p in PRODUCTS]


class FakeClock:
    """A settable monotonic clock so token expiry is tested without sleeping."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def client(aiohttp_client: MakeClient) -> Client:
    return await aiohttp_client(build_sandbox_app())


def state_of(client: Client) -> SandboxState:
    return client.app[SANDBOX_STATE]


async def fetch_token(client: Client) -> str:
    resp = await client.post("/token", data=FORM, headers={"Authorization": BASIC})
    assert resp.status == 200, await resp.text()
    token = (await resp.json())["access_token"]
    assert isinstance(token, str)
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def product_list(
    client: Client, token: str | None, path: str = "/v2/product-list", **kwargs: Any
) -> aiohttp.ClientResponse:
    headers = dict(kwargs.pop("headers", {}))
    if token is not None:
        headers.update(bearer(token))
    return await client.get(path, headers=headers, **kwargs)


def p_error(code: str, detail: str, status: int) -> dict[str, Any]:
    return {"errors": [{"code": code, "detail": detail, "status": str(status)}]}


# --------------------------------------------------------------------------- token endpoint


async def test_token_basic_auth_with_form_body(client: Client) -> None:
    resp = await client.post("/token", data=FORM, headers={"Authorization": BASIC})
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 86400
    assert isinstance(body["expires_in"], int)
    assert body["access_token"].startswith("c:")
    assert len(body["access_token"]) > 10
    state = state_of(client)
    assert state.token_requests == 1
    assert state.tokens_issued == [body["access_token"]]


async def test_token_basic_auth_with_query_grant_type_and_empty_body(client: Client) -> None:
    resp = await client.post(
        "/token", params={"grant_type": "client_credentials"}, headers={"Authorization": BASIC}
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["access_token"] == state_of(client).tokens_issued[0]


async def test_token_form_credentials_without_basic(client: Client) -> None:
    data = {**FORM, "client_id": "sandbox-client", "client_secret": "sandbox-secret"}
    resp = await client.post("/token", data=data)
    assert resp.status == 200
    assert (await resp.json())["token_type"] == "Bearer"


async def test_token_accepts_form_encoded_basic_credentials(aiohttp_client: MakeClient) -> None:
    """Go's clientcredentials URL-escapes id and secret before Basic-encoding them."""
    secret = "s3cr/t+&= x"
    client = await aiohttp_client(build_sandbox_app(SandboxSettings(client_secret=secret)))
    escaped = aiohttp.encode_basic_auth("sandbox-client", quote_plus(secret))
    plain = aiohttp.encode_basic_auth("sandbox-client", secret)
    for header in (escaped, plain):
        resp = await client.post("/token", data=FORM, headers={"Authorization": header})
        assert resp.status == 200, header


async def test_each_token_is_new_and_old_tokens_stay_valid(client: Client) -> None:
    first = await fetch_token(client)
    second = await fetch_token(client)
    assert first != second
    assert state_of(client).tokens_issued == [first, second]
    for token in (first, second):
        resp = await product_list(client, token)
        assert resp.status == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": aiohttp.encode_basic_auth("sandbox-client", "wrong")},
        {"Authorization": aiohttp.encode_basic_auth("someone-else", "sandbox-secret")},
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": "Bearer c:abc"},
        {},
    ],
    ids=["bad-secret", "bad-id", "malformed-basic", "not-basic", "missing"],
)
async def test_token_bad_or_missing_credentials_is_401(
    client: Client, headers: dict[str, str]
) -> None:
    resp = await client.post("/token", data=FORM, headers=headers)
    assert resp.status == 401
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["error"] == "invalid_client"
    assert isinstance(body["error_description"], str) and body["error_description"]
    assert resp.headers["WWW-Authenticate"].startswith("Basic")
    state = state_of(client)
    assert state.token_requests == 1
    assert state.tokens_issued == []


async def test_token_bad_form_secret_is_401(client: Client) -> None:
    data = {**FORM, "client_id": "sandbox-client", "client_secret": "nope"}
    resp = await client.post("/token", data=data)
    assert resp.status == 401
    assert (await resp.json())["error"] == "invalid_client"


@pytest.mark.parametrize("data", [{"grant_type": "password"}, {}], ids=["wrong", "missing"])
async def test_token_wrong_or_missing_grant_type_is_400(
    client: Client, data: dict[str, str]
) -> None:
    resp = await client.post("/token", data=data, headers={"Authorization": BASIC})
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == "unsupported_grant_type"
    assert body["error_description"]
    assert state_of(client).tokens_issued == []


async def test_token_mode_500(client: Client) -> None:
    state_of(client).token_mode = "500"
    resp = await client.post("/token", data=FORM, headers={"Authorization": BASIC})
    assert resp.status == 500
    assert (await resp.json())["error"] == "server_error"
    assert state_of(client).tokens_issued == []


async def test_token_mode_garbage_is_200_with_non_json(client: Client) -> None:
    state_of(client).token_mode = "garbage"
    resp = await client.post("/token", data=FORM, headers={"Authorization": BASIC})
    assert resp.status == 200
    assert resp.content_type == "application/json"
    with pytest.raises(ValueError):
        json.loads(await resp.text())
    assert state_of(client).tokens_issued == []


async def test_token_mode_empty_is_200_empty_object(client: Client) -> None:
    state_of(client).token_mode = "empty"
    resp = await client.post("/token", data=FORM, headers={"Authorization": BASIC})
    assert resp.status == 200
    assert await resp.json() == {}


async def test_token_mode_no_expires_gives_a_usable_token(client: Client) -> None:
    state_of(client).token_mode = "no_expires"
    resp = await client.post("/token", data=FORM, headers={"Authorization": BASIC})
    assert resp.status == 200
    body = await resp.json()
    assert "expires_in" not in body
    assert body["token_type"] == "Bearer"
    assert (await product_list(client, body["access_token"])).status == 200


async def test_token_mode_slow_then_ok(client: Client) -> None:
    state = state_of(client)
    state.token_mode = "slow"
    state.token_delay = 0.05
    token = await fetch_token(client)
    assert state.tokens_issued == [token]


async def test_token_mode_down_drops_the_connection(aiohttp_client: MakeClient) -> None:
    app = build_sandbox_app()
    app[SANDBOX_STATE].token_mode = "down"
    client = await aiohttp_client(app, connector=aiohttp.TCPConnector(force_close=True))
    with pytest.raises(aiohttp.ClientConnectionError):
        await client.post("/token", data=FORM, headers={"Authorization": BASIC})
    assert app[SANDBOX_STATE].token_requests == 1
    assert app[SANDBOX_STATE].tokens_issued == []


# --------------------------------------------------------------------------- ping and products


async def test_ping(client: Client) -> None:
    resp = await client.get("/ping")
    assert resp.status == 200
    assert await resp.json() == {"buildhash": "sandbox", "sandbox": True, "status": "ok"}


async def test_list_all_products(client: Client) -> None:
    token = await fetch_token(client)
    resp = await product_list(client, token)
    assert resp.status == 200
    assert resp.content_type == "application/json"
    data = (await resp.json())["data"]
    assert [item["id"] for item in data] == ALL_IDS
    assert len(data) == 9  # 8 until pln-postpaid (the checkout notes' inquiry example) joined
    assert data[0] == {
        "type": "product",
        "id": "25k-xl",
        "attributes": {
            "product_name": "XL 25,000",
            "price": 24913,
            "is_inquiry": False,
            "status": 1,
        },
    }
    assert data[1] == {
        "type": "product",
        "id": "kta-bank-dbs",
        "attributes": {
            "product_name": "Bank DBS KTA Bank DBS",
            "price": 4797124,
            "is_inquiry": True,
            "status": 1,
        },
    }
    assert {item["attributes"]["status"] for item in data} == {1, 2, 3}
    for item in data:
        attrs = item["attributes"]
        assert item["type"] == "product"
        assert set(attrs) == {"product_name", "price", "is_inquiry", "status"}
        assert isinstance(attrs["price"], int) and isinstance(attrs["is_inquiry"], bool)


async def test_empty_product_code_lists_all(client: Client) -> None:
    """The Go SDK always sends ``product_code=``."""
    token = await fetch_token(client)
    resp = await client.get("/v2/product-list?product_code=", headers=bearer(token))
    assert resp.status == 200
    assert [item["id"] for item in (await resp.json())["data"]] == ALL_IDS


async def test_filter_by_product_codes(client: Client) -> None:
    token = await fetch_token(client)
    resp = await product_list(client, token, params={"product_code": "kta-bank-dbs,25k-xl"})
    assert resp.status == 200
    data = (await resp.json())["data"]
    assert [item["id"] for item in data] == ["kta-bank-dbs", "25k-xl"]


async def test_filter_partial_match_returns_only_found(client: Client) -> None:
    token = await fetch_token(client)
    resp = await product_list(client, token, params={"product_code": "nope,telkomsel-50k"})
    assert resp.status == 200
    data = (await resp.json())["data"]
    assert data == [
        {
            "type": "product",
            "id": "telkomsel-50k",
            "attributes": {
                "product_name": "Telkomsel 50,000",
                "price": 49850,
                "is_inquiry": False,
                "status": 3,
            },
        }
    ]


async def test_trailing_slash_form(client: Client) -> None:
    token = await fetch_token(client)
    resp = await product_list(
        client, token, path="/v2/product-list/", params={"product_code": "pln-prepaid-20k"}
    )
    assert resp.status == 200
    assert [item["id"] for item in (await resp.json())["data"]] == ["pln-prepaid-20k"]


async def test_product_not_found_is_400_p04(client: Client) -> None:
    token = await fetch_token(client)
    resp = await product_list(client, token, params={"product_code": "not-exists,also-not"})
    assert resp.status == 400
    assert resp.content_type == "application/json"
    assert await resp.json() == p_error("P04", "Product not found", 400)


# --------------------------------------------------------------------------- bearer check


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer a b"},
    ],
    ids=["missing", "basic", "empty-bearer", "two-words"],
)
async def test_missing_or_malformed_bearer_is_401_without_jsonapi(
    client: Client, headers: dict[str, str]
) -> None:
    resp = await client.get("/v2/product-list", headers=headers)
    assert resp.status == 401
    assert resp.content_type == "text/plain"
    text = await resp.text()
    assert "errors" not in text
    assert state_of(client).product_calls[-1].token is None


async def test_unknown_token_is_403_p08(client: Client) -> None:
    resp = await product_list(client, "c:never-issued")
    assert resp.status == 403
    assert resp.content_type == "application/json"
    assert await resp.json() == p_error("P08", "Access token invalid or expired", 403)


async def test_bearer_scheme_is_case_insensitive(client: Client) -> None:
    token = await fetch_token(client)
    resp = await client.get("/v2/product-list", headers={"Authorization": f"bearer {token}"})
    assert resp.status == 200


async def test_expired_token_is_403_p08(aiohttp_client: MakeClient) -> None:
    clock = FakeClock()
    client = await aiohttp_client(build_sandbox_app(SandboxSettings(token_ttl=1), clock=clock))
    resp = await client.post("/token", data=FORM, headers={"Authorization": BASIC})
    body = await resp.json()
    assert body["expires_in"] == 1
    token = body["access_token"]

    clock.now += 0.5
    assert (await product_list(client, token)).status == 200
    clock.now += 0.5
    resp = await product_list(client, token)
    assert resp.status == 403
    assert await resp.json() == p_error("P08", "Access token invalid or expired", 403)

    fresh = await fetch_token(client)  # a new token is valid from the new "now"
    assert (await product_list(client, fresh)).status == 200


async def test_clock_can_be_swapped_on_the_state(client: Client) -> None:
    clock = FakeClock()
    state_of(client).clock = clock
    token = await fetch_token(client)
    clock.now += 86400
    assert (await product_list(client, token)).status == 403


def test_expires_in_is_an_int_of_at_least_one() -> None:
    assert SandboxSettings(token_ttl=0.25).expires_in == 1
    assert SandboxSettings(token_ttl=3600.9).expires_in == 3600
    assert SandboxSettings().expires_in == 86400


async def test_revoke_all_makes_tokens_p08(client: Client) -> None:
    old = await fetch_token(client)
    assert (await product_list(client, old)).status == 200
    state_of(client).revoke_all()
    resp = await product_list(client, old)
    assert resp.status == 403
    assert (await resp.json())["errors"][0]["code"] == "P08"
    new = await fetch_token(client)
    assert (await product_list(client, new)).status == 200


async def test_product_calls_are_recorded(client: Client) -> None:
    token = await fetch_token(client)
    await product_list(
        client,
        token,
        path="/v2/product-list/",
        params={"product_code": "25k-xl", "other": "x"},
        headers={"X-Client-Id": "app-1", "Accept-Language": "id"},
    )
    await client.get("/v2/product-list")
    first, second = state_of(client).product_calls
    assert first.method == "GET"
    assert first.path == "/v2/product-list/"
    assert first.query == {"product_code": "25k-xl", "other": "x"}
    assert first.headers["x-client-id"] == "app-1"
    assert first.headers["Accept-Language"] == "id"
    assert first.token == token
    assert second.token is None
    assert second.query == {}


# --------------------------------------------------------------------------- fault injection


@pytest.mark.parametrize(
    ("fault", "status", "code", "detail"),
    [
        ("error-S03", 400, "S03", "Product temporarily closed for maintenance"),
        ("error-U01", 400, "U01", "Client number is invalid or unregistered"),
        ("error-P08", 403, "P08", "Access token invalid or expired"),
        ("error-S00", 500, "S00", "Internal Server Error"),
        ("error-S01", 503, "S01", "Biller or supplier error or timeout"),
        ("error-P03", 400, "P03", "Duplicate Request ID"),
        ("error-X42", 400, "X42", "Unknown error"),
        ("error-p04", 400, "P04", "Product not found"),
    ],
)
async def test_error_fault_via_product_code(
    client: Client, fault: str, status: int, code: str, detail: str
) -> None:
    token = await fetch_token(client)
    resp = await product_list(client, token, params={"product_code": fault})
    assert resp.status == status
    assert resp.content_type == "application/json"
    assert await resp.json() == p_error(code, detail, status)


async def test_fault_among_real_codes_still_fires(client: Client) -> None:
    token = await fetch_token(client)
    resp = await product_list(client, token, params={"product_code": "25k-xl,error-S04"})
    assert resp.status == 400
    assert (await resp.json())["errors"][0]["code"] == "S04"


@pytest.mark.parametrize("status", [500, 401, 429, 502, 503])
async def test_status_fault_is_non_json(client: Client, status: int) -> None:
    token = await fetch_token(client)
    resp = await product_list(client, token, params={"product_code": f"status-{status}"})
    assert resp.status == status
    assert resp.content_type == "text/html"
    text = await resp.text()
    assert str(status) in text
    with pytest.raises(ValueError):
        json.loads(text)
    if status in (429, 503):
        assert resp.headers["Retry-After"] == "1"


async def test_delay_fault_answers_full_list(client: Client) -> None:
    token = await fetch_token(client)
    resp = await product_list(client, token, params={"product_code": "delay-50"})
    assert resp.status == 200
    assert [item["id"] for item in (await resp.json())["data"]] == ALL_IDS


async def test_hang_fault_times_the_client_out(client: Client) -> None:
    token = await fetch_token(client)
    with pytest.raises(asyncio.TimeoutError):
        await product_list(
            client,
            token,
            params={"product_code": "hang"},
            timeout=aiohttp.ClientTimeout(total=0.2),
        )
    # The sandbox is still serving.
    assert (await product_list(client, token)).status == 200


@pytest.mark.timeout(20)
async def test_hang_ends_when_client_leaves_even_without_handler_cancellation() -> None:
    """A runner without handler_cancellation must not keep a 300 s hang alive."""
    app = build_sandbox_app()
    prepared: list[int] = []

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        prepared.append(response.status)

    app.on_response_prepare.append(on_prepare)
    runner = web.AppRunner(app)  # handler_cancellation defaults to False
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        token = app[SANDBOX_STATE].issue_token()
        async with aiohttp.ClientSession() as session:
            with pytest.raises(asyncio.TimeoutError):
                await session.get(
                    f"http://127.0.0.1:{port}/v2/product-list?product_code=hang",
                    headers=bearer(token),
                    timeout=aiohttp.ClientTimeout(total=0.2),
                )
        while not prepared:  # bounded by the test timeout, well below the 300 s hang
            await asyncio.sleep(0.02)
        assert prepared == [503]
    finally:
        await runner.cleanup()


async def test_reset_fault_drops_the_connection(aiohttp_client: MakeClient) -> None:
    # force_close: aiohttp's client silently retries a GET once on a *reused* connection.
    client = await aiohttp_client(
        build_sandbox_app(), connector=aiohttp.TCPConnector(force_close=True)
    )
    token = await fetch_token(client)
    with pytest.raises(aiohttp.ClientConnectionError):
        await product_list(client, token, params={"product_code": "reset"})
    assert len(state_of(client).product_calls) == 1
    assert (await product_list(client, token)).status == 200


async def test_garbage_fault_is_500_claiming_json(client: Client) -> None:
    token = await fetch_token(client)
    resp = await product_list(client, token, params={"product_code": "garbage"})
    assert resp.status == 500
    assert resp.content_type == "application/json"
    with pytest.raises(ValueError):
        json.loads(await resp.text())


async def test_fault_via_header(client: Client) -> None:
    token = await fetch_token(client)
    resp = await product_list(client, token, headers={"X-Sandbox-Fault": "error-S03"})
    assert resp.status == 400
    assert await resp.json() == p_error("S03", "Product temporarily closed for maintenance", 400)


async def test_header_fault_wins_over_product_code(client: Client) -> None:
    token = await fetch_token(client)
    resp = await product_list(
        client,
        token,
        params={"product_code": "error-U01"},
        headers={"X-Sandbox-Fault": "status-502"},
    )
    assert resp.status == 502
    assert resp.content_type == "text/html"


async def test_header_reset_fault(aiohttp_client: MakeClient) -> None:
    client = await aiohttp_client(
        build_sandbox_app(), connector=aiohttp.TCPConnector(force_close=True)
    )
    token = await fetch_token(client)
    with pytest.raises(aiohttp.ClientConnectionError):
        await product_list(client, token, headers={"X-Sandbox-Fault": "reset"})


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("query", "status-99"),
        ("query", "delay-soon"),
        ("query", "error-!"),
        ("header", "nonsense"),
        ("header", "status-700"),
    ],
)
async def test_malformed_fault_is_400_p01(client: Client, where: str, value: str) -> None:
    token = await fetch_token(client)
    kwargs: dict[str, Any] = (
        {"params": {"product_code": value}}
        if where == "query"
        else {"headers": {"X-Sandbox-Fault": value}}
    )
    resp = await product_list(client, token, **kwargs)
    assert resp.status == 400
    error = (await resp.json())["errors"][0]
    assert error["code"] == "P01"
    assert error["status"] == "400"
    assert value in error["detail"]


async def test_faults_need_a_valid_token_first(client: Client) -> None:
    resp = await client.get("/v2/product-list", params={"product_code": "error-S03"})
    assert resp.status == 401
    resp = await product_list(client, "c:unknown", headers={"X-Sandbox-Fault": "status-500"})
    assert resp.status == 403
    assert (await resp.json())["errors"][0]["code"] == "P08"


# --------------------------------------------------------------------------- control endpoints


async def test_stats_endpoint(client: Client) -> None:
    token = await fetch_token(client)
    await client.post("/token", data=FORM)  # a failed token request counts too
    await product_list(client, token)
    await client.get("/v2/product-list")
    resp = await client.get("/_sandbox/stats")
    assert resp.status == 200
    assert await resp.json() == {
        "token_requests": 2,
        "tokens_issued": 1,
        "product_calls": 2,
        "last_tokens": [token, None],
    }


async def test_revoke_endpoint(client: Client) -> None:
    token = await fetch_token(client)
    resp = await client.post("/_sandbox/revoke")
    assert resp.status == 200
    assert (await product_list(client, token)).status == 403


async def test_token_mode_endpoint(client: Client) -> None:
    resp = await client.post("/_sandbox/token-mode", json={"mode": "500", "delay": 0.5})
    assert resp.status == 200
    assert await resp.json() == {"mode": "500", "delay": 0.5}
    state = state_of(client)
    assert (state.token_mode, state.token_delay) == ("500", 0.5)
    resp = await client.post("/token", data=FORM, headers={"Authorization": BASIC})
    assert resp.status == 500


@pytest.mark.parametrize(
    "payload", [{"mode": "sometimes"}, {"delay": 1}, {"mode": "slow", "delay": "1"}, [1]]
)
async def test_token_mode_endpoint_rejects_bad_input(client: Client, payload: object) -> None:
    resp = await client.post("/_sandbox/token-mode", json=payload)
    assert resp.status == 400
    assert state_of(client).token_mode == "ok"


async def test_token_mode_endpoint_rejects_non_json(client: Client) -> None:
    resp = await client.post("/_sandbox/token-mode", data=b"mode=500")
    assert resp.status == 400


async def test_reset_endpoint(client: Client) -> None:
    token = await fetch_token(client)
    await product_list(client, token)
    state = state_of(client)
    state.token_mode = "slow"
    state.token_delay = 2.0
    resp = await client.post("/_sandbox/reset")
    assert resp.status == 200
    assert await resp.json() == {
        "token_requests": 0,
        "tokens_issued": 0,
        "product_calls": 0,
        "last_tokens": [],
    }
    assert (state.token_mode, state.token_delay) == ("ok", 0.0)
    # Reset clears counters, not validity: a sidecar's cached token keeps working.
    assert (await product_list(client, token)).status == 200


async def test_each_app_has_its_own_state(aiohttp_client: MakeClient) -> None:
    one, two = build_sandbox_app(), build_sandbox_app()
    assert one[SANDBOX_STATE] is not two[SANDBOX_STATE]
    client_one = await aiohttp_client(one)
    client_two = await aiohttp_client(two)
    token = await fetch_token(client_one)
    assert (await product_list(client_two, token)).status == 403


# --------------------------------------------------------------------------- run_sandbox


@pytest.mark.timeout(20)
async def test_run_sandbox_serves_and_cleanup_ends_a_hang() -> None:
    runner = await run_sandbox("127.0.0.1", 0, SandboxSettings(client_id="cli"))
    cleaned = False
    try:
        port = runner.addresses[0][1]
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/ping") as resp:
                assert (await resp.json())["sandbox"] is True
            async with session.post(
                f"{base}/token",
                data=FORM,
                headers={"Authorization": aiohttp.encode_basic_auth("cli", "sandbox-secret")},
            ) as resp:
                token = (await resp.json())["access_token"]
            hang = asyncio.create_task(
                session.get(f"{base}/v2/product-list?product_code=hang", headers=bearer(token))
            )
            while not runner.app[SANDBOX_STATE].product_calls:
                await asyncio.sleep(0.01)
            await runner.cleanup()  # must not wait out the 300 s hang
            cleaned = True
            try:
                resp = await hang
            except aiohttp.ClientConnectionError:
                pass  # also acceptable: the server went away
            else:
                assert resp.status == 503
                resp.release()
    finally:
        if not cleaned:
            await runner.cleanup()


# --------------------------------------------------------------------------- fault grammar


@pytest.mark.parametrize(
    ("token", "fault"),
    [
        ("error-S03", ErrorFault("S03")),
        ("error-s03", ErrorFault("S03")),
        ("status-429", StatusFault(429)),
        ("delay-50", DelayFault(0.05)),
        ("delay-999999", DelayFault(60.0)),
        ("hang", HangFault()),
        (" RESET ", ResetFault()),
        ("garbage", GarbageFault()),
        ("25k-xl", None),
        ("statusquo", None),
    ],
)
def test_parse_fault(token: str, fault: object) -> None:
    assert parse_fault(token) == fault


@pytest.mark.parametrize(
    "token", ["error-", "error-1AB", "status-600", "status-1xx", "delay-", "delay--1"]
)
def test_parse_fault_rejects_malformed(token: str) -> None:
    with pytest.raises(InvalidFault):
        parse_fault(token)


def test_split_product_codes() -> None:
    assert split_product_codes(None) == []
    assert split_product_codes("") == []
    assert split_product_codes(" , ,") == []
    assert split_product_codes("a, b,a,,c") == ["a", "b", "c"]

"""The upstream side through the whole app, on both transports, against a raw partner on loopback.

The token still comes from the sandbox; partner calls go to ``RawPartner``, which records every
request it read and answers with exact bytes (or never, or by closing).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.helpers import JSON_HEADERS, Rig, make_rig, patched_routes, sandbox_app, shipped_config
from tests.redis_server import free_port

HANG = b"<hang>"
Answer = Callable[[bytes], bytes | None]  # request -> bytes to send (None: close at once, HANG: never answer)


class RawPartner:
    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.answer: Answer = lambda req: b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"data\":[]}"
        self.delay = 0.0
        self.close_after = False
        self.gate: asyncio.Event | None = None  # set: answers wait for it
        self._tasks: set[asyncio.Task[Any]] = set()
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> RawPartner:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=2048)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length) if length else b""
                if b" /token" in head.split(b"\r\n", 1)[0]:
                    continue
                self.requests.append(head + body)
                data = self.answer(head + body)
                if data is None:
                    break
                if data == HANG:
                    await asyncio.sleep(3600)
                if self.delay:
                    await asyncio.sleep(self.delay)
                if self.gate is not None:
                    await self.gate.wait()
                writer.write(data)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)




@pytest.fixture
async def sandbox(aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(sandbox_app())


@pytest.fixture
async def partner() -> AsyncIterator[RawPartner]:
    p = await RawPartner().start()
    yield p
    await p.close()


async def rig_for(aiohttp_client: Any, sandbox: TestServer, tmp_path: Path, base_url: str, client: str, extra: str = "", attempts: int = 1, timeout: str = "10s") -> Rig:
    routes = patched_routes(
        tmp_path,
        {
            "    max_connections: 100": f"    max_connections: 100\n    client: {client}{extra}",
            "retry: {attempts: 1,": f"retry: {{attempts: {attempts},",
            "timeout: 10s": f"timeout: {timeout}",
        },
    )
    sandbox_url = str(sandbox.make_url("")).rstrip("/")
    return await make_rig(aiohttp_client, sandbox, shipped_config(sandbox_url, routes=routes, TOKOPEDIA_BASE_URL=base_url))


async def envelope(resp: Any) -> dict[str, Any]:
    assert resp.headers["Content-Type"].startswith("application/json")
    body = await resp.json()
    assert set(body) == {"error"} and body["error"]["request_id"] == resp.headers["X-Request-Id"]
    return body["error"]


async def post_order(rig: Rig) -> Any:
    body = {"data": {"type": "order", "id": "order-1", "attributes": {"product_code": "25k-xl", "client_number": "081234567890"}}}
    return await rig.client.post("/v1/orders", json=body, headers={"X-Client-Id": "app-1"})


KINDS = ["http11", "aiohttp"]
S = b"HTTP/1.1 200 OK\r\n"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("client", KINDS)
@pytest.mark.parametrize(
    "head",
    [
        b"Content-Type: text/plain\x01\r\n",
        b"Content-Type: application/json\x00\r\n",
        b"Content-Type: application/json\rX\r\n",
        b"Content-Type: application/\x7fjson\r\n",
        b"Content-Type: application/json\x1b[31m\r\n",
        b"Content-Type: application/json\r\n continued\r\n",
        b"Content-Type: application/json\n",
    ],
    ids=["ctl-01", "nul", "bare-cr", "del", "esc", "obs-fold", "bare-lf"],
)
async def test_a_header_value_the_app_would_refuse_is_a_502_envelope(client: str, head: bytes, aiohttp_client: Any, sandbox: TestServer, partner: RawPartner, tmp_path: Path) -> None:
    partner.answer = lambda req: S + head + b"Content-Length: 11\r\n\r\n{\"data\":[]}"
    rig = await rig_for(aiohttp_client, sandbox, tmp_path, partner.url, client, attempts=0)
    resp = await rig.get()
    assert resp.status == 502
    assert (await envelope(resp))["code"] == "UPSTREAM_PROTOCOL_ERROR"
    partner.answer = lambda req: S + b"Content-Type: application/json\tcharset=x\r\nContent-Length: 11\r\n\r\n{\"data\":[]}"
    resp = await rig.get()  # the app's connection survived; HTAB is a legal value character
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/json\tcharset=x"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("client", KINDS)
async def test_a_post_whose_partner_reads_it_then_hangs_is_outcome_unknown_and_sent_once(client: str, aiohttp_client: Any, sandbox: TestServer, partner: RawPartner, tmp_path: Path) -> None:
    partner.answer = lambda req: HANG
    rig = await rig_for(aiohttp_client, sandbox, tmp_path, partner.url, client, attempts=3, timeout="300ms")
    resp = await post_order(rig)
    assert resp.status == 504
    error = await envelope(resp)
    assert (error["type"], error["code"]) == ("OutcomeUnknown", "UPSTREAM_OUTCOME_UNKNOWN")
    assert "data.id" in error["message"]
    assert len(partner.requests) == 1 and b'"order-1"' in partner.requests[0]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("client", KINDS)
@pytest.mark.parametrize("answer", [None, S + b"Content-Length: 50\r\n\r\n{\"da"], ids=["closed-after-reading", "cut-short"])
async def test_a_post_written_and_then_closed_is_outcome_unknown_never_retried(client: str, answer: bytes | None, aiohttp_client: Any, sandbox: TestServer, partner: RawPartner, tmp_path: Path) -> None:
    partner.answer = lambda req: answer
    partner.close_after = True
    rig = await rig_for(aiohttp_client, sandbox, tmp_path, partner.url, client, attempts=3)
    resp = await post_order(rig)
    assert resp.status == 504
    assert (await envelope(resp))["code"] == "UPSTREAM_OUTCOME_UNKNOWN"
    assert len(partner.requests) == 1


@pytest.mark.timeout(30)
@pytest.mark.parametrize("client", KINDS)
async def test_a_post_to_a_closed_port_is_unreachable(client: str, aiohttp_client: Any, sandbox: TestServer, tmp_path: Path) -> None:
    rig = await rig_for(aiohttp_client, sandbox, tmp_path, f"http://127.0.0.1:{free_port()}", client, attempts=3)
    resp = await post_order(rig)
    assert resp.status == 502
    assert (await envelope(resp))["code"] == "UPSTREAM_UNREACHABLE"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("client", KINDS)
async def test_a_head_that_never_ends_and_a_body_cut_short_are_not_unreachable(client: str, aiohttp_client: Any, sandbox: TestServer, partner: RawPartner, tmp_path: Path) -> None:
    rig = await rig_for(aiohttp_client, sandbox, tmp_path, partner.url, client, attempts=0, timeout="300ms")
    partner.answer = lambda req: S + b"Content-Type: application/json\r\nX-Slow: 1\r\n"  # and then nothing
    resp = await rig.get()
    assert resp.status == 504 and (await envelope(resp))["code"] == "UPSTREAM_TIMEOUT"
    partner.answer = lambda req: S + b"Content-Length: 50\r\n\r\n{\"da"
    partner.close_after = True  # part of an answer, then the end
    resp = await rig.get()
    assert resp.status == 502 and (await envelope(resp))["code"] == "UPSTREAM_PROTOCOL_ERROR"
    partner.answer = lambda req: None  # read, then closed without a byte: that one is UNREACHABLE (after retries)
    resp = await rig.get()
    assert resp.status == 502 and (await envelope(resp))["code"] == "UPSTREAM_UNREACHABLE"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("client", KINDS)
async def test_a_burst_of_1000_at_a_cold_sidecar_waits_for_the_pool_of_100_and_all_succeed(client: str, aiohttp_client: Any, sandbox: TestServer, partner: RawPartner, tmp_path: Path) -> None:
    partner.delay = 0.02
    rig = await rig_for(aiohttp_client, sandbox, tmp_path, partner.url, client)  # shipped limits
    url = rig.client.make_url("/v1/products")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one() -> int:
            async with session.get(url, headers=JSON_HEADERS) as r:
                await r.read()
                return r.status
        statuses = await asyncio.gather(*(one() for _ in range(1000)))
    assert statuses.count(200) == 1000, {s: statuses.count(s) for s in set(statuses)}
    assert rig.partner.token_requests == 1  # a cold sidecar: 1,000 requests share one token fetch
    limits = rig.state.current().clusters["tokopedia"].limits
    assert limits.active == 0 and limits.pending == 0 and limits.requests == 0
    text = await rig.metrics()
    assert 'partner_proxy_cluster_overflow_total{cluster="tokopedia",threshold="max_pending_requests"} 0.0' in text


@pytest.mark.timeout(60)
@pytest.mark.parametrize("client", KINDS)
async def test_past_max_pending_requests_is_503_with_retry_after_and_nothing_hangs(client: str, aiohttp_client: Any, sandbox: TestServer, partner: RawPartner, tmp_path: Path) -> None:
    extra = "\n    max_pending_requests: 10\n    pending_timeout: 10s"
    rig = await rig_for(aiohttp_client, sandbox, tmp_path, partner.url, client, extra=extra)
    assert (await rig.get()).status == 200  # warm the token
    partner.gate = asyncio.Event()
    limits = rig.state.current().clusters["tokopedia"].limits
    url = rig.client.make_url("/v1/products")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one() -> tuple[int, str | None]:
            async with session.get(url, headers=JSON_HEADERS) as r:
                body = await r.json(content_type=None)
                if r.status == 503:
                    assert body["error"]["type"] == "ClusterOverflow"
                return r.status, r.headers.get("Retry-After")
        # 150 at once: 100 on the wire (max_connections), 10 waiting, 40 refused at once
        tasks = [asyncio.create_task(one()) for _ in range(150)]
        for _ in range(200):
            if sum(t.done() for t in tasks) == 40 and limits.pending == 10:
                break
            await asyncio.sleep(0.05)
        assert limits.active == 100 and limits.pending == 10
        partner.gate.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 20)
    statuses = [s for s, _ in results]
    assert statuses.count(200) == 110 and statuses.count(503) == 40
    assert all(ra == "1" for s, ra in results if s == 503)
    assert limits.active == 0 and limits.pending == 0

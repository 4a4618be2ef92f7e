"""A real OTLP/HTTP traces receiver on loopback: POST /v1/traces, protobuf decoded with opentelemetry-proto.

Modes: ``ok`` (store the spans, answer 200), ``hang`` (never answer until released or the test
ends), and ``down`` is simply a closed port (``closed_port_url()``).
"""

from __future__ import annotations

import asyncio
import gzip
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

from tests.redis_server import free_port


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


@dataclass
class Got:
    """One decoded span with what the tests look at."""

    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    status_code: int
    resource: dict[str, Any]
    start_ns: int
    end_ns: int

    @property
    def is_server(self) -> bool:
        return self.kind == PbSpan.SPAN_KIND_SERVER

    @property
    def is_client(self) -> bool:
        return self.kind == PbSpan.SPAN_KIND_CLIENT


@dataclass
class OtlpReceiver:
    server: TestServer | None = None
    mode: str = "ok"
    spans: list[Got] = field(default_factory=list)
    requests: list[dict[str, str]] = field(default_factory=list)
    raw_bodies: list[bytes] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/v1/traces"))

    @property
    def base(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(dict(request.headers))
        if body[:2] == b"\x1f\x8b":  # aiohttp already inflates a gzip body; inflate it if not
            body = gzip.decompress(body)
        self.raw_bodies.append(body)
        if self.mode == "hang":
            await self.release.wait()
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        for rs in req.resource_spans:
            res = attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(
                        Got(
                            name=s.name,
                            kind=s.kind,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(),
                            attributes=attrs(s.attributes),
                            events=[(e.name, attrs(e.attributes)) for e in s.events],
                            status_code=s.status.code,
                            resource=res,
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                        )
                    )
        self.arrived.set()
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf")

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Got]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.spans) < count:
            if loop.time() > deadline:
                raise AssertionError(f"{len(self.spans)} span(s) arrived, wanted {count}")
            await asyncio.sleep(0.02)
        return self.spans


async def start_otlp_receiver(aiohttp_server: Any, mode: str = "ok") -> OtlpReceiver:
    rec = OtlpReceiver(mode=mode)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", rec.handle)
    rec.server = await aiohttp_server(app, access_log=None)
    return rec


def closed_port_url() -> str:
    """A loopback URL where nothing listens (the port was bound, then released; ``free_port``
    hands it to no server of this session later)."""
    return f"http://127.0.0.1:{free_port()}"


__all__ = ["Got", "KeyValue", "OtlpReceiver", "attrs", "closed_port_url", "start_otlp_receiver"]

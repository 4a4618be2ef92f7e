"""Test factories for the unit layer (as mitmproxy's ``tflow()``/``tresp()``): configs built from
the models, exchanges around aiohttp's own mocked request, partner answers, fake next handlers and
a fake token provider. No YAML text edits, no network."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from proxy.classify import Classifier
from proxy.commlog import CommunicationLog
from proxy.config.errors_table import ErrorRule, ErrorTable, parse_range
from proxy.config.models import RequireConfig, RouteConfig, UpstreamRef
from proxy.downstream import AiohttpDownstream
from proxy.exchange import Exchange, UpstreamResponse
from proxy.headers import upstream_headers
from proxy.oauth.token import Token

JSON = {"Content-Type": "application/json", "X-Client-Id": "app-1"}


def troute(**changes: object) -> RouteConfig:
    base: dict[str, object] = {
        "name": "get_products",
        "path": "/v1/products",
        "upstream": UpstreamRef(cluster="tokopedia", path="/v2/product-list", query=("product_code",)),
        "methods": ("GET",),
        "require": RequireConfig(content_type="application/json", headers=("X-Client-Id",)),
    }
    base.update(changes)
    return RouteConfig(**base)  # type: ignore[arg-type]


def texchange(method: str = "GET", path: str = "/v1/products", headers: Mapping[str, str] | None = None) -> Exchange:
    h = CIMultiDict(JSON if headers is None else headers)
    request = make_mocked_request(method, path, headers=h)
    return Exchange(
        downstream=AiohttpDownstream(request),
        method=method,
        request_id="req-1",
        language="en",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        started=time.perf_counter(),
        upstream_headers=upstream_headers(request.headers, "req-1", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    )


def tresponse(status: int = 200, body: bytes = b'{"data": []}', content_type: str = "application/json") -> UpstreamResponse:
    return UpstreamResponse(status, content_type, body)


def terror(code: str, status: int = 400) -> UpstreamResponse:
    return tresponse(status, b'{"errors": [{"code": "%s", "title": "t", "detail": "d"}]}' % code.encode())


def trule(codes: tuple[str, ...] = (), http_status: tuple[int, ...] = (), **changes: object) -> ErrorRule:
    exact = tuple(c for c in codes if parse_range(c) is None)
    ranges = tuple(r for c in codes if (r := parse_range(c)) is not None)
    fields: dict[str, object] = {"type": "PartnerError", "code": "PARTNER_ERROR", "messages": {"en": "m", "id": "p"}, "status": 502}
    fields.update(changes)
    return ErrorRule(exact=exact, ranges=ranges, http_status=http_status, **fields)  # type: ignore[arg-type]


def ttable(*rules: ErrorRule) -> ErrorTable:
    default = trule(is_default=True)
    shipped = rules or (
        trule(("P08",), type="ForbiddenException", code="TOKEN_REJECTED", status=403, invalidate_token=True, retry=True, notify=True),
        trule(("P01-P19",), type="ForbiddenException", code="PARTNER_FORBIDDEN", status=403),
        trule(http_status=(401,), type="AuthenticationFailure", code="AUTHENTICATION_FAILED", invalidate_token=True, retry=False),
    )
    return ErrorTable("tokopedia", "en", shipped, default)


def tclassifier(*rules: ErrorRule) -> Classifier:
    return Classifier(ttable(*rules))


@dataclass
class FakeNext:
    """The rest of the chain: answers from a list (the last one repeats) and records each call."""

    answers: list[UpstreamResponse] = field(default_factory=lambda: [tresponse()])
    calls: list[CIMultiDict[str]] = field(default_factory=list)

    async def __call__(self, ex: Exchange) -> UpstreamResponse:
        self.calls.append(CIMultiDict(ex.upstream_headers))
        ex.attempts += 1
        i = min(len(self.calls) - 1, len(self.answers) - 1)
        a = self.answers[i]
        return UpstreamResponse(a.status, a.content_type, a.body)  # a fresh answer per call, as the wire gives


@dataclass
class FakeTokens:
    """A token provider that counts: ``get`` hands out the current token, ``renew`` mints the next."""

    n: int = 1
    renewed: list[str] = field(default_factory=list)

    def peek(self) -> Token | None:
        return Token(f"token-{self.n}", time.time() + 3600, "memory")

    async def get(self) -> Token:
        token = self.peek()
        assert token is not None
        return token

    async def renew(self, rejected: str) -> Token:
        self.renewed.append(rejected)
        self.n += 1
        return Token(f"token-{self.n}", time.time() + 3600, "fetch")


def frozen_log(now: str) -> tuple[CommunicationLog, Callable[[], list[str]]]:
    """A real ``CommunicationLog`` into memory with its clock frozen at ``now``, and the lines it
    has written so far. Outside a running loop and never started, it writes each line as it comes
    (no flush timer, no thread). A real one because it is compiled: no stand-in passes for it."""
    stream = io.StringIO()
    log = CommunicationLog(stream=stream)
    log.now = lambda: now
    # split on "\n" only: a record may hold U+2028 and such, which splitlines() would cut at
    return log, lambda: stream.getvalue().split("\n")[:-1]

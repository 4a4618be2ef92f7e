"""Credential injection (Envoy's credential_injector): a cached partner token as ``Authorization: Bearer``.

When the partner's answer says the token was rejected (the verdict's ``invalidate_token``: 401,
P08), the token that was used is dropped (only if it is still the cached one: the provider
compares before deleting) and, when the verdict says the partner refused before acting, the request
is sent once more with a fresh token.
"""

from __future__ import annotations

from typing import Protocol

from proxy.classify import Classifier
from proxy.exchange import Exchange, UpstreamResponse, Verdict
from proxy.filters.context import FilterContext
from proxy.headers import bad_header_value
from proxy.oauth.token import Token
from proxy.types import Next


class Tokens(Protocol):
    """What the filter needs of a token provider (``proxy.oauth.TokenProvider`` in production)."""

    def peek(self) -> Token | None: ...

    async def get(self) -> Token: ...

    async def renew(self, rejected: str) -> Token: ...


class InjectCredentials:
    def __init__(self, provider: Tokens, classify: Classifier) -> None:
        self.provider = provider
        self.classify = classify
        self._line: tuple[Token | None, bytes | None] = (None, None)  # auth_line's last token and line

    def auth_line(self, token: Token) -> bytes | None:
        """``attach``'s header as a request line, encoded once per token (``proxy.lane``); None
        when the token would not go out as it is (non-ASCII, or a control character, which
        ``wire_headers`` refuses): the path that calls ``attach`` handles such a token."""
        last, line = self._line
        if token is last:
            return line
        value = "Bearer " + token.value
        line = None if not value.isascii() or bad_header_value(value) else f"Authorization: {value}\r\n".encode("ascii")
        self._line = (token, line)
        return line

    @classmethod
    def from_context(cls, ctx: FilterContext) -> InjectCredentials | None:
        return cls(ctx.provider, ctx.classify) if ctx.provider is not None else None

    def attach(self, ex: Exchange, token: Token) -> None:
        ex.token_source = token.source
        ex.upstream_headers["Authorization"] = "Bearer " + token.value

    def rejected(self, response: UpstreamResponse) -> Verdict | None:
        """The verdict when the partner rejected the token (a plain call), else None."""
        if response.ok:
            return None
        verdict = self.classify(response)
        return verdict if verdict.invalidate_token else None

    async def recover(self, ex: Exchange, token: Token, verdict: Verdict, response: UpstreamResponse, next: Next) -> UpstreamResponse:
        """Drop the rejected token; re-send with a fresh one when the partner refused before acting."""
        fresh = await self.provider.renew(token.value)
        if not verdict.retry_with_fresh_token:
            return response
        ex.token_retried = True
        self.attach(ex, fresh)
        return await next(ex)

    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse:
        token = await self.provider.get()
        self.attach(ex, token)
        response = await next(ex)
        verdict = self.rejected(response)
        if verdict is None:
            return response
        return await self.recover(ex, token, verdict, response, next)

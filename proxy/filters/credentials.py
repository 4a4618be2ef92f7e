"""Credential injection (Envoy's credential_injector): a cached partner token as ``Authorization: Bearer``.

When the partner's answer says the token was rejected (the verdict's ``invalidate_token``: 401,
P08), the token that was used is dropped (only if it is still the cached one: the provider
compares before deleting) and, when the verdict says the partner refused before acting, the request
is sent once more with a fresh token.
"""

from __future__ import annotations

from typing import Protocol

from proxy.classify import Classifier
from proxy.exchange import Exchange, UpstreamResponse
from proxy.filters.context import FilterContext
from proxy.oauth.token import Token
from proxy.types import Next


class Tokens(Protocol):
    """What the filter needs of a token provider (``proxy.oauth.TokenProvider`` in production)."""

    async def get(self) -> Token: ...

    async def renew(self, rejected: str) -> Token: ...


class InjectCredentials:
    def __init__(self, provider: Tokens, classify: Classifier) -> None:
        self.provider = provider
        self.classify = classify

    @classmethod
    def from_context(cls, ctx: FilterContext) -> InjectCredentials | None:
        return cls(ctx.provider, ctx.classify) if ctx.provider is not None else None

    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse:
        token = await self.provider.get()
        ex.token_source = token.source
        ex.upstream_headers["Authorization"] = "Bearer " + token.value
        response = await next(ex)
        if response.ok:
            return response
        verdict = self.classify(response)
        if not verdict.invalidate_token:
            return response
        fresh = await self.provider.renew(token.value)
        if not verdict.retry_with_fresh_token:
            return response
        ex.token_retried = True
        ex.token_source = fresh.source
        ex.upstream_headers["Authorization"] = "Bearer " + fresh.value
        return await next(ex)

"""Credential injection (Envoy's credential_injector): a cached partner token as ``Authorization: Bearer``.

On an answer whose errors.yaml rule says ``invalidate_token`` (401, P08), the token that was used
is dropped (only if it is still the cached one: the provider compares before deleting) and, when
the rule says ``retry``, the request is sent once more with a fresh token.
"""

from __future__ import annotations

from proxy.exchange import Exchange, Next, UpstreamResponse
from proxy.oauth import TokenProvider


class InjectCredentials:
    def __init__(self, provider: TokenProvider) -> None:
        self.provider = provider

    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse:
        token = await self.provider.get()
        ex.token_source = token.source
        ex.upstream_headers["Authorization"] = "Bearer " + token.value
        response = await next(ex)
        rule = response.rule
        if rule is None or not rule.invalidate_token:
            return response
        fresh = await self.provider.renew(token.value)
        if not rule.retry:
            return response
        ex.token_retried = True
        ex.token_source = fresh.source
        ex.upstream_headers["Authorization"] = "Bearer " + fresh.value
        return await next(ex)

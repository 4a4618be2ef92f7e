"""Request validation, in the contract's order: method (405 + Allow), Content-Type (415), headers (400)."""

from __future__ import annotations

from proxy.config.models import RequireConfig
from proxy.errors import MethodNotAllowed, MissingHeader, UnsupportedMediaType
from proxy.exchange import Exchange, UpstreamResponse
from proxy.filters.context import FilterContext
from proxy.types import Next


class ValidateRequest:
    def __init__(self, methods: tuple[str, ...], require: RequireConfig) -> None:
        # HEAD is not implied by GET here: the partner list is not a cheap HEAD target.
        self.methods = frozenset(methods)
        self.allow = tuple(methods)
        self.content_type = require.content_type.lower() if require.content_type else None
        self.headers = require.headers

    @classmethod
    def from_context(cls, ctx: FilterContext) -> ValidateRequest:
        return cls(ctx.route.methods, ctx.route.require)

    def check(self, ex: Exchange) -> None:
        """Raise the contract's error, or return: a plain call (the callback path uses it as is)."""
        if ex.method not in self.methods:
            raise MethodNotAllowed(self.allow)
        headers = ex.downstream.headers
        if self.content_type is not None:
            # "application/json; charset=utf-8" is fine: compare the media type only
            raw = headers.get("Content-Type", "")
            if raw != self.content_type and raw.split(";", 1)[0].strip().lower() != self.content_type:
                raise UnsupportedMediaType(f"content type {raw[:64]!r}")
        for name in self.headers:
            if not headers.get(name, "").strip():
                raise MissingHeader(name)

    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse:
        self.check(ex)
        return await next(ex)

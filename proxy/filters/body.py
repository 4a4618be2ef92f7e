"""The request body a route accepts: read once, bounded by the route's ``body.max_bytes`` (413),
parsed as JSON and checked against the route's JSON Schema (400 ``InvalidBody`` naming the field)
before anything is sent. The bytes themselves are forwarded unchanged."""

from __future__ import annotations

from proxy.exchange import Exchange, UpstreamResponse
from proxy.filters.context import FilterContext
from proxy.jsonbody import Validator, check_body, compile_schema
from proxy.types import Next


class ReadBody:
    def __init__(self, max_bytes: int, validate: Validator | None) -> None:
        self.max_bytes = max_bytes
        self.validate = validate

    @classmethod
    def from_context(cls, ctx: FilterContext) -> ReadBody | None:
        body = ctx.route.body
        if body is None:
            return None
        return cls(body.max_bytes, compile_schema(body.schema) if body.schema is not None else None)

    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse:
        body = await ex.downstream.read_body(self.max_bytes)
        check_body(body, self.validate)
        ex.body = body
        return await next(ex)

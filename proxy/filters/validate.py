"""Request validation, in the contract's order: method (405 + Allow), Content-Type (415), headers (400)."""

from __future__ import annotations

from proxy.config.models import RequireConfig
from proxy.errors import MethodNotAllowed, MissingHeader, UnsupportedMediaType
from proxy.exchange import Exchange, UpstreamResponse
from proxy.filters.context import FilterContext
from proxy.types import Next


# what ``str.strip()`` strips in ASCII (``bytes.strip()`` leaves \x1c-\x1f)
_SPACE = bytes(c for c in range(128) if chr(c).isspace())


class ValidateRequest:
    def __init__(self, methods: tuple[str, ...], require: RequireConfig) -> None:
        # HEAD is not implied by GET here: the partner list is not a cheap HEAD target.
        self.methods = frozenset(methods)
        self.allow = tuple(methods)
        self.content_type = require.content_type.lower() if require.content_type else None
        self.headers = require.headers
        # the same checks on the parser's bytes, for ``accepts_raw``
        self._raw_type = self.content_type.encode("ascii") if self.content_type and self.content_type.isascii() else None
        self._raw_headers = tuple(h.lower().encode("ascii") for h in self.headers if h.isascii())

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

    def accepts_raw(self, method: str, headers: dict[bytes, bytes]) -> bool:
        """True when ``check`` would pass, read from the request's bytes (``headers``: lower-case
        names, each seen once), for ``proxy.lane``. False is not a refusal: it sends the request
        to the path that runs ``check`` and renders its error. So anything this does not read as
        plainly as ``check`` does (a non-ASCII value, where ``str.strip`` and ``bytes.strip``
        differ) says False."""
        if method not in self.methods or len(self._raw_headers) != len(self.headers):
            return False
        wanted = self._raw_type
        if self.content_type is not None:
            raw = headers.get(b"content-type")
            if wanted is None or raw is None or not raw.isascii():
                return False
            if raw != wanted and raw.split(b";", 1)[0].strip(_SPACE).lower() != wanted:
                return False
        for name in self._raw_headers:
            value = headers.get(name)
            if not value or not value.isascii() or not value.strip(_SPACE):
                return False
        return True

    async def __call__(self, ex: Exchange, next: Next) -> UpstreamResponse:
        self.check(ex)
        return await next(ex)

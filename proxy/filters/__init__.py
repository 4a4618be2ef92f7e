"""HTTP filters by name: the registry a route's ``filters:`` list is built from.

One small class per module, config in, one ``async __call__(exchange, next)`` (``proxy.types.Filter``).
Each module's class has ``from_context(FilterContext)``, its factory: it returns the filter, or
None where the filter does not apply to the route (no credentials on the cluster, say).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from proxy.filters.body import ReadBody
from proxy.filters.context import FilterContext
from proxy.filters.credentials import InjectCredentials
from proxy.filters.error_rewrite import RewriteErrors
from proxy.filters.sign import SignBody
from proxy.filters.validate import ValidateRequest
from proxy.filters.verify import VerifyAnswer
from proxy.types import Filter

FilterFactory = Callable[[FilterContext], Filter | None]

FILTERS: Mapping[str, FilterFactory] = {
    "validate": ValidateRequest.from_context,
    "body": ReadBody.from_context,
    "credentials": InjectCredentials.from_context,
    "sign": SignBody.from_context,
    "error_rewrite": RewriteErrors.from_context,
    "verify": VerifyAnswer.from_context,
}


def build_filters(names: tuple[str, ...], ctx: FilterContext) -> list[Filter]:
    """The route's filters in its order; the loader has already refused unknown names."""
    built = (FILTERS[name](ctx) for name in names)
    return [f for f in built if f is not None]


__all__ = ["FILTERS", "FilterContext", "FilterFactory", "build_filters"]

"""Fold a route's filters around its terminal once, when the config is compiled."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from proxy.types import Filter, Next


def build_chain(filters: Sequence[Filter], terminal: Next) -> Next:
    """``filters[0]`` runs first; each gets the rest of the chain as ``next``."""
    handler = terminal
    for f in reversed(filters):
        handler = partial(f, next=handler)
    return handler

"""Configuration and mutable state of one sandbox partner app (stored under :data:`SANDBOX_STATE`).

Split from :mod:`proxy.sandbox.app` so the handler modules (``app`` for tokens and products,
``api`` for account, inquiry and orders) share one state type without importing each other.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

from aiohttp import web
from multidict import CIMultiDict

from proxy.sandbox.keys import SandboxKeys
from proxy.sandbox.orders import DEFAULT_BALANCE, DEFAULT_SETTLE_AFTER, OrderBook

TokenMode = Literal["ok", "down", "500", "garbage", "empty", "no_expires", "slow"]
TOKEN_MODES: Final[frozenset[str]] = frozenset(get_args(TokenMode))


@dataclass
class SandboxSettings:
    """Static configuration of one sandbox instance.

    ``token_ttl`` is the real lifetime of issued tokens. ``expires_in`` in the JSON is an int of
    at least 1 (``max(1, int(token_ttl))``), so a sub-second TTL lets tests see a token expire
    before the client believes it has; a token is never advertised as living longer than 1 s
    beyond its real expiry.

    ``balance`` is the opening deposit (rupiah), ``account_id`` the id ``/v2/account`` reports,
    ``settle_after`` the seconds an order stays Pending. ``keys`` are the account's public key
    and the sandbox's own signing key; None generates both pairs on first use (and keeps the
    account's private half, so tests can sign).
    """

    client_id: str = "sandbox-client"
    client_secret: str = "sandbox-secret"
    token_ttl: float = 86400.0
    balance: int = DEFAULT_BALANCE
    account_id: str = "2203"
    settle_after: float = DEFAULT_SETTLE_AFTER
    keys: SandboxKeys | None = field(default=None, repr=False)

    @property
    def expires_in(self) -> int:
        """The ``expires_in`` value the token endpoint reports."""
        return max(1, int(self.token_ttl))


@dataclass(frozen=True, slots=True)
class ProductCall:
    """One request that reached ``/v2/product-list``, recorded before any check.

    Tests use it to assert what the sidecar forwarded (query allowlist, stripped headers,
    which token was used on a retry).
    """

    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    token: str | None


@dataclass(frozen=True, slots=True)
class ApiCall:
    """One request that reached a money endpoint (account, inquiry, order, order status), recorded
    before any check, body included: tests assert the partner got the app's exact bytes."""

    method: str
    path: str
    headers: CIMultiDict[str]
    body: bytes


class SandboxState:
    """Everything mutable about one sandbox app; stored under :data:`SANDBOX_STATE`.

    Tests reach in through ``app[SANDBOX_STATE]`` to inject failures and read what happened;
    process-level tests do the same through ``/_sandbox/*``. ``clock`` is injectable so token
    expiry can be tested without sleeping.
    """

    def __init__(
        self,
        settings: SandboxSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings: SandboxSettings = settings or SandboxSettings()
        self.clock: Callable[[], float] = clock
        self.token_requests: int = 0
        self.tokens_issued: list[str] = []
        self.product_calls: list[ProductCall] = []
        self.api_calls: list[ApiCall] = []
        self.token_mode: str = "ok"
        self.token_delay: float = 0.0
        # token -> expiry on ``clock``; the only thing that makes a token valid.
        self._valid_tokens: dict[str, float] = {}
        # Orders read the clock through the state, so swapping ``state.clock`` moves both.
        self.orders: OrderBook = OrderBook(self.settings.balance, self.settings.settle_after, lambda: self.clock())
        self._keys: SandboxKeys | None = self.settings.keys
        # Set on app shutdown so sleeping handlers (hang, delay, slow) return at once instead of
        # holding the runner's cleanup for its whole shutdown timeout.
        self.stopping: asyncio.Event = asyncio.Event()

    @property
    def keys(self) -> SandboxKeys:
        """The configured keys, or two fresh pairs made on first use (~0.1 s of CPU, once)."""
        if self._keys is None:
            self._keys = SandboxKeys.generate()
        return self._keys

    # -- tokens ---------------------------------------------------------------------------

    def issue_token(self) -> str:
        """Mint a new distinct token valid for ``settings.token_ttl``; older tokens stay valid."""
        now = self.clock()
        self._valid_tokens = {t: exp for t, exp in self._valid_tokens.items() if exp > now}
        token = "c:" + secrets.token_urlsafe(24)
        self._valid_tokens[token] = now + self.settings.token_ttl
        self.tokens_issued.append(token)
        return token

    def token_is_valid(self, token: str) -> bool:
        """Known, not revoked and not expired on ``clock``."""
        expiry = self._valid_tokens.get(token)
        return expiry is not None and self.clock() < expiry

    def revoke_all(self) -> None:
        """Forget every issued token, so each one now answers 403 P08."""
        self._valid_tokens.clear()

    # -- test control ---------------------------------------------------------------------

    def set_token_mode(self, mode: str, delay: float | None = None) -> None:
        """Switch token-server behaviour, rejecting unknown modes (a typo must not pass as ok)."""
        if mode not in TOKEN_MODES:
            raise ValueError(f"unknown token mode {mode!r}; one of {sorted(TOKEN_MODES)}")
        if delay is not None:
            if delay < 0:
                raise ValueError("delay must be >= 0")
            self.token_delay = float(delay)
        self.token_mode = mode

    def reset(self) -> None:
        """Zero counters and logs and restore mode "ok".

        Issued tokens stay valid: a running sidecar keeps its cached token across a test's reset,
        and :meth:`revoke_all` exists for the other case.
        """
        self.token_requests = 0
        self.tokens_issued = []
        self.product_calls = []
        self.api_calls = []
        self.token_mode = "ok"
        self.token_delay = 0.0

    def stats(self) -> dict[str, object]:
        """The ``/_sandbox/stats`` document."""
        return {
            "token_requests": self.token_requests,
            "tokens_issued": len(self.tokens_issued),
            "product_calls": len(self.product_calls),
            "last_tokens": [call.token for call in self.product_calls],
        }


SANDBOX_STATE: Final = web.AppKey("sandbox_state", SandboxState)

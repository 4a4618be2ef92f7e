"""What a notification is about: the event kinds, one ``Event``, and the ``Message`` a sink posts."""

from __future__ import annotations

from dataclasses import dataclass

KIND_BREAKER_OPEN = "breaker_open"
KIND_TOKEN_FAILING = "token_fetch_failing"
KIND_PARTNER_ERROR = "partner_error"
KIND_SIGNATURE_INVALID = "signature_invalid"


@dataclass(frozen=True, slots=True)
class Event:
    """One thing worth telling a human about. Every field except ``request_id`` comes from config."""

    kind: str              # "breaker_open" | "token_fetch_failing" | "partner_error" | "signature_invalid"
    cluster: str           # cluster or provider name (from config, never request input)
    type: str              # error type, e.g. "CircuitBreakerError", "AuthenticationFailure", "ProductClosedException"
    title: str             # short human text
    partner_code: str | None = None
    request_id: str | None = None
    count: int = 1


@dataclass(frozen=True, slots=True)
class Message:
    """What the worker posts: an event plus how many identical events were folded into it.

    ``summary`` is true when no new event triggered the message (window end or shutdown): then
    ``event`` is the last suppressed one, itself already counted in ``suppressed``.
    """

    event: Event
    suppressed: int = 0
    window: float = 0.0
    summary: bool = False

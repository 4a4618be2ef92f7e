"""Token value objects: what callers get (``Token``) and what the issuer granted (``Grant``).

Both hide the access token in ``repr``/``str``: tokens end up in exception chains, debug logs
and test failure output, and a bearer token there is a credential leak.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# A token is handed out only while ``now < expires_at - skew``: the request that carries it still
# has to travel to the partner, and replicas' wall clocks differ by a little. The skew is small
# (never more than MAX_SKEW) and proportional for short-lived tokens so they stay usable at all.
MAX_SKEW = 5.0
SKEW_RATIO = 0.1


def skew_for(lifetime: float) -> float:
    """Safety margin before real expiry: min(5 s, 10 % of the token's lifetime)."""
    return min(MAX_SKEW, SKEW_RATIO * max(lifetime, 0.0))


@dataclass(frozen=True, slots=True, repr=False)
class Token:
    """An access token as handed to a caller.

    ``expires_at`` is epoch seconds on the ``time.time`` clock, so replicas sharing Redis agree on
    it. ``source`` says where *this* lookup got it: ``memory``, ``redis`` or ``fetch``.
    """

    value: str
    expires_at: float
    source: str

    def __repr__(self) -> str:
        return f"Token(value='***', expires_at={self.expires_at!r}, source={self.source!r})"

    __str__ = __repr__


@dataclass(frozen=True, slots=True, repr=False)
class Grant:
    """A token as the issuer granted it, with the time it was requested.

    ``issued_at`` (when the token request was sent) gives the lifetime, from which the skew and
    the refresh-ahead point are derived; it travels through Redis so another replica derives the
    same numbers. Internal to ``proxy.oauth``; callers see ``Token``.
    """

    value: str
    issued_at: float
    expires_at: float
    lifetime: float = field(init=False)
    usable_until: float = field(init=False)

    def __post_init__(self) -> None:
        lifetime = max(self.expires_at - self.issued_at, 0.0)
        object.__setattr__(self, "lifetime", lifetime)
        object.__setattr__(self, "usable_until", self.expires_at - skew_for(lifetime))

    def usable(self, now: float) -> bool:
        return now < self.usable_until

    def as_token(self, source: str) -> Token:
        return Token(self.value, self.expires_at, source)

    def __repr__(self) -> str:
        return f"Grant(value='***', issued_at={self.issued_at!r}, expires_at={self.expires_at!r})"

    __str__ = __repr__

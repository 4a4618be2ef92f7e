"""OAuth2 client-credentials tokens for partner calls.

``TokenProvider`` (one per credentials entry) answers ``get()`` from process memory, then the
shared ``RedisTokenStore``, then the token endpoint (``TokenClient``), with one fetch at a time per
process and across replicas, refresh ahead of expiry, and compare-and-delete invalidation.
"""

from proxy.oauth.client import TokenClient, TokenFetchError
from proxy.oauth.provider import TokenProvider
from proxy.oauth.store import RedisTokenStore
from proxy.oauth.token import Token

__all__ = ["RedisTokenStore", "Token", "TokenClient", "TokenFetchError", "TokenProvider"]

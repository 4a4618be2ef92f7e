"""The credential filter alone: the token goes on as a bearer; a rejected token is renewed, and the
request re-sent once only when the verdict says the partner refused before acting."""

from __future__ import annotations

from proxy.filters.credentials import InjectCredentials
from tests.factories import FakeNext, FakeTokens, tclassifier, terror, texchange, tresponse


async def test_the_token_is_sent_as_a_bearer_and_the_apps_authorization_is_not() -> None:
    nxt, tokens = FakeNext(), FakeTokens()
    ex = texchange(headers={"Content-Type": "application/json", "X-Client-Id": "a", "Authorization": "Bearer app-secret"})
    await InjectCredentials(tokens, tclassifier())(ex, nxt)
    assert nxt.calls[0].getall("Authorization") == ["Bearer token-1"]
    assert ex.token_source == "memory" and tokens.renewed == []


async def test_p08_renews_the_rejected_token_and_retries_once_with_the_fresh_one() -> None:
    nxt, tokens = FakeNext([terror("P08", 403)]), FakeTokens()
    ex = texchange()
    answer = await InjectCredentials(tokens, tclassifier())(ex, nxt)
    assert answer.status == 403  # still rejected after the one retry: the answer is the partner's
    assert [c["Authorization"] for c in nxt.calls] == ["Bearer token-1", "Bearer token-2"]
    assert tokens.renewed == ["token-1"] and ex.token_retried and ex.token_source == "fetch"


async def test_a_rule_that_only_invalidates_renews_without_resending() -> None:
    nxt, tokens = FakeNext([tresponse(401, b"", "text/plain")]), FakeTokens()
    await InjectCredentials(tokens, tclassifier())(texchange(), nxt)
    assert len(nxt.calls) == 1 and tokens.renewed == ["token-1"]


async def test_other_errors_and_successes_keep_the_token() -> None:
    for answer in (terror("P04"), tresponse()):
        nxt, tokens = FakeNext([answer]), FakeTokens()
        await InjectCredentials(tokens, tclassifier())(texchange(), nxt)
        assert len(nxt.calls) == 1 and tokens.renewed == []

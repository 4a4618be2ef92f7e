"""The validate filter alone: the contract's order (405, 415, 400) and nothing reaches next on failure."""

from __future__ import annotations

import pytest

from proxy.errors import MethodNotAllowed, MissingHeader, UnsupportedMediaType
from proxy.filters.validate import ValidateRequest
from tests.factories import JSON, FakeNext, texchange, troute


def validate() -> ValidateRequest:
    route = troute()
    return ValidateRequest(route.methods, route.require)


async def test_a_valid_request_goes_on() -> None:
    nxt = FakeNext()
    assert (await validate()(texchange(), nxt)).status == 200
    assert len(nxt.calls) == 1


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"])
async def test_json_with_parameters_is_json(content_type: str) -> None:
    assert (await validate()(texchange(headers={**JSON, "Content-Type": content_type}), FakeNext())).status == 200


async def test_method_first_then_content_type_then_headers() -> None:
    nxt = FakeNext()
    with pytest.raises(MethodNotAllowed) as exc:
        await validate()(texchange("POST", headers={}), nxt)  # wrong on all three: the method wins
    assert exc.value.headers["Allow"] == "GET"
    with pytest.raises(UnsupportedMediaType):
        await validate()(texchange(headers={"X-Client-Id": "a", "Content-Type": "text/plain"}), nxt)
    with pytest.raises(MissingHeader):
        await validate()(texchange(headers={"Content-Type": "application/json", "X-Client-Id": "  "}), nxt)
    assert nxt.calls == []

"""``partner-proxy schema``: editors validate the files with it; it accepts the shipped files and
catches the mistakes operators make (a misspelled key, a wrong type)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import jsonschema
import pytest
import yaml

from tests.helpers import ERRORS, ROOT, ROUTES


def schema(which: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "proxy", "schema", which], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
    doc: dict[str, Any] = json.loads(out.stdout)
    jsonschema.Draft202012Validator.check_schema(doc)
    return doc


@pytest.fixture(scope="module")
def routes_schema() -> dict[str, Any]:
    return schema("routes")


@pytest.fixture(scope="module")
def errors_schema() -> dict[str, Any]:
    return schema("errors")


def errors_of(doc: Any, sch: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in jsonschema.Draft202012Validator(sch).iter_errors(doc)]


def test_the_shipped_files_validate(routes_schema: dict[str, Any], errors_schema: dict[str, Any]) -> None:
    assert errors_of(yaml.safe_load(ROUTES.read_text()), routes_schema) == []
    assert errors_of(yaml.safe_load(ERRORS.read_text()), errors_schema) == []


def test_a_misspelled_key_is_rejected(routes_schema: dict[str, Any], errors_schema: dict[str, Any]) -> None:
    routes = yaml.safe_load(ROUTES.read_text())
    routes["clusters"]["tokopedia"]["timout"] = "10s"
    problems = errors_of(routes, routes_schema)
    assert any("timout" in p and p.startswith("clusters.tokopedia") for p in problems), problems
    errors = yaml.safe_load(ERRORS.read_text())
    errors["tokopedia"]["rules"][0]["invalidate_tokens"] = True
    assert any("invalidate_tokens" in p for p in errors_of(errors, errors_schema))


def test_wrong_types_and_unknown_filters_are_rejected(routes_schema: dict[str, Any]) -> None:
    routes = yaml.safe_load(ROUTES.read_text())
    routes["clusters"]["tokopedia"]["timeout"] = "forever"
    routes["clusters"]["tokopedia"]["max_connections"] = "lots"
    routes["routes"][0]["filters"] = ["validate", "sign_everything"]
    problems = errors_of(routes, routes_schema)
    assert any(p.startswith("clusters.tokopedia.timeout") for p in problems)
    assert any(p.startswith("clusters.tokopedia.max_connections") for p in problems)
    assert any(p.startswith("routes.0.filters.1") for p in problems)


def test_defaults_in_the_schema_are_the_models_defaults(routes_schema: dict[str, Any]) -> None:
    from proxy.config.models import ClusterConfig, defaults

    cluster = routes_schema["properties"]["clusters"]["additionalProperties"]["properties"]
    d = defaults(ClusterConfig)
    assert cluster["timeout"]["default"] == d["timeout"] and cluster["max_connections"]["default"] == d["max_connections"]

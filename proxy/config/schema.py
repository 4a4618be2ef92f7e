"""JSON Schema of routes.yaml and errors.yaml, derived from the config models (``partner-proxy schema``).

Editors' YAML plugins validate and complete the files with it. Types, defaults and the allowed keys
come from the frozen dataclasses in ``proxy.config.models`` (the same defaults the loader uses); only
the few sections whose YAML shape differs from their model (a route's ``match``/``upstream``, a
sink's URL key, an error rule) are written out here. The loader stays the judge: it also checks
cross references and error-table overlaps, which a schema cannot express.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from proxy.config import models as m
from proxy.config.errors_table import ErrorRule

DRAFT = "https://json-schema.org/draft/2020-12/schema"
# Any scalar may be written as ${VAR} or ${VAR:-default}, expanded when the file is loaded.
ENV_REF: dict[str, Any] = {"type": "string", "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}"}
DURATION: dict[str, Any] = {
    "anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h)?\s*$"}, ENV_REF],
    "description": "a duration: 500ms, 30s, 10m, 1h, or a bare number of seconds",
}
LISTEN: dict[str, Any] = {"type": "string", "description": "host:port, e.g. 127.0.0.1:8080"}
STRINGS: dict[str, Any] = {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}]}

# Fields that are map keys or set by the loader, not written in the section itself.
_NOT_IN_YAML = {"name"}


def _scalar(hint: Any) -> dict[str, Any]:
    extras = getattr(hint, "__metadata__", ())
    if "duration" in extras:
        return dict(DURATION)
    if "url" in extras:
        return {"type": "string", "description": "an http(s) URL"}
    base = typing.get_args(hint)[0] if extras else hint
    if base is bool:
        return {"anyOf": [{"type": "boolean"}, ENV_REF]}
    if base is int:
        return {"anyOf": [{"type": "integer"}, ENV_REF]}
    if base is float:
        return {"anyOf": [{"type": "number"}, ENV_REF]}
    if base is m.Secret or base is str:
        return {"type": "string"}
    if base is m.ListenAddress:
        return dict(LISTEN)
    origin = typing.get_origin(base)
    if origin is tuple:
        return dict(STRINGS)
    if origin is typing.Union or origin is types.UnionType:
        inner = [a for a in typing.get_args(base) if a is not type(None)]
        return {**_scalar(inner[0])} if len(inner) == 1 else {}
    if isinstance(base, type) and dataclasses.is_dataclass(base):
        return section(base)
    return {}


def _default(value: Any) -> Any:
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tuple) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def section(cls: type, *, skip: frozenset[str] = frozenset(), extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """An object schema for one model: a property per field, its default, nothing else allowed."""
    hints = typing.get_type_hints(cls, include_extras=True)
    defaults = m.defaults(cls)
    props: dict[str, Any] = {}
    required = []
    for f in dataclasses.fields(cls):
        if f.name in _NOT_IN_YAML or f.name in skip:
            continue
        prop = _scalar(hints[f.name])
        if f.name in defaults:
            d = _default(defaults[f.name])
            if d is not None:
                prop["default"] = d
        else:
            required.append(f.name)
        props[f.name] = prop
    props.update(extra or {})
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    return out


def _sink(url_key: str, keyed: bool) -> dict[str, Any]:
    props: dict[str, Any] = {url_key: {"type": "string"}}
    if keyed:
        props["api_key"] = {"type": "string"}
    return {"type": "object", "properties": props, "additionalProperties": False}


def _route() -> dict[str, Any]:
    require = section(m.RequireConfig)
    upstream = section(m.UpstreamRef, skip=frozenset({"headers"}), extra={
        "headers": {"type": "object", "additionalProperties": {"type": "string"}, "description": "set on every partner request"},
    })
    schemes = {"enum": list(m.SIGN_SCHEMES), "default": "pss"}
    body = section(m.BodyConfig, skip=frozenset({"schema"}), extra={"schema": {"type": "object", "description": "a JSON Schema (draft 7) the body must match"}})
    sign = section(m.SignConfig, skip=frozenset({"scheme"}), extra={"scheme": schemes})
    verify = section(m.VerifyConfig, skip=frozenset({"scheme"}), extra={"scheme": schemes})
    return {
        "type": "object",
        "required": ["name", "match", "upstream"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string"},
            "match": {
                "type": "object",
                "required": ["path"],
                "additionalProperties": False,
                "properties": {
                    "path": {"type": "string", "pattern": "^/"},
                    "methods": {**STRINGS, "default": list(m.defaults(m.RouteConfig)["methods"])},
                },
            },
            "require": require,
            "upstream": upstream,
            "body": body,
            "sign": sign,
            "verify": verify,
            "filters": {
                "type": "array",
                "items": {"enum": list(m.FILTER_NAMES)},
                "uniqueItems": True,
                "default": list(m.DEFAULT_FILTERS),
                "description": "the route's filter chain, first runs first",
            },
        },
    }


def routes_schema() -> dict[str, Any]:
    retry = section(m.RetryConfig, extra={"on": {**STRINGS, "deprecated": True, "description": "old name of retry_on"}})
    cluster = section(m.ClusterConfig, extra={"retry": retry})
    notifications = section(
        m.NotificationsConfig,
        extra={"slack": _sink("webhook_url", keyed=False), "datadog": _sink("api_url", True), "newrelic": _sink("api_url", True)},
    )
    top = section(
        m.ProxyConfig,
        skip=frozenset({"credentials", "clusters", "routes", "admin"}),
        extra={
            "admin": {"type": "object", "properties": {"listen": LISTEN}, "additionalProperties": False},
            "credentials": {"type": "object", "additionalProperties": section(m.CredentialsConfig)},
            "clusters": {"type": "object", "additionalProperties": cluster},
            "routes": {"type": "array", "minItems": 1, "items": _route()},
            "notifications": notifications,
        },
    )
    top.pop("required", None)
    top["required"] = ["routes"]
    return {"$schema": DRAFT, "$id": "partner-proxy/routes.yaml", "title": "partner-proxy routes.yaml", **top}


def errors_schema() -> dict[str, Any]:
    d = m.defaults(ErrorRule)
    message = {"type": "object", "additionalProperties": {"type": "string"}, "minProperties": 1, "description": "text per language"}
    common: dict[str, Any] = {
        "type": {"type": "string"},
        "code": {"type": "string"},
        "status": {"anyOf": [{"type": "integer", "minimum": 400, "maximum": 599}, ENV_REF], "default": d["status"]},
        "message": message,
    }
    flags = {k: {"type": "boolean", "default": d[k]} for k in ("invalidate_token", "retry", "notify")}
    rule = {
        "type": "object",
        "required": ["type", "code", "message"],
        "anyOf": [{"required": ["codes"]}, {"required": ["http_status"]}],
        "additionalProperties": False,
        "properties": {"codes": STRINGS, "http_status": {"type": "array", "items": {"type": "integer"}}, **common, **flags},
    }
    default = {"type": "object", "required": ["type", "code", "message"], "additionalProperties": False, "properties": {**common, **flags}}
    table = {
        "type": "object",
        "required": ["default"],
        "additionalProperties": False,
        "properties": {"default_language": {"type": "string", "default": "en"}, "rules": {"type": "array", "items": rule}, "default": default},
    }
    return {"$schema": DRAFT, "$id": "partner-proxy/errors.yaml", "title": "partner-proxy errors.yaml", "type": "object", "minProperties": 1, "additionalProperties": table}

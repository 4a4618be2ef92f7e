"""One ``routes[]`` entry of routes.yaml: its match (path template, methods), request checks,
upstream (path, query, headers, pass-back), body schema, signing and verifying keys, and filters."""

from __future__ import annotations

import re
from typing import TypeVar

from proxy.config.models import (
    DEFAULT_FILTERS,
    FILTER_NAMES,
    SIGN_SCHEMES,
    BodyConfig,
    RequireConfig,
    RouteConfig,
    Secret,
    SignConfig,
    UpstreamRef,
    VerifyConfig,
    defaults,
)
from proxy.config.reader import Ctx, Section, plain
from proxy.config.templates import parse_template
from proxy.jsonbody import SchemaProblem, compile_schema
from proxy.signing import key_problem

HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 token
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def route_entry(ctx: Ctx, i: int, s: Section) -> RouteConfig | None:
    name = s.string("name", required=True) or f"route{i}"
    m = s.section("match")
    path = m.string("path", required=True)
    match_params: tuple[str, ...] = ()
    if path and not path.startswith("/"):
        ctx.error(m.line_of("path"), m.key_path("path"), f"{path!r} must start with /")
    elif path:
        try:
            match_params = parse_template(path).names
        except ValueError as exc:
            ctx.error(m.line_of("path"), m.key_path("path"), str(exc))
    methods = tuple(x.upper() for x in (m.string_list("methods") or defaults(RouteConfig)["methods"]))
    for meth in methods:
        if meth not in HTTP_METHODS:
            ctx.error(m.line_of("methods"), m.key_path("methods"), f"{meth!r} is not one of {', '.join(HTTP_METHODS)}")
    m.finish()
    rq = s.section("require")
    require = RequireConfig(content_type=rq.string("content_type") or None, headers=rq.string_list("headers") or ())
    rq.finish()
    upstream = _upstream(ctx, s.section("upstream"), match_params)
    body = _body(ctx, s.section("body")) if s.has("body") else None
    sign = _keyed(ctx, s.section("sign"), SignConfig, "private_key") if s.has("sign") else None
    verify = _keyed(ctx, s.section("verify"), VerifyConfig, "public_key") if s.has("verify") else None
    filters = s.string_list("filters", FILTER_NAMES)
    if filters is not None:
        for dup in sorted({f for f in filters if filters.count(f) > 1}):
            ctx.error(s.line_of("filters"), s.key_path("filters"), f"{dup!r} is listed twice; list each filter once")
        for block, configured in (("body", body), ("sign", sign), ("verify", verify)):
            if block in filters and configured is None:
                ctx.error(s.line_of("filters"), s.key_path("filters"), f"lists {block} but the route has no {block}: block; add one or remove {block}")
            elif configured is not None and block not in filters:
                ctx.error(s.line_of(block), s.key_path(block), f"is configured but filters does not list {block}; add it to filters")
    s.finish()
    return RouteConfig(
        name=name, path=path, methods=methods, require=require, upstream=upstream,
        filters=filters if filters is not None else DEFAULT_FILTERS, body=body, sign=sign, verify=verify,
    )


def _upstream(ctx: Ctx, u: Section, match_params: tuple[str, ...]) -> UpstreamRef:
    d = defaults(UpstreamRef)
    upath = u.string("path", required=True)
    if upath and not upath.startswith("/"):
        ctx.error(u.line_of("path"), u.key_path("path"), f"{upath!r} must start with /")
    elif upath:
        try:
            for name in parse_template(upath).names:
                if name not in match_params:
                    have = ", ".join("{" + p + "}" for p in match_params) or "none"
                    ctx.error(u.line_of("path"), u.key_path("path"), f"names {{{name}}}, which match.path does not have (it has: {have}); use one of those")
        except ValueError as exc:
            ctx.error(u.line_of("path"), u.key_path("path"), str(exc))
    hs = u.section("headers")
    headers = []
    for hname in hs.data:
        value = hs.string(hname)
        if not HEADER_NAME_RE.match(hname) or any(c in value for c in "\r\n\x00"):
            ctx.error(hs.line_of(hname), hs.key_path(hname), "is not a valid header name and value; write e.g. Accept: application/json")
        headers.append((hname, value))
    pass_back = u.string_list("pass_back") or d["pass_back"]
    for hname in pass_back:
        if not HEADER_NAME_RE.match(hname):
            ctx.error(u.line_of("pass_back"), u.key_path("pass_back"), f"{hname!r} is not a header name")
    ref = UpstreamRef(
        cluster=u.string("cluster", required=True),
        path=upath,
        query=u.string_list("query") or d["query"],
        headers=tuple(headers),
        date=u.boolean("date", d["date"]),
        pass_back=pass_back,
    )
    u.finish()
    return ref


def _body(ctx: Ctx, b: Section) -> BodyConfig:
    d = defaults(BodyConfig)
    schema = b.data.get("schema")
    b.used.add("schema")
    as_data = None
    if schema is not None:
        if not isinstance(schema, dict):
            ctx.error(b.line_of("schema"), b.key_path("schema"), "must be a JSON Schema object, e.g. {type: object, required: [data]}")
        else:
            as_data = plain(schema)
            try:
                compile_schema(as_data)
            except SchemaProblem as exc:
                ctx.error(b.line_of("schema"), b.key_path("schema"), f"is not a valid JSON Schema: {exc}")
    cfg = BodyConfig(max_bytes=b.integer("max_bytes", d["max_bytes"], minimum=1), schema=as_data)
    b.finish()
    return cfg


K = TypeVar("K", SignConfig, VerifyConfig)


def _keyed(ctx: Ctx, k: Section, cls: type[K], key_field: str) -> K:
    d = defaults(cls)
    pem = k.string(key_field, required=True)
    scheme = k.string("scheme", d["scheme"]) or d["scheme"]
    if scheme not in SIGN_SCHEMES:
        ctx.error(k.line_of("scheme"), k.key_path("scheme"), f"{scheme!r} is not one of {', '.join(SIGN_SCHEMES)}")
    header = k.string("header", d["header"]) or d["header"]
    if not HEADER_NAME_RE.match(header):
        ctx.error(k.line_of("header"), k.key_path("header"), f"{header!r} is not a header name")
    if pem:
        problem, summary = key_problem(pem, private=key_field == "private_key")
        if problem:
            ctx.error(k.line_of(key_field), k.key_path(key_field), problem)
        else:
            ctx.info(k.line_of(key_field), k.key_path(key_field), summary)
    k.finish()
    return cls(Secret(pem), scheme=scheme, header=header)  # type: ignore[call-arg]

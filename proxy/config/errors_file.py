"""errors.yaml: one table per partner, its ordered rules (exact codes, ranges, HTTP statuses) and
its default, compiled into ``ErrorTable``s; overlaps and unreachable rules are problems."""

from __future__ import annotations

from proxy.config.errors_table import ErrorRule, ErrorTable, overlap_problems, parse_range
from proxy.config.models import defaults
from proxy.config.reader import Ctx, Section
from proxy.config.source import LineDict, LineList


def _messages(ctx: Ctx, s: Section, key: str, default_language: str) -> dict[str, str]:
    msg = s.section(key)
    out: dict[str, str] = {}
    for lang in msg.data:
        out[lang] = msg.string(lang)
    if not out:
        ctx.error(s.line_of(key) if s.has(key) else s.line, s.key_path(key), f"is required; add e.g. message: {{{default_language}: \"...\"}}")
    elif default_language not in out:
        ctx.error(s.line_of(key), s.key_path(key), f"has no {default_language!r} text (the table's default_language); add it")
    return out


def _rule(ctx: Ctx, s: Section, default_language: str, *, is_default: bool) -> ErrorRule:
    exact: list[str] = []
    ranges = []
    codes = s.string_list("codes")
    statuses: list[int] = []
    if is_default:
        if codes is not None or s.has("http_status"):
            ctx.error(s.line, s.path, "the default matches everything; remove codes/http_status from it")
    else:
        for c in codes or ():
            try:
                r = parse_range(c)
            except ValueError as exc:
                ctx.error(s.line_of("codes"), s.key_path("codes"), str(exc))
                continue
            if r is None:
                exact.append(c)
            else:
                ranges.append(r)
        for st in s.string_list("http_status") or ():
            if not (st.isascii() and st.isdigit()) or not 100 <= int(st) <= 599:
                ctx.error(s.line_of("http_status"), s.key_path("http_status"), f"{st!r} is not an HTTP status (100-599)")
            else:
                statuses.append(int(st))
        if not exact and not ranges and not statuses:
            ctx.error(s.line, s.path, "a rule needs codes: [...] or http_status: [...]; add one")
    dr = defaults(ErrorRule)
    status = s.integer("status", dr["status"], minimum=100)
    if not 400 <= status <= 599:
        ctx.error(s.line_of("status"), s.key_path("status"), f"{status} is not an error status; use 400-599")
    rule = ErrorRule(
        type=s.string("type", required=True),
        code=s.string("code", required=True),
        status=status,
        messages=_messages(ctx, s, "message", default_language),
        exact=tuple(exact),
        ranges=tuple(ranges),
        http_status=tuple(statuses),
        invalidate_token=s.boolean("invalidate_token", dr["invalidate_token"]),
        retry=s.boolean("retry", dr["retry"]),
        notify=s.boolean("notify", dr["notify"]),
        line=s.line,
        is_default=is_default,
    )
    if rule.retry and not rule.invalidate_token:
        ctx.error(s.line_of("retry"), s.key_path("retry"), "retry: true only applies with invalidate_token: true (a retry with a fresh token); add invalidate_token or remove retry")
    s.finish()
    return rule


def parse_errors(ctx: Ctx, data: LineDict) -> dict[str, ErrorTable]:
    tables: dict[str, ErrorTable] = {}
    for name in data:
        s = Section(ctx, data[name], name, data.line_of(name))
        lang = s.string("default_language", "en") or "en"
        rules_raw = s.raw("rules")
        rules: list[ErrorRule] = []
        if rules_raw is not None and not isinstance(rules_raw, list):
            ctx.error(s.line_of("rules"), s.key_path("rules"), "must be a list of rules")
        for i, item in enumerate(rules_raw or ()):
            line = rules_raw.line_of(i) if isinstance(rules_raw, LineList) else s.line_of("rules")
            rules.append(_rule(ctx, Section(ctx, item, f"{name}.rules[{i}]", line), lang, is_default=False))
        if not s.has("default"):
            ctx.error(s.line, f"{name}.default", "is required: the answer for unknown codes; add default: {type: PartnerError, code: PARTNER_ERROR, status: 502, message: {en: ...}}")
        default = _rule(ctx, s.section("default"), lang, is_default=True)
        for line, problem in overlap_problems(tuple(rules)):
            ctx.error(line, f"{name}.rules", problem)
        s.finish()
        tables[name] = ErrorTable(name, lang, tuple(rules), default)
    if not tables:
        ctx.error(1, "", "no error table defined; add e.g. tokopedia: {rules: [...], default: {...}}")
    return tables

"""errors.yaml compiled into ordered rules: exact codes, then ranges, then HTTP statuses, then the default.

Matching is a dict lookup for exact codes and statuses and a short scan of the ranges of one
prefix, so the error path costs the same however long the table grows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from proxy.errors import PartnerError

_RANGE_RE = re.compile(r"^([A-Za-z_]*)(\d+)-([A-Za-z_]*)(\d+)$")
_SPLIT_RE = re.compile(r"^([A-Za-z_]*)(\d+)$")


@dataclass(frozen=True, slots=True)
class CodeRange:
    prefix: str
    low: int
    high: int
    width: int  # digits as written (U01 -> 2), so U1 does not match U01-U03
    text: str

    def contains(self, prefix: str, number: int, width: int) -> bool:
        return prefix == self.prefix and width == self.width and self.low <= number <= self.high

    def overlaps(self, other: CodeRange) -> bool:
        return (
            self.prefix == other.prefix
            and self.width == other.width
            and self.low <= other.high
            and other.low <= self.high
        )


def parse_range(text: str) -> CodeRange | None:
    """``U01-U03`` -> CodeRange; None when ``text`` is not a range (then it is an exact code)."""
    m = _RANGE_RE.match(text)
    if not m:
        return None
    p1, n1, p2, n2 = m.groups()
    if p2 and p2 != p1:
        raise ValueError(f"range {text!r} mixes prefixes {p1!r} and {p2!r}; write e.g. {p1}{n1}-{p1}{n2}")
    if len(n1) != len(n2) and p2:
        raise ValueError(f"range {text!r} has bounds of different widths; write e.g. U01-U03")
    low, high = int(n1), int(n2)
    if low > high:
        raise ValueError(f"range {text!r} is backwards; write the lower code first")
    return CodeRange(p1, low, high, len(n1), text)


@dataclass(frozen=True, slots=True)
class ErrorRule:
    type: str
    code: str
    messages: Mapping[str, str]
    status: int = 502
    exact: tuple[str, ...] = ()
    ranges: tuple[CodeRange, ...] = ()
    http_status: tuple[int, ...] = ()
    invalidate_token: bool = False
    retry: bool = False
    notify: bool = False
    line: int = 0
    is_default: bool = False

    def describe(self) -> str:
        if self.is_default:
            return "default"
        parts = list(self.exact) + [r.text for r in self.ranges] + [str(s) for s in self.http_status]
        return f"rule at line {self.line} ({', '.join(parts)})"


@dataclass(frozen=True, slots=True)
class Match:
    rule: ErrorRule
    by: str  # "code", "range", "http_status" or "default"


class ErrorTable:
    """One table of errors.yaml (e.g. ``tokopedia``), compiled for lookups."""

    def __init__(self, name: str, default_language: str, rules: tuple[ErrorRule, ...], default: ErrorRule) -> None:
        self.name = name
        self.default_language = default_language
        self.rules = rules
        self.default = default
        self._exact: dict[str, ErrorRule] = {}
        self._ranges: dict[str, list[tuple[CodeRange, ErrorRule]]] = {}
        self._status: dict[int, ErrorRule] = {}
        for rule in rules:  # first match wins: earlier rules keep a code a later rule repeats
            for c in rule.exact:
                self._exact.setdefault(c, rule)
            for r in rule.ranges:
                self._ranges.setdefault(r.prefix, []).append((r, rule))
            for s in rule.http_status:
                self._status.setdefault(s, rule)

    def languages(self) -> set[str]:
        langs: set[str] = set()
        for rule in (*self.rules, self.default):
            langs.update(rule.messages)
        return langs

    def match(self, partner_code: str | None, http_status: int) -> Match:
        if partner_code:
            rule = self._exact.get(partner_code)
            if rule is not None:
                return Match(rule, "code")
            m = _SPLIT_RE.match(partner_code)
            if m and m.group(1) in self._ranges:
                number, width = int(m.group(2)), len(m.group(2))
                for rng, rule in self._ranges[m.group(1)]:
                    if rng.contains(m.group(1), number, width):
                        return Match(rule, "range")
        rule = self._status.get(http_status)
        if rule is not None:
            return Match(rule, "http_status")
        return Match(self.default, "default")

    def error_for(self, match: Match, partner_code: str | None, partner_status: int) -> PartnerError:
        r = match.rule
        return PartnerError(
            status=r.status,
            type_=r.type,
            code=r.code,
            messages=r.messages,
            default_language=self.default_language,
            partner_code=partner_code,
            partner_status=partner_status,
        )


def overlap_problems(rules: tuple[ErrorRule, ...]) -> list[tuple[int, str]]:
    """(line, message) for codes claimed twice and rules that can never match.

    An exact code inside a range is intended (``P08`` beats ``P01-P19``), so that is not an overlap.
    """
    problems: list[tuple[int, str]] = []
    seen_exact: dict[str, ErrorRule] = {}
    seen_ranges: list[tuple[CodeRange, ErrorRule]] = []
    seen_status: dict[int, ErrorRule] = {}
    for rule in rules:
        live = 0
        for c in rule.exact:
            if c in seen_exact:
                problems.append((rule.line, f"code {c} is already mapped by {seen_exact[c].describe()}; remove it from one of the rules"))
            else:
                seen_exact[c] = rule
                live += 1
        for r in rule.ranges:
            clash = next(((o, orule) for o, orule in seen_ranges if o.overlaps(r)), None)
            if clash:
                problems.append((rule.line, f"range {r.text} overlaps {clash[0].text} of {clash[1].describe()}; make the ranges disjoint"))
            else:
                seen_ranges.append((r, rule))
                live += 1
        for s in rule.http_status:
            if s in seen_status:
                problems.append((rule.line, f"http_status {s} is already mapped by {seen_status[s].describe()}; remove it from one of the rules"))
            else:
                seen_status[s] = rule
                live += 1
        if live == 0 and (rule.exact or rule.ranges or rule.http_status):
            problems.append((rule.line, "this rule can never match (every code or status it lists is claimed earlier); delete it or change its codes"))
    return problems

"""The typed reader every config file uses: one YAML mapping at a time, values expanded from the
environment, unknown keys refused with a "did you mean", and every problem as
``file:line: key.path: what is wrong; how to fix it`` collected on the file's ``Ctx``."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from proxy.config.durations import parse_duration, show
from proxy.config.models import ListenAddress
from proxy.config.source import EnvResolver, LineDict, LineList

T = TypeVar("T")


@dataclass
class Ctx:
    """One file's reading: where it is, its environment, and what was found wrong or worth saying."""

    file: str
    env: EnvResolver
    problems: list[str] = field(default_factory=list)
    lines: dict[str, int] = field(default_factory=dict)  # cross-file references, for their line

    warnings: list[str] = field(default_factory=list)
    infos: list[str] = field(default_factory=list)

    def error(self, line: int, path: str, message: str) -> None:
        self.problems.append(f"{self.file}:{line}: {path}: {message}" if path else f"{self.file}:{line}: {message}")

    def info(self, line: int, path: str, message: str) -> None:
        """Worth saying in ``check`` (a key that loads), not a problem."""
        self.infos.append(f"{self.file}:{line}: {path}: {message}")

    def warn(self, line: int, path: str, message: str) -> None:
        """Loads, but should be changed (an old key): ``check`` prints it, ``serve`` logs it."""
        self.warnings.append(f"{self.file}:{line}: {path}: {message}")


class Section:
    """Reads one YAML mapping: typed getters, env expansion, and unknown-key detection."""

    def __init__(self, ctx: Ctx, data: Any, path: str, line: int) -> None:
        self.ctx, self.path = ctx, path
        if isinstance(data, LineDict):
            self.data: LineDict = data
            self.line = data.line or line
        else:
            self.data = LineDict()
            self.data.line, self.data.key_lines = line, {}
            self.line = line
            if data is not None:
                ctx.error(line, path, f"must be a mapping of keys, not {type(data).__name__}")
        self.used: set[str] = set()

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def line_of(self, key: str) -> int:
        return self.data.line_of(key)

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        value = self.data.get(key, default)
        if isinstance(value, str):
            value = self.ctx.env.expand(value, f"{self.ctx.file}:{self.line_of(key)}: {self.key_path(key)}")
        return value

    def get(self, key: str, kind: Callable[[Any], T], default: T, what: str) -> T:
        value = self.raw(key)
        if key not in self.data or value is None:
            return default
        try:
            return kind(value)
        except (TypeError, ValueError) as exc:
            self.ctx.error(self.line_of(key), self.key_path(key), f"{exc if str(exc) else show(value)}; expected {what}")
            return default

    def string(self, key: str, default: str = "", *, required: bool = False) -> str:
        if required and key not in self.data:
            self.ctx.error(self.line, self.key_path(key), "is required; add it")
        value = self.raw(key, default)
        if value is None:
            return default
        if isinstance(value, (dict, list)):
            self.ctx.error(self.line_of(key), self.key_path(key), "must be a string")
            return default
        return str(value)

    def duration(self, key: str, default: float) -> float:
        return self.get(key, parse_duration, default, "a duration such as 500ms, 30s or 10m")

    def integer(self, key: str, default: int, minimum: int = 0) -> int:
        def to_int(v: Any) -> int:
            if isinstance(v, bool) or not isinstance(v, (int, str)):
                raise ValueError(f"{show(v)} is not a whole number")
            n = int(v)
            if n < minimum:
                raise ValueError(f"{n} is below the minimum {minimum}")
            return n

        return self.get(key, to_int, default, f"a whole number >= {minimum}")

    def number(self, key: str, default: float) -> float:
        def to_float(v: Any) -> float:
            if isinstance(v, bool):
                raise ValueError(f"{show(v)} is not a number")
            return float(v)

        return self.get(key, to_float, default, "a number")

    def boolean(self, key: str, default: bool) -> bool:
        def to_bool(v: Any) -> bool:
            if isinstance(v, bool):
                return v
            if isinstance(v, str) and v.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
                return v.lower() in ("true", "yes", "1", "on")
            raise ValueError(f"{show(v)} is not true or false")

        return self.get(key, to_bool, default, "true or false")

    def string_list(self, key: str, choices: tuple[str, ...] | None = None) -> tuple[str, ...] | None:
        value = self.raw(key)
        if key not in self.data or value is None:
            return None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.ctx.error(self.line_of(key), self.key_path(key), "must be a list, e.g. [a, b]")
            return None
        out = []
        for i, item in enumerate(value):
            line = value.line_of(i) if isinstance(value, LineList) else self.line_of(key)
            if isinstance(item, (dict, list)) or item is None:
                self.ctx.error(line, f"{self.key_path(key)}[{i}]", "must be a plain value")
                continue
            text = self.ctx.env.expand(str(item), f"{self.ctx.file}:{line}: {self.key_path(key)}")
            if choices is not None and text not in choices:
                self.ctx.error(line, f"{self.key_path(key)}[{i}]", f"{text!r} is not one of {', '.join(choices)}")
                continue
            out.append(text)
        return tuple(out)

    def section(self, key: str) -> Section:
        self.used.add(key)
        return Section(self.ctx, self.data.get(key), self.key_path(key), self.line_of(key))

    def finish(self, known: tuple[str, ...] | None = None) -> None:
        """Unknown keys are errors: a typo must not silently become a default."""
        allowed = set(known) if known is not None else self.used
        for key in self.data:
            if key not in allowed:
                hint = difflib.get_close_matches(key, sorted(allowed), n=1)
                fix = f"did you mean {hint[0]!r}?" if hint else f"remove it (known keys: {', '.join(sorted(allowed)) or 'none'})"
                self.ctx.error(self.line_of(key), self.key_path(key), f"unknown key; {fix}")


def listen_address(s: Section, key: str, default: str) -> ListenAddress:
    text = s.string(key, default) or default
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not (0 <= int(port) <= 65535):
        s.ctx.error(s.line_of(key), s.key_path(key), f"{text!r} is not host:port; write e.g. 127.0.0.1:8080")
        return ListenAddress("127.0.0.1", 8080)
    return ListenAddress(host.strip("[]") or "0.0.0.0", int(port))


def http_url(s: Section, key: str, default: str = "", *, required: bool = False) -> str:
    value = s.string(key, default, required=required)
    if value:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            s.ctx.error(s.line_of(key), s.key_path(key), f"{value!r} is not an http(s) URL; write e.g. https://host/path")
    return value


def named(ctx: Ctx, top: Section, key: str) -> list[tuple[str, Section]]:
    sec = top.section(key)
    out = []
    for name in sec.data:
        sec.used.add(name)
        out.append((name, sec.section(name)))
    return out


def plain(value: Any) -> Any:
    """YAML's line-tracking containers as plain dicts and lists (a JSON Schema is data, not config)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value

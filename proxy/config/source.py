"""Read a YAML file safely, keeping the line of every key, and expand ``${VAR}`` references.

Line numbers matter because operators fix config from ``partner-proxy check`` output in CI:
``routes.yaml:14: clusters.tokopedia.timeout: ...`` must point at the line to change.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class LineDict(dict[str, Any]):
    """A mapping from YAML that remembers where it and each of its keys stand (1-based lines)."""

    line: int = 0
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class LineList(list[Any]):
    line: int = 0
    item_lines: list[int]

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if index < len(self.item_lines) else self.line


class _Loader(yaml.SafeLoader):
    """SafeLoader (no ``!!python/*`` tags) whose mappings and sequences carry line numbers.

    Booleans follow YAML 1.2 (only true/false): under YAML 1.1 rules ``retry: {on: [5xx]}`` would
    turn the key ``on`` into True, and a country code ``NO`` into False.
    """


def _construct_object(self: _Loader, node: yaml.Node, deep: bool = False) -> Any:
    # Typed scalars (!!int abc, an impossible date) raise plain ValueErrors deep in PyYAML; give
    # them the node's line like every other YAML problem.
    try:
        return yaml.SafeLoader.construct_object(self, node, deep)
    except (ValueError, TypeError, OverflowError) as exc:
        raise yaml.constructor.ConstructorError(None, None, f"cannot read this value: {exc}", node.start_mark) from exc


_Loader.construct_object = _construct_object  # type: ignore[method-assign,assignment]

_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    result = LineDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            key = str(key)
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}: remove one of them", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)  # type: ignore[arg-type]
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)  # type: ignore[arg-type]


class YamlError(Exception):
    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path, self.line, self.message = path, line, message


def load_yaml(path: str | os.PathLike[str]) -> LineDict:
    """Parse one file into LineDicts; any YAML problem becomes ``YamlError`` with its line."""
    p = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise YamlError(p, 0, f"cannot read file: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise YamlError(p, line, "the file is not UTF-8 text; save it as UTF-8") from exc
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        problem = exc.problem or str(exc)
        if exc.context and exc.context_mark is not None and exc.context_mark is not mark:
            problem += f" ({exc.context} that starts at line {exc.context_mark.line + 1})"
        if "could not determine a constructor" in (problem or ""):
            problem += " (only plain YAML is accepted: remove the tag)"
        raise YamlError(p, line, f"invalid YAML: {problem}") from exc
    except yaml.YAMLError as exc:
        raise YamlError(p, 0, f"invalid YAML: {exc}") from exc
    except RecursionError as exc:
        raise YamlError(p, 0, "the YAML is nested too deeply; flatten it") from exc
    if data is None:
        data = LineDict()
        data.line, data.key_lines = 1, {}
    if not isinstance(data, LineDict):
        raise YamlError(p, 1, "the file must be a mapping of keys at the top level")
    return data


_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class EnvResolver:
    """Expands ``${VAR}`` / ``${VAR:-default}``; ``VAR_FILE`` (a Kubernetes Secret file) stands in for VAR.

    Unset variables without a default are recorded, not raised, so ``check`` can report all of
    them at once and decide whether they are fatal (``serve``) or a note (``check``).
    """

    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    missing: list[tuple[str, str]] = field(default_factory=list)  # (variable, where)
    file_errors: list[tuple[str, str]] = field(default_factory=list)

    def lookup(self, name: str, where: str) -> str | None:
        if name in self.env:
            return self.env[name]
        file_var = name + "_FILE"
        if self.env.get(file_var):
            try:
                return Path(self.env[file_var]).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                self.file_errors.append((where, f"{file_var}={self.env[file_var]!s} cannot be read ({exc.strerror})"))
                return ""
        return None

    def expand(self, value: str, where: str) -> str:
        if "${" not in value:
            return value

        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            found = self.lookup(name, where)
            if found not in (None, ""):
                return found  # type: ignore[return-value]
            if default is not None:
                return default
            if found is None:
                self.missing.append((name, where))
            return ""

        return _ENV_RE.sub(repl, value)

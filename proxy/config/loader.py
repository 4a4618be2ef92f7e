"""Turn routes.yaml and errors.yaml into one compiled, frozen ``LoadedConfig`` or a list of problems.

Every problem reads ``file:line: key.path: what is wrong; how to fix it``. The loader collects all
of them (``routes_file``, ``errors_file``, the cross-file references here) before failing, so one
``check`` run shows everything an operator must fix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from proxy.config.errors_file import parse_errors
from proxy.config.errors_table import ErrorTable
from proxy.config.models import ProxyConfig
from proxy.config.reader import Ctx
from proxy.config.routes_file import parse_routes
from proxy.config.source import EnvResolver, YamlError, load_yaml
from proxy.errors import ConfigError

DEFAULT_ROUTES = Path("config/routes.yaml")
DEFAULT_ERRORS = Path("config/errors.yaml")


@dataclass(frozen=True)
class LoadedConfig:
    proxy: ProxyConfig
    errors: Mapping[str, ErrorTable]
    notes: tuple[str, ...] = ()          # non-fatal remarks (e.g. env vars that serve will need)
    routes_path: str = ""
    errors_path: str = ""


def load_config(
    routes_path: str | os.PathLike[str] = DEFAULT_ROUTES,
    errors_path: str | os.PathLike[str] = DEFAULT_ERRORS,
    *,
    env: Mapping[str, str] | None = None,
    strict_env: bool = True,
) -> LoadedConfig:
    """Load, validate and compile both files. Raises ``ConfigError`` listing every problem.

    ``strict_env=False`` (``check``) turns unset required variables into notes: CI and image builds
    validate the shipped files without the production secrets.
    """
    resolver = EnvResolver(dict(os.environ) if env is None else dict(env))
    problems: list[str] = []
    proxy_cfg: ProxyConfig | None = None
    tables: dict[str, ErrorTable] = {}
    rctx = Ctx(str(routes_path), resolver)
    ectx = Ctx(str(errors_path), resolver)
    try:
        proxy_cfg = parse_routes(rctx, load_yaml(routes_path))
    except YamlError as exc:
        problems.append(str(exc))
    try:
        tables = parse_errors(ectx, load_yaml(errors_path))
    except YamlError as exc:
        problems.append(str(exc))
    problems += rctx.problems + ectx.problems
    if proxy_cfg is not None:
        for cname, cluster in proxy_cfg.clusters.items():
            if tables and cluster.errors and cluster.errors not in tables:
                line = rctx.lines.get(f"clusters.{cname}.errors", 0)
                problems.append(f"{routes_path}:{line}: clusters.{cname}.errors: no table {cluster.errors!r} in {errors_path}; add it there or use one of: {', '.join(tables)}")
    for where, message in resolver.file_errors:
        problems.append(f"{where}: {message}")
    notes: list[str] = [f"warning: {w}" for w in rctx.warnings + ectx.warnings] + rctx.infos
    for var, where in resolver.missing:
        text = f"{where}: environment variable {var} is not set (nor {var}_FILE); set it, or write ${{{var}:-default}}"
        (problems if strict_env else notes).append(text)
    if problems:
        raise ConfigError(problems)
    assert proxy_cfg is not None
    return LoadedConfig(proxy_cfg, tables, tuple(notes), str(routes_path), str(errors_path))

"""What tracing is told: the ``tracing:`` block of routes.yaml and the standard ``OTEL_*`` variables.

Two sources, split by who owns the setting:

- the OpenTelemetry SDK's standard variables say *where* spans go and *which* are kept
  (``OTEL_EXPORTER_OTLP_ENDPOINT`` with ``/v1/traces`` appended, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
  as is, ``OTEL_EXPORTER_OTLP_[TRACES_]HEADERS``, ``OTEL_EXPORTER_OTLP_[TRACES_]COMPRESSION``,
  ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``,
  ``OTEL_TRACES_SAMPLER_ARG``, and the kill switches ``OTEL_SDK_DISABLED=true`` /
  ``OTEL_TRACES_EXPORTER=none``): a platform team sets them the same way for every service;
- the ``tracing:`` block says what those variables do not cover, for this process: the export
  queue bound, batch size, schedule delay, export and shutdown timeouts, and an ``enabled`` switch.

Everything is read from a mapping passed in (``os.environ`` in production, a dict in tests): the
SDK's own readers of ``os.environ`` are bypassed by passing every value explicitly.
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import unquote

from proxy.config.durations import parse_duration, show
from proxy.config.models import TracingConfig  # the model (defaults live there); re-exported here

log = logging.getLogger("proxy.otel")

SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
DEFAULT_SAMPLER = "parentbased_always_on"  # the specification's default
DEFAULT_SERVICE_NAME = "partner-proxy"


TRACING_KEYS = tuple(f.name for f in fields(TracingConfig))


class TracingConfigError(ValueError):
    """``problems`` is a list of ``(key, message)``; the loader adds file and line to each."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"tracing.{k}: {m}" for k, m in problems))
        self.problems = problems


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
        return v.lower() in ("true", "yes", "1", "on")
    raise ValueError(f"{show(v)} is not true or false")


def _count(minimum: int) -> Any:
    def to_int(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise ValueError(f"{show(v)} is not a whole number")
        try:
            n = int(v)
        except ValueError:
            raise ValueError(f"{show(v)} is not a whole number") from None
        if n < minimum:
            raise ValueError(f"{n} is below the minimum {minimum}")
        return n

    return to_int


def _positive_duration(v: Any) -> float:
    seconds = parse_duration(v)
    if seconds <= 0:
        raise ValueError(f"{show(v)} must be more than 0; write e.g. 500ms or 5s")
    return seconds


_READERS: dict[str, Any] = {
    "enabled": _bool,
    "max_queue_size": _count(1),
    "max_export_batch_size": _count(1),
    "schedule_delay": _positive_duration,
    "export_timeout": _positive_duration,
    "shutdown_timeout": _positive_duration,
}


def tracing_config_from(mapping: Mapping[str, Any] | None) -> TracingConfig:
    """A ``TracingConfig`` from the ``tracing:`` mapping (``None`` or ``{}`` gives the defaults).

    Values are already env-expanded by the caller. Raises ``TracingConfigError`` with every
    problem (unknown keys with a did-you-mean, bad values with how to fix them).
    """
    if mapping is None:
        return TracingConfig()
    if not isinstance(mapping, Mapping):
        raise TracingConfigError([("", f"must be a mapping of keys, not {type(mapping).__name__}")])
    problems: list[tuple[str, str]] = []
    values: dict[str, Any] = {}
    for key, raw in mapping.items():
        reader = _READERS.get(key)
        if reader is None:
            hint = difflib.get_close_matches(str(key), TRACING_KEYS, n=1)
            fix = f"did you mean {hint[0]!r}?" if hint else f"remove it (known keys: {', '.join(TRACING_KEYS)})"
            problems.append((str(key), f"unknown key; {fix}"))
            continue
        if raw is None:
            continue
        try:
            values[key] = reader(raw)
        except (TypeError, ValueError) as exc:
            problems.append((key, str(exc)))
    cfg = TracingConfig(**values)
    if cfg.max_export_batch_size > cfg.max_queue_size and not problems:
        problems.append(("max_export_batch_size", f"{cfg.max_export_batch_size} is above max_queue_size {cfg.max_queue_size}; lower it"))
    if problems:
        raise TracingConfigError(problems)
    return cfg


# ---- the standard variables ---------------------------------------------------------------------


def _get(env: Mapping[str, str], name: str) -> str:
    return (env.get(name) or "").strip()


def traces_endpoint(env: Mapping[str, str]) -> str | None:
    """The OTLP/HTTP traces URL, or None (tracing off). The signal variable wins and is used as is."""
    signal = _get(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if signal:
        return signal
    base = _get(env, "OTEL_EXPORTER_OTLP_ENDPOINT")
    if base:
        return base.rstrip("/") + "/v1/traces"
    return None


def switched_off(env: Mapping[str, str]) -> bool:
    return _get(env, "OTEL_SDK_DISABLED").lower() == "true" or _get(env, "OTEL_TRACES_EXPORTER").lower() == "none"


def parse_pairs(text: str) -> dict[str, str]:
    """W3C-baggage-like ``k=v,k2=v2`` with percent-encoded values (headers, resource attributes).

    Malformed entries are skipped with a warning naming the key only (values may be api keys).
    """
    out: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            log.warning("ignored a malformed OTEL key=value entry (no '=' or no key)")
            continue
        out[unquote(key)] = unquote(value.strip())
    return out


def exporter_headers(env: Mapping[str, str]) -> dict[str, str]:
    return parse_pairs(_get(env, "OTEL_EXPORTER_OTLP_TRACES_HEADERS") or _get(env, "OTEL_EXPORTER_OTLP_HEADERS"))


def compression(env: Mapping[str, str]) -> str:
    value = (_get(env, "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION") or _get(env, "OTEL_EXPORTER_OTLP_COMPRESSION")).lower()
    return "gzip" if value == "gzip" else "none"


def resource_attributes(env: Mapping[str, str], version: str) -> dict[str, str]:
    """``OTEL_RESOURCE_ATTRIBUTES`` with ``OTEL_SERVICE_NAME`` on top (the specification's order)."""
    attrs = parse_pairs(_get(env, "OTEL_RESOURCE_ATTRIBUTES"))
    name = _get(env, "OTEL_SERVICE_NAME")
    if name:
        attrs["service.name"] = name
    attrs.setdefault("service.name", DEFAULT_SERVICE_NAME)
    attrs.setdefault("service.version", version)
    return attrs


@dataclass(frozen=True, slots=True)
class SamplerSpec:
    name: str = DEFAULT_SAMPLER
    ratio: float = 1.0


def sampler_spec(env: Mapping[str, str]) -> SamplerSpec:
    """``OTEL_TRACES_SAMPLER`` and ``_ARG``; an unknown name or a bad ratio warns and uses the default."""
    name = _get(env, "OTEL_TRACES_SAMPLER").lower() or DEFAULT_SAMPLER
    if name not in SAMPLERS:
        log.warning("OTEL_TRACES_SAMPLER=%s is not supported (one of %s); using %s", show(name), ", ".join(SAMPLERS), DEFAULT_SAMPLER)
        name = DEFAULT_SAMPLER
    ratio = 1.0
    arg = _get(env, "OTEL_TRACES_SAMPLER_ARG")
    if arg and name.endswith("traceidratio"):
        try:
            ratio = float(arg)
            if not math.isfinite(ratio) or not 0.0 <= ratio <= 1.0:
                raise ValueError
        except ValueError:
            log.warning("OTEL_TRACES_SAMPLER_ARG=%s is not a ratio between 0 and 1; using 1.0", show(arg))
            ratio = 1.0
    return SamplerSpec(name, ratio)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a ``Tracing`` is built from: compare two to know whether a reload changes tracing.

    ``headers`` hold the exporter's credentials (New Relic's ``api-key``): they never show in repr.
    """

    endpoint: str | None
    headers: Mapping[str, str] = field(repr=False, default_factory=dict)
    compression: str = "none"
    resource: Mapping[str, str] = field(default_factory=dict)
    sampler: SamplerSpec = SamplerSpec()
    config: TracingConfig = TracingConfig()

    @property
    def enabled(self) -> bool:
        return self.endpoint is not None and self.config.enabled


def settings_from(env: Mapping[str, str], cfg: TracingConfig, version: str) -> Settings:
    endpoint = None if switched_off(env) else traces_endpoint(env)
    return Settings(
        endpoint=endpoint,
        headers=exporter_headers(env) if endpoint else {},
        compression=compression(env),
        resource=resource_attributes(env, version),
        sampler=sampler_spec(env),
        config=cfg,
    )

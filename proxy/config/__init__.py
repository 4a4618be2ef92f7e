"""Config: safe YAML with line numbers, ``${ENV}`` expansion, compiled into frozen objects."""

from proxy.config.loader import DEFAULT_ERRORS, DEFAULT_ROUTES, LoadedConfig, load_config

__all__ = ["DEFAULT_ERRORS", "DEFAULT_ROUTES", "LoadedConfig", "load_config"]

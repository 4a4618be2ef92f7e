"""``token_cache.redis_url`` (``REDIS_URL``) parsed once into a typed target, or refused with a reason.

Accepted shapes (DESIGN.md section 2, "Redis")::

    redis://[user:password@]host[:port][/db][?query]           one server (or a managed endpoint)
    rediss://...                                                 the same over TLS
    unix://[user:password@]/path/to/socket[?db=N]                a local socket
    redis+sentinel://[user:password@]host:port[,host:port...]/SERVICE[/db][?query]
    rediss+sentinel://...                                        sentinels and data nodes over TLS
    redis+cluster://[user:password@]host:port[,host:port...][?query]
    rediss+cluster://...                                         every cluster node over TLS

Query parameters (all optional): ``ssl_ca_certs=PATH`` (the CA bundle that signed the server
certificate; default: the system's), ``ssl_certfile=PATH`` and ``ssl_keyfile=PATH`` (a client
certificate, both or neither), only with a TLS scheme; for Sentinel, ``sentinel_username`` and
``sentinel_password`` when the sentinels themselves require a password (``user:password@`` is for
the data nodes). Anything else is an error, so a typo is not silently ignored.

Error messages name the part that is wrong and never contain the password. This module does no
network I/O and imports nothing from redis-py; ``proxy.oauth.redis_client`` builds the clients.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, unquote

Mode = Literal["single", "unix", "sentinel", "cluster"]

_SCHEMES: dict[str, tuple[Mode, bool]] = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "unix": ("unix", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
_DEFAULT_PORT = {"single": 6379, "sentinel": 26379, "cluster": 6379}
_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_SENTINEL_AUTH = ("sentinel_username", "sentinel_password")
SCHEMES_HELP = "redis://, rediss://, unix://, redis+sentinel://, rediss+sentinel://, redis+cluster:// or rediss+cluster://"


class RedisUrlError(ValueError):
    """A REDIS_URL that cannot work; the message says which part and never holds the password."""


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where the token cache lives and how to talk to it. ``repr`` hides the passwords."""

    mode: Mode
    tls: bool
    nodes: tuple[tuple[str, int], ...] = ()   # server / sentinels / cluster seed nodes
    path: str = ""                            # unix socket
    db: int = 0
    service: str = ""                         # Sentinel master name
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        """For logs: scheme, nodes and user, never a password."""
        scheme = next(s for s, (m, t) in _SCHEMES.items() if m == self.mode and t == self.tls)
        user = f"{self.username}@" if self.username else ""
        where = self.path if self.mode == "unix" else ",".join(f"{h}:{p}" for h, p in self.nodes)
        tail = f"/{self.service}" if self.service else ""
        return f"{scheme}://{user}{where}{tail}"


def parse_redis_url(url: str, *, check_files: bool = True) -> RedisTarget:
    """Parse ``url``; raise ``RedisUrlError`` naming the wrong part. ``check_files``: TLS files readable."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _SCHEMES:
        shown = scheme if sep else "(none)"
        raise RedisUrlError(f"scheme {shown!r} is not supported; use {SCHEMES_HELP}")
    mode, tls = _SCHEMES[scheme]
    rest, _, fragment = rest.partition("#")
    if fragment:
        raise RedisUrlError("a #fragment has no meaning in a Redis URL; remove it")
    rest, _, query_text = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if at:
        user_raw, colon, pw_raw = userinfo.partition(":")
        username = unquote(user_raw) or None
        password = unquote(pw_raw) if colon else None

    query = _query(query_text)
    target_kw: dict[str, object] = {"username": username, "password": password}

    if mode == "unix":
        if hosts:
            raise RedisUrlError(f"unix:// takes a socket path (unix:///run/redis.sock), not a host {hosts!r}")
        sock = "/" + path if slash else ""
        if not path:
            raise RedisUrlError("unix:// needs a socket path, e.g. unix:///run/redis/redis.sock")
        db = _db(query.pop("db", "0"), "the db query parameter")
        _no_tls_files(query, tls)
        _unknown(query, mode)
        return RedisTarget(mode="unix", tls=False, path=sock, db=db, **target_kw)  # type: ignore[arg-type]

    nodes = _nodes(hosts, mode)
    db = 0
    service = ""
    segments = [s for s in path.split("/")] if slash else []
    if segments and segments[-1] == "":
        segments.pop()  # a trailing slash
    if mode == "single":
        if len(segments) > 1:
            raise RedisUrlError(f"path /{path} must be /<db number> (or empty for db 0)")
        if segments:
            db = _db(segments[0], "the path (/<db>)")
        if len(nodes) > 1:
            raise RedisUrlError(
                f"{scheme}:// takes one host; for several use redis+sentinel:// (Sentinel) or redis+cluster:// (Cluster)"
            )
    elif mode == "sentinel":
        if not segments or not segments[0]:
            raise RedisUrlError(
                f"{scheme}:// needs the Sentinel service (master) name after the hosts: {scheme}://host:26379[,host:port...]/mymaster[/db]"
            )
        if len(segments) > 2:
            raise RedisUrlError(f"path /{path} must be /<service>[/<db>]")
        service = unquote(segments[0])
        if len(segments) == 2:
            db = _db(segments[1], "the path (/<service>/<db>)")
    else:  # cluster
        if segments and segments != ["0"]:
            raise RedisUrlError(f"{scheme}:// has no databases: drop the path /{path} (Redis Cluster only has db 0)")

    files = {k: query.pop(k) for k in _TLS_FILES if k in query}
    if files and not tls:
        raise RedisUrlError(
            f"{', '.join(sorted(files))}: TLS settings, but {scheme}:// is not TLS; use {scheme.replace('redis', 'rediss', 1)}://"
        )
    if ("ssl_certfile" in files) != ("ssl_keyfile" in files):
        raise RedisUrlError("a client certificate needs both ssl_certfile and ssl_keyfile")
    if check_files:
        for key, value in files.items():
            _readable(key, value)
    sentinel_auth = {k: query.pop(k) for k in _SENTINEL_AUTH if k in query}
    if sentinel_auth and mode != "sentinel":
        raise RedisUrlError(f"{', '.join(sorted(sentinel_auth))}: Sentinel settings, but {scheme}:// is not a Sentinel URL")
    _unknown(query, mode)
    return RedisTarget(
        mode=mode,
        tls=tls,
        nodes=nodes,
        db=db,
        service=service,
        ssl_ca_certs=files.get("ssl_ca_certs"),
        ssl_certfile=files.get("ssl_certfile"),
        ssl_keyfile=files.get("ssl_keyfile"),
        sentinel_username=sentinel_auth.get("sentinel_username") or None,
        sentinel_password=sentinel_auth.get("sentinel_password") or None,
        **target_kw,  # type: ignore[arg-type]
    )


def redis_url_problem(url: str) -> str | None:
    """For the config loader: None when ``url`` is empty or usable, else what is wrong."""
    if not url:
        return None
    try:
        parse_redis_url(url)
    except RedisUrlError as exc:
        return str(exc)
    return None


# --- parts -----------------------------------------------------------------------------------------


def _query(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        if key in out:
            raise RedisUrlError(f"query parameter {key!r} is given twice")
        if not value:
            raise RedisUrlError(f"query parameter {key!r} is empty")
        out[key] = value
    return out


def _nodes(hosts: str, mode: Mode) -> tuple[tuple[str, int], ...]:
    if not hosts:
        raise RedisUrlError("no host: write host:port after the scheme (and user:password@, if any)")
    out = []
    for item in hosts.split(","):
        item = item.strip()
        if not item:
            raise RedisUrlError("empty host in the host list (a stray comma?)")
        if item.startswith("["):  # [IPv6]:port
            host, close, port_text = item[1:].partition("]")
            if not close:
                raise RedisUrlError(f"host {item!r}: unclosed [ in an IPv6 address")
            port_text = port_text.removeprefix(":")
        else:
            host, _, port_text = item.partition(":")
        if not host:
            raise RedisUrlError(f"host {item!r}: the host name is empty")
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                # The port text is not echoed: in a mistyped URL (user:password/0, no @host) it is the password.
                raise RedisUrlError(f"host {host}: the port is not a number from 1 to 65535 (a missing @host?)")
            port = int(port_text)
        else:
            port = _DEFAULT_PORT[mode]
        out.append((host, port))
    return tuple(out)


def _db(text: str, where: str) -> int:
    if not text.isdigit():
        raise RedisUrlError(f"{where}: database {text!r} is not a number")
    return int(text)


def _readable(key: str, path: str) -> None:
    if not os.path.isfile(path):
        raise RedisUrlError(f"{key}={path}: no such file")
    if not os.access(path, os.R_OK):
        raise RedisUrlError(f"{key}={path}: not readable by this user")


def _no_tls_files(query: dict[str, str], tls: bool) -> None:
    bad = [k for k in _TLS_FILES if k in query]
    if bad:
        raise RedisUrlError(f"{', '.join(bad)}: TLS settings, but a unix socket has no TLS; remove them")


def _unknown(query: dict[str, str], mode: Mode) -> None:
    if query:
        allowed = ["db"] if mode == "unix" else list(_TLS_FILES) + (list(_SENTINEL_AUTH) if mode == "sentinel" else [])
        raise RedisUrlError(
            f"unknown query parameter {', '.join(sorted(query))}; this URL accepts {', '.join(allowed)}"
        )

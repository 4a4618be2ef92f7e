"""Redis TLS files replaced on disk are picked up without a restart: a real TLS-only redis-server.

The token store watches its client's CA, client certificate and key (``TlsFiles.watch``): a stat
of each file every ``TLS_POLL_INTERVAL`` (0.05 s here) and, when one changed, a new TLS context,
both in a thread. The files live in a directory laid out like a Kubernetes Secret volume
(``SecretVolume``: symlinks swapped atomically), as cert-manager rotates them. Proved here:

- a CA that does not verify the server, replaced by the right one: a new connection succeeds
  within a few polls, one info line says so, and nothing on the event loop read a file or built a
  context (blockbuster, extended to OpenSSL's file reads); the same with the client certificate
  and key replaced together;
- a broken replacement (garbage CA, a half-written certificate, a key of another certificate)
  keeps the working context: new connections still connect, one warning names the file and what
  is wrong (never the contents), however many polls pass; a good replacement then goes through;
- the watch task starts with the first command and is gone once the store (or the Resources that
  own it) closed; a store without TLS, or never used, has none.

Sentinel and Cluster: tests/test_redis_tls_shared_context.py.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from blockbuster import BlockingError

from proxy.config.models import Secret, TokenCacheConfig
from proxy.config.redis_url import parse_redis_url
from proxy.metrics import Metrics
from proxy.oauth import redis_client
from proxy.oauth.redis_client import TlsFiles
from proxy.oauth.store import RedisTokenStore
from proxy.resources import Resources
from tests.blocking import no_blocking_calls
from tests.redis_topologies import (
    SIDECAR_PASSWORD,
    SIDECAR_USER,
    Pki,
    RedisProc,
    SecretVolume,
    _openssl,
    make_pki,
    start_tls,
    temp_root,
)

pytestmark = [pytest.mark.redis_topology, pytest.mark.timeout(60)]

POLL = 0.05
PROVIDER = "tls-rotation"
GARBAGE = b"-----BEGIN CERTIFICATE-----\nnot-base64-SECRETISH-CONTENT\n"


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    path = temp_root("pp-tls-rot-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def pki(root: Path) -> Pki:
    return make_pki(root)


@pytest.fixture(scope="module")
def node(root: Path, pki: Pki) -> Iterator[RedisProc]:
    proc = start_tls(root, pki)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def foreign_client(pki: Pki) -> tuple[Path, Path]:
    """A client certificate signed by the other CA: the server (tls-auth-clients optional) refuses it."""
    d = pki.ca.parent
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=foreign-client", "-keyout", "foreign-client.key", "-out", "foreign-client.csr", cwd=d)
    _openssl("x509", "-req", "-in", "foreign-client.csr", "-CA", "other-ca.crt", "-CAkey", "other-ca.key", "-CAcreateserial", "-days", "2",
             "-extfile", "client.ext", "-out", "foreign-client.crt", cwd=d)
    return d / "foreign-client.crt", d / "foreign-client.key"


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_client, "TLS_POLL_INTERVAL", POLL)


def secret(tmp_path: Path, ca: Path | bytes, cert: Path | bytes, key: Path | bytes) -> SecretVolume:
    return SecretVolume(tmp_path / "redis-tls", {"ca.crt": ca, "tls.crt": cert, "tls.key": key})


def url_for(node: RedisProc, vol: SecretVolume) -> str:
    return (
        f"rediss://{SIDECAR_USER}:{SIDECAR_PASSWORD}@127.0.0.1:{node.port}/0"
        f"?ssl_ca_certs={vol.path('ca.crt')}&ssl_certfile={vol.path('tls.crt')}&ssl_keyfile={vol.path('tls.key')}"
    )


def store_for(url: str, metrics: Metrics) -> RedisTokenStore:
    store = RedisTokenStore.from_config(TokenCacheConfig(redis_url=Secret(url), connect_timeout=2.0, socket_timeout=2.0), metrics)
    assert store is not None
    return store


def watch_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("redis-tls-watch") and not t.done()]


def reloads(metrics: Metrics, result: str) -> float:
    return metrics.registry.get_sample_value("partner_proxy_redis_tls_reloads_total", {"result": result}) or 0.0


async def eventually(check: Callable[[], object], what: str, polls: int = 60) -> None:
    """``check`` (sync or async) becomes true within ``polls`` poll periods."""
    for _ in range(polls):
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(POLL)
    raise AssertionError(f"not within {polls} polls: {what}")


async def fresh_read_ok(store: RedisTokenStore) -> bool:
    """A GET on a NEW connection: the pooled ones are closed first."""
    await store._redis.connection_pool.disconnect()  # type: ignore[union-attr]
    return (await store.get(PROVIDER, 0.0)).ok


def messages(caplog: pytest.LogCaptureFixture, level: int, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and needle in r.getMessage()]


# --- a replacement that fixes things is picked up -------------------------------------------------


async def test_a_replaced_ca_file_is_used_by_new_connections_without_a_file_read_on_the_loop(
    node: RedisProc, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.oauth")
    vol = secret(tmp_path, pki.other_ca, pki.client_cert, pki.client_key)  # this CA does not verify the server
    metrics = Metrics()
    store = store_for(url_for(node, vol), metrics)
    try:
        with no_blocking_calls(["proxy"]):
            assert not (await store.get(PROVIDER, 0.0)).ok  # refused: the server's certificate is not verified
            assert len(watch_tasks()) == 1
            vol.update({"ca.crt": pki.ca, "tls.crt": pki.client_cert, "tls.key": pki.client_key})  # what cert-manager does
            await eventually(lambda: reloads(metrics, "success") == 1, "the new CA put in use")
            # the pool's connection object that failed reconnects, with the new context
            assert (await store.get(PROVIDER, 0.0)).ok
            assert await fresh_read_ok(store)
        assert messages(caplog, logging.INFO, "Redis TLS files for") == [
            f"Redis TLS files for rediss://{SIDECAR_USER}@127.0.0.1:{node.port} changed: new connections use the new certificate"
        ]
        assert reloads(metrics, "failure") == 0
    finally:
        await store.close()
    assert watch_tasks() == []


async def test_a_replaced_client_certificate_and_key_are_used_by_new_connections(
    node: RedisProc, pki: Pki, foreign_client: tuple[Path, Path], tmp_path: Path
) -> None:
    vol = secret(tmp_path, pki.ca, *foreign_client)  # a client certificate the server does not trust
    metrics = Metrics()
    store = store_for(url_for(node, vol), metrics)
    try:
        with no_blocking_calls(["proxy"]):
            assert not (await store.get(PROVIDER, 0.0)).ok
            vol.update({"ca.crt": pki.ca, "tls.crt": pki.client_cert, "tls.key": pki.client_key})
            await eventually(lambda: fresh_read_ok(store), "a new connection with the new client certificate")
        assert reloads(metrics, "success") == 1
    finally:
        await store.close()


# --- a broken replacement keeps the working context -------------------------------------------------


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("garbage_ca", "ssl_ca_certs={ca}: no complete PEM CA certificate in it"),
        ("half_written_cert", "ssl_certfile={cert}: no complete PEM certificate in it"),
        ("key_of_another_cert", "ssl_keyfile={key} is not the key of ssl_certfile={cert}"),
    ],
)
async def test_a_broken_replacement_keeps_the_working_context_and_is_logged_once(
    case: str, expected: str, node: RedisProc, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.oauth")
    good: dict[str, Path | bytes] = {"ca.crt": pki.ca, "tls.crt": pki.client_cert, "tls.key": pki.client_key}
    vol = secret(tmp_path, pki.ca, pki.client_cert, pki.client_key)
    metrics = Metrics()
    store = store_for(url_for(node, vol), metrics)
    broken = dict(good)
    if case == "garbage_ca":
        broken["ca.crt"] = GARBAGE
    elif case == "half_written_cert":
        broken["tls.crt"] = pki.client_cert.read_bytes()[:300]
    else:
        broken["tls.key"] = pki.server_key  # a valid key, of the server's certificate
    try:
        with no_blocking_calls(["proxy"]):
            assert await fresh_read_ok(store)
            shared = store._tls.classes[0].shared_ssl_context  # type: ignore[union-attr, attr-defined]
            vol.update(broken)
            await eventually(lambda: reloads(metrics, "failure") == 1, "the broken files noticed")
            await asyncio.sleep(POLL * 10)  # ten more polls, each retrying: still one warning
            assert await fresh_read_ok(store)  # new connections keep the working context
            assert store._tls.classes[0].shared_ssl_context is shared  # type: ignore[union-attr, attr-defined]
            warnings = messages(caplog, logging.WARNING, "Redis TLS files for")
            paths = {"ca": vol.path("ca.crt"), "cert": vol.path("tls.crt"), "key": vol.path("tls.key")}
            assert len(warnings) == 1, warnings
            assert expected.format(**paths) in warnings[0], warnings[0]
            assert "cannot be used, new connections keep the previous certificate" in warnings[0]
            assert "SECRETISH" not in caplog.text and "BEGIN" not in caplog.text
            assert reloads(metrics, "failure") == 1 and reloads(metrics, "success") == 0
            # the fix arrives: put in use
            vol.update(good)
            await eventually(lambda: reloads(metrics, "success") == 1, "the fixed files put in use")
            assert store._tls.classes[0].shared_ssl_context is not shared  # type: ignore[union-attr, attr-defined]
            assert await fresh_read_ok(store)
        assert len(messages(caplog, logging.INFO, "new connections use the new certificate")) == 1
    finally:
        await store.close()


async def test_deleted_files_keep_the_working_context(node: RedisProc, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    vol = secret(tmp_path, pki.ca, pki.client_cert, pki.client_key)
    metrics = Metrics()
    store = store_for(url_for(node, vol), metrics)
    try:
        assert await fresh_read_ok(store)
        vol.path("tls.key").unlink()
        await eventually(lambda: reloads(metrics, "failure") == 1, "the missing key noticed")
        assert await fresh_read_ok(store)
        [warning] = messages(caplog, logging.WARNING, "Redis TLS files for")
        assert f"ssl_keyfile={vol.path('tls.key')}: no such file" in warning
    finally:
        await store.close()


# --- the watch's lifecycle, and the detector ------------------------------------------------------------


async def test_the_watch_runs_from_the_first_command_until_the_store_closes(node: RedisProc, pki: Pki, tmp_path: Path, redis_url: str) -> None:
    vol = secret(tmp_path, pki.ca, pki.client_cert, pki.client_key)
    store = store_for(url_for(node, vol), Metrics())
    assert watch_tasks() == []  # built, not used: nothing to watch yet
    assert (await store.get(PROVIDER, 0.0)).ok
    [task] = watch_tasks()
    await asyncio.sleep(POLL * 3)  # it polls, and keeps running
    assert not task.done()
    await store.close()
    assert task.cancelled() and watch_tasks() == []
    # without TLS there is nothing to watch
    plain = store_for(redis_url, Metrics())
    try:
        assert (await plain.get(PROVIDER, 0.0)).ok
        assert watch_tasks() == []
    finally:
        await plain.close()


async def test_closing_the_resources_stops_the_watch(node: RedisProc, pki: Pki, tmp_path: Path) -> None:
    vol = secret(tmp_path, pki.ca, pki.client_cert, pki.client_key)
    resources = Resources(Metrics(), env={})
    store = resources._store(TokenCacheConfig(redis_url=Secret(url_for(node, vol))))
    assert store is not None
    await store.acquire_lock(PROVIDER)
    [task] = watch_tasks()
    await resources.close()
    assert task.cancelled() and watch_tasks() == []


async def test_the_detector_sees_a_stat_or_a_context_built_on_the_loop(pki: Pki, node: RedisProc, tmp_path: Path) -> None:
    """The tests above are evidence only if doing the watch's work on the loop would be caught."""
    vol = secret(tmp_path, pki.ca, pki.client_cert, pki.client_key)
    target = parse_redis_url(url_for(node, vol))
    tls = TlsFiles.load(target)
    with no_blocking_calls(["proxy"]):
        with pytest.raises(BlockingError):
            tls.fingerprints()
        with pytest.raises(BlockingError):
            TlsFiles.load(target)

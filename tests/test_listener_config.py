"""routes.yaml's ``listener:`` block: the h1 data listener's limits (``H1Limits`` is ``ListenerConfig``).

Every key loads; a bad value is refused with its file and line; the shipped commented block is the
model's defaults; the limits reach the real h1 server on loopback; a reload applies them to the
connections accepted after it while an open connection keeps its own. No test asserts how long
anything took: timeouts are small and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from aiohttp.test_utils import TestServer

from proxy.app import build_state
from proxy.cli import main
from proxy.config import load_config
from proxy.config.models import ListenerConfig, ProxyConfig
from proxy.config.schema import routes_schema
from proxy.errors import ConfigError
from proxy.h1.limits import H1Limits
from tests.helpers import ERRORS, ROUTES, H1TestServer, patched_routes, sandbox_app, sandbox_env, shipped_config
from tests.hostile import base, raw_exchange
from tests.test_config import ENV
from tests.test_h1 import GET, read_until_eof

ANCHOR = "drain_timeout: 5s\n"

# a value other than the default for every key, each valid on its own
CHANGED: dict[str, tuple[str, object]] = {
    "max_request_line": ("4000", 4000),
    "max_field_size": ("4096", 4096),
    "max_headers": ("50", 50),
    "max_head_bytes": ("32768", 32768),
    "max_body_buffer": ("2048", 2048),
    "max_pipelined": ("4", 4),
    "header_timeout": ("3s", 3.0),
    "body_timeout": ("500ms", 0.5),
    "keepalive_timeout": ("2m", 120.0),
    "linger_timeout": ("1", 1.0),
    "write_buffer_high": ("131072", 131072),
    "write_buffer_low": ("8192", 8192),
}


def with_listener(tmp_path: Path, block: str) -> Path:
    """The shipped routes.yaml with ``block`` (the lines under ``listener:``) after drain_timeout."""
    return patched_routes(tmp_path, {ANCHOR: ANCHOR + "listener:\n" + block})


def problems(routes: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(routes, ERRORS, env=ENV)
    return info.value.problems


def line_of(path: Path, needle: str) -> int:
    text = path.read_text()
    return text[: text.index(needle)].count("\n") + 1


def test_h1_limits_is_the_config_model_and_its_defaults_are_written_once() -> None:
    assert H1Limits is ListenerConfig
    assert ProxyConfig().listener == H1Limits()
    assert {f.name for f in dataclasses.fields(ListenerConfig)} == set(CHANGED)


def test_without_a_listener_block_the_defaults_apply() -> None:
    assert load_config(ROUTES, ERRORS, env=ENV).proxy.listener == ListenerConfig()


@pytest.mark.parametrize("key", list(CHANGED))
def test_each_key_loads(tmp_path: Path, key: str) -> None:
    text, value = CHANGED[key]
    cfg = load_config(with_listener(tmp_path, f"  {key}: {text}\n"), ERRORS, env=ENV).proxy.listener
    assert getattr(cfg, key) == value
    assert dataclasses.replace(cfg, **{key: getattr(ListenerConfig(), key)}) == ListenerConfig()  # the others stay


def test_all_keys_at_once_and_from_the_environment(tmp_path: Path) -> None:
    block = "".join(f"  {key}: {text}\n" for key, (text, _) in CHANGED.items()).replace("max_headers: 50", "max_headers: ${MAX_HEADERS:-7}")
    cfg = load_config(with_listener(tmp_path, block), ERRORS, env=ENV).proxy.listener
    assert cfg == ListenerConfig(**{k: v for k, (_, v) in CHANGED.items()} | {"max_headers": 7})  # type: ignore[arg-type]


def test_the_shipped_commented_block_is_every_key_with_its_default(tmp_path: Path) -> None:
    text = ROUTES.read_text()
    block = re.search(r"^# listener:\n((?:#   .*\n)+)", text, flags=re.M)
    assert block, "routes.yaml has no commented listener: block"
    uncommented = "".join(line[1:] + "\n" for line in block.group(1).splitlines())
    keys = [line.split(":")[0].strip() for line in uncommented.splitlines()]
    assert keys == [f.name for f in dataclasses.fields(ListenerConfig)]
    cfg = load_config(with_listener(tmp_path, uncommented), ERRORS, env=ENV).proxy.listener
    assert cfg == ListenerConfig()


BAD = [
    # (lines under listener:, the key whose line is reported, words in the message)
    ("  max_headers: 0\n", "max_headers", "below the minimum 1"),
    ("  max_body_buffer: -5\n", "max_body_buffer", "below the minimum 1"),
    ("  max_pipelined: lots\n", "max_pipelined", "expected a whole number"),
    ("  max_head_bytes: 1.5\n", "max_head_bytes", "not a whole number"),
    ("  max_headers: true\n", "max_headers", "not a whole number"),
    ("  header_timeout: 0s\n", "header_timeout", "must be more than 0"),
    ("  keepalive_timeout: 0\n", "keepalive_timeout", "must be more than 0"),
    ("  body_timeout: soon\n", "body_timeout", "not a duration"),
    ("  linger_timeout: -1\n", "linger_timeout", "negative"),
    ("  write_buffer_low: 65536\n", "write_buffer_low", "write_buffer_low 65536 is not below write_buffer_high 65536"),
    ("  write_buffer_high: 8192\n", "write_buffer_high", "write_buffer_low 16384 is not below write_buffer_high 8192"),
    ("  max_field_size: 70000\n", "max_field_size", "max_field_size 70000 is above max_head_bytes 65536"),
    ("  max_head_bytes: 4096\n", "max_head_bytes", "max_request_line 8190 is above max_head_bytes 4096"),
    ("  max_request_line: 100000\n", "max_request_line", "max_request_line 100000 is above max_head_bytes 65536"),
    ("  max_header: 5\n", "max_header", "unknown key; did you mean 'max_headers'?"),
    ("  - 5\n", "listener", "must be a mapping"),
]


@pytest.mark.parametrize("block,key,words", BAD, ids=[b[0].strip() for b in BAD])
def test_a_bad_value_is_refused_with_file_and_line(tmp_path: Path, block: str, key: str, words: str, capsys: pytest.CaptureFixture[str]) -> None:
    routes = with_listener(tmp_path, block)
    line = line_of(routes, "\nlistener:\n") + 1 if key == "listener" else line_of(routes, f"  {key}:")
    where = f"{routes}:{line}: " + ("listener" if key == "listener" else f"listener.{key}")
    found = problems(routes)
    assert any(p.startswith(where) and words in p for p in found), (where, words, found)
    assert main(["check", "--config", str(routes), "--errors", str(ERRORS)]) == 1
    assert words in capsys.readouterr().err


def test_check_accepts_the_block(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    routes = with_listener(tmp_path, "  header_timeout: 5s\n  max_headers: 50\n")
    assert main(["check", "--config", str(routes), "--errors", str(ERRORS)]) == 0
    assert capsys.readouterr().out.startswith("ok: ")


def test_the_schema_has_the_block_and_rejects_a_misspelled_key() -> None:
    schema = routes_schema()
    props = schema["properties"]["listener"]["properties"]
    assert list(props) == list(CHANGED)
    assert props["header_timeout"]["default"] == 10.0 and props["max_headers"]["default"] == 100
    doc = yaml.safe_load(ROUTES.read_text())
    doc["listener"] = {"header_timeout": "5s", "max_headers": 50}
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors(doc)) == []
    doc["listener"]["keepalive_timout"] = "60s"
    assert any("keepalive_timout" in e.message and list(e.absolute_path) == ["listener"] for e in validator.iter_errors(doc))


# -- on the wire ------------------------------------------------------------------------------------


@pytest.fixture
async def sandbox(aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(sandbox_app())


async def h1_from_config(aiohttp_client: Any, sandbox: TestServer, routes: Path = ROUTES) -> H1TestServer:
    """The h1 server with no limits of its own: it reads the running config's, as ``serve`` does."""
    server = H1TestServer(build_state(shipped_config(base(sandbox), routes=routes), log_stream=io.StringIO()))
    await aiohttp_client(server)
    assert server.port is not None
    return server


def with_headers(total: int) -> bytes:
    """A routed GET with ``total`` header lines (GET has 3: Host, Content-Type, X-Client-Id)."""
    return GET + b"".join(b"X-H%d: v\r\n" % i for i in range(total - 3)) + b"\r\n"


@pytest.mark.timeout(30)
async def test_max_headers_from_the_config_reaches_the_h1_server(aiohttp_client: Any, sandbox: TestServer, tmp_path: Path) -> None:
    server = await h1_from_config(aiohttp_client, sandbox, with_listener(tmp_path, "  max_headers: 5\n"))
    assert server.port is not None
    ok = await raw_exchange("127.0.0.1", server.port, with_headers(5))
    assert ok.status == 200, ok
    refused = await raw_exchange("127.0.0.1", server.port, with_headers(6))
    assert refused.status == 431 and refused.headers.get("connection") == "close"


@pytest.mark.timeout(30)
async def test_the_default_max_headers_passes_six(aiohttp_client: Any, sandbox: TestServer) -> None:
    server = await h1_from_config(aiohttp_client, sandbox)
    assert server.port is not None
    assert (await raw_exchange("127.0.0.1", server.port, with_headers(6))).status == 200


@pytest.mark.timeout(30)
async def test_a_reload_of_header_timeout_applies_to_new_connections_not_open_ones(
    aiohttp_client: Any, sandbox: TestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in sandbox_env(base(sandbox)).items():  # a reload reads the process env
        monkeypatch.setenv(name, value)
    server = await h1_from_config(aiohttp_client, sandbox)  # header_timeout: the default 10s
    assert server.port is not None
    old_reader, old_writer = await asyncio.open_connection("127.0.0.1", server.port)  # before the reload
    old_writer.write(GET)  # half a head: Host and two more headers, no blank line yet
    assert server.h1 is not None
    for _ in range(500):  # accepted (its limits read) on this loop, before the reload
        if server.h1.connections:
            break
        await asyncio.sleep(0.01)
    assert len(server.h1.connections) == 1
    routes = with_listener(tmp_path, "  header_timeout: 300ms\n")
    assert await server.state.reload(str(routes), str(ERRORS))
    assert server.state.current().limits.header_timeout == 0.3

    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(GET)  # half a head, and never the rest
    data, closed = await read_until_eof(reader)
    writer.close()
    assert closed and data.startswith(b"HTTP/1.1 408 "), data

    # the connection made before the reload kept its 10s: well past 300ms (and a tick) it finishes its head
    old_writer.write(b"\r\n")
    head = await asyncio.wait_for(old_reader.readuntil(b"\r\n\r\n"), 5)
    old_writer.close()
    assert head.startswith(b"HTTP/1.1 200 "), head

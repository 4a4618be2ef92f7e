"""Config loading, `check` and `explain`: every broken edit names its file and line and says what to change."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from proxy.cli import main
from proxy.config import LoadedConfig, load_config
from proxy.config.durations import parse_duration
from proxy.config.errors_table import ErrorRule, parse_range
from proxy.errors import ConfigError
from tests.helpers import ERRORS, ROOT, ROUTES
from tests.keys import keys_for_tests

ENV = {
    "TOKOPEDIA_CLIENT_ID": "id",
    "TOKOPEDIA_CLIENT_SECRET": "s3cret-value",
    "TOKOPEDIA_PRIVATE_KEY": keys_for_tests().account_private_pem,
    "TOKOPEDIA_PUBLIC_KEY": keys_for_tests().sandbox_public_pem,
}


def copy_with(tmp_path: Path, routes_edit: tuple[str, str] | None = None, errors_edit: tuple[str, str] | None = None) -> tuple[Path, Path]:
    routes, errors = ROUTES.read_text(), ERRORS.read_text()
    if routes_edit:
        assert routes_edit[0] in routes
        routes = routes.replace(routes_edit[0], routes_edit[1], 1)
    if errors_edit:
        assert errors_edit[0] in errors
        errors = errors.replace(errors_edit[0], errors_edit[1], 1)
    r, e = tmp_path / "routes.yaml", tmp_path / "errors.yaml"
    r.write_text(routes)
    e.write_text(errors)
    return r, e


def line_of(path: Path, needle: str) -> int:
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(needle)


def problems(routes: Path, errors: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(routes, errors, env=ENV)
    return info.value.problems


def test_shipped_config_is_valid_and_compiled() -> None:
    loaded = load_config(ROUTES, ERRORS, env=ENV)
    cfg = loaded.proxy
    assert str(cfg.listen) == "127.0.0.1:8080"
    assert str(cfg.admin.listen) == "0.0.0.0:9901"
    assert cfg.credentials["tokopedia"].refresh_before == 600
    assert cfg.clusters["tokopedia"].circuit_breaker.reset_timeout == 30
    assert cfg.clusters["tokopedia"].retry.retry_on == ("connect_failure", "5xx")
    route = cfg.routes[0]
    assert (route.path, route.methods, route.upstream.query) == ("/v1/products", ("GET",), ("product_code",))
    assert "s3cret-value" not in repr(cfg)  # secrets never print


def test_check_command_passes_on_shipped_config(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("TOKOPEDIA_CLIENT_ID", raising=False)
    monkeypatch.delenv("TOKOPEDIA_CLIENT_SECRET", raising=False)
    assert main(["check"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("ok: ")
    assert "TOKOPEDIA_CLIENT_ID is not set" in err  # a note: serve needs it, check does not


BROKEN = [
    # (what, routes edit, errors edit, file, needle on the reported line, words in the message)
    ("unknown key", ("    timeout: 10s", "    timeout: 10s\n    timeuot: 3s"), None, "routes", "timeuot", "did you mean 'timeout'"),
    ("bad duration", ("    timeout: 10s", "    timeout: ten seconds"), None, "routes", "timeout: ten seconds", "not a duration"),
    ("missing cluster", ("upstream: {cluster: tokopedia,", "upstream: {cluster: tokped,"), None, "routes", "cluster: tokped", "no cluster named 'tokped'"),
    ("missing credentials", ("    credentials: tokopedia               #", "    credentials: toko                    #"), None, "routes", "credentials: toko ", "no credentials entry named 'toko'"),
    ("missing error table", ("    errors: tokopedia  ", "    errors: tokped     "), None, "routes", "errors: tokped", "no table 'tokped'"),
    ("overlapping ranges", None, ("    - codes: [S00-S04]", "    - codes: [S00-S04, U02-U05]"), "errors", "U02-U05", "overlaps U01-U03"),
    ("duplicate exact code", None, ("    - codes: [U01-U03]", "    - codes: [U01-U03, P08]"), "errors", "U01-U03, P08", "code P08 is already mapped"),
    ("unreachable rule", None, ("  default:", "    - codes: [P08]\n      type: Dup\n      code: DUP\n      status: 400\n      message: {en: dup}\n  default:"), "errors", "- codes: [P08]\n      type: Dup", "can never match"),
    ("python tag", ("listen: ${PROXY_LISTEN:-127.0.0.1:8080}", "listen: !!python/object/apply:os.system ['true']"), None, "routes", "!!python", "remove the tag"),
    ("yaml syntax", ("routes:\n", "routes:\n  - name: [unclosed\n"), None, "routes", "- name: [unclosed", "invalid YAML"),
    ("message without default language", None, ("        en: \"The bill or customer number is not valid.\"\n", ""), "errors", "message:", "no 'en' text"),
    ("bad status", None, ("      status: 422", "      status: 299"), "errors", "status: 299", "not an error status"),
    ("bad method", ("methods: [GET]", "methods: [GRAB]"), None, "routes", "methods: [GRAB]", "'GRAB' is not one of"),
]


@pytest.mark.parametrize("what,redit,eedit,which,needle,words", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_config_names_file_line_and_fix(tmp_path: Path, what: str, redit: tuple[str, str] | None, eedit: tuple[str, str] | None, which: str, needle: str, words: str, capsys: pytest.CaptureFixture[str]) -> None:
    routes, errors = copy_with(tmp_path, redit, eedit)
    path = routes if which == "routes" else errors
    text = path.read_text()
    expected_line = text[: text.index(needle)].count("\n") + 1
    found = problems(routes, errors)
    assert any(p.startswith(f"{path}:") and words in p for p in found), found
    lines = [int(m.group(1)) for p in found if (m := re.match(rf"{re.escape(str(path))}:(\d+):", p)) and words in p]
    if what == "message without default language":
        assert lines and lines[0] > 0
    elif what == "yaml syntax":  # the parser notices on the next line and names where the construct starts
        assert any(f"starts at line {expected_line}" in p for p in found), found
    else:
        assert expected_line in lines, (expected_line, found)
    # and the check command exits non-zero with the same text
    code = main(["check", "--config", str(routes), "--errors", str(errors)])
    assert code == 1
    assert words in capsys.readouterr().err


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    routes, errors = copy_with(tmp_path, ("    timeout: 10s", "    timeout: soon\n    bogus: 1"), ("      status: 422", "      status: 99"))
    found = problems(routes, errors)
    assert len(found) >= 3


def test_serve_requires_credentials_but_check_does_not(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(ROUTES, ERRORS, env={})
    assert any("TOKOPEDIA_CLIENT_SECRET is not set" in p and ":29:" in p for p in info.value.problems)
    assert load_config(ROUTES, ERRORS, env={}, strict_env=False).notes


def test_secret_from_file_variant(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file-secret\n")
    keys = {k: v for k, v in ENV.items() if k.endswith("_KEY")}
    loaded = load_config(ROUTES, ERRORS, env={**keys, "TOKOPEDIA_CLIENT_ID": "id", "TOKOPEDIA_CLIENT_SECRET_FILE": str(secret_file)})
    assert loaded.proxy.credentials["tokopedia"].client_secret.reveal() == "from-file-secret"
    with pytest.raises(ConfigError) as info:
        load_config(ROUTES, ERRORS, env={**keys, "TOKOPEDIA_CLIENT_ID": "id", "TOKOPEDIA_CLIENT_SECRET_FILE": str(tmp_path / "missing")})
    assert any("cannot be read" in p for p in info.value.problems)


def test_env_defaults_and_overrides() -> None:
    loaded = load_config(ROUTES, ERRORS, env={**ENV, "PROXY_LISTEN": "127.0.0.1:18080", "REDIS_URL": "redis://127.0.0.1:6390/0"})
    assert loaded.proxy.listen.port == 18080
    assert loaded.proxy.token_cache.redis_url.reveal() == "redis://127.0.0.1:6390/0"
    assert str(loaded.proxy.token_cache.redis_url) == "***"


def test_yaml_11_booleans_do_not_eat_keys(tmp_path: Path) -> None:
    routes, errors = copy_with(tmp_path, ("retry: {attempts: 1, retry_on: [connect_failure, 5xx]}", "retry: {attempts: 0, on: [timeout]}"))
    loaded = load_config(routes, errors, env=ENV)
    assert loaded.proxy.clusters["tokopedia"].retry.retry_on == ("timeout",)
    assert loaded.proxy.clusters["tokopedia"].retry.attempts == 0


def test_the_old_retry_on_key_loads_with_a_warning_naming_the_new_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    routes, errors = copy_with(tmp_path, ("retry: {attempts: 1, retry_on: [connect_failure, 5xx]}", "retry: {attempts: 1, on: [5xx]}"))
    assert main(["check", "--config", str(routes), "--errors", str(errors)]) == 0
    err = capsys.readouterr().err
    line = line_of(routes, "on: [5xx]")
    assert f"warning: {routes}:{line}: clusters.tokopedia.retry.on: is the old name of retry_on" in err and "write retry_on instead" in err
    both, errors = copy_with(tmp_path, ("retry: {attempts: 1, retry_on: [connect_failure, 5xx]}", "retry: {retry_on: [5xx], on: [5xx]}"))
    assert any("both on and retry_on are set" in p for p in problems(both, errors))


def test_the_shipped_files_survive_a_yaml_11_round_trip(tmp_path: Path) -> None:
    """PyYAML (YAML 1.1) safe_load -> safe_dump, as Helm's toYaml or yq would: still valid, same config."""
    routes, errors = tmp_path / "routes.yaml", tmp_path / "errors.yaml"
    routes.write_text(yaml.safe_dump(yaml.safe_load(ROUTES.read_text())))
    errors.write_text(yaml.safe_dump(yaml.safe_load(ERRORS.read_text())))
    out = subprocess.run([sys.executable, "-m", "proxy", "check", "--config", str(routes), "--errors", str(errors)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    tripped, shipped = load_config(routes, errors, env=ENV), load_config(ROUTES, ERRORS, env=ENV)
    assert tripped.proxy == shipped.proxy
    def rules(loaded: LoadedConfig) -> dict[str, list[ErrorRule]]:  # line numbers differ, nothing else may
        return {n: [dataclasses.replace(r, line=0) for r in t.rules] for n, t in loaded.errors.items()}

    assert rules(tripped) == rules(shipped)


@pytest.mark.parametrize("text,seconds", [("500ms", 0.5), ("30s", 30), ("10m", 600), ("1h", 3600), (3, 3.0), ("2", 2.0)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["ten", "-1s", "5 days", True, None, [1]])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_code_ranges() -> None:
    r = parse_range("U01-U03")
    assert r is not None and r.contains("U", 2, 2) and not r.contains("U", 4, 2) and not r.contains("U", 2, 1)
    assert parse_range("P08") is None
    with pytest.raises(ValueError):
        parse_range("U03-U01")
    with pytest.raises(ValueError):
        parse_range("U01-P03")


def test_error_table_order_exact_beats_range_beats_status() -> None:
    table = load_config(ROUTES, ERRORS, env=ENV).errors["tokopedia"]
    assert table.match("P08", 401).by == "code"
    assert table.match("P09", 401).by == "range"
    assert table.match("Z99", 401).by == "http_status"
    assert table.match(None, 500).by == "default"


def test_explain_shows_rule_and_answer(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["explain", "S03"]) == 0
    out = capsys.readouterr().out
    assert f"config/errors.yaml:{line_of(ERRORS, '- codes: [S00-S04]')} (matched by range)" in out
    assert '"type": "ProductClosedException"' in out and "Produk sedang ditutup" in out and "HTTP 503" in out
    assert main(["explain", "401"]) == 0
    assert "AuthenticationFailure" in capsys.readouterr().out
    assert main(["explain", "X42"]) == 0
    assert "counted as unmapped" in capsys.readouterr().out


def test_python_dash_m_help_lists_every_command() -> None:
    out = subprocess.run([sys.executable, "-m", "proxy", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=30).stdout
    for command in ("serve", "check", "sandbox", "demo", "explain", "schema"):
        assert command in out


def test_check_says_whether_each_key_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    assert main(["check"]) == 0
    err = capsys.readouterr().err
    assert "routes[3].sign.private_key: RSA-2048 private key loads" in err
    assert "routes[4].verify.public_key: RSA-2048 public key loads" in err
    assert "PRIVATE KEY" not in err and ENV["TOKOPEDIA_PRIVATE_KEY"].splitlines()[1] not in err


@pytest.mark.parametrize(
    "value,words",
    [
        ("not a key at all", "RSA private key"),
        ("SMALL", "at least 2048 bits"),
        ("PUBLIC", "RSA private key"),
    ],
)
def test_a_bad_signing_key_is_refused_with_the_line_and_no_key_material(tmp_path: Path, value: str, words: str) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    if value == "SMALL":
        small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        value = small.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    elif value == "PUBLIC":
        value = ENV["TOKOPEDIA_PUBLIC_KEY"]
    with pytest.raises(ConfigError) as info:
        load_config(ROUTES, ERRORS, env={**ENV, "TOKOPEDIA_PRIVATE_KEY": value})
    (problem,) = [p for p in info.value.problems if "sign.private_key" in p]
    assert problem.startswith(f"{ROUTES}:{line_of(ROUTES, 'private_key:')}: routes[3].sign.private_key: ") and words in problem
    assert all(line not in problem for line in value.splitlines()[1:-1])  # no key material


@pytest.mark.parametrize(
    "edit,words",
    [
        (('path: "/v2/order/{request_id}"', 'path: "/v2/order/{order_id}"'), "names {order_id}, which match.path does not have"),
        (('path: "/v1/orders/{request_id}"', 'path: "/v1/orders/x{request_id}"'), "is not a whole-segment parameter"),
        (("    sign: {private_key", "    filters: [validate, body, credentials, error_rewrite]\n    sign: {private_key"), "sign: is configured but filters does not list sign"),
        (("type: {const: order}", "type: {const: order, type: notatype}"), "is not a valid JSON Schema"),
    ],
)
def test_route_templates_filters_and_schemas_are_checked(tmp_path: Path, edit: tuple[str, str], words: str) -> None:
    routes, errors = copy_with(tmp_path, edit)
    assert any(words in p for p in problems(routes, errors)), problems(routes, errors)

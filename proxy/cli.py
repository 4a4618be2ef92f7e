"""The ``partner-proxy`` command: serve, check, sandbox, demo, explain."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from typing import TYPE_CHECKING

from proxy.config import DEFAULT_ERRORS, DEFAULT_ROUTES, load_config
from proxy.errors import ConfigError
from proxy.serve import print_problems as _print_problems
from proxy.serve import setup_logging

if TYPE_CHECKING:
    from proxy.sandbox.keys import KeyFiles

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=str(DEFAULT_ROUTES), help="routes file (default: %(default)s)")
    p.add_argument("--errors", default=str(DEFAULT_ERRORS), help="error tables file (default: %(default)s)")


def cmd_check(args: argparse.Namespace) -> int:
    try:
        loaded = load_config(args.config, args.errors, strict_env=False)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_INVALID
    for note in loaded.notes:
        print(note if note.startswith("warning: ") else f"note: {note}", file=sys.stderr)
    rules = sum(len(t.rules) for t in loaded.errors.values())
    print(
        f"ok: {args.config} and {args.errors} are valid "
        f"({len(loaded.proxy.routes)} route(s), {len(loaded.proxy.clusters)} cluster(s), "
        f"{len(loaded.errors)} error table(s) with {rules} rule(s))"
    )
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    workers = getattr(args, "workers", 1)
    if workers > 1:
        from proxy.workers import run_workers

        try:  # validate once here, so a bad file is one message, not one per worker
            load_config(args.config, args.errors)
        except ConfigError as exc:
            _print_problems(exc)
            return EXIT_INVALID
        return run_workers(workers, args.config, args.errors)
    from proxy.serve import serve_one

    return serve_one(args.config, args.errors, reuse_port=getattr(args, "reuse_port", False))


def _key_dir(prefix: str) -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix=prefix))


def cmd_sandbox(args: argparse.Namespace) -> int:
    import shutil

    from proxy.sandbox import SandboxSettings, run_sandbox
    from proxy.sandbox.keys import prepare_key_files

    setup_logging()
    key_dir = _key_dir("partner-proxy-sandbox-keys-")
    try:
        try:
            files = prepare_key_files(args.public_key, args.signing_key, key_dir)
            keys = files.keys()
        except (ValueError, OSError) as exc:
            print(f"partner-proxy sandbox: {exc}", file=sys.stderr)
            return EXIT_INVALID
        settings = SandboxSettings(
            client_id=args.client_id, client_secret=args.client_secret, token_ttl=args.token_ttl,
            settle_after=args.settle_after, keys=keys,
        )

        async def main() -> int:
            runner = await run_sandbox(args.host, args.port, settings)
            print(f"sandbox partner on http://{args.host}:{args.port} (token endpoint /token, products /v2/product-list, account /v2/account, inquiry /v2/inquiry, orders /v2/order)", flush=True)
            print(f"  checkout signatures are checked with the account public key {files.account_public}", flush=True)
            if files.account_private is not None:
                print(f"  sign checkouts with the account private key {files.account_private} (generated for this run)", flush=True)
            print(f"  status answers are signed by the sandbox; verify them with {files.sandbox_public}", flush=True)
            print(f"  generated files in {key_dir} are removed when the sandbox stops", flush=True)
            stop = asyncio.Event()
            with contextlib.suppress(NotImplementedError):  # SIGTERM ends it cleanly (key files removed)
                asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            try:
                await stop.wait()
            finally:
                await runner.cleanup()
            return EXIT_OK

        try:
            return asyncio.run(main())
        except KeyboardInterrupt:
            return EXIT_OK
    finally:
        shutil.rmtree(key_dir, ignore_errors=True)


DEMO_CLIENT_ID, DEMO_CLIENT_SECRET = "sandbox-client", "sandbox-secret"


def demo_env(sandbox_port: int, port: int, admin_port: int) -> dict[str, str]:
    base = f"http://127.0.0.1:{sandbox_port}"
    return {
        **os.environ,
        "PROXY_LISTEN": f"127.0.0.1:{port}",
        "PROXY_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
        "TOKOPEDIA_BASE_URL": base,
        "TOKOPEDIA_TOKEN_URL": f"{base}/token",
        "TOKOPEDIA_CLIENT_ID": DEMO_CLIENT_ID,
        "TOKOPEDIA_CLIENT_SECRET": DEMO_CLIENT_SECRET,
        "REDIS_URL": "",
    }


def demo_curls(port: int, admin_port: int) -> str:
    url = f"http://127.0.0.1:{port}/v1/products"
    api = f"http://127.0.0.1:{port}/v1"
    h = "-H 'Content-Type: application/json' -H 'X-Client-Id: demo-app'"
    order = '{"data":{"type":"order","id":"demo-order-1","attributes":{"product_code":"25k-xl","client_number":"081234567890"}}}'
    inquiry = '{"data":{"type":"inquiry","attributes":{"product_code":"pln-postpaid","client_number":"2121212"}}}'
    return "\n".join(
        [
            "partner-proxy demo is running. Try:",
            "",
            "  # the product list, through the sidecar",
            f"  curl -s {h} {url}",
            "  # one product",
            f"  curl -s {h} '{url}?product_code=25k-xl'",
            "  # a mapped partner error (S03 -> ProductClosedException), in Indonesian",
            f"  curl -s {h} -H 'Accept-Language: id' '{url}?product_code=error-S03'",
            "  # an unknown product (P04 -> ForbiddenException)",
            f"  curl -s {h} '{url}?product_code=not-exists'",
            "  # buy a product: balance, a bill inquiry, a checkout (the sidecar signs it), its status (verified)",
            f"  curl -s {h} {api}/balance",
            f"  curl -s {h} -d '{inquiry}' {api}/inquiries",
            f"  curl -s {h} -d '{order}' {api}/orders",
            f"  curl -s {h} {api}/orders/demo-order-1",
            "  # the same order id again: 409 DuplicateRequest, nothing charged twice",
            f"  curl -s {h} -d '{order}' {api}/orders",
            "  # a request the sidecar itself refuses (415, no JSON content type)",
            f"  curl -s -H 'X-Client-Id: demo-app' {url}",
            "  # metrics",
            f"  curl -s http://127.0.0.1:{admin_port}/metrics | grep partner_proxy_requests_total",
            "",
            "Ctrl-C stops both.",
        ]
    )


def cmd_demo(args: argparse.Namespace) -> int:
    if not Path(args.config).exists():
        print(f"{args.config} not found: run demo from the repository root, or pass --config/--errors", file=sys.stderr)
        return EXIT_USAGE
    import shutil

    from proxy.sandbox.keys import prepare_key_files

    # Two pairs: the account's (the sidecar signs checkouts with its private half, the sandbox
    # checks them with its public half) and the sandbox's own (the sandbox signs status answers,
    # the sidecar verifies with its public half). Exported before the config is read, so
    # ${TOKOPEDIA_*_KEY_FILE} in routes.yaml and the signing/verifying filters see them.
    key_dir = _key_dir("partner-proxy-demo-keys-")
    files = prepare_key_files(None, None, key_dir)
    assert files.account_private is not None
    os.environ["TOKOPEDIA_PRIVATE_KEY_FILE"] = str(files.account_private)
    os.environ["TOKOPEDIA_PUBLIC_KEY_FILE"] = str(files.sandbox_public)
    try:
        return _run_demo(args, files)
    finally:
        shutil.rmtree(key_dir, ignore_errors=True)


def _run_demo(args: argparse.Namespace, files: KeyFiles) -> int:
    from proxy.sandbox import SandboxSettings, run_sandbox
    from proxy.server import Server

    env = demo_env(args.sandbox_port, args.port, args.admin_port)
    from proxy.server import fingerprints

    read_at = fingerprints(args.config, args.errors)  # before reading, as in serve
    try:
        loaded = load_config(args.config, args.errors, env=env)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_INVALID
    setup_logging("warning")

    async def main() -> int:
        settings = SandboxSettings(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, keys=files.keys())
        sandbox = await run_sandbox("127.0.0.1", args.sandbox_port, settings)

        def ready() -> None:
            print(demo_curls(args.port, args.admin_port), flush=True)
            print(f"Keys (removed on exit): TOKOPEDIA_PRIVATE_KEY_FILE={files.account_private} (account, signs checkouts), "
                  f"TOKOPEDIA_PUBLIC_KEY_FILE={files.sandbox_public} (sandbox, verifies status answers)", flush=True)

        try:
            server = Server(loaded, read_at=read_at)
            return await server.run(args.config, args.errors, on_ready=ready)
        finally:
            await sandbox.cleanup()

    return asyncio.run(main())


def cmd_schema(args: argparse.Namespace) -> int:
    from proxy.config.schema import errors_schema, routes_schema

    schema = routes_schema() if args.file == "routes" else errors_schema()
    print(json.dumps(schema, indent=2))
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    try:
        loaded = load_config(args.config, args.errors, strict_env=False)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_INVALID
    table = loaded.errors.get(args.partner)
    if table is None:
        print(f"no error table {args.partner!r} in {args.errors}; tables: {', '.join(loaded.errors)}", file=sys.stderr)
        return EXIT_USAGE
    what = args.code.strip()
    if what.isdigit():
        code, status = None, int(what)
    else:
        code, status = what, args.status
    match = table.match(code, status)
    rule = match.rule
    error = table.error_for(match, code, status)
    where = "the table default" if rule.is_default else f"{args.errors}:{rule.line} (matched by {match.by})"
    print(f"partner answer: HTTP {status}" + (f", code {code}" if code else ", no code"))
    print(f"rule: {where}")
    actions = [a for a, on in (("invalidate the token", rule.invalidate_token), ("retry once with a fresh token", rule.retry), ("notify", rule.notify)) if on]
    print(f"actions: {', '.join(actions) if actions else 'none'}")
    if match.by == "default":
        print("counted as unmapped (partner_proxy_partner_unmapped_errors_total)")
    for lang in sorted(table.languages()):
        body = {"error": {"type": error.type, "code": error.code, "message": error.message(lang), "partner_code": code, "request_id": "<X-Request-Id>"}}
        print(f"\napp gets HTTP {error.status} (Accept-Language: {lang}):\n{json.dumps(body, indent=2, ensure_ascii=False)}")
    return EXIT_OK


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="partner-proxy", description="Envoy-style sidecar for partner APIs (Tokopedia B2B first).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the sidecar", description="Run the sidecar: data listener + admin listener.")
    _config_args(p)
    p.add_argument("--workers", type=_positive_int, default=1, help="worker processes sharing the ports with SO_REUSEPORT (default: %(default)s)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check", help="validate the config files without binding a port", description="Validate routes.yaml and errors.yaml. Exit 0 when valid; otherwise print file:line: problem and exit 1.")
    _config_args(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("sandbox", help="run the sandbox partner alone", description="Run the stand-in partner (token endpoint, product list, fault injection).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9090)
    p.add_argument("--client-id", default=DEMO_CLIENT_ID)
    p.add_argument("--client-secret", default=DEMO_CLIENT_SECRET)
    p.add_argument("--token-ttl", type=float, default=86400.0, help="expires_in of issued tokens, seconds")
    p.add_argument("--public-key", metavar="FILE", help="the partner account's RSA public key (PEM) checkout signatures are checked with; default: a pair is generated and its private half printed")
    p.add_argument("--signing-key", metavar="FILE", help="the sandbox's own RSA private key (PEM) it signs status answers with; default: generated")
    p.add_argument("--settle-after", type=float, default=1.0, help="seconds an order stays Pending before Success/Failed (default: %(default)s)")
    p.set_defaults(func=cmd_sandbox)

    p = sub.add_parser("demo", help="run the sandbox and the sidecar together and print curl commands", description="Sandbox partner + sidecar in one process, in-memory token cache.")
    _config_args(p)
    p.add_argument("--port", type=int, default=8080, help="sidecar data port")
    p.add_argument("--admin-port", type=int, default=9901)
    p.add_argument("--sandbox-port", type=int, default=9090)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("explain", help="show which errors.yaml rule a partner code or HTTP status hits", description="Show the errors.yaml rule a partner code (e.g. P08) or an HTTP status (e.g. 401) hits, and the exact answer the app gets.")
    p.add_argument("code", help="partner code (P08, U02, X42) or HTTP status (401)")
    p.add_argument("--partner", default="tokopedia", help="error table name (default: %(default)s)")
    p.add_argument("--status", type=int, default=400, help="HTTP status the partner sent with the code (default: %(default)s)")
    _config_args(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser(
        "schema",
        help="print the JSON Schema of routes.yaml or errors.yaml (for editors)",
        description="Print a JSON Schema of routes.yaml or errors.yaml, derived from the config models. Editors' YAML plugins validate and complete the files with it; `check` remains the full validation (cross references, rule overlaps).",
    )
    p.add_argument("file", choices=("routes", "errors"), help="which file the schema is for")
    p.set_defaults(func=cmd_schema)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

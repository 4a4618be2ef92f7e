#!/usr/bin/env python3
"""partner-proxy benchmark: what the sidecar costs against nginx and a bare aiohttp pass-through.

One command, loopback only (127.0.0.1):

    python bench/run.py            # 3 interleaved repetitions, 10 s closed-loop runs (~5 minutes)
    python bench/run.py --quick    # 1 repetition, 3 s runs (~1 minute)

It starts a static upstream that answers like the partner (nginx, 1 worker), a redis-server, and
five targets on that same upstream:

    direct         wrk straight at the upstream nginx
    nginx-proxy    a second nginx (1 worker) proxy_pass-ing with keep-alive upstream connections
    bare-aiohttp   bench/bare_aiohttp.py: one ClientSession, read body, return it (uvloop)
    floor          bench/floor_proxy.py: the least a Python proxy on uvloop + httptools costs
                   (parse both ways, keep-alive pool, corked writes, no feature at all)
    partner-proxy  `python -m proxy serve` with the shipped config/routes.yaml + config/errors.yaml,
                   REDIS_URL set, metrics and the communication log on, tracing off

and with --tracing two more: pp-trace-10 and pp-trace-100, the same sidecar exporting spans over
OTLP/HTTP to bench/otlp_sink.py (loopback, pinned beside redis) at 10 % and 100 % sampling

then, per repetition and target (the order rotates each repetition): a warm-up, a closed-loop
`wrk -t1 -c32 --latency` run (req/s, p50, p99, errors, server CPU per request) and an open-loop
fixed-rate run at 500 req/s (bench/fixed_rate.py) for the latency a target adds over direct.
Medians over the repetitions are printed as a markdown table and written to
bench/results/latest.md (raw numbers in bench/results/latest.json). See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
sys.path.insert(0, str(REPO))  # the partner's catalogue comes from the sandbox, not a copy of it
from proxy.sandbox.catalogue import PRODUCTS  # noqa: E402
from bench.routes import BenchRoute, extra_routes  # noqa: E402
RESULTS = BENCH / "results"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
FOREIGN_LIMIT = 10.0  # % of one core used by processes we did not start before a run is flagged

APP_HEADERS = {"Content-Type": "application/json", "X-Client-Id": "bench"}
APP_PATH = "/v1/products"
UPSTREAM_PATH = "/v2/product-list"

TOKEN_BODY = '{"access_token":"c:bench-token","expires_in":86400,"token_type":"Bearer"}'


# The partner's product list (JSON:API): the same products the sandbox partner serves.
PRODUCTS_BODY = json.dumps({"data": [p.resource() for p in PRODUCTS]}, separators=(",", ":"))
assert "'" not in PRODUCTS_BODY and "$" not in PRODUCTS_BODY  # nginx `return` string quoting

# Environment variables that could make a child talk to anything but loopback.
_SCRUB_ENV = ("SLACK_WEBHOOK_URL", "DATADOG_API_URL", "DATADOG_API_KEY", "NEWRELIC_EVENTS_URL", "NEWRELIC_API_KEY",
              "http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


class BenchError(RuntimeError):
    """Something the harness cannot work around: printed as is, exit 2."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- prerequisites

APT_PACKAGES = {"nginx": "nginx", "wrk": "wrk", "redis-server": "redis-server", "taskset": "util-linux"}


def ensure_tools(allow_install: bool) -> None:
    missing = [tool for tool in APT_PACKAGES if shutil.which(tool) is None]
    if missing:
        pkgs = sorted({APT_PACKAGES[t] for t in missing})
        if not allow_install:
            raise BenchError(f"missing {', '.join(missing)}: install with `apt-get install -y {' '.join(pkgs)}` (or drop --no-install)")
        if shutil.which("apt-get") is None or os.geteuid() != 0:
            raise BenchError(f"missing {', '.join(missing)} and cannot install them (need root and apt-get): "
                             f"run `sudo apt-get install -y {' '.join(pkgs)}` first")
        log(f"installing {' '.join(pkgs)} with apt-get ...")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *pkgs]):
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise BenchError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        still = [tool for tool in APT_PACKAGES if shutil.which(tool) is None]
        if still:
            raise BenchError(f"still missing after apt-get install: {', '.join(still)}")
    try:
        import aiohttp  # noqa: F401
    except ImportError as exc:
        raise BenchError("aiohttp is not importable: install the project first (`pip install -e .`)") from exc
    if _module_version("uvloop") is None:
        if allow_install:
            log("uvloop missing: pip install uvloop ...")
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "uvloop"], capture_output=True, check=False)
        if _module_version("uvloop") is None:
            log("WARNING: uvloop not installed: the sidecar and bare aiohttp run on the stock asyncio loop")
    probe = subprocess.run([sys.executable, "-c", "import proxy.cli"], cwd=REPO, env=child_env(), capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise BenchError(f"cannot import the sidecar (`python -c 'import proxy.cli'` in {REPO}):\n{probe.stderr[-2000:]}\n"
                         "install its dependencies: `pip install -e .[speed]`")


def _module_version(name: str) -> str | None:
    proc = subprocess.run([sys.executable, "-c", f"import {name}; print({name}.__version__)"], capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB_ENV}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if extra:
        env.update(extra)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- /proc accounting


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2:].split()  # [0] is field 3 (state): field n is [n - 3]


def tree_pids(root: int) -> list[int]:
    """root and all its live descendants (nginx master + worker, python + any helper)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat_fields(int(entry))
            if f is not None:
                children.setdefault(int(f[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_cpu_split(root: int) -> tuple[float, float]:
    """(utime, stime) (all threads) of the live process tree under root, in seconds: our code's
    share and the kernel's (system calls, the TCP stack) apart."""
    user = system = 0
    for pid in tree_pids(root):
        f = _stat_fields(pid)
        if f is not None:
            user += int(f[11])  # field 14 utime
            system += int(f[12])  # field 15 stime
    return user / CLK_TCK, system / CLK_TCK


def tree_cpu_seconds(root: int) -> float:
    """utime + stime (all threads) of the live process tree under root, in seconds."""
    return sum(tree_cpu_split(root))


def system_cpu() -> tuple[float, float]:
    """(user + nice + system, steal) seconds summed over all CPUs, from /proc/stat."""
    f = Path("/proc/stat").read_text().splitlines()[0].split()
    user, nice, system, steal = int(f[1]), int(f[2]), int(f[3]), int(f[8]) if len(f) > 8 else 0
    return (user + nice + system) / CLK_TCK, steal / CLK_TCK


def own_cpu(roots: list[int]) -> float:
    """CPU seconds of everything this harness runs: its servers' trees, itself and its reaped children (wrk)."""
    seen: set[int] = set()
    total = 0.0
    for root in roots:
        for pid in tree_pids(root):
            if pid in seen:
                continue
            seen.add(pid)
            fields = _stat_fields(pid)
            if fields is not None:
                total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        total += ru.ru_utime + ru.ru_stime
    return total


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


# --------------------------------------------------------------------------- processes


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    stop_signals: tuple[int, ...] = (signal.SIGTERM,)
    log_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid


class Processes:
    """Every child the harness starts, stopped by PID in reverse order."""

    def __init__(self, pin: bool) -> None:
        self.children: list[Child] = []
        self.pin = pin

    def cmd(self, argv: list[str], cpu: str | None) -> list[str]:
        if self.pin and cpu is not None:
            return ["taskset", "-c", cpu, *argv]  # taskset execs: the PID is the server's own
        return argv

    def start(self, name: str, argv: list[str], *, cpu: str | None, env: dict[str, str] | None = None,
              stdout: Any = subprocess.DEVNULL, stderr_path: Path | None = None,
              stop_signals: tuple[int, ...] = (signal.SIGTERM,), cwd: Path | None = None) -> Child:
        stderr: Any = open(stderr_path, "wb") if stderr_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen(self.cmd(argv, cpu), env=env or child_env(), stdout=stdout, stderr=stderr,
                                    stdin=subprocess.DEVNULL, cwd=cwd or REPO, start_new_session=True)
        finally:
            if stderr_path:
                stderr.close()
        child = Child(name, proc, stop_signals, stderr_path)
        self.children.append(child)
        return child

    def run(self, argv: list[str], *, cpu: str | None, timeout: float) -> subprocess.CompletedProcess[str]:
        """A short-lived child (wrk, the fixed-rate client): registered so Ctrl-C stops it too."""
        proc = subprocess.Popen(self.cmd(argv, cpu), env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True, cwd=REPO, start_new_session=True)
        child = Child(argv[0], proc)  # type: ignore[arg-type]
        self.children.append(child)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._stop(child)
            raise BenchError(f"`{' '.join(argv)}` did not finish in {timeout:.0f}s") from None
        finally:
            if proc.poll() is not None and child in self.children:
                self.children.remove(child)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def _stop(self, child: Child) -> None:
        proc = child.proc
        for sig in child.stop_signals:
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1.0)
        if proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5.0)
        if proc.poll() is None:
            log(f"{child.name} (pid {proc.pid}) did not stop: SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop_all(self) -> None:
        while self.children:
            child = self.children.pop()
            self._stop(child)


# --------------------------------------------------------------------------- HTTP helpers


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 2.0) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def wait_http(url: str, child: Child, timeout: float = 30.0, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise BenchError(f"{child.name} exited with {child.proc.returncode} before answering {url}{_log_tail(child)}")
        try:
            status, _, _ = http_get(url, headers, timeout=1.0)
            if status == 200:
                return
            last = f"HTTP {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise BenchError(f"{child.name} not ready at {url} after {timeout:.0f}s ({last}){_log_tail(child)}")


def _log_tail(child: Child, lines: int = 30) -> str:
    if child.log_path and child.log_path.exists():
        tail = child.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"\n--- {child.name} stderr (last {len(tail)} lines) ---\n" + "\n".join(tail)
    return ""


def redis_calls(port: int) -> int:
    """Total calls in INFO commandstats, less the INFO calls themselves."""
    with socket.create_connection((HOST, port), timeout=2) as s:
        s.sendall(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
        buf = b""
        while b"\r\n" not in buf:
            buf += s.recv(65536)
        header, _, rest = buf.partition(b"\r\n")
        size = int(header[1:])
        while len(rest) < size:
            rest += s.recv(65536)
    total = 0
    for m in re.finditer(r"^cmdstat_([^:]+):calls=(\d+)", rest[:size].decode(), re.MULTILINE):
        if m.group(1) != "info":
            total += int(m.group(2))
    return total


def scrape_requests_total(admin_port: int) -> dict[str, float]:
    """partner_proxy_requests_total by status, from the admin /metrics."""
    _, _, body = http_get(f"http://{HOST}:{admin_port}/metrics", timeout=5)
    out: dict[str, float] = {}
    for m in re.finditer(r'^partner_proxy_requests_total\{([^}]*)\}\s+([0-9.e+]+)', body.decode(), re.MULTILINE):
        status = re.search(r'status="([^"]*)"', m.group(1))
        key = status.group(1) if status else "?"
        out[key] = out.get(key, 0.0) + float(m.group(2))
    return out


def scrape_spans(admin_port: int) -> dict[str, float]:
    """partner_proxy_spans_exported_total and _dropped_total (summed over reasons)."""
    _, _, body = http_get(f"http://{HOST}:{admin_port}/metrics", timeout=5)
    out = {"exported": 0.0, "dropped": 0.0}
    for m in re.finditer(r'^partner_proxy_spans_(exported|dropped)_total(?:\{[^}]*\})?\s+([0-9.e+]+)', body.decode(), re.MULTILINE):
        out[m.group(1)] += float(m.group(2))
    return out


# --------------------------------------------------------------------------- wrk

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(out: str) -> dict[str, Any]:
    res: dict[str, Any] = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if not m:
        raise BenchError(f"cannot parse wrk output:\n{out}")
    res["requests"] = int(m.group(1))
    res["seconds"] = float(m.group(2)) * _UNITS[m.group(3)] / 1e3
    res["rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    for pct, val, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.MULTILINE):
        res[f"p{pct}_ms"] = float(val) * _UNITS[unit]
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()))) if m else {}
    return res


# --------------------------------------------------------------------------- the bench


@dataclass
class Target:
    name: str
    url: str
    child: Child
    fixed_rate_url: str | None = None
    admin_port: int | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    route: BenchRoute | None = None  # an extra sidecar route (bench/routes.py); None: GET /v1/products


def nginx_conf(tmp: Path, name: str, port: int, body: str) -> Path:
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        d = tmp / f"{name}-temp" / sub
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o777)
    temp = tmp / f"{name}-temp"
    conf = tmp / f"{name}.conf"
    conf.write_text(f"""# generated by bench/run.py
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}-error.log warn;
events {{ worker_connections 4096; multi_accept on; }}
http {{
    access_log off;
    server_tokens off;
    client_body_temp_path {temp}/client_body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    tcp_nodelay on;
{body}
}}
""")
    return conf


def upstream_nginx_body(port: int, extra: str = "") -> str:
    return f"""    server {{
        listen {HOST}:{port} backlog=4096;
        default_type application/json;
        location = /token {{ return 200 '{TOKEN_BODY}'; }}
        location = {UPSTREAM_PATH} {{ return 200 '{PRODUCTS_BODY}'; }}
{extra}
        location / {{ return 404 '{{"errors":[{{"code":"P04","detail":"not found"}}]}}'; }}
    }}"""


def proxy_nginx_body(port: int, upstream_port: int) -> str:
    return f"""    upstream partner {{
        server {HOST}:{upstream_port};
        keepalive 64;
        keepalive_requests 10000000;
    }}
    server {{
        listen {HOST}:{port} backlog=4096;
        location = {APP_PATH} {{
            proxy_pass http://partner{UPSTREAM_PATH};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ncpu = os.cpu_count() or 1
        self.pin = not args.no_pin and self.ncpu >= 2
        self.procs = Processes(self.pin)
        self.tmp = Path(tempfile.mkdtemp(prefix="pp-bench-"))
        self.tmp.chmod(0o755)  # nginx workers run as nobody
        self.targets: list[Target] = []
        self.servers: list[Child] = []  # every long-lived child, for the machine-load accounting
        self.upstream: Child | None = None
        self.redis_port = 0
        self.sidecar: Target | None = None
        self.memory: dict[str, Any] = {}
        self.notes: list[str] = []
        self.sanity: dict[str, str] = {}
        self.started = time.monotonic()
        self.quiet_budget = args.quiet_budget  # seconds left for waiting out / re-measuring disturbed runs
        self.remeasured = 0
        self.profiles: dict[str, dict[str, Any]] = {}
        self.sink: Child | None = None
        self.sink_url = ""
        self.spans: dict[str, dict[str, float]] = {}  # --tracing: per traced target, spans exported/dropped
        self.extra: list[BenchRoute] = []

    # ---- setup

    def start_partner(self) -> str:
        """The upstream nginx (the partner: token, product list, the extra routes) and the redis-server
        the sidecars share; returns the upstream's base URL. bench/scaling.py starts these too."""
        a = self.args
        up_port = free_port()
        self.extra = extra_routes(self.tmp)
        conf = nginx_conf(self.tmp, "upstream", up_port, upstream_nginx_body(up_port, "".join(r.upstream for r in self.extra)))
        self.upstream = self.procs.start("upstream-nginx", ["nginx", "-p", str(self.tmp), "-e", str(self.tmp / "upstream-error.log"), "-c", str(conf)],
                                         cpu=a.upstream_cpu, stderr_path=self.tmp / "upstream.stderr")
        self.upstream.log_path = self.tmp / "upstream.stderr"
        up = f"http://{HOST}:{up_port}"
        wait_http(up + UPSTREAM_PATH, self.upstream)
        self.targets.append(Target("direct", up + UPSTREAM_PATH, self.upstream))

        self.redis_port = free_port()
        redis = self.procs.start("redis-server", ["redis-server", "--port", str(self.redis_port), "--bind", HOST, "--save", "",
                                                  "--appendonly", "no", "--dir", str(self.tmp), "--daemonize", "no"],
                                 cpu=a.aux_cpu, stderr_path=self.tmp / "redis.stderr")
        self._wait_redis(redis)
        self.servers.append(redis)
        return up

    def start_all(self) -> None:
        a = self.args
        up = self.start_partner()
        up_port = int(up.rsplit(":", 1)[1])

        p = free_port()
        conf = nginx_conf(self.tmp, "proxy", p, proxy_nginx_body(p, up_port))
        child = self.procs.start("nginx-proxy", ["nginx", "-p", str(self.tmp), "-e", str(self.tmp / "proxy-error.log"), "-c", str(conf)],
                                 cpu=a.server_cpu, stderr_path=self.tmp / "proxy.stderr")
        wait_http(f"http://{HOST}:{p}{APP_PATH}", child)
        self.targets.append(Target("nginx-proxy", f"http://{HOST}:{p}{APP_PATH}", child))

        p = free_port()
        child = self.procs.start("bare-aiohttp", [sys.executable, str(BENCH / "bare_aiohttp.py"), "--port", str(p), "--upstream", up + UPSTREAM_PATH],
                                 cpu=a.server_cpu, stderr_path=self.tmp / "bare.stderr")
        wait_http(f"http://{HOST}:{p}{APP_PATH}", child)
        self.targets.append(Target("bare-aiohttp", f"http://{HOST}:{p}{APP_PATH}", child))

        p = free_port()
        child = self.procs.start("floor", [sys.executable, str(BENCH / "floor_proxy.py"), "--port", str(p), "--upstream", up + UPSTREAM_PATH],
                                 cpu=a.server_cpu, stderr_path=self.tmp / "floor.stderr")
        wait_http(f"http://{HOST}:{p}{APP_PATH}", child)
        self.targets.append(Target("floor", f"http://{HOST}:{p}{APP_PATH}", child))

        self.sidecar = self._start_sidecar("partner-proxy", up)  # tracing off: no OTEL_* endpoint
        self.targets.append(self.sidecar)
        for r in self.extra:  # bench/routes.py: more routes of the same sidecar process
            self.targets.append(Target(f"partner-proxy {r.name}", self.sidecar.url.replace(APP_PATH, r.path), self.sidecar.child,
                                       admin_port=self.sidecar.admin_port, route=r))
        if a.tracing:
            # A loopback OTLP sink (pinned beside redis) and two more sidecars exporting to it, at
            # 10 % and 100 % of new traces (wrk sends no traceparent: the ratio decides).
            sink_port = free_port()
            self.sink = self.procs.start("otlp-sink", [sys.executable, str(BENCH / "otlp_sink.py"), "--port", str(sink_port)],
                                         cpu=a.aux_cpu, stderr_path=self.tmp / "sink.stderr")
            self.sink_url = f"http://{HOST}:{sink_port}"
            wait_http(self.sink_url + "/stats", self.sink)
            self.servers.append(self.sink)
            for name, ratio in TRACING_TARGETS.items():
                self.targets.append(self._start_sidecar(name, up, {
                    "OTEL_EXPORTER_OTLP_ENDPOINT": self.sink_url,
                    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                    "OTEL_TRACES_SAMPLER_ARG": ratio,
                    "OTEL_SERVICE_NAME": "partner-proxy-bench",
                }))
        self.servers += list({id(t.child): t.child for t in self.targets}.values())
        log(f"up: upstream nginx :{up_port}, redis :{self.redis_port}, nginx-proxy, bare-aiohttp, floor, "
            + ", ".join(f"{t.name} :{t.url.split(':')[2].split('/')[0]} (admin :{t.admin_port})" for t in self.targets if t.admin_port)
            + (f", OTLP sink {self.sink_url}" if a.tracing else "") + f"; pinning {'on' if self.pin else 'off'}")

    def _start_sidecar(self, name: str, up: str, extra: dict[str, str] | None = None, workers: int | None = None) -> Target:
        a = self.args
        p, admin = free_port(), free_port()
        env = child_env({
            "PROXY_LISTEN": f"{HOST}:{p}",
            "PROXY_ADMIN_LISTEN": f"{HOST}:{admin}",
            "TOKOPEDIA_BASE_URL": up,
            "TOKOPEDIA_TOKEN_URL": f"{up}/token",
            "TOKOPEDIA_CLIENT_ID": "bench-client",
            "TOKOPEDIA_CLIENT_SECRET": "bench-secret",
            "REDIS_URL": f"redis://{HOST}:{self.redis_port}/0",
            **{k: v for r in self.extra for k, v in r.env.items()},  # keys for the signed / verified routes
            **(extra or {}),
        })
        if not extra:  # the plain sidecar: never export, whatever the caller's environment says
            for k in [k for k in env if k.startswith("OTEL_")]:
                del env[k]
        primary = name == "partner-proxy"
        commlog_path = self.tmp / ("commlog.jsonl" if primary else f"commlog-{name}.jsonl")
        commlog = open(os.devnull, "wb") if a.commlog == "devnull" else open(commlog_path, "wb")  # noqa: SIM115
        try:
            child = self.procs.start(name, [sys.executable, "-m", "proxy", "serve", "--config", a.config, "--errors", a.errors,
                                            "--workers", str(workers or a.workers)],
                                     cpu=a.server_cpu, env=env, stdout=commlog,
                                     stderr_path=self.tmp / ("sidecar.stderr" if primary else f"sidecar-{name}.stderr"),
                                     # SIGTERM starts the drain (drain_timeout), a second one ends it at once.
                                     stop_signals=(signal.SIGTERM, signal.SIGTERM))
        finally:
            commlog.close()
        wait_http(f"http://{HOST}:{admin}/readyz", child)
        return Target(name, f"http://{HOST}:{p}{APP_PATH}", child, admin_port=admin)

    def _wait_redis(self, child: Child) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if child.proc.poll() is not None:
                raise BenchError(f"redis-server exited with {child.proc.returncode}{_log_tail(child)}")
            try:
                with socket.create_connection((HOST, self.redis_port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise BenchError(f"redis-server did not come up on port {self.redis_port}")

    def sanity_check(self) -> None:
        """One request per target: status, and whether the body is the partner's, byte for byte."""
        for t in self.targets:
            if t.route is not None:
                self.sanity[t.name] = "extra route: not compared with the product list"
                continue
            try:
                status, headers, body = http_get(t.url, APP_HEADERS, timeout=5)
            except OSError as exc:
                self.sanity[t.name] = f"request failed: {exc}"
                continue
            same = body == PRODUCTS_BODY.encode()
            ctype = headers.get("Content-Type", "?")
            verdict = f"HTTP {status}, {len(body)} B, Content-Type {ctype}, body {'identical to' if same else 'DIFFERENT from'} upstream"
            self.sanity[t.name] = verdict
            if status != 200 or not same:
                log(f"WARNING {t.name}: {verdict}: {body[:300]!r}")

    # ---- measuring

    def wrk(self, url: str, seconds: float, route: BenchRoute | None = None) -> dict[str, Any]:
        argv = ["wrk", "-t1", f"-c{self.args.connections}", f"-d{seconds:g}s", "--latency", "--timeout", "5s"]
        for k, v in {**APP_HEADERS, **(route.headers if route else {})}.items():
            argv += ["-H", f"{k}: {v}"]
        if route is not None and (route.method != "GET" or route.body):
            script = self.tmp / f"wrk-{re.sub(r'[^A-Za-z0-9]', '_', route.name)}.lua"
            script.write_text(f"wrk.method = {json.dumps(route.method)}\nwrk.body = {json.dumps(route.body.decode())}\n")
            argv += ["-s", str(script)]
        argv.append(url)
        proc = self.procs.run(argv, cpu=self.args.client_cpu, timeout=seconds + 30)
        if proc.returncode != 0:
            raise BenchError(f"wrk failed (exit {proc.returncode}): {proc.stderr.strip()}\n{proc.stdout}")
        res = parse_wrk(proc.stdout)
        res["raw"] = proc.stdout
        return res

    def fixed_rate(self, url: str, route: BenchRoute | None = None, baseline: str | None = None) -> dict[str, Any]:
        """``baseline``: the partner called directly, loaded in the same window, interleaved, so
        that what a target adds is read from one window (``fixed["baseline"]``)."""
        a = self.args
        argv = [sys.executable, str(BENCH / "fixed_rate.py"), "--url", url, "--rate", f"{a.rate:g}", "--duration", f"{a.rate_duration:g}"]
        for k, v in {**APP_HEADERS, **(route.headers if route else {})}.items():
            argv += ["-H", f"{k}: {v}"]
        if baseline is not None:
            argv += ["--baseline-url", baseline]
            for k, v in APP_HEADERS.items():
                argv += ["--baseline-header", f"{k}: {v}"]
        if route is not None:
            body = self.tmp / f"body-{re.sub(r'[^A-Za-z0-9]', '_', route.name)}"
            body.write_bytes(route.body)
            argv += ["--method", route.method, "--body-file", str(body)]
        proc = self.procs.run(argv, cpu=a.client_cpu, timeout=a.rate_duration + 60)
        if proc.returncode != 0:
            raise BenchError(f"fixed-rate client failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        return json.loads(proc.stdout)

    def measure(self, t: Target, rep: int) -> dict[str, Any]:
        a = self.args
        assert self.upstream is not None
        self.wait_quiet()
        self.wrk(t.url, a.warmup, t.route)  # warm-up: connections, caches, token, JIT-free but allocator-warm
        is_sidecar = t.admin_port is not None
        servers = [c.pid for c in self.servers]
        sys0, own0 = system_cpu(), own_cpu(servers)
        (user0, kernel0), up0, w0 = tree_cpu_split(t.child.pid), tree_cpu_seconds(self.upstream.pid), time.monotonic()
        redis0 = redis_calls(self.redis_port)
        met0 = scrape_requests_total(t.admin_port) if is_sidecar and t.admin_port else {}
        run = self.wrk(t.url, a.duration, t.route)
        (user1, kernel1), up1, w1 = tree_cpu_split(t.child.pid), tree_cpu_seconds(self.upstream.pid), time.monotonic()
        cpu0, cpu1 = user0 + kernel0, user1 + kernel1
        sys1, own1 = system_cpu(), own_cpu(servers)
        redis1 = redis_calls(self.redis_port)
        met1 = scrape_requests_total(t.admin_port) if is_sidecar and t.admin_port else {}
        n = max(run["requests"], 1)
        wall = w1 - w0
        res: dict[str, Any] = {
            "rep": rep,
            "target": t.name,
            "wrk": {k: v for k, v in run.items() if k != "raw"},
            "cpu_us_per_req": (cpu1 - cpu0) / n * 1e6,
            "user_us_per_req": (user1 - user0) / n * 1e6,
            "system_us_per_req": (kernel1 - kernel0) / n * 1e6,
            "server_cpu_pct": (cpu1 - cpu0) / wall * 100,
            "upstream_cpu_pct": (up1 - up0) / wall * 100,
            "redis_calls_per_req": (redis1 - redis0) / n,
            # CPU used on this machine by processes the harness did not start (others' tests, ...)
            "foreign_cpu_pct": max(0.0, (sys1[0] - sys0[0]) - (own1 - own0)) / wall * 100,
            "steal_pct": (sys1[1] - sys0[1]) / wall * 100,
        }
        if is_sidecar:
            res["statuses"] = {k: round(met1.get(k, 0) - met0.get(k, 0)) for k in sorted(set(met0) | set(met1)) if met1.get(k, 0) - met0.get(k, 0)}
        errors = run["non_2xx"] + sum(run["socket_errors"].values())
        if errors:
            res["wrk_raw"] = run["raw"]
        time.sleep(a.settle)  # let the target finish whatever the closed loop left behind (e.g. log backlog)
        direct = self.targets[0]
        res["fixed"] = self.fixed_rate(t.url, t.route, baseline=None if t is direct else direct.url)
        fx = res["fixed"]
        log(f"rep {rep + 1} {t.name:<14} {run['rps']:>9.0f} req/s  p50 {run.get('p50_ms', 0):.3f} ms  p99 {run.get('p99_ms', 0):.3f} ms  "
            f"{res['cpu_us_per_req']:.1f} us/req (server {res['server_cpu_pct']:.0f}% / upstream {res['upstream_cpu_pct']:.0f}% of a core)  "
            f"@{a.rate:g}/s p50 {fx['p50_ms']} p99 {fx['p99_ms']} ms"
            + (f" (paired direct p99 {fx['baseline']['p99_ms']} ms)" if "baseline" in fx else "")
            + (f"  BUSY MACHINE: other processes used {res['foreign_cpu_pct']:.0f}% of a core" if res["foreign_cpu_pct"] > FOREIGN_LIMIT else "")
            + (f"  ERRORS: non-2xx {run['non_2xx']}, socket {run['socket_errors']}" if errors else "")
            + (f"  fixed-rate errors: {fx['statuses']} {fx['errors']}" if fx["non_2xx"] or fx["errors"] else ""))
        return res

    def foreign_load(self, seconds: float) -> float:
        """% of one core used by processes the harness did not start, over `seconds`."""
        servers = [c.pid for c in self.servers]
        s0, o0, t0 = system_cpu(), own_cpu(servers), time.monotonic()
        time.sleep(seconds)
        s1, o1, t1 = system_cpu(), own_cpu(servers), time.monotonic()
        return max(0.0, (s1[0] - s0[0]) - (o1 - o0)) / (t1 - t0) * 100

    def wait_quiet(self) -> None:
        """Wait (bounded per measurement and in total) while other processes load the machine."""
        limit_s = min(self.args.wait_quiet, self.quiet_budget)
        if limit_s <= 0:
            return
        t0 = time.monotonic()
        load = self.foreign_load(0.5)
        if load > FOREIGN_LIMIT:
            log(f"other processes use {load:.0f}% of a core: waiting up to {limit_s:.0f}s for a quiet machine")
            while time.monotonic() - t0 < limit_s:
                load = self.foreign_load(1.0)
                if load <= FOREIGN_LIMIT:
                    break
            else:
                log(f"still busy ({load:.0f}%): measuring anyway (the run will be flagged)")
        self.quiet_budget -= time.monotonic() - t0

    def run(self) -> None:
        a = self.args
        self.start_all()
        self.sanity_check()
        assert self.sidecar is not None
        self.memory["rss_start_mib"] = rss_mib(self.sidecar.child.pid)
        for rep in range(a.reps):
            order = self.targets[rep % len(self.targets):] + self.targets[: rep % len(self.targets)]
            for t in order:
                if t.child.proc.poll() is not None:
                    raise BenchError(f"{t.name} exited with {t.child.proc.returncode} during the run{_log_tail(t.child)}")
                t0 = time.monotonic()
                res = self.measure(t, rep)
                if res["foreign_cpu_pct"] > FOREIGN_LIMIT and a.wait_quiet > 0 and self.quiet_budget > time.monotonic() - t0:
                    log(f"rep {rep + 1} {t.name}: disturbed by other processes ({res['foreign_cpu_pct']:.0f}% of a core): measuring it again")
                    self.quiet_budget -= time.monotonic() - t0
                    res = self.measure(t, rep)
                    res["remeasured"] = True
                    self.remeasured += 1
                t.runs.append(res)
        for t in self.targets:
            if t.name in TRACING_TARGETS and t.admin_port:
                self.spans[t.name] = scrape_spans(t.admin_port)
        if self.sink is not None:
            self.spans["sink"] = json.loads(http_get(self.sink_url + "/stats")[2])
        self.memory["rss_after_runs_mib"] = rss_mib(self.sidecar.child.pid)
        self.memory["requests_before_rss_after"] = sum(r["wrk"]["requests"] for r in self.sidecar.runs)
        if a.memory:
            self.memory_run()
        if a.profile:
            self.profile_run()

    def memory_run(self) -> None:
        """wrk at the sidecar in 5 s slices until 100,000 more requests have been answered, then RSS."""
        assert self.sidecar is not None
        total, t0 = 0, time.monotonic()
        while total < self.args.memory_requests and time.monotonic() - t0 < 600:
            total += self.wrk(self.sidecar.url, 5)["requests"]
        self.memory["memory_requests"] = total
        self.memory["rss_after_memory_mib"] = rss_mib(self.sidecar.child.pid)
        log(f"--memory: {total} more requests, sidecar RSS {self.memory['rss_after_memory_mib']:.1f} MiB")

    def profile_run(self) -> None:
        """py-spy (sampling, Python frames) on partner-proxy and bare aiohttp during a closed-loop run."""
        assert self.sidecar is not None
        pyspy = shutil.which("py-spy")
        if pyspy is None and not self.args.no_install:
            log("--profile: pip install py-spy ...")
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], capture_output=True, check=False)
            pyspy = shutil.which("py-spy")
        if pyspy is None:
            self.notes.append("--profile skipped: py-spy is not installed (`pip install py-spy`)")
            return
        RESULTS.mkdir(parents=True, exist_ok=True)
        seconds = max(5.0, min(self.args.duration, 10.0))
        for t in (self.sidecar, self.targets[2]):
            out = RESULTS / f"profile-{t.name}.txt"
            self.wrk(t.url, 1)
            spy = subprocess.Popen([pyspy, "record", "-p", str(t.child.pid), "-d", f"{seconds:g}", "-r", "250", "-f", "raw",
                                    "-o", str(out), "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                self.wrk(t.url, seconds + 1)
                _, err = spy.communicate(timeout=30)
            finally:
                if spy.poll() is None:
                    spy.kill()
                    spy.wait()
            if spy.returncode != 0 or not out.exists():
                self.notes.append(f"--profile of {t.name} failed: {err.strip()[-300:]}")
                continue
            self.profiles[t.name] = summarize_profile(out)
            log(f"--profile: {out.relative_to(REPO)}")

    def collect_sidecar_logs(self) -> None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        err = self.tmp / "sidecar.stderr"
        if err.exists():
            shutil.copyfile(err, RESULTS / "sidecar-stderr.log")
            text = err.read_text(errors="replace")
            bad = [ln for ln in text.splitlines()
                   if ('"level":"WARNING"' in ln or '"level":"ERROR"' in ln or '"level":"CRITICAL"' in ln or "Traceback" in ln)
                   and "second signal" not in ln]  # our own shutdown (SIGTERM twice) is not news
            self.memory["sidecar_stderr_lines"] = len(text.splitlines())
            self.memory["sidecar_stderr_problems"] = len(bad)
            self.memory["sidecar_stderr_sample"] = bad[:10]
        cl = self.tmp / "commlog.jsonl"
        if cl.exists():
            with open(cl, "rb") as f:
                lines = sum(1 for _ in f)
            with open(cl, "rb") as f:
                first = f.readline().decode(errors="replace").strip()
            self.memory["commlog_lines"] = lines
            self.memory["commlog_first"] = first[:400]

    # ---- report

    def stop(self) -> None:
        try:
            self.procs.stop_all()  # the sidecar first (started last), so its stderr is complete
            with contextlib.suppress(OSError):
                self.collect_sidecar_logs()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Self time by package and by function from py-spy's collapsed stacks ("f1;f2;f3 count")."""
    by_pkg: dict[str, int] = {}
    by_fn: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        leaf = stack.split(";")[-1]
        fn = re.sub(r":\d+\)$", ")", leaf)
        m = re.search(r"\(([^:)]+)", leaf)
        pkg = m.group(1).split("/")[0] if m else "?"
        by_pkg[pkg] = by_pkg.get(pkg, 0) + n
        by_fn[fn] = by_fn.get(fn, 0) + n
    pct = lambda d: [(k, round(100.0 * v / total, 1)) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]
    return {"samples": total, "packages": pct(by_pkg), "functions": pct(by_fn), "file": str(path.relative_to(REPO))}


def med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def summarize(bench: Bench) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for t in bench.targets:
        runs = t.runs
        errors = sum(r["wrk"]["non_2xx"] + sum(r["wrk"]["socket_errors"].values()) for r in runs)
        fx_errors = sum(r["fixed"]["non_2xx"] + sum(r["fixed"]["errors"].values()) for r in runs)
        out[t.name] = {
            "rps": med([r["wrk"]["rps"] for r in runs]),
            "rps_all": [round(r["wrk"]["rps"]) for r in runs],
            "p50": med([r["wrk"].get("p50_ms") for r in runs]),
            "p99": med([r["wrk"].get("p99_ms") for r in runs]),
            "cpu": med([r["cpu_us_per_req"] for r in runs]),
            "cpu_all": [round(r["cpu_us_per_req"], 1) for r in runs],
            "user": med([r.get("user_us_per_req") for r in runs]),
            "system": med([r.get("system_us_per_req") for r in runs]),
            "server_cpu_pct": med([r["server_cpu_pct"] for r in runs]),
            "upstream_cpu_pct": med([r["upstream_cpu_pct"] for r in runs]),
            "fx_p50": med([r["fixed"]["p50_ms"] for r in runs]),
            "fx_p99": med([r["fixed"]["p99_ms"] for r in runs]),
            # the same window's direct calls (fixed_rate.py --baseline-url): target − direct per repetition
            "paired_p50": med([_paired(r, "p50_ms") for r in runs]),
            "paired_p99": med([_paired(r, "p99_ms") for r in runs]),
            "paired_p99_all": [None if (v := _paired(r, "p99_ms")) is None else round(v, 3) for r in runs],
            "fx_all": "; ".join(f"{r['fixed']['p50_ms']:.2f} / {r['fixed']['p90_ms']:.2f} / {r['fixed']['p99_ms']:.2f}" for r in runs if r["fixed"]["p50_ms"] is not None),
            "fx_rps": med([r["fixed"]["achieved_rps"] for r in runs]),
            "fx_lag_p99": med([r["fixed"]["lag_p99_ms"] for r in runs]),
            "foreign_pct": med([r["foreign_cpu_pct"] for r in runs]),
            "foreign_max": max((r["foreign_cpu_pct"] for r in runs), default=0.0),
            "steal_pct": med([r["steal_pct"] for r in runs]),
            "redis_per_req": med([r["redis_calls_per_req"] for r in runs]),
            "errors": errors,
            "fx_errors": fx_errors,
            "non_2xx": sum(r["wrk"]["non_2xx"] for r in runs),
            "socket_errors": {k: sum(r["wrk"]["socket_errors"].get(k, 0) for r in runs) for k in ("connect", "read", "write", "timeout")},
            "fx_statuses": _sum_dicts([r["fixed"]["statuses"] for r in runs]),
            "fx_client_errors": _sum_dicts([r["fixed"]["errors"] for r in runs]),
            "statuses": _sum_dicts([r.get("statuses", {}) for r in runs]),
            "samples": {k: v for r in runs for k, v in r["fixed"].get("samples", {}).items()},
        }
    return out


def _paired(run: dict[str, Any], key: str) -> float | None:
    fixed = run["fixed"]
    base = fixed.get("baseline")
    if base is None or fixed.get(key) is None or base.get(key) is None:
        return None
    return float(fixed[key]) - float(base[key])


def _sum_dicts(ds: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in ds:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def _version(argv: list[str], pattern: str) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    m = re.search(pattern, p.stdout + p.stderr)
    return m.group(1) if m else "?"


def machine() -> dict[str, str]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": _module_version("aiohttp") or "?",
        "uvloop": _module_version("uvloop") or "not installed",
        "nginx": _version(["nginx", "-v"], r"nginx/(\S+)"),
        "wrk": _version(["wrk", "-v"], r"wrk (\S+)"),
        "redis": _version(["redis-server", "--version"], r"v=(\S+)"),
        # what the sidecar under test imports: this checkout's package, compiled by setup.py or not
        "build": f"{n} modules compiled with mypyc" if (n := len(list((REPO / "proxy").rglob("*.so")))) else "pure Python (not compiled)",
    }


TARGET_LABELS = {
    "direct": "direct (upstream nginx)",
    "nginx-proxy": "nginx reverse proxy",
    "bare-aiohttp": "bare aiohttp pass-through",
    "floor": "floor: minimal Python proxy (bench/floor_proxy.py)",
    "partner-proxy": "partner-proxy",
    "pp-trace-10": "partner-proxy, tracing 10 %",
    "pp-trace-100": "partner-proxy, tracing 100 %",
}
# --tracing: target name -> OTEL_TRACES_SAMPLER_ARG (parentbased_traceidratio)
TRACING_TARGETS = {"pp-trace-10": "0.1", "pp-trace-100": "1.0"}


def render(bench: Bench, summary: dict[str, dict[str, Any]], command: str, elapsed: float) -> str:
    a = bench.args
    d = summary["direct"]
    lines = [
        f"## partner-proxy benchmark ({time.strftime('%Y-%m-%d %H:%M:%S %Z')})",
        "",
        (f"Medians of {a.reps} interleaved repetition(s). Closed loop: `wrk -t1 -c{a.connections} -d{a.duration:g}s --latency`. "
         f"Fixed rate: {a.rate:g} req/s open loop for {a.rate_duration:g} s (bench/fixed_rate.py); added = target − direct, "
         "from the direct target's own window and, paired, from direct calls made in the same window, interleaved."),
        "",
        f"| target | req/s | p50 ms | p99 ms | CPU us/req | added p50 / p99 ms at {a.rate:g} rps | paired: added p50 / p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for t in bench.targets:
        s = summary[t.name]
        flag = " ⚠ errors" if s["errors"] or s["fx_errors"] else ""
        if t.name == "direct":
            added = f"(baseline {fmt(s['fx_p50'], '.3f')} / {fmt(s['fx_p99'], '.3f')})"
        else:
            ap50 = None if s["fx_p50"] is None or d["fx_p50"] is None else s["fx_p50"] - d["fx_p50"]
            ap99 = None if s["fx_p99"] is None or d["fx_p99"] is None else s["fx_p99"] - d["fx_p99"]
            added = f"{fmt(ap50, '+.3f')} / {fmt(ap99, '+.3f')}"
        paired = "" if t.name == "direct" else f"{fmt(s['paired_p50'], '+.3f')} / {fmt(s['paired_p99'], '+.3f')}"
        lines.append(f"| {TARGET_LABELS.get(t.name, t.name)}{flag} | {fmt(s['rps'], ',.0f')} | {fmt(s['p50'], '.3f')} | {fmt(s['p99'], '.3f')} | "
                     f"{fmt(s['cpu'], '.1f')} | {added} | {paired} |")
    pp, bare, ngx = summary["partner-proxy"], summary["bare-aiohttp"], summary["nginx-proxy"]

    def ratio(x: float | None, y: float | None, spec: str = ".2f") -> str:
        return "n/a" if not x or not y else format(x / y, spec)

    lines += [
        "",
        f"- partner-proxy / bare aiohttp: throughput ×{ratio(pp['rps'], bare['rps'])}, CPU per request ×{ratio(pp['cpu'], bare['cpu'])}",
        f"- partner-proxy / nginx reverse proxy: throughput ×{ratio(pp['rps'], ngx['rps'], '.3f')}, CPU per request ×{ratio(pp['cpu'], ngx['cpu'], '.1f')}",
        f"- bare aiohttp / nginx reverse proxy: throughput ×{ratio(bare['rps'], ngx['rps'], '.3f')}, CPU per request ×{ratio(bare['cpu'], ngx['cpu'], '.1f')}",
    ]
    floor = summary.get("floor")
    if floor is not None:
        extra = None if not pp["cpu"] or not floor["cpu"] else pp["cpu"] - floor["cpu"]
        lines.append(f"- floor (minimal Python proxy) / nginx reverse proxy: CPU per request ×{ratio(floor['cpu'], ngx['cpu'], '.1f')}; "
                     f"partner-proxy / floor: CPU per request ×{ratio(pp['cpu'], floor['cpu'], '.1f')} "
                     f"({fmt(extra, '+.1f')} us/req: the price of the features and of how they are built)")
    if bench.args.tracing:
        off = pp["cpu"]
        parts = [f"off {fmt(off, '.1f')}"]
        for name in TRACING_TARGETS:
            cpu = summary.get(name, {}).get("cpu")
            delta = None if cpu is None or off is None else cpu - off
            sp = bench.spans.get(name, {})
            parts.append(f"{TARGET_LABELS[name].split(', ')[1]} {fmt(cpu, '.1f')} ({fmt(delta, '+.1f')}; "
                         f"{sp.get('exported', 0):,.0f} spans exported, {sp.get('dropped', 0):,.0f} dropped)")
        sink = bench.spans.get("sink", {})
        lines.append(f"- partner-proxy tracing, CPU us/req (OTLP/HTTP to a loopback sink, parentbased_traceidratio): {'; '.join(parts)}; "
                     f"sink got {sink.get('exports', 0):,} exports, {sink.get('bytes', 0) / 1e6:.1f} MB")
    for t in bench.targets:  # extra routes (bench/routes.py): against nginx, like the main row
        if t.route is not None:
            s = summary[t.name]
            lines.append(f"- {t.name} / nginx reverse proxy: throughput ×{ratio(s['rps'], ngx['rps'], '.3f')}, CPU per request ×{ratio(s['cpu'], ngx['cpu'], '.1f')}")
    added99 = None if pp["fx_p99"] is None or d["fx_p99"] is None else pp["fx_p99"] - d["fx_p99"]

    def goal(ok: bool | None, text: str) -> str:
        return f"  - {'met' if ok else ('n/a' if ok is None else 'NOT met')}: {text}"

    cpu_x = pp["cpu"] / ngx["cpu"] if pp["cpu"] and ngx["cpu"] else None
    rps_x = pp["rps"] / ngx["rps"] if pp["rps"] and ngx["rps"] else None
    lines += [
        "- goals (issue #16, this run):",
        goal(None if cpu_x is None else cpu_x <= 2.5, f"CPU per request ≤ 2.5× nginx's (×{fmt(cpu_x, '.2f')})"),
        goal(None if rps_x is None else rps_x >= 0.4, f"throughput ≥ 0.4× nginx's (×{fmt(rps_x, '.3f')})"),
        goal(None if pp["paired_p99"] is None else pp["paired_p99"] <= 0.5,
             f"added p99 at {a.rate:g} req/s ≤ +0.5 ms (paired {fmt(pp['paired_p99'], '+.3f')} ms, per repetition "
             f"{', '.join(fmt(v, '+.3f') for v in pp['paired_p99_all'])}; nginx's paired {fmt(ngx['paired_p99'], '+.3f')}; "
             f"from separate windows {fmt(added99, '+.3f')})"),
        goal(None if pp["redis_per_req"] is None else pp["redis_per_req"] < 0.001, f"0 Redis commands per request ({fmt(pp['redis_per_req'], '.4f')})"),
        goal(None, "`serve --workers 2` ≥ 1.7× one worker: measured by `python bench/scaling.py` (equal CPU budgets per worker), not here"),
    ]
    mem = bench.memory
    rss = f"RSS {fmt(mem.get('rss_start_mib'), '.1f')} MiB at start → {fmt(mem.get('rss_after_runs_mib'), '.1f')} MiB after {mem.get('requests_before_rss_after', 0):,} measured requests"
    if "rss_after_memory_mib" in mem:
        rss += f" → {fmt(mem['rss_after_memory_mib'], '.1f')} MiB after {mem['memory_requests']:,} more (--memory)"
    lines += [
        f"- partner-proxy {rss}",
        f"- partner-proxy Redis commands per request in steady state: {fmt(pp['redis_per_req'], '.4f')} (INFO commandstats delta / requests, median)",
    ]
    if "sidecar_stderr_lines" in mem:
        lines.append(f"- partner-proxy stderr: {mem['sidecar_stderr_lines']} line(s), {mem['sidecar_stderr_problems']} warning/error line(s)"
                     " (bench/results/sidecar-stderr.log)")
        lines += [f"  - `{ln[:300]}`" for ln in mem.get("sidecar_stderr_sample", [])]
    if "commlog_lines" in mem:
        lines.append(f"- partner-proxy communication log: {mem['commlog_lines']:,} lines on stdout (to a file)")
    lines += [
        "",
        "Details (per repetition; server/upstream CPU as % of one core during the closed-loop run):",
        "",
        "| target | req/s per rep | CPU us/req per rep | user / system us/req | server CPU % | upstream nginx CPU % | other load % (max) | steal % | Redis cmds/req | fixed-rate p50 / p90 / p99 ms per rep | achieved rps | client lag p99 ms | errors |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for t in bench.targets:
        s = summary[t.name]
        err = "none"
        if s["errors"] or s["fx_errors"]:
            parts = []
            if s["non_2xx"]:
                parts.append(f"wrk non-2xx {s['non_2xx']}")
            if any(s["socket_errors"].values()):
                parts.append(f"wrk socket {s['socket_errors']}")
            bad = {k: v for k, v in s["fx_statuses"].items() if not k.startswith("2")}
            if bad or s["fx_client_errors"]:
                parts.append(f"fixed-rate statuses {bad} client errors {s['fx_client_errors']}")
            err = "; ".join(parts)
        if t.name == "partner-proxy" and s["statuses"]:
            err += f" (sidecar metrics, closed loop: {s['statuses']})"
        lines.append(f"| {t.name} | {', '.join(map(str, s['rps_all']))} | {', '.join(map(str, s['cpu_all']))} | {fmt(s['user'], '.1f')} / {fmt(s['system'], '.1f')} | {fmt(s['server_cpu_pct'], '.0f')} | "
                     f"{fmt(s['upstream_cpu_pct'], '.0f')} | {fmt(s['foreign_pct'], '.0f')} ({s['foreign_max']:.0f}) | {fmt(s['steal_pct'], '.1f')} | {fmt(s['redis_per_req'], '.4f')} | {s['fx_all']} | {fmt(s['fx_rps'], '.0f')} | {fmt(s['fx_lag_p99'], '.3f')} | {err} |")
    if bench.remeasured:
        lines.append(f"\n{bench.remeasured} measurement(s) disturbed by other processes were taken again (the second take is reported).")
    busy = [n for n, s in summary.items() if s["foreign_max"] > FOREIGN_LIMIT]
    if busy:
        lines.append(f"\nWARNING: other processes on this machine used more than {FOREIGN_LIMIT:.0f}% of a core during runs of "
                     f"{', '.join(busy)} (column 'other load'): those numbers are disturbed; re-run on a quiet machine.")
    for name, verdict in bench.sanity.items():
        if "HTTP 200" not in verdict or "DIFFERENT" in verdict:
            lines.append(f"\nsanity check {name}: {verdict}")
    samples = {n: s["samples"] for n, s in summary.items() if s["samples"]}
    if samples:
        lines += ["", "Sample error bodies:", "```", json.dumps(samples, indent=1, ensure_ascii=False)[:3000], "```"]
    for name, prof in bench.profiles.items():
        lines += ["", f"py-spy self time, {name} ({prof['samples']} samples; collapsed stacks in {prof['file']}):",
                  "by package: " + ", ".join(f"{k} {v}%" for k, v in prof["packages"][:8]), ""]
        lines += [f"    {v:5.1f}%  {k}" for k, v in prof["functions"]]
    lines += [f"\nnote: {n}" for n in bench.notes]
    m = machine()
    lines += [
        "",
        (f"Machine: {m['nproc']} CPUs, {m['cpu']}, Linux {m['kernel']}; Python {m['python']}, aiohttp {m['aiohttp']}, uvloop {m['uvloop']}, "
         f"nginx {m['nginx']}, wrk {m['wrk']}, redis {m['redis']}; partner-proxy {m['build']}."),
        f"Placement: {'servers on CPU ' + a.server_cpu + ', upstream nginx on CPU ' + str(a.upstream_cpu) + ', wrk and the fixed-rate client on CPU ' + a.client_cpu if bench.pin else 'no CPU pinning'}.",
        f"Command: `{command}` ({elapsed:.0f} s)",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="partner-proxy vs nginx vs bare aiohttp, on 127.0.0.1. See bench/README.md.")
    p.add_argument("--quick", action="store_true", help="1 repetition, 3 s closed-loop runs, 5 s fixed-rate runs (~1 minute)")
    p.add_argument("--reps", type=int, help="interleaved repetitions (default 3; 1 with --quick)")
    p.add_argument("--duration", type=float, help="seconds per closed-loop wrk run (default 10; 3 with --quick)")
    p.add_argument("--warmup", type=float, help="seconds of wrk warm-up before each run (default 2; 1 with --quick)")
    p.add_argument("--rate", type=float, default=500.0, help="fixed-rate requests per second (default %(default)s)")
    p.add_argument("--rate-duration", type=float, help="seconds per fixed-rate run (default 10; 5 with --quick)")
    p.add_argument("--settle", type=float, default=1.0, help="seconds of quiet between the closed-loop and the fixed-rate run (default %(default)s)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (default %(default)s)")
    p.add_argument("--memory", action="store_true", help="also send 100,000 more requests to the sidecar and report its RSS")
    p.add_argument("--profile", action="store_true",
                   help="also sample partner-proxy and bare aiohttp with py-spy under load (bench/results/profile-*.txt)")
    p.add_argument("--memory-requests", type=int, default=100_000, help=argparse.SUPPRESS)
    p.add_argument("--config", default="config/routes.yaml", help="sidecar routes file (default %(default)s)")
    p.add_argument("--errors", default="config/errors.yaml", help="sidecar errors file (default %(default)s)")
    p.add_argument("--workers", type=int, default=1, help="partner-proxy serve --workers N (default %(default)s; give --server-cpu 0,1 for 2)")
    p.add_argument("--commlog", choices=("file", "devnull"), default="file", help="where the sidecar's stdout goes (default: a file)")
    p.add_argument("--server-cpu", default="0", help="CPU list for the measured servers (default %(default)s)")
    p.add_argument("--upstream-cpu", default="1",
                   help="CPU list for the upstream nginx (default %(default)s: beside the load generator, so the Python targets get core 0 to themselves)")
    p.add_argument("--client-cpu", default="1", help="CPU list for wrk and the fixed-rate client (default %(default)s)")
    p.add_argument("--aux-cpu", default="1", help="CPU list for redis-server (default %(default)s)")
    p.add_argument("--wait-quiet", type=float, metavar="S",
                   help="before each measurement wait up to S seconds while other processes load the machine, "
                   "and measure a disturbed run once more (default 30; 15 with --quick; 0: never wait, just flag)")
    p.add_argument("--quiet-budget", type=float, metavar="S",
                   help="total seconds a run may spend on that waiting and re-measuring (default 180; 45 with --quick)")
    p.add_argument("--tracing", action="store_true",
                   help="also measure partner-proxy with tracing on, at 10 %% and 100 %% sampling, exporting to a loopback OTLP sink (bench/otlp_sink.py)")
    p.add_argument("--no-pin", action="store_true", help="do not use taskset")
    p.add_argument("--no-install", action="store_true", help="refuse instead of apt-get installing missing tools")
    a = p.parse_args(argv)
    q = a.quick
    a.reps = a.reps if a.reps is not None else (1 if q else 3)
    a.duration = a.duration if a.duration is not None else (3.0 if q else 10.0)
    a.warmup = a.warmup if a.warmup is not None else (1.0 if q else 2.0)
    a.wait_quiet = a.wait_quiet if a.wait_quiet is not None else (15.0 if q else 30.0)
    a.quiet_budget = a.quiet_budget if a.quiet_budget is not None else (45.0 if q else 180.0)
    a.rate_duration = a.rate_duration if a.rate_duration is not None else (5.0 if q else 10.0)
    if a.reps < 1 or a.duration <= 0 or a.rate <= 0:
        p.error("--reps, --duration and --rate must be positive")
    return a


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM: the same clean-up as Ctrl-C


def interrupt_on_signals() -> None:
    """SIGTERM and SIGINT raise KeyboardInterrupt, so the harness's ``finally`` stops its servers
    (SIGINT too when started with it ignored, as ``cmd &`` does)."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def ignore_signals() -> None:
    """While stopping what it started: a second Ctrl-C or SIGTERM must not cut that short and leave
    servers behind (each stop is bounded, ending in SIGKILL)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python bench/run.py" + ("" if not (argv or sys.argv[1:]) else " " + shlex.join(argv if argv is not None else sys.argv[1:]))
    t0 = time.monotonic()

    interrupt_on_signals()
    try:
        ensure_tools(not args.no_install)
    except BenchError as exc:
        print(f"bench: cannot run: {exc}", file=sys.stderr)
        return 2
    bench = Bench(args)
    try:
        bench.run()
        summary = summarize(bench)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; stopping everything it started", file=sys.stderr)
        return 130
    finally:
        # Everything it started, by PID, never by name; then the temp dir.
        ignore_signals()
        bench.stop()
    elapsed = time.monotonic() - t0
    report = render(bench, summary, command, elapsed)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.md").write_text(report)
    raw = {"args": vars(args), "command": command, "machine": machine(), "memory": bench.memory, "sanity": bench.sanity,
           "summary": summary, "runs": {t.name: t.runs for t in bench.targets}}
    (RESULTS / "latest.json").write_text(json.dumps(raw, indent=1, default=str))
    print(report)
    flagged = [n for n, s in summary.items() if s["errors"] or s["fx_errors"]]
    if flagged:
        print(f"targets with errors: {', '.join(flagged)} (details above; sidecar stderr in bench/results/sidecar-stderr.log)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Two versions of the sidecar, one upstream, interleaved: which one costs less CPU per request?

``bench/run.py`` compares the sidecar with nginx; this compares the sidecar with itself. Two
commits (or two directories) each run as their own ``partner-proxy serve`` on the same core,
against the same upstream nginx and Redis, and wrk alternates between them (A, B, A, B, ...), so
whatever else the shared machine does lands on both about equally. Per round it reads each
process tree's user and system CPU from ``/proc`` and prints µs per request; the summary is the
median of the rounds and B's ratio to A.

This is how the corked writes were found to matter (the callback path without them cost 95 µs
per request, with them 59): ``bench/hotpath.py`` measures only the Python part, and a gain there
may shrink or vanish once the kernel and the loop are in the picture.

    python bench/ab.py main HEAD             # two git refs of this repository
    python bench/ab.py /path/to/tree .       # or two source trees
    python bench/ab.py main HEAD --rounds 6 --duration 5 --path /v1/orders/bench-order-1
    python bench/ab.py main HEAD --compile   # both sides as the image builds them (mypyc, setup.py)
    python bench/ab.py main HEAD --compile --latency --rounds 6   # and their latency at 500 req/s

``--latency`` adds, after the CPU rounds, rounds of open-loop load at ``--rate`` requests per second
on both sides in the same window (``bench/fixed_rate.py``, B's requests half an interval after A's,
which side leads swapped every round): what each side's p50/p90/p99 is when both see the same
machine. The summary is the median over rounds of B − A, each round's pair taken together: on a
shared VM the p99 of two separate windows differs by more than most changes move it.

A ref is checked out with ``git worktree add --detach`` into a temporary directory and removed at
the end. Each sidecar imports its own tree's ``proxy`` package and reads its own tree's
``config/``. A checked-out ref runs as pure Python (its tree has no built extensions) and a
directory runs as it is (``.`` after ``pip install -e .`` runs compiled): the log line says how
many compiled modules each side has, and ``--compile`` builds them in both first (~80 s each).
Only loopback; every process started here is stopped by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import run as B  # noqa: E402  (the bench's process, /proc and nginx helpers)


@dataclass
class Side:
    label: str
    tree: Path
    url: str = ""
    child: B.Child | None = None
    user: list[float] = field(default_factory=list)  # µs per request, one value per round
    system: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    compiled: int = 0  # the side's mypyc extensions (setup.py); a checked-out ref has none unless --compile

    def total(self) -> list[float]:
        return [u + s for u, s in zip(self.user, self.system)]


def cpu_split(root: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the live process tree under ``root``."""
    user = system = 0
    for pid in B.tree_pids(root):
        fields = B._stat_fields(pid)
        if fields is not None:
            user += int(fields[11])
            system += int(fields[12])
    return user / B.CLK_TCK, system / B.CLK_TCK


def checkout(ref: str, tmp: Path, worktrees: list[Path]) -> Path:
    """A directory is used as it is; anything else is a git ref of this repository."""
    path = Path(ref)
    if path.is_dir() and (path / "proxy").is_dir():
        return path.resolve()
    target = tmp / f"tree-{len(worktrees)}"
    proc = subprocess.run(["git", "-C", str(B.REPO), "worktree", "add", "--detach", str(target), ref],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise B.BenchError(f"cannot check out {ref!r}: {proc.stderr.strip()}")
    worktrees.append(target)
    return target


PERCENTILES = ("p50_ms", "p90_ms", "p99_ms")


def latency_rounds(sides: list[Side], args: argparse.Namespace, procs: B.Processes) -> None:
    """Both sides under the same open-loop load in one window per round; prints per side and B − A."""
    got: dict[str, list[dict[str, float]]] = {s.label: [] for s in sides}
    for rnd in range(args.rounds):
        lead, other = sides if rnd % 2 == 0 else sides[::-1]
        argv = [sys.executable, str(B.BENCH / "fixed_rate.py"), "--url", lead.url, "--baseline-url", other.url,
                "--rate", f"{args.rate:g}", "--duration", f"{args.rate_duration:g}"]
        for name, value in B.APP_HEADERS.items():
            argv += ["-H", f"{name}: {value}"]
        out = procs.run(argv, cpu=args.other_cpu, timeout=args.rate_duration + 60)
        if out.returncode != 0:
            raise B.BenchError(f"fixed-rate client failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
        result = json.loads(out.stdout)
        for side, res in ((lead, result), (other, result["baseline"])):
            if res["ok"] != res["sent"]:
                raise B.BenchError(f"side {side.label}: {res['ok']} of {res['sent']} answered 2xx: {res['statuses']} {res['errors']}")
            got[side.label].append({k: res[k] for k in PERCENTILES})
        B.log(f"latency round {rnd + 1} ({lead.label} leads): " + ", ".join(
            f"{s.label} " + " / ".join(f"{got[s.label][-1][k]:.3f}" for k in PERCENTILES) for s in sides) + " ms (p50 / p90 / p99)")
    print(f"\nlatency at {args.rate:g} req/s per side, both in one window, {args.rounds} rounds of {args.rate_duration:g} s (ms)")
    print(f"{'':3} {'p50':>7} {'p90':>7} {'p99':>7}   p99 per round")
    for side in sides:
        rows = got[side.label]
        print(f"{side.label:3} " + " ".join(f"{statistics.median(r[k] for r in rows):7.3f}" for k in PERCENTILES)
              + "   " + " ".join(f"{r['p99_ms']:.3f}" for r in rows))
    a_rows, b_rows = got[sides[0].label], got[sides[1].label]
    print("B - A, median of the rounds' differences: " + ", ".join(
        f"{k[:-3]} {statistics.median(b[k] - a[k] for a, b in zip(a_rows, b_rows)):+.3f}" for k in PERCENTILES) + " ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", help="git ref or source tree of version A (the baseline)")
    parser.add_argument("b", help="git ref or source tree of version B")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of wrk per side per round")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--path", default=B.APP_PATH, help="the app path to load (a GET route of the shipped config)")
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--other-cpu", default="1", help="upstream nginx, Redis and wrk")
    parser.add_argument("--latency", action="store_true", help="also compare p50/p90/p99 at --rate req/s, both sides in one window")
    parser.add_argument("--rate", type=float, default=500.0, help="--latency: requests per second per side (default %(default)s)")
    parser.add_argument("--rate-duration", type=float, default=10.0, help="--latency: seconds per round (default %(default)s)")
    parser.add_argument("--compile", action="store_true",
                        help="build each side's mypyc extensions first (setup.py build_ext --inplace; a checked-out ref has none)")
    args = parser.parse_args(argv)

    B.interrupt_on_signals()
    tmp = Path(tempfile.mkdtemp(prefix="pp-ab-"))
    tmp.chmod(0o755)  # nginx workers run as nobody
    procs = B.Processes(pin=(os.cpu_count() or 1) >= 2)
    worktrees: list[Path] = []
    try:
        sides = [Side("A", checkout(args.a, tmp, worktrees)), Side("B", checkout(args.b, tmp, worktrees))]
        for side in sides:
            if args.compile and (side.tree / "setup.py").exists():
                B.log(f"compiling side {side.label} ({side.tree}) with mypyc")
                subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=side.tree, check=True,
                               stdout=subprocess.DEVNULL, env={**os.environ, "PARTNER_PROXY_COMPILE": "1"})
            side.compiled = len(list((side.tree / "proxy").rglob("*.so")))
        extra = B.extra_routes(tmp)
        up_port = B.free_port()
        conf = B.nginx_conf(tmp, "upstream", up_port, B.upstream_nginx_body(up_port, "".join(r.upstream for r in extra)))
        upstream = procs.start("upstream-nginx", ["nginx", "-p", str(tmp), "-e", str(tmp / "upstream-error.log"), "-c", str(conf)],
                               cpu=args.other_cpu, stderr_path=tmp / "upstream.stderr")
        up = f"http://{B.HOST}:{up_port}"
        B.wait_http(up + B.UPSTREAM_PATH, upstream)
        redis_port = B.free_port()
        procs.start("redis-server", ["redis-server", "--port", str(redis_port), "--bind", B.HOST, "--save", "", "--appendonly", "no",
                                     "--dir", str(tmp), "--daemonize", "no"], cpu=args.other_cpu, stderr_path=tmp / "redis.stderr")
        for side in sides:
            port, admin = B.free_port(), B.free_port()
            env = B.child_env({
                "PROXY_LISTEN": f"{B.HOST}:{port}", "PROXY_ADMIN_LISTEN": f"{B.HOST}:{admin}",
                "TOKOPEDIA_BASE_URL": up, "TOKOPEDIA_TOKEN_URL": f"{up}/token",
                "TOKOPEDIA_CLIENT_ID": "bench-client", "TOKOPEDIA_CLIENT_SECRET": "bench-secret",
                "REDIS_URL": f"redis://{B.HOST}:{redis_port}/0",
                **{k: v for r in extra for k, v in r.env.items()},
            })
            env["PYTHONPATH"] = str(side.tree)  # this side's own package, not the harness's
            for key in [k for k in env if k.startswith("OTEL_")]:
                del env[key]
            with open(tmp / f"commlog-{side.label}.jsonl", "wb") as commlog:
                side.child = procs.start(f"sidecar-{side.label}", [sys.executable, "-m", "proxy", "serve",
                                                                  "--config", "config/routes.yaml", "--errors", "config/errors.yaml"],
                                         cpu=args.server_cpu, env=env, stdout=commlog, cwd=side.tree,
                                         stderr_path=tmp / f"sidecar-{side.label}.stderr", stop_signals=(signal.SIGTERM, signal.SIGTERM))
            B.wait_http(f"http://{B.HOST}:{admin}/readyz", side.child)
            side.url = f"http://{B.HOST}:{port}{args.path}"
            status, _, body = B.http_get(side.url, B.APP_HEADERS, timeout=5)
            if status != 200:
                raise B.BenchError(f"side {side.label} ({side.tree}) answered {status}: {body[:200]!r}")
        B.log(f"A = {args.a} ({sides[0].tree}, {sides[0].compiled} compiled modules), B = {args.b} ({sides[1].tree}, "
              f"{sides[1].compiled} compiled modules), {args.path}, {args.rounds} rounds x {args.duration:g} s")
        wrk = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration:g}s", "--timeout", "5s"]
        for name, value in B.APP_HEADERS.items():
            wrk += ["-H", f"{name}: {value}"]
        for side in sides:  # warm-up: token fetched, pools filled
            procs.run([*wrk[:3], "-d1s", *wrk[4:], side.url], cpu=args.other_cpu, timeout=30)
        for rnd in range(args.rounds):
            for side in sides if rnd % 2 == 0 else sides[::-1]:  # ABBA...: neither always goes first
                assert side.child is not None
                u0, s0 = cpu_split(side.child.pid)
                out = procs.run([*wrk, side.url], cpu=args.other_cpu, timeout=args.duration + 30)
                u1, s1 = cpu_split(side.child.pid)
                match = re.search(r"(\d+) requests in ([\d.]+)s", out.stdout)
                if out.returncode != 0 or match is None or "Non-2xx" in out.stdout:
                    raise B.BenchError(f"wrk against side {side.label} failed:\n{out.stdout}{out.stderr}")
                n, secs = int(match.group(1)), float(match.group(2))
                side.user.append((u1 - u0) / n * 1e6)
                side.system.append((s1 - s0) / n * 1e6)
                side.rps.append(n / secs)
            B.log(f"round {rnd + 1}: " + ", ".join(f"{s.label} {s.total()[-1]:.1f} µs/req" for s in sides))
        print(f"\n{'':3} {'µs/req':>8} {'user':>6} {'system':>7} {'req/s':>8}   rounds (µs/req)")
        for side in sides:
            print(f"{side.label:3} {statistics.median(side.total()):8.1f} {statistics.median(side.user):6.1f} "
                  f"{statistics.median(side.system):7.1f} {statistics.median(side.rps):8.0f}   "
                  + " ".join(f"{t:.1f}" for t in side.total()))
        a, b = (statistics.median(s.total()) for s in sides)
        print(f"\nB / A: x{b / a:.3f} CPU per request ({b - a:+.1f} µs)")
        if args.latency:
            latency_rounds(sides, args, procs)
        return 0
    except B.BenchError as exc:
        print(f"bench/ab.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench/ab.py: interrupted; stopping everything it started", file=sys.stderr)
        return 130
    finally:
        B.ignore_signals()
        procs.stop_all()
        for tree in worktrees:
            subprocess.run(["git", "-C", str(B.REPO), "worktree", "remove", "--force", str(tree)], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    sys.exit(main())

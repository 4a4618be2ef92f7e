#!/usr/bin/env python3
"""Does ``serve --workers 2`` do twice the work of one worker? Measured with equal CPU budgets.

Issue 16 asks that two workers give at least ×1.7 the throughput of one. On a 2-core machine
that cannot be read off ``bench/run.py --workers 2``: wrk and the upstream nginx need the second
core, so two workers get ~1.4 cores between them and the ratio says more about the harness than
about the sidecar. This script takes the cores out of the question. Each worker process is held
to the same CPU budget (default 0.4 of a core) by the kernel's CFS bandwidth control, a cgroup
per worker, the way Kubernetes enforces a container's ``limits.cpu``. One worker gets one budget,
two workers get one each, and the harness keeps what is left. If nothing in the sidecar is shared
between workers (a lock, a file, Redis on the hot path, the supervisor) and the kernel spreads the
connections over both, two budgets serve about twice the requests of one. Anything that
serialises the workers shows as a ratio well under 2.

What it does not show is hardware scaling: the budgets, not free cores, bound the workers. With
``--server-cpu 0`` both budgets are time-sliced on one core and share its caches, where two cores
would not: a stricter reading (on this VM ~20 % more CPU per request for two workers).

    python bench/scaling.py                    # 5 interleaved rounds of 10 s, 0.4 of a core per worker (~2 min)
    python bench/scaling.py --budget 0.3 --rounds 5
    python bench/scaling.py --server-cpu 0     # both workers time-sliced on one core (shared caches)
    python bench/scaling.py --server-cpu 2,3   # on a bigger machine: workers on cores of their own

Needs root and the cgroup ``cpu`` controller (v1 ``/sys/fs/cgroup/cpu`` or v2 with ``cpu`` in
``cgroup.controllers``); it says so and exits 2 otherwise. Both sidecars run the shipped config
against the same upstream nginx and Redis as bench/run.py (its helpers, started the same way),
loopback only; every process is stopped by PID and every cgroup it made is removed at the end.
The report goes to stdout and bench/results/scaling.md (raw numbers in scaling.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import run as B  # noqa: E402  (processes, nginx upstream, wrk, /proc accounting)

GOAL = 1.7  # issue 16: --workers 2 at least ×1.7 one worker


# --------------------------------------------------------------------------- cgroups


class CpuGroups:
    """CPU budgets for single processes: one cgroup each under a parent this run owns.

    cgroup v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) and v2 (``cpu.max``) say the same
    thing: at most ``quota`` µs of CPU time per ``period`` µs, then the group waits for the next
    period. ``cpu.stat`` counts the periods in which the group hit its quota (``nr_throttled``),
    which is how the report shows that the budget, not something else, was the limit.
    """

    def __init__(self, root: Path, version: int) -> None:
        self.root = root  # the hierarchy's root: processes go back here before a group is removed
        self.version = version
        self.base = root / f"partner-proxy-bench-{os.getpid()}"
        self.groups: list[Path] = []

    @classmethod
    def find(cls, fs: Path = Path("/sys/fs/cgroup")) -> CpuGroups:
        if (fs / "cpu" / "cpu.cfs_quota_us").exists():
            groups = cls(fs / "cpu", 1)
        elif "cpu" in _read(fs / "cgroup.controllers").split():
            groups = cls(fs, 2)
        else:
            raise B.BenchError(f"no cgroup cpu controller under {fs} (neither v1 cpu/cpu.cfs_quota_us nor v2 with cpu in "
                               "cgroup.controllers): CPU budgets per worker cannot be set on this machine")
        try:
            groups.base.mkdir()
            if groups.version == 2:  # a v2 child gets cpu.max only if its parent delegates the controller
                (groups.root / "cgroup.subtree_control").write_text("+cpu")
                (groups.base / "cgroup.subtree_control").write_text("+cpu")
        except OSError as exc:
            with contextlib.suppress(OSError):
                groups.base.rmdir()
            raise B.BenchError(f"cannot create a cgroup under {groups.root} ({exc.strerror}): run as root") from exc
        return groups

    def budget(self, name: str, cores: float, period_us: int) -> Path:
        """A new group allowed ``cores`` of one CPU, enforced every ``period_us``."""
        quota = max(1000, round(cores * period_us))  # the kernel's minimum quota is 1 ms
        group = self.base / name
        group.mkdir()
        self.groups.append(group)
        if self.version == 1:
            (group / "cpu.cfs_period_us").write_text(str(period_us))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (group / "cpu.max").write_text(f"{quota} {period_us}")
        return group

    def limit(self, group: Path) -> float:
        """The group's budget as read back from the kernel, in cores."""
        if self.version == 1:
            quota, period = int(_read(group / "cpu.cfs_quota_us")), int(_read(group / "cpu.cfs_period_us"))
        else:
            q, p = _read(group / "cpu.max").split()
            quota, period = (-1 if q == "max" else int(q)), int(p)
        return float("inf") if quota < 0 else quota / period

    @staticmethod
    def join(group: Path, pid: int) -> None:
        """Moves the whole process, every thread, into the group (its later threads are born there)."""
        (group / "cgroup.procs").write_text(str(pid))

    @staticmethod
    def members(group: Path) -> list[int]:
        return [int(p) for p in _read(group / "cgroup.procs").split()]

    @staticmethod
    def throttling(group: Path) -> tuple[int, int]:
        """(enforcement periods so far, periods in which the group ran out of budget)."""
        return parse_cpu_stat(_read(group / "cpu.stat"))

    def remove(self) -> None:
        for group in reversed(self.groups):
            with contextlib.suppress(OSError):
                for pid in self.members(group):
                    with contextlib.suppress(OSError):
                        (self.root / "cgroup.procs").write_text(str(pid))
            try:
                group.rmdir()
            except OSError as exc:
                B.log(f"could not remove cgroup {group}: {exc.strerror}")
        self.groups.clear()
        with contextlib.suppress(OSError):
            self.base.rmdir()


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def parse_cpu_stat(text: str) -> tuple[int, int]:
    """``nr_periods`` and ``nr_throttled`` from a cgroup's cpu.stat (same keys in v1 and v2)."""
    values = dict(line.split(None, 1) for line in text.splitlines() if " " in line)
    return int(values.get("nr_periods", 0)), int(values.get("nr_throttled", 0))


# --------------------------------------------------------------------------- the workers


def listening_inodes(port: int, tcp_tables: tuple[str, ...] = ("/proc/net/tcp", "/proc/net/tcp6")) -> set[str]:
    """Socket inodes in LISTEN state on ``port`` (every SO_REUSEPORT listener has its own)."""
    inodes: set[str] = set()
    for table in tcp_tables:
        for line in _read(Path(table)).splitlines()[1:]:
            f = line.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    out: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    out.add(link[8:-1])
    return out


def serving_pids(root: int, port: int) -> list[int]:
    """The processes of the tree under ``root`` that hold a listening socket on ``port``: the
    sidecar itself with one worker; with ``--workers N`` the N workers, not the supervisor (which
    never binds) nor multiprocessing's resource tracker."""
    listening = listening_inodes(port)
    return sorted(pid for pid in B.tree_pids(root) if socket_inodes(pid) & listening)


@dataclass
class Side:
    name: str
    workers: int
    target: B.Target
    port: int
    pids: list[int] = field(default_factory=list)
    groups: list[Path] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)


def wait_serving(side: Side, timeout: float = 30.0) -> None:
    """Until every worker has bound the data port: /readyz answers as soon as the first one has."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if side.target.child.proc.poll() is not None:
            raise B.BenchError(f"{side.name} exited with {side.target.child.proc.returncode}{B._log_tail(side.target.child)}")
        side.pids = serving_pids(side.target.child.pid, side.port)
        if len(side.pids) == side.workers:
            return
        time.sleep(0.1)
    raise B.BenchError(f"{side.name}: {len(side.pids)} of {side.workers} workers listening on :{side.port} after {timeout:.0f}s")


def cpu_of(pids: list[int]) -> list[float]:
    """utime + stime of each process (all its threads), in seconds."""
    out = []
    for pid in pids:
        f = B._stat_fields(pid)
        out.append(0.0 if f is None else (int(f[11]) + int(f[12])) / B.CLK_TCK)
    return out


# --------------------------------------------------------------------------- the run


class Scaling:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        # bench/run.py's harness, for its processes, upstream, Redis and wrk; its own options are
        # the defaults except for what this script passes on.
        self.bench = B.Bench(B.parse_args([
            "--connections", str(args.connections), "--server-cpu", args.server_cpu, "--upstream-cpu", args.upstream_cpu,
            "--client-cpu", args.client_cpu, "--aux-cpu", args.aux_cpu, "--duration", f"{args.duration:g}",
            "--warmup", f"{args.warmup:g}", *(["--no-pin"] if args.no_pin else []),
        ]))
        self.groups: CpuGroups | None = None
        self.sides: list[Side] = []

    def start(self) -> None:
        a, bench = self.args, self.bench
        self.groups = CpuGroups.find()
        up = bench.start_partner()
        for workers in (1, a.workers):
            name = f"pp-{workers}-worker{'s' if workers > 1 else ''}"
            target = bench._start_sidecar(name, up, workers=workers)
            side = Side(name, workers, target, int(target.url.split(":")[2].split("/")[0]))
            wait_serving(side)
            for i, pid in enumerate(side.pids):
                group = self.groups.budget(f"{name}-{i}", a.budget, a.period_us)
                self.groups.join(group, pid)
                side.groups.append(group)
            bench.servers.append(target.child)
            self.sides.append(side)
            B.log(f"{name}: workers {side.pids}, each in its own cgroup at {self.groups.limit(side.groups[0]):.2f} of a core "
                  f"(period {a.period_us} us)")

    def measure(self, side: Side, rnd: int) -> dict[str, Any]:
        a, bench = self.args, self.bench
        assert self.groups is not None
        bench.wait_quiet()
        bench.wrk(side.target.url, a.warmup)
        if sorted(serving_pids(side.target.child.pid, side.port)) != side.pids:
            raise B.BenchError(f"{side.name}: its workers changed (a restart?): the new ones are outside their budgets")
        thr0 = [self.groups.throttling(g) for g in side.groups]
        tree0, w0 = B.tree_cpu_seconds(side.target.child.pid), cpu_of(side.pids)
        servers = [c.pid for c in bench.servers]
        sys0, own0, t0 = B.system_cpu(), B.own_cpu(servers), time.monotonic()
        run = bench.wrk(side.target.url, a.duration)
        t1, sys1, own1 = time.monotonic(), B.system_cpu(), B.own_cpu(servers)
        tree1, w1 = B.tree_cpu_seconds(side.target.child.pid), cpu_of(side.pids)
        thr1 = [self.groups.throttling(g) for g in side.groups]
        wall, n = t1 - t0, max(run["requests"], 1)
        per_worker = [b - a_ for a_, b in zip(w0, w1)]
        used = sum(per_worker)
        res = {
            "round": rnd,
            "side": side.name,
            "workers": side.workers,
            "rps": run["rps"],
            "requests": run["requests"],
            "p99_ms": run.get("p99_ms"),
            "errors": run["non_2xx"] + sum(run["socket_errors"].values()),
            "cpu_us_per_req": (tree1 - tree0) / n * 1e6,
            # how much of its budget each worker spent: ~100 % means the budget was the limit
            "budget_used_pct": [c / (a.budget * wall) * 100 for c in per_worker],
            "worker_share_pct": [c / used * 100 if used else 0.0 for c in per_worker],
            "throttled_pct": [(t[1] - s[1]) / max(t[0] - s[0], 1) * 100 for s, t in zip(thr0, thr1)],
            "foreign_cpu_pct": max(0.0, (sys1[0] - sys0[0]) - (own1 - own0)) / wall * 100,
        }
        B.log(f"round {rnd + 1} {side.name:<14} {res['rps']:>8.0f} req/s  {res['cpu_us_per_req']:.1f} us/req  "
              f"budget used {', '.join(f'{u:.0f}%' for u in res['budget_used_pct'])}  "
              f"share {', '.join(f'{s:.0f}%' for s in res['worker_share_pct'])}  "
              f"throttled {', '.join(f'{t:.0f}%' for t in res['throttled_pct'])} of periods"
              + (f"  ERRORS {res['errors']}" if res["errors"] else "")
              + (f"  BUSY MACHINE ({res['foreign_cpu_pct']:.0f}% of a core)" if res["foreign_cpu_pct"] > B.FOREIGN_LIMIT else ""))
        return res

    def run(self) -> None:
        self.start()
        for rnd in range(self.args.rounds):
            order = self.sides if rnd % 2 == 0 else self.sides[::-1]
            for side in order:
                side.runs.append(self.measure(side, rnd))

    def stop(self) -> None:
        try:
            self.bench.stop()  # the processes first: a cgroup with members cannot be removed
        finally:
            if self.groups is not None:
                self.groups.remove()


def summarize(sides: list[Side]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in sides:
        runs = s.runs
        out[s.name] = {
            "workers": s.workers,
            "rps": statistics.median(r["rps"] for r in runs),
            "rps_all": [round(r["rps"]) for r in runs],
            "cpu": statistics.median(r["cpu_us_per_req"] for r in runs),
            "budget_used": statistics.median(u for r in runs for u in r["budget_used_pct"]),
            "budget_used_min": min(u for r in runs for u in r["budget_used_pct"]),
            "share": [round(statistics.median(r["worker_share_pct"][i] for r in runs)) for i in range(s.workers)],
            "throttled": statistics.median(t for r in runs for t in r["throttled_pct"]),
            "errors": sum(r["errors"] for r in runs),
            "foreign_max": max(r["foreign_cpu_pct"] for r in runs),
        }
    one, many = out[sides[0].name], out[sides[1].name]
    # Per round, the two sidecars ran back to back: their ratio is read under the same machine
    # load. The median of those is the headline; the ratio of the two medians (which pairs a
    # quiet minute of one with a busy minute of the other) is printed beside it.
    out["ratio_all"] = [round(m["rps"] / o["rps"], 2) for o, m in zip(sides[0].runs, sides[1].runs) if o["rps"]]
    out["ratio"] = statistics.median(out["ratio_all"]) if out["ratio_all"] else None
    out["ratio_of_medians"] = many["rps"] / one["rps"] if one["rps"] else None
    return out


def render(sc: Scaling, summary: dict[str, Any], command: str, elapsed: float) -> str:
    a = sc.args
    one, many = sc.sides
    lines = [
        f"## partner-proxy worker scaling ({time.strftime('%Y-%m-%d %H:%M:%S %Z')})",
        "",
        (f"Each worker process in its own cgroup at {a.budget:g} of a core (CFS quota {round(a.budget * a.period_us)} us per "
         f"{a.period_us} us). Medians of {a.rounds} interleaved round(s) of `wrk -t1 -c{a.connections} -d{a.duration:g}s`, "
         "shipped config, Redis configured."),
        "",
        "| sidecar | req/s | req/s per round | CPU us/req | budget used (median, min) | worker share of CPU | periods throttled | errors |",
        "|---|---:|---|---:|---:|---|---:|---|",
    ]
    for side in sc.sides:
        s = summary[side.name]
        lines.append(f"| `serve --workers {side.workers}` | {s['rps']:,.0f} | {', '.join(map(str, s['rps_all']))} | {s['cpu']:.1f} | "
                     f"{s['budget_used']:.0f} %, {s['budget_used_min']:.0f} % | {' / '.join(f'{x} %' for x in s['share'])} | "
                     f"{s['throttled']:.0f} % | {s['errors'] or 'none'} |")
    ratio = summary["ratio"]
    bound = min(summary[one.name]["budget_used_min"], summary[many.name]["budget_used_min"]) >= 90
    lines += [
        "",
        f"- `--workers {many.workers}` / one worker: throughput ×{ratio:.2f}, the median of the rounds' ratios "
        f"({', '.join(f'×{r}' for r in summary['ratio_all'])}; ratio of the medians ×{summary['ratio_of_medians']:.2f}); "
        f"CPU per request ×{summary[many.name]['cpu'] / summary[one.name]['cpu']:.2f}",
        f"  - {'met' if ratio >= GOAL else 'NOT met'}: ≥ ×{GOAL} (issue #16)" + ("" if many.workers == 2 else f" (asked for 2 workers; this run has {many.workers})"),
        ("- every worker spent ≥ 90 % of its budget in every round: the budgets were the limit, not the harness" if bound else
         "- WARNING: a worker spent < 90 % of its budget in some round: something other than the budget limited it "
         "(the load generator, the upstream, a busy machine); the ratio is not the sidecar's alone"),
    ]
    if max(summary[s.name]["foreign_max"] for s in sc.sides) > B.FOREIGN_LIMIT:
        lines.append(f"- WARNING: other processes used more than {B.FOREIGN_LIMIT:.0f} % of a core during some rounds")
    m = B.machine()
    lines += [
        "",
        (f"Machine: {m['nproc']} CPUs, {m['cpu']}, Linux {m['kernel']}, cgroup v{sc.groups.version if sc.groups else '?'}; "
         f"Python {m['python']}, nginx {m['nginx']}, wrk {m['wrk']}; partner-proxy {m['build']}."),
        (f"Placement: {'workers on CPU ' + a.server_cpu + ', upstream nginx on CPU ' + a.upstream_cpu + ', wrk on CPU ' + a.client_cpu if sc.bench.pin else 'no CPU pinning'}."),
        f"Command: `{command}` ({elapsed:.0f} s)",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="serve --workers 2 against one worker, each worker held to the same CPU budget (cgroups).")
    p.add_argument("--workers", type=int, default=2, help="workers of the second sidecar (default %(default)s)")
    p.add_argument("--budget", type=float, default=0.4, help="CPU per worker, in cores (default %(default)s)")
    p.add_argument("--period-us", type=int, default=100_000, help="CFS enforcement period in µs (default %(default)s, as Kubernetes sets it)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default %(default)s)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (default %(default)s)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk warm-up before each run (default %(default)s)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (default %(default)s)")
    p.add_argument("--server-cpu", default="0,1",
                   help="CPU list for the sidecars (default %(default)s: either core, as in a 2-CPU pod; 0: both workers share one core's caches)")
    p.add_argument("--upstream-cpu", default="1", help="CPU list for the upstream nginx (default %(default)s)")
    p.add_argument("--client-cpu", default="1", help="CPU list for wrk (default %(default)s)")
    p.add_argument("--aux-cpu", default="1", help="CPU list for redis-server (default %(default)s)")
    p.add_argument("--no-pin", action="store_true", help="do not use taskset")
    p.add_argument("--no-install", action="store_true", help="refuse instead of apt-get installing missing tools")
    a = p.parse_args(argv)
    if a.workers < 2 or a.rounds < 1 or a.duration <= 0 or not 0 < a.budget <= 1 or a.period_us < 1000:
        p.error("--workers ≥ 2, --rounds ≥ 1, --duration > 0, 0 < --budget ≤ 1 and --period-us ≥ 1000")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python bench/scaling.py" + ("" if not (argv or sys.argv[1:]) else " " + shlex.join(argv if argv is not None else sys.argv[1:]))
    t0 = time.monotonic()
    B.interrupt_on_signals()
    try:
        B.ensure_tools(not args.no_install)
    except B.BenchError as exc:
        print(f"bench: cannot run: {exc}", file=sys.stderr)
        return 2
    sc = Scaling(args)
    try:
        sc.run()
        summary = summarize(sc.sides)
    except B.BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; stopping everything it started", file=sys.stderr)
        return 130
    finally:
        B.ignore_signals()
        sc.stop()
    report = render(sc, summary, command, time.monotonic() - t0)
    B.RESULTS.mkdir(parents=True, exist_ok=True)
    (B.RESULTS / "scaling.md").write_text(report)
    (B.RESULTS / "scaling.json").write_text(json.dumps({"args": vars(args), "command": command, "summary": summary,
                                                         "runs": {s.name: s.runs for s in sc.sides}}, indent=1, default=str))
    print(report)
    return 1 if any(summary[s.name]["errors"] for s in sc.sides) else 0


if __name__ == "__main__":
    sys.exit(main())

"""bench/scaling.py's parts against the real kernel: which processes serve a port, and per-process
CPU budgets (cgroup cpu controller) that really hold a process to its share."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import run as B
from bench import scaling

CPU_STAT_V1 = "nr_periods 120\nnr_throttled 37\nthrottled_time 5123456\n"
CPU_STAT_V2 = "usage_usec 9000\nuser_usec 6000\nsystem_usec 3000\nnr_periods 8\nnr_throttled 2\nthrottled_usec 700\n"


def test_cpu_stat_gives_periods_and_throttled_periods_in_both_versions() -> None:
    assert scaling.parse_cpu_stat(CPU_STAT_V1) == (120, 37)
    assert scaling.parse_cpu_stat(CPU_STAT_V2) == (8, 2)
    assert scaling.parse_cpu_stat("") == (0, 0)  # a group the kernel has not enforced yet


LISTENER = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))  # an established socket on the port too
print("ready", flush=True); time.sleep(60)
"""


def _listener(port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", LISTENER, str(port)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_serving_pids_are_the_processes_that_listen_on_the_port_not_their_parent() -> None:
    """With --workers N the supervisor and multiprocessing's tracker hold no listener: only the
    workers may be put into budgets, and all of them must be."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    a, b = _listener(port), _listener(port)
    try:
        me = os.getpid()
        assert scaling.serving_pids(me, port) == sorted([a.pid, b.pid])
        assert scaling.serving_pids(a.pid, port) == [a.pid]
        assert scaling.serving_pids(me, port + 1 if port < 65535 else port - 1) == []
    finally:
        for p in (a, b):
            p.kill()
            p.wait()


def _groups() -> scaling.CpuGroups:
    try:
        return scaling.CpuGroups.find()
    except B.BenchError as exc:  # no cpu controller, or not root: said, not hidden; any other error fails
        pytest.skip(f"no writable cgroup cpu controller here: {exc}")


@pytest.fixture
def groups() -> Iterator[scaling.CpuGroups]:
    g = _groups()
    try:
        yield g
    finally:
        g.remove()
        assert not g.base.exists(), "the run's cgroups must be gone after remove()"


SPIN = "import time\nend = time.monotonic() + float(__import__('sys').argv[1])\nwhile time.monotonic() < end: pass\n"


def _cpu_seconds(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def test_a_budget_holds_a_spinning_process_to_its_share(groups: scaling.CpuGroups) -> None:
    group = groups.budget("spin", 0.2, 100_000)
    assert groups.limit(group) == pytest.approx(0.2)
    proc = subprocess.Popen([sys.executable, "-c", SPIN, "60"])
    try:
        groups.join(group, proc.pid)
        assert groups.members(group) == [proc.pid]
        periods0, _ = groups.throttling(group)
        cpu0, t0 = _cpu_seconds(proc.pid), time.monotonic()
        time.sleep(1.5)
        used = (_cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
        periods1, throttled1 = groups.throttling(group)
        # Unbudgeted it would take a whole core (a busy machine only gives it less): at most 0.2 of one,
        # with room for the 10 ms accounting ticks.
        assert used < 0.35, f"the spinner used {used:.2f} of a core under a 0.2 budget"
        assert periods1 > periods0 and throttled1 > 0
    finally:
        proc.kill()
        proc.wait()


def test_remove_takes_back_a_live_member_and_leaves_nothing(groups: scaling.CpuGroups) -> None:
    """An interrupted run still removes its cgroups: live members go back to the root first."""
    group = groups.budget("sleeper", 0.5, 100_000)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        groups.join(group, proc.pid)
        groups.remove()
        assert not group.exists() and not groups.base.exists()
        assert proc.poll() is None, "removing the budget must not touch the process"
    finally:
        proc.kill()
        proc.wait()

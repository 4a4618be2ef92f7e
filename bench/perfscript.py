"""Read ``perf script`` output of a running sidecar: where its CPU goes, and how long it holds a request.

py-spy and cProfile see no frames inside the modules setup.py compiles with mypyc, and those are
most of the request path. perf sees them as C functions (``CPyDef_<module>___<Class>___<method>``),
next to libpython's, uvloop's (``__pyx_f_6uvloop_...``) and httptools' own. Two reports:

``owners``: each sample is charged to its innermost frame that is ours or a library's (a compiled
function, a Cython one, llhttp, libuv), marked K when the sample was in the kernel under it (a
system call) and U when in user space (the function itself, or the libpython and libc work it
called into). ``--under SYMBOL`` breaks one owner's samples down by the frames below it: this is
how the ``str.format`` behind one ``!r`` in an f-string and httptools' ``get_http_version`` showed
up. Record with DWARF unwinding (libpython has no frame pointers):

    perf record -F 1500 --call-graph dwarf,32768 -t <sidecar pid> -o /tmp/pp.data -- sleep 4   # under load
    perf script -i /tmp/pp.data > /tmp/pp.txt
    python bench/perfscript.py owners /tmp/pp.txt
    python bench/perfscript.py owners /tmp/pp.txt --under CPyDef_accesslog___SuccessLine___write

``hops``: the time between a read of a request (or of an answer) and the next write, per hop, from
system call tracepoints: how long the process holds each hop, at a rate where nothing queues.
Reads of at least ``--min-read`` bytes (default 100) count; a read under ``--answer-from`` bytes
(default 400) is taken as the app's request, a larger one as the partner's answer (the bench
upstream's product list is ~1.3 KB, its request ~190 bytes). Record while bench/fixed_rate.py sends
500 req/s:

    perf record -e syscalls:sys_exit_read,syscalls:sys_enter_write -t <tid,...> -o /tmp/hops.data -- sleep 6
    perf script -i /tmp/hops.data > /tmp/hops.txt
    python bench/perfscript.py hops /tmp/hops.txt

On the 2-vCPU VM of 2026-12-01 at 500 req/s: the sidecar held a hop 22-24 us at the median (85 us
at p99), the floor proxy 5-7 us (34 us); hot, under wrk, the sidecar's whole request is ~21 us.
Needs root (or perf_event_paranoid <= 1) and, for tracepoints, tracefs.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from collections.abc import Iterator

_OURS = ("CPyDef", "CPyPy", "__pyx", "llhttp", "uv_", "uv__")
_OFFSET = re.compile(r"\+0x[0-9a-f]+.*")
_EVENT = re.compile(r"\s(\d+)\s+\[\d+\]\s+(\d+\.\d+):\s+syscalls:(\w+): (.*)")


def samples(path: str) -> Iterator[list[str]]:
    """Each sample's lines (header first, then one line per frame, innermost first)."""
    block: list[str] = []
    with open(path, errors="replace") as f:
        for line in f:
            if line.strip():
                block.append(line)
            elif block:
                yield block
                block = []
    if block:
        yield block


def symbol(frame_line: str) -> str:
    parts = frame_line.strip().split(None, 1)
    return _OFFSET.sub("", parts[1]).replace(" (inlined)", "") if len(parts) > 1 else ""


def owner_of(frames: list[str]) -> str:
    return next((f for f in frames if f.startswith(_OURS)), "?")


def owners(path: str, top: int, under: str | None) -> None:
    total = 0
    by_owner: collections.Counter[str] = collections.Counter()
    below: collections.Counter[str] = collections.Counter()
    for block in samples(path):
        if len(block) < 2:
            continue
        total += 1
        frames = [symbol(line) for line in block[1:]]
        owner = owner_of(frames)
        by_owner[("K " if "kallsyms" in block[1] else "U ") + owner] += 1
        if under is not None and owner == under:
            i = frames.index(owner)
            below[" < ".join(frames[: min(i, 4)]) if i else "(its own code)"] += 1
    if not total:
        sys.exit(f"{path}: no samples (was it recorded with --call-graph dwarf?)")
    print(f"{total} samples; K: in the kernel under the owner (its system calls), U: in user space")
    for name, n in by_owner.most_common(top):
        print(f"{n / total * 100:6.2f}%  {name}")
    if under is not None:
        n_under = sum(below.values())
        print(f"\nunder {under}: {n_under} samples ({n_under / total * 100:.2f}%), by the innermost frames")
        for chain, n in below.most_common(top):
            print(f"{n:6d}  {chain}")


def hops(path: str, min_read: int, answer_from: int) -> None:
    events: list[tuple[int, float, str, str]] = []
    with open(path, errors="replace") as f:
        for line in f:
            m = _EVENT.search(line)
            if m:
                events.append((int(m.group(1)), float(m.group(2)), m.group(3), m.group(4)))
    if not events:
        sys.exit(f"{path}: no syscalls:sys_exit_read / sys_enter_write events")
    main = collections.Counter(tid for tid, *_ in events).most_common(1)[0][0]  # the loop's thread
    held: dict[str, list[float]] = {"request": [], "answer": []}
    last: tuple[float, str] | None = None
    for tid, t, name, rest in events:
        if tid != main:
            continue
        if name == "sys_exit_read":
            n = int(rest, 16) if rest.startswith("0x") else int(rest)
            if n >= min_read:
                last = (t, "request" if n < answer_from else "answer")
        elif name == "sys_enter_write" and last is not None:
            held[last[1]].append((t - last[0]) * 1e6)
            last = None
    for kind, values in held.items():
        if not values:
            print(f"{kind}: none")
            continue
        values.sort()

        def q(p: float, v: list[float] = values) -> float:
            return v[min(len(v) - 1, int(p / 100 * len(v)))]

        print(f"{kind:8} hop: n {len(values)}  read -> write us: p50 {q(50):.0f}  p90 {q(90):.0f}  p99 {q(99):.0f}  "
              f"p99.9 {q(99.9):.0f}  max {values[-1]:.0f}")


def main() -> int:
    p = argparse.ArgumentParser(description="owners / hops from `perf script` output (see the module docstring)")
    sub = p.add_subparsers(dest="report", required=True)
    o = sub.add_parser("owners", help="CPU samples by their innermost compiled, Cython or C-library frame")
    o.add_argument("file")
    o.add_argument("--top", type=int, default=40)
    o.add_argument("--under", metavar="SYMBOL", help="break this owner's samples down by the frames below it")
    h = sub.add_parser("hops", help="read -> write time per hop from syscall tracepoints")
    h.add_argument("file")
    h.add_argument("--min-read", type=int, default=100)
    h.add_argument("--answer-from", type=int, default=400)
    a = p.parse_args()
    if a.report == "owners":
        owners(a.file, a.top, a.under)
    else:
        hops(a.file, a.min_read, a.answer_from)
    return 0


if __name__ == "__main__":
    sys.exit(main())

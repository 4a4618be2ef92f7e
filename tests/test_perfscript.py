"""bench/perfscript.py reads ``perf script`` text: owners charged to the innermost compiled frame, hops paired."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

SCRIPT = ROOT / "bench" / "perfscript.py"

# Three samples: user time in libpython under a compiled method, kernel time under uvloop's write,
# and a compiled method's own code.
OWNERS = """python  3095 35248.225168:     666666 cpu-clock:pppH:
\t          1d1e2 build_string+0x12 (/lib/libpython3.11.so.1.0)
\t          1d1e3 do_string_format+0x12 (/lib/libpython3.11.so.1.0)
\t          2a2a2 CPyDef_accesslog___SuccessLine___write+0x40 (/x/partner_proxy_native__mypyc.so)
\t          3b3b3 CPyDef_lane___LaneCall____passed+0x10 (/x/partner_proxy_native__mypyc.so)

python  3095 35248.225169:     666666 cpu-clock:pppH:
\tffffffff81e7b30e tcp_sendmsg+0x3e ([kernel.kallsyms])
\t          4c4c4 __pyx_f_6uvloop_4loop_8UVStream__try_write+0x24 (/x/loop.so)

python  3095 35248.225170:     666666 cpu-clock:pppH:
\t          2a2a2 CPyDef_accesslog___SuccessLine___write+0x44 (/x/partner_proxy_native__mypyc.so)
"""

# The loop's thread (the busiest): a 189-byte request read, its write 20 us later; a 1335-byte
# answer read, its write 30 us later; a small read and another thread's events are ignored.
HOPS = """python 10 [000] 100.000000: syscalls:sys_exit_read: 0xbd
python 10 [000] 100.000020: syscalls:sys_enter_write: fd: 0x0000000f, buf: 0x1, count: 0x00000157
python 10 [000] 100.000100: syscalls:sys_exit_read: 0x537
python 10 [000] 100.000130: syscalls:sys_enter_write: fd: 0x0000000e, buf: 0x1, count: 0x00000540
python 10 [000] 100.000200: syscalls:sys_exit_read: 0x8
python 11 [000] 100.000300: syscalls:sys_enter_write: fd: 0x00000001, buf: 0x1, count: 0x00000010
"""


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_owners_charges_each_sample_to_its_innermost_compiled_or_cython_frame(tmp_path: Path) -> None:
    path = tmp_path / "pp.txt"
    path.write_text(OWNERS)
    out = run("owners", str(path), "--under", "CPyDef_accesslog___SuccessLine___write")
    assert "3 samples" in out
    assert " 66.67%  U CPyDef_accesslog___SuccessLine___write" in out
    assert " 33.33%  K __pyx_f_6uvloop_4loop_8UVStream__try_write" in out
    assert "CPyDef_lane___LaneCall____passed" not in out.split("under")[0], "an outer frame owns nothing"
    assert "1  build_string < do_string_format" in out and "1  (its own code)" in out


def test_hops_pairs_each_read_with_the_next_write_of_the_loop_thread(tmp_path: Path) -> None:
    path = tmp_path / "hops.txt"
    path.write_text(HOPS)
    out = run("hops", str(path))
    assert "request  hop: n 1  read -> write us: p50 20 " in out
    assert "answer   hop: n 1  read -> write us: p50 30 " in out

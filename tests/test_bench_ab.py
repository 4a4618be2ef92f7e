"""bench/ab.py's latency rounds against two real loopback servers, through the real fixed-rate
client (a subprocess, as the bench runs it): both sides in one window, the lead swapped, B − A."""

from __future__ import annotations

import argparse
import asyncio
import re
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench import ab
from bench import run as B


def _app(name: str, seen: list[str], status: int = 200) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        seen.append(name)
        return web.Response(text=name, status=status)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    return app


def _args(rounds: int) -> argparse.Namespace:
    return argparse.Namespace(rounds=rounds, rate=40.0, rate_duration=0.5, other_cpu=None)


async def _sides(seen: list[str], b_status: int = 200) -> tuple[list[ab.Side], list[TestServer]]:
    servers = [TestServer(_app("A", seen), host="127.0.0.1"), TestServer(_app("B", seen, b_status), host="127.0.0.1")]
    sides = []
    for label, server in zip("AB", servers):
        await server.start_server()
        sides.append(ab.Side(label, Path("."), url=str(server.make_url("/v1/products"))))
    return sides, servers


async def test_both_sides_are_loaded_in_each_round_and_the_summary_pairs_them(capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[str] = []
    sides, servers = await _sides(seen)
    procs = B.Processes(pin=False)
    try:
        await asyncio.to_thread(ab.latency_rounds, sides, _args(2), procs)
    finally:
        procs.stop_all()
        for server in servers:
            await server.close()
    # per round: 50 warm-up requests and rate × duration measured ones on each side
    assert seen.count("A") == seen.count("B") == 2 * (50 + 20)
    captured = capsys.readouterr()
    out = captured.out
    rows = {m.group(1): m.group(2).split() for m in re.finditer(r"^([AB])\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+(.*)$", out, re.M)}
    assert set(rows) == {"A", "B"} and all(len(v) == 2 for v in rows.values()), out  # a p99 per round per side
    assert re.search(r"^B - A, median of the rounds' differences: p50 [+-]\d+\.\d{3}, p90 [+-]\d+\.\d{3}, p99 [+-]\d+\.\d{3} ms$", out, re.M), out
    assert "Traceback" not in captured.err, captured.err


async def test_a_side_that_does_not_answer_2xx_stops_the_comparison_and_is_named() -> None:
    seen: list[str] = []
    sides, servers = await _sides(seen, b_status=503)
    procs = B.Processes(pin=False)
    try:
        with pytest.raises(B.BenchError, match=r"side B: 0 of 20 answered 2xx: \{'503': 20\}"):
            await asyncio.to_thread(ab.latency_rounds, sides, _args(1), procs)
    finally:
        procs.stop_all()
        for server in servers:
            await server.close()

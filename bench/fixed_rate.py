"""Open-loop fixed-rate HTTP load (a small stand-in for wrk2, which Debian does not ship).

Request i is started at ``t0 + i / rate`` whatever happened to the earlier ones (open loop: a slow
answer does not slow the sender down). Each request's latency is measured from the moment it is
actually sent to the end of reading the body; how late the sender was against the schedule is
reported separately as ``lag_*`` so a saturated client is visible instead of hidden. The client's
garbage collector is off during the measured window. Prints one
JSON object on stdout. Used by ``bench/run.py`` (pinned to its own core with ``taskset``).

    python bench/fixed_rate.py --url http://127.0.0.1:8080/v1/products --rate 500 --duration 10 \
        -H 'Content-Type: application/json' -H 'X-Client-Id: bench'
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import math
import sys
import time

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), math.ceil(q / 100.0 * len(sorted_values))))
    return sorted_values[rank - 1]


class Stream:
    """One URL's requests and what became of them."""

    def __init__(self, url: str, method: str, headers: dict[str, str], payload: bytes | None) -> None:
        self.url, self.method, self.headers, self.payload = url, method, headers, payload
        self.latencies: list[float] = []
        self.lags: list[float] = []
        self.statuses: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.samples: dict[str, str] = {}

    async def one(self, session: ClientSession, scheduled: float) -> None:
        start = time.perf_counter()
        self.lags.append(start - scheduled)
        try:
            async with session.request(self.method, self.url, headers=self.headers, data=self.payload) as resp:
                body = await resp.read()
                status = resp.status
        except (TimeoutError, ClientError, OSError) as exc:
            self.errors[type(exc).__name__] += 1
            return
        self.latencies.append(time.perf_counter() - start)
        self.statuses[str(status)] += 1
        if not 200 <= status < 300 and str(status) not in self.samples:
            self.samples[str(status)] = body[:300].decode("utf-8", "replace")

    def result(self, rate: float, sent: int, elapsed: float) -> dict[str, object]:
        latencies, lags = sorted(self.latencies), sorted(self.lags)
        ms = lambda v: None if v is None else round(v * 1000.0, 4)
        ok = sum(n for s, n in self.statuses.items() if s.startswith("2"))
        return {
            "url": self.url,
            "rate": rate,
            "sent": sent,
            "completed": len(latencies),
            "ok": ok,
            "non_2xx": len(latencies) - ok,
            "statuses": dict(self.statuses),
            "errors": dict(self.errors),
            "samples": self.samples,
            "achieved_rps": round(sent / elapsed, 1) if elapsed > 0 else None,
            "p50_ms": ms(percentile(latencies, 50)),
            "p90_ms": ms(percentile(latencies, 90)),
            "p99_ms": ms(percentile(latencies, 99)),
            "p999_ms": ms(percentile(latencies, 99.9)),
            "max_ms": ms(latencies[-1] if latencies else None),
            "lag_p50_ms": ms(percentile(lags, 50)),
            "lag_p99_ms": ms(percentile(lags, 99)),
        }


async def load(url: str, headers: dict[str, str], rate: float, duration: float, warmup: int, timeout: float,
               method: str = "GET", payload: bytes | None = None, baseline: str | None = None,
               baseline_headers: dict[str, str] | None = None) -> dict[str, object]:
    """``baseline``: a second URL (the partner called directly) loaded at the same rate in the same
    window, each of its requests half an interval after the target's, so that both see the same
    machine. What the target adds is then read from one window instead of two: on a shared VM the
    p99 of two separate 10 s windows differs by a few tenths of a millisecond by itself."""
    streams = [Stream(url, method, headers, payload)]
    if baseline is not None:
        streams.append(Stream(baseline, "GET", baseline_headers if baseline_headers is not None else headers, None))

    connector = TCPConnector(limit=0, keepalive_timeout=60)
    async with ClientSession(connector=connector, timeout=ClientTimeout(total=timeout)) as session:
        # Open a few keep-alive connections first so connection setup is not measured.
        for stream in streams:
            for _ in range(warmup):
                async with session.request(stream.method, stream.url, headers=stream.headers, data=stream.payload) as resp:
                    await resp.read()

        # Client-side GC pauses would be charged to whichever target is running: keep the collector
        # out of the measured window (a few thousand requests allocate little).
        gc.collect()
        gc.freeze()
        gc.disable()

        total = int(rate * duration)
        tasks: set[asyncio.Task[None]] = set()
        t0 = time.perf_counter() + 0.01
        offsets = [k / (len(streams) * rate) for k in range(len(streams))]
        for i in range(total):
            for stream, offset in zip(streams, offsets):
                scheduled = t0 + i / rate + offset
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(stream.one(session, scheduled))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        send_end = time.perf_counter()
        if tasks:
            await asyncio.wait(set(tasks), timeout=timeout + 1)
        elapsed = send_end - t0
        gc.enable()

    out = streams[0].result(rate, total, elapsed)
    if baseline is not None:
        out["baseline"] = streams[1].result(rate, total, elapsed)
    return out


def _headers(lines: list[str]) -> dict[str, str]:
    headers = {}
    for h in lines:
        name, _, value = h.partition(":")
        headers[name.strip()] = value.strip()
    return headers


def main() -> int:
    parser = argparse.ArgumentParser(description="open-loop fixed-rate HTTP GET load; prints JSON")
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second (default %(default)s)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=50, help="sequential requests before measuring (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, seconds")
    parser.add_argument("-H", "--header", action="append", default=[], help="'Name: value' (repeatable)")
    parser.add_argument("--method", default="GET", help="request method (default %(default)s)")
    parser.add_argument("--body-file", help="send this file's bytes as the request body")
    parser.add_argument("--baseline-url", help="also GET this URL at the same rate in the same window, interleaved "
                        "(its numbers under \"baseline\" in the output)")
    parser.add_argument("--baseline-header", action="append", default=None,
                        help="'Name: value' for the baseline's requests (repeatable; default: the -H headers)")
    args = parser.parse_args()
    headers, baseline_headers = _headers(args.header), None if args.baseline_header is None else _headers(args.baseline_header)
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        pass
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    payload = None
    if args.body_file:
        with open(args.body_file, "rb") as f:
            payload = f.read()
    result = asyncio.run(load(args.url, headers, args.rate, args.duration, args.warmup, args.timeout, args.method, payload,
                              args.baseline_url, baseline_headers))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

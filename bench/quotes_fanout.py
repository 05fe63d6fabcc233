"""Quotes fan-out through the real server: WebSocket subscribers of `quotes` at a fixed rate.

    .venv/bin/python -m bench.quotes_fanout [--levels 100,250,500,1000] [--profile]

Starts `kianax api` (no feed) on a fresh `kianax_bench` database and Redis db 1. For each
level, client processes open that many graphql-transport-ws connections (each one symbol,
anonymous), then a publisher process plays the feed: it publishes to `quotes:{SYMBOL}`
exactly what the feed publishes, `rate` quotes per second per symbol, spread evenly. Each
quote carries its publish wall-clock time in `timestamp` and a per-symbol sequence number
in `last` (100 + seq/10^6), so clients measure publish-to-receive latency and count the
quotes that were coalesced away. Results: bench/results/quotes_fanout-<time>.json and a
Markdown summary on stdout. Everything stops by itself (hard limit 20 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import subprocess
import sys
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from redis import Redis as SyncRedis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from bench import harness
from domain.market.codec import quote_to_dict
from domain.market.models import Quote
from domain.market.service import quote_channel
from domain.market.universe import UNIVERSE
from kianax.broadcast import Broadcast

QUERY = "subscription($s:[String!]!){ quotes(symbols:$s){ symbol last timestamp } }"
PRICE_BASE = Decimal(100)
SEQ_SCALE = 6  # last = 100 + seq / 10**6
HARD_LIMIT_SECONDS = 20 * 60


@dataclass(frozen=True, slots=True)
class Window:
    """Wall-clock instants (epoch seconds) shared by the publisher and the clients."""

    start: float  # the publisher starts
    measure_from: float  # quotes published from here on are measured...
    measure_to: float  # ...up to here
    stop: float  # everybody stops

    def encode(self) -> str:
        return f"{self.start} {self.measure_from} {self.measure_to} {self.stop}"

    @classmethod
    def decode(cls, line: str) -> Window:
        start, measure_from, measure_to, stop = (float(v) for v in line.split())
        return cls(start, measure_from, measure_to, stop)


# --------------------------------------------------------------------------- publisher


async def publish(symbols: Sequence[str], rate: float, window: Window) -> dict[str, Any]:
    """Publish `rate` quotes/s per symbol, one symbol at a time, evenly spaced."""
    hub = Broadcast(harness.REDIS_URL)
    await hub.connect()
    interval = 1 / (rate * len(symbols))
    measured: Counter[str] = Counter()
    lateness: list[float] = []
    n = 0
    try:
        while (due := window.start + n * interval) < window.stop:
            if (wait := due - time.time()) > 0:
                await asyncio.sleep(wait)
            symbol, seq = symbols[n % len(symbols)], n // len(symbols)
            now = datetime.now(UTC)
            last = PRICE_BASE + Decimal(seq).scaleb(-SEQ_SCALE)
            quote = Quote(
                symbol=symbol,
                bid=last - Decimal("0.01"),
                ask=last + Decimal("0.01"),
                last=last,
                volume=Decimal(1000 + seq),
                timestamp=now,
                prev_close=PRICE_BASE,
            )
            await hub.publish(quote_channel(symbol), quote_to_dict(quote))
            published_at = now.timestamp()
            if window.measure_from <= published_at < window.measure_to:
                measured[symbol] += 1
                lateness.append(published_at - due)
            n += 1
    finally:
        await hub.disconnect()
    return {"published": n, "measured": dict(measured), "lateness": harness.summarize(lateness)}


# --------------------------------------------------------------------------- clients


@dataclass(slots=True)
class Tally:
    """What one subscriber saw."""

    symbol: str
    initial: int = 0  # cached quotes sent on subscribe (published before the run)
    measured: int = 0  # quotes published inside the measurement window
    last_seq: int = -1
    gaps: int = 0  # sequence numbers skipped inside the window (coalesced away)
    out_of_order: int = 0
    errors: int = 0
    closed: bool = False


async def subscribe(url: str, tally: Tally, compression: bool) -> ClientConnection:
    ws = await connect(
        url,
        subprotocols=[Subprotocol("graphql-transport-ws")],
        compression="deflate" if compression else None,
        proxy=None,
        open_timeout=60,
        ping_interval=None,  # the server pings (graphql-transport-ws); we answer with pong
    )
    await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
    ack = json.loads(await asyncio.wait_for(ws.recv(), 30))
    if ack.get("type") != "connection_ack":
        raise RuntimeError(f"expected connection_ack, got {ack}")
    variables = {"s": [tally.symbol]}
    message = {"query": QUERY, "variables": variables}
    await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": message}))
    # The server sends the cached last quote once it has subscribed to Redis: ready.
    first = json.loads(await asyncio.wait_for(ws.recv(), 60))
    if first.get("type") != "next" or first["payload"].get("errors"):
        raise RuntimeError(f"subscription failed: {first}")
    tally.initial += 1
    return ws


async def receive(
    ws: ClientConnection, tally: Tally, window: Window, samples: array[float]
) -> None:
    try:
        async for raw in ws:
            received = time.time()
            message = json.loads(raw)
            kind = message["type"]
            if kind == "ping":
                await ws.send('{"type":"pong"}')
                continue
            if kind != "next" or message["payload"].get("errors"):
                tally.errors += 1
                continue
            quote = message["payload"]["data"]["quotes"]
            published = datetime.fromisoformat(quote["timestamp"]).timestamp()
            if published < window.start:
                tally.initial += 1
                continue
            seq = int((Decimal(quote["last"]) - PRICE_BASE).scaleb(SEQ_SCALE))
            if seq <= tally.last_seq:
                tally.out_of_order += 1
            elif window.measure_from <= published < window.measure_to:
                tally.measured += 1
                samples.extend((published, received - published))
                if tally.last_seq >= 0:
                    tally.gaps += seq - tally.last_seq - 1
            tally.last_seq = max(seq, tally.last_seq)
    except ConnectionClosed:
        tally.closed = True


async def clients(
    url: str, symbols: Sequence[str], first: int, count: int, compression: bool
) -> tuple[list[Tally], array[float]]:
    tallies = [Tally(symbols[(first + i) % len(symbols)]) for i in range(count)]
    gate = asyncio.Semaphore(50)  # connections being opened at once

    async def open_one(tally: Tally) -> ClientConnection:
        async with gate:
            return await subscribe(url, tally, compression)

    sockets = await asyncio.gather(*(open_one(t) for t in tallies))
    print("READY", flush=True)
    window = Window.decode(await asyncio.to_thread(sys.stdin.readline))
    samples: array[float] = array("d")  # (publish time, latency) pairs
    readers = [
        asyncio.create_task(receive(ws, t, window, samples))
        for ws, t in zip(sockets, tallies, strict=True)
    ]
    await asyncio.sleep(max(0.0, window.stop - time.time()))
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    await asyncio.wait_for(asyncio.gather(*(ws.close() for ws in sockets)), 30)
    return tallies, samples


# --------------------------------------------------------------------------- orchestration


@dataclass(frozen=True, slots=True)
class Options:
    levels: list[int]
    symbols: list[str]
    rate: float
    warmup: float
    duration: float
    drain: float
    per_process: int
    compression: bool
    profile: bool
    quiet_wait: float


def run_level(
    children: harness.Children, port: int, api_pid: int, subscribers: int, opts: Options, tag: str
) -> dict[str, Any]:
    url = f"ws://127.0.0.1:{port}/graphql"
    redis = SyncRedis.from_url(harness.REDIS_URL)
    env = harness.kianax_env(port)
    level_dir = harness.OUT / tag
    level_dir.mkdir(parents=True, exist_ok=True)
    background = harness.wait_quiet([api_pid], opts.quiet_wait)
    rss_idle = harness.rss_mib(api_pid)
    processes = math.ceil(subscribers / opts.per_process)
    shares = [subscribers // processes + (i < subscribers % processes) for i in range(processes)]
    workers = []
    first = 0
    for i, count in enumerate(shares):
        argv = [sys.executable, "-m", "bench.quotes_fanout", "client", "--url", url]
        argv += ["--symbols", ",".join(opts.symbols), "--first", str(first), "--count", str(count)]
        argv += ["--out", str(level_dir / f"client{i}.json")]
        argv += ["--compression"] if opts.compression else []
        workers.append(children.start(f"{tag}-client{i}", argv, env, pipes=True))
        first += count
    connect_started = time.monotonic()
    for worker in workers:
        if (line := harness.read_line(worker, 300)) != "READY":
            raise RuntimeError(f"client said {line!r}; see bench/.out/{tag}-client*.log")
    connect_seconds = time.monotonic() - connect_started
    rss_subscribed = harness.rss_mib(api_pid)

    start = time.time() + 1.0
    window = Window(
        start=start,
        measure_from=start + opts.warmup,
        measure_to=start + opts.warmup + opts.duration,
        stop=start + opts.warmup + opts.duration + opts.drain,
    )
    argv = [sys.executable, "-m", "bench.quotes_fanout", "publisher", "--window", window.encode()]
    argv += ["--symbols", ",".join(opts.symbols), "--rate", str(opts.rate)]
    argv += ["--out", str(level_dir / "publisher.json")]
    publisher = children.start(f"{tag}-publisher", argv, env)
    for worker in workers:
        harness.write_line(worker, window.encode())

    groups = {
        "api": [api_pid],
        "clients": [w.pid for w in workers],
        "publisher": [publisher.pid],
    }
    time.sleep(max(0.0, window.measure_from - time.time()))
    before = harness.CpuMark.take(groups)
    spies = profile_api(api_pid, tag) if opts.profile else []
    rss_timeline: list[tuple[float, float]] = []
    backlog_timeline: list[tuple[float, float]] = []
    while (now := time.time()) < window.measure_to:
        at = round(now - window.measure_from, 1)
        rss_timeline.append((at, harness.rss_mib(api_pid)))
        backlog_timeline.append((at, redis_backlog_mib(redis)))
        time.sleep(min(2.0, max(0.0, window.measure_to - now)))
    after = harness.CpuMark.take(groups)
    rss_loaded = harness.rss_mib(api_pid)
    for spy in spies:
        harness.stop_spy(spy)

    for proc in [publisher, *workers]:
        proc.wait(timeout=max(0.0, window.stop - time.time()) + 60)
        if proc.returncode != 0:
            raise RuntimeError(f"{proc.args!r} failed; see bench/.out/{tag}-*.log")
    time.sleep(2.0)  # let the server drop the closed connections
    rss_after = harness.rss_mib(api_pid)

    sent = json.loads((level_dir / "publisher.json").read_text())
    tallies: list[dict[str, Any]] = []
    samples: array[float] = array("d")
    for i in range(processes):
        path = level_dir / f"client{i}.json"
        tallies += json.loads(path.read_text())
        with path.with_suffix(".lat").open("rb") as f:
            samples.frombytes(f.read())
    published, latencies = samples[0::2], samples[1::2]
    expected = sum(sent["measured"].get(t["symbol"], 0) for t in tallies)
    delivered = sum(t["measured"] for t in tallies)
    gaps = sum(t["gaps"] for t in tallies)
    api_cpu = after.seconds_since(before)["api"]
    cores = after.cores_since(before)
    cores["others"] = cores["machine"] - sum(cores[name] for name in groups)
    return {
        "subscribers": subscribers,
        "client_processes": processes,
        "connect_seconds": round(connect_seconds, 1),
        "published_per_second": sum(sent["measured"].values()) / opts.duration,
        "publisher_lateness_ms": sent["lateness"],
        "expected": expected,
        "delivered": delivered,
        "delivered_per_second": delivered / opts.duration,
        "missed_percent": 100 * (expected - delivered) / expected if expected else 0.0,
        "coalesced": gaps,
        "undelivered_at_stop": expected - delivered - gaps,
        "out_of_order": sum(t["out_of_order"] for t in tallies),
        "errors": sum(t["errors"] for t in tallies),
        "closed_early": sum(t["closed"] for t in tallies),
        "latency_ms": harness.summarize(latencies),
        "latency_timeline_ms": timeline(published, latencies, window.measure_from),
        "api_cpu_seconds": api_cpu,
        "api_cpu_us_per_delivered": 1e6 * api_cpu / delivered if delivered else None,
        "cores": cores,
        "api_rss_mib": {
            "idle": rss_idle,
            "subscribed": rss_subscribed,
            "end_of_window": rss_loaded,
            "after_disconnect": rss_after,
        },
        "api_rss_timeline_mib": rss_timeline,
        "redis_backlog_timeline_mib": backlog_timeline,
        "background_cores_before": round(background, 2),
        "profile": harness.hot_spots(harness.PROFILES / f"fanout-{tag}.txt") if spies else {},
    }


def redis_backlog_mib(redis: SyncRedis) -> float:
    """What Redis holds, unsent, for the API's pub/sub connection (its output buffer)."""
    clients = redis.client_list(_type="pubsub")
    assert isinstance(clients, list)
    return sum(
        int(c["omem"]) / 2**20
        for c in clients
        if c.get("name") == "kianax-broadcast:pubsub" and c.get("db") == "1"
    )


def timeline(
    published: Sequence[float], latencies: Sequence[float], origin: float, step: float = 5.0
) -> list[dict[str, float]]:
    """Latency percentiles by publish time, `step` seconds at a time: is it growing?"""
    buckets: dict[int, list[float]] = {}
    for at, latency in zip(published, latencies, strict=True):
        buckets.setdefault(int((at - origin) // step), []).append(latency)
    return [{"from_s": k * step, **harness.summarize(v)} for k, v in sorted(buckets.items())]


def profile_api(api_pid: int, tag: str) -> list[subprocess.Popen[bytes]]:
    """Sample the API with py-spy while measuring: a flame graph and raw stacks."""
    return [
        harness.py_spy(api_pid, harness.PROFILES / f"fanout-{tag}.{ext}", fmt)
        for fmt, ext in (("flamegraph", "svg"), ("raw", "txt"))
    ]


def orchestrate(opts: Options) -> dict[str, Any]:
    harness.OUT.mkdir(exist_ok=True)
    result: dict[str, Any] = {
        "benchmark": "quotes_fanout",
        "machine": harness.machine(),
        "settings": {
            "symbols": len(opts.symbols),
            "quotes_per_second_per_symbol": opts.rate,
            "warmup_seconds": opts.warmup,
            "measure_seconds": opts.duration,
            "websocket_compression": opts.compression,
        },
        "levels": [],
    }
    harness.reset_state()
    port = harness.free_port()
    anchor = datetime.now(UTC).isoformat()
    env = harness.kianax_env(port, KIANAX_SIMULATED_TIME_ANCHOR=anchor)
    harness.migrate(env)
    with harness.Children(harness.OUT) as children:
        api = children.start("fanout-api", harness.kianax("api"), env)
        harness.wait_ready(port, [api], 60)
        for subscribers in opts.levels:
            tag = f"{subscribers}subs"
            level = run_level(children, port, api.pid, subscribers, opts, tag)
            result["levels"].append(level)
            print(f"{tag}: {json.dumps(level)}", file=sys.stderr, flush=True)
    return result


def report(result: dict[str, Any]) -> str:
    rows = []
    for lv in result["levels"]:
        lat, rss, cores = lv["latency_ms"], lv["api_rss_mib"], lv["cores"]
        rows.append(
            [
                lv["subscribers"],
                lv["published_per_second"],
                lv["expected"] / result["settings"]["measure_seconds"],
                lv["delivered_per_second"],
                f"{lv['coalesced']:,} / {lv['undelivered_at_stop']:,}",
                lat.get("p50", "-"),
                lat.get("p95", "-"),
                lat.get("p99", "-"),
                lat.get("max", "-"),
                lv["api_cpu_us_per_delivered"],
                cores["api"],
                cores["clients"],
                cores["others"],
                f"{rss['idle']:.0f} / {rss['end_of_window']:.0f} / {rss['after_disconnect']:.0f}",
            ]
        )
    headers = [
        "subscribers",
        "published/s",
        "due/s",
        "delivered/s",
        "coalesced / late",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "API CPU µs/msg",
        "API cores",
        "client cores",
        "other cores",
        "API RSS MiB idle/loaded/after",
    ]
    return harness.table(headers, rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quotes_fanout", description=__doc__)
    parser.add_argument(
        "--levels", default="100,250,500,1000", help="subscriber counts, comma-separated"
    )
    parser.add_argument("--symbols", type=int, default=50, help="how many symbols of UNIVERSE")
    parser.add_argument("--rate", type=float, default=10.0, help="quotes/s per symbol")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=40.0, help="measured seconds")
    parser.add_argument("--drain", type=float, default=10.0, help="seconds to wait for stragglers")
    parser.add_argument("--per-process", type=int, default=500, help="subscribers per client")
    parser.add_argument("--compression", action="store_true", help="permessage-deflate")
    parser.add_argument("--profile", action="store_true", help="py-spy the API while measuring")
    parser.add_argument(
        "--quiet-wait", type=float, default=300, help="max seconds to wait for an idle machine"
    )
    sub = parser.add_subparsers(dest="role", help="internal: the benchmark's own processes")
    client = sub.add_parser("client", help="(internal) one client process")
    client.add_argument("--url", required=True)
    client.add_argument("--symbols", required=True)
    client.add_argument("--first", type=int, required=True)
    client.add_argument("--count", type=int, required=True)
    client.add_argument("--compression", action="store_true")
    client.add_argument("--out", type=Path, required=True)
    publisher = sub.add_parser("publisher", help="(internal) the quote publisher")
    publisher.add_argument("--window", required=True)
    publisher.add_argument("--symbols", required=True)
    publisher.add_argument("--rate", type=float, required=True)
    publisher.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    if args.role == "client":
        symbols = args.symbols.split(",")
        tallies, samples = asyncio.run(
            clients(args.url, symbols, args.first, args.count, args.compression)
        )
        with args.out.with_suffix(".lat").open("wb") as f:
            samples.tofile(f)
        args.out.write_text(json.dumps([asdict(t) for t in tallies]))
        return 0
    if args.role == "publisher":
        window = Window.decode(args.window)
        sent = asyncio.run(publish(args.symbols.split(","), args.rate, window))
        args.out.write_text(json.dumps(sent))
        return 0
    if args.duration < 10:
        parser.error("--duration must be at least 10 seconds")
    opts = Options(
        levels=[int(v) for v in args.levels.split(",")],
        symbols=[spec.symbol for spec in UNIVERSE[: args.symbols]],
        rate=args.rate,
        warmup=args.warmup,
        duration=args.duration,
        drain=args.drain,
        per_process=args.per_process,
        compression=args.compression,
        profile=args.profile,
        quiet_wait=args.quiet_wait,
    )
    with harness.hard_limit(HARD_LIMIT_SECONDS):
        result = orchestrate(opts)
    name = "quotes_fanout-profile" if opts.profile else "quotes_fanout"
    print(f"results: {harness.save(name, result).relative_to(harness.REPO)}")
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

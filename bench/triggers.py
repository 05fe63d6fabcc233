"""Trigger evaluation: 100,000 price and volume triggers over 1,000 symbols, fed quotes.

    .venv/bin/python -m bench.triggers [--rates 1,2,4] [--parts throughput,latency]
                                       [--profile] [--quick]

One synthetic market serves both parts: the 76 symbols of `UNIVERSE` plus synthesized
ones up to 1,000, each with a price, a volatility and an average volume. Users' triggers
concentrate on popular symbols (Zipf by rank); each user has 5 agents of 10 triggers (the
quota is 50 triggers a user), each agent watching 1-3 symbols. The mix: price crossing a
level near the price (above / below), a move of 0.5-5 % within 5/15/30/60 minutes, a
move since the previous close, a volume multiple of 1.5-5x, with cooldowns from none to a
day. The quote stream is a seeded random walk per symbol (its annual volatility, rare
jumps that also lift the symbol's trading), with session volumes that grow with time,
stamped in simulated time from 10:00 New York on a Wednesday, so windows and the
session's elapsed fraction are real.

1. **throughput** -- one child process per case, pinned to one CPU: build a `TriggerIndex`
   with `replace_all` (all in one go), then replay rounds of quotes (every symbol
   ticks once per round, `--tick-seconds` of simulated time apart) through `evaluate`,
   timing each call. The first 2 simulated minutes are a warm-up, not timed: they fire
   the conditions that already hold when the index starts. Cases, all at 1,000 symbols:
   100k triggers with the mix above ("realistic"), and 10k / 100k / 1M triggers of the
   same kinds with thresholds the stream never reaches ("quiet": the index's own cost).
2. **latency** -- the real `TriggerWatcher` in its own process (as the worker builds it,
   `kianax.wiring.services`, real `enqueue_run`: an arq job into Redis), its triggers read
   from PostgreSQL rows (database `kianax_bench_triggers`, bulk-inserted as the owner) by
   its own `load()`, on a private `redis-server` started for the run. A publisher process
   plays the feed: `Broadcast.publish(quote_channel(symbol), quote_to_dict(quote))` for
   the symbols in the quote demand, evenly spaced, at each `--rates` quotes/s per symbol
   for `--phase-seconds` (or as fast as it can), after a startup phase in which the
   watcher's first quotes fire every condition that already holds. The watcher keeps the
   worker's defaults (a full reload every 30 s). A quote's timestamp is simulated
   time running `--speed` times faster than the wall clock from a shared anchor, so the
   watcher turns the fired quote's timestamp back into its publish time: fire latency =
   enqueue done - publish. Only the daily indicators come from a stand-in (the average
   volume of each synthetic symbol), so no market data provider is involved.

Results: bench/results/triggers-<time>.json and Markdown tables on stdout. Everything
stops by itself (about 6 minutes on a busy 2-core machine; hard limit 12 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import itertools
import json
import math
import os
import random
import string
import subprocess
import sys
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bench import harness
from domain.agents.execution import RunRequest
from domain.agents.watcher import TriggerWatcher
from domain.market.codec import quote_to_dict
from domain.market.feed import DEMAND_KEY
from domain.market.indicators import Indicators
from domain.market.models import Quote, Timeframe
from domain.market.service import MarketService, quote_channel
from domain.market.universe import UNIVERSE
from domain.triggers.index import IndexedConfig, IndexedTrigger, TriggerIndex, session_fraction
from domain.triggers.spec import PriceConfig, VolumeConfig
from kianax.broadcast import Broadcast
from kianax.settings import load_settings
from kianax.wiring import services

HARD_LIMIT_SECONDS = 12 * 60
SYMBOLS = 1_000
TRIGGERS = 100_000
TRIGGERS_PER_USER = 50  # domain.agents.service.MAX_TRIGGERS
TRIGGERS_PER_AGENT = 10
ZIPF = 0.9
SEED = 7
DATABASE = "kianax_bench_triggers"
DATABASE_URL = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DATABASE}"

SIM_START = datetime.fromisoformat(harness.SIMULATED_START).timestamp()  # Wed 10:00 NY
SESSION_SECONDS = 6.5 * 3600
YEAR_SECONDS = 252 * SESSION_SECONDS
WARMUP_SECONDS = 2 * 60  # simulated
JUMPS_PER_SESSION = 0.5  # per symbol: news moves of 1-4 % that also lift its volume

COOLDOWNS = (0, 300, 900, 3600, 14_400, 86_400)
COOLDOWN_WEIGHTS = (2, 2, 2, 2, 1, 1)
KINDS = ("above", "below", "window", "close", "volume")
KIND_WEIGHTS = (25, 25, 25, 10, 15)
WINDOWS = (5, 15, 30, 60)
WINDOW_WEIGHTS = (3, 3, 2, 2)
WINDOW_MOVES = ("0.5", "1", "1.5", "2", "3", "5")
CLOSE_MOVES = ("1", "2", "3", "5", "10")
MULTIPLES = ("1.5", "2", "2.5", "3", "5")


# --------------------------------------------------------------------------- the market


@dataclass(frozen=True, slots=True)
class Listing:
    symbol: str
    close: float  # the previous session's close
    volatility: float  # annual
    average_volume: int  # shares a session


def listings(seed: int = SEED, count: int = SYMBOLS) -> list[Listing]:
    """`UNIVERSE` first (the popular names), then synthesized symbols up to `count`."""
    rng = random.Random(seed)
    found = [
        Listing(s.symbol, float(s.base_price), s.annual_volatility, s.average_daily_volume)
        for s in UNIVERSE[:count]
    ]
    taken = {x.symbol for x in found}
    names = ("Q" + "".join(p) for p in itertools.product(string.ascii_uppercase, repeat=3))
    for name in names:
        if len(found) == count:
            break
        if name in taken:
            continue
        close = min(max(rng.lognormvariate(math.log(40), 1.0), 2.0), 1500.0)
        volume = min(max(rng.lognormvariate(math.log(1.5e6), 1.2), 5e4), 1e8)
        found.append(Listing(name, round(close, 2), rng.uniform(0.2, 0.9), int(volume)))
    return found


def _cents(value: float) -> Decimal:
    return Decimal(f"{value:.2f}")


def _realistic(rng: random.Random, listing: Listing) -> IndexedConfig:
    """What users set: levels a few percent from yesterday's close, everyday moves."""
    symbol, close = listing.symbol, listing.close
    kind = rng.choices(KINDS, KIND_WEIGHTS)[0]
    sign = rng.choice((-1, 1))
    if kind == "above":
        return PriceConfig(symbol, above=_cents(close * (1.001 + abs(rng.gauss(0, 0.02)))))
    if kind == "below":
        level = max(close * (0.999 - abs(rng.gauss(0, 0.02))), 0.01)
        return PriceConfig(symbol, below=_cents(level))
    if kind == "window":
        window = rng.choices(WINDOWS, WINDOW_WEIGHTS)[0]
        move = sign * Decimal(rng.choice(WINDOW_MOVES))
        return PriceConfig(symbol, change_percent=move, window_minutes=window)
    if kind == "close":
        return PriceConfig(symbol, change_percent=sign * Decimal(rng.choice(CLOSE_MOVES)))
    return VolumeConfig(symbol, Decimal(rng.choice(MULTIPLES)))


def _quiet(rng: random.Random, listing: Listing) -> IndexedConfig:
    """The same kinds and ladders, with thresholds the stream never reaches."""
    symbol, close = listing.symbol, listing.close
    kind = rng.choices(KINDS, KIND_WEIGHTS)[0]
    move = rng.choice((-1, 1)) * Decimal(rng.randint(30, 90))
    if kind == "above":
        return PriceConfig(symbol, above=_cents(close * rng.uniform(1.5, 3.0)))
    if kind == "below":
        return PriceConfig(symbol, below=_cents(close * rng.uniform(0.2, 0.5)))
    if kind == "window":
        window = rng.choices(WINDOWS, WINDOW_WEIGHTS)[0]
        return PriceConfig(symbol, change_percent=move, window_minutes=window)
    if kind == "close":
        return PriceConfig(symbol, change_percent=move)
    return VolumeConfig(symbol, Decimal(rng.randint(50, 100)))


def plan_triggers(
    market: Sequence[Listing], count: int, *, quiet: bool = False, seed: int = SEED
) -> list[IndexedTrigger]:
    """`count` triggers: users of 5 agents x 10 triggers, each agent on 1-3 symbols."""
    rng = random.Random(seed * 1_000_003 + count)
    weights = list(itertools.accumulate(1 / (rank + 1) ** ZIPF for rank in range(len(market))))
    make = _quiet if quiet else _realistic
    planned: list[IndexedTrigger] = []
    user = agent = uuid.UUID(int=0)
    watched: list[Listing] = []
    for i in range(count):
        if i % TRIGGERS_PER_USER == 0:
            user = uuid.UUID(int=rng.getrandbits(128))
        if i % TRIGGERS_PER_AGENT == 0:
            agent = uuid.UUID(int=rng.getrandbits(128))
            watched = rng.choices(market, cum_weights=weights, k=rng.randint(1, 3))
        config = make(rng, rng.choice(watched))
        cooldown = rng.choices(COOLDOWNS, COOLDOWN_WEIGHTS)[0]
        planned.append(
            IndexedTrigger(uuid.UUID(int=rng.getrandbits(128)), user, agent, config, cooldown)
        )
    return planned


def measures_per_symbol(planned: Sequence[IndexedTrigger], symbols: int) -> float:
    """The distinct measures a tick computes, on average over the symbols: the last price
    (levels), each window length, the move since the close, the volume multiple."""
    measures: dict[str, set[tuple[str, int | None]]] = {}
    for trigger in planned:
        config = trigger.config
        window = config.window_minutes if isinstance(config, PriceConfig) else None
        measures.setdefault(config.symbol, set()).add((kind_of(config), window))
    return sum(len(m) for m in measures.values()) / symbols


def kind_of(config: IndexedConfig) -> str:
    if isinstance(config, VolumeConfig):
        return "volume"
    if isinstance(config, PriceConfig) and config.change_percent is not None:
        return "close" if config.window_minutes is None else "window"
    return "level"


class Tape:
    """Each symbol's price (a random walk with its volatility, plus rare jumps) and session
    volume (its average pro-rated by time, times an activity that jumps lift)."""

    def __init__(self, market: Sequence[Listing], start: float, seed: int = SEED) -> None:
        self.rng = np.random.default_rng(seed)
        n = len(market)
        self.symbols = [x.symbol for x in market]
        close = np.array([x.close for x in market])
        self.prev_close = [_cents(c) for c in close]
        self.price: NDArray[np.float64] = close * np.exp(self.rng.normal(0, 0.01, n))
        self.sigma = np.array([x.volatility for x in market]) / math.sqrt(YEAR_SECONDS)
        self.average = np.array([float(x.average_volume) for x in market])
        self.activity: NDArray[np.float64] = self.rng.lognormal(0, 0.4, n)
        fraction = float(session_fraction(datetime.fromtimestamp(start, UTC)) or 0)
        self.volume: NDArray[np.float64] = self.average * self.activity * fraction
        self.at = start

    def advance(self, to: float) -> None:
        """Move every symbol on to simulated time `to`."""
        dt, n, rng = to - self.at, len(self.symbols), self.rng
        self.at = to
        moves = rng.normal(0, 1, n) * self.sigma * math.sqrt(dt)
        jumps = rng.random(n) < JUMPS_PER_SESSION * dt / SESSION_SECONDS
        if (k := int(jumps.sum())) > 0:
            moves[jumps] += rng.choice((-1.0, 1.0), k) * rng.uniform(0.01, 0.04, k)
            self.activity[jumps] *= rng.uniform(2.0, 4.0, k)
        self.price *= np.exp(moves)
        share = dt / SESSION_SECONDS * rng.lognormal(-0.125, 0.5, n)
        self.volume += self.average * self.activity * share

    def quote(self, i: int, at: float) -> Quote:
        price = float(self.price[i])
        spread = max(0.01, price * 2e-4)
        return Quote(
            symbol=self.symbols[i],
            bid=_cents(price - spread),
            ask=_cents(price + spread),
            last=_cents(price),
            volume=Decimal(int(self.volume[i])),
            timestamp=datetime.fromtimestamp(at, UTC),
            prev_close=self.prev_close[i],
        )


# --------------------------------------------------------------------------- throughput


def core_busy_seconds(cpu: int) -> float:
    """CPU seconds one core has spent busy since boot (/proc/stat `cpuN`)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            values = [int(v) for v in line.split()[1:9]]
            return (sum(values) - values[3] - values[4]) / harness.CLK_TCK
    raise KeyError(cpu)


def micros(costs: array[int]) -> dict[str, float]:
    ns = np.frombuffer(costs, dtype=np.int64)
    p50, p90, p99, p999 = np.percentile(ns, [50, 90, 99, 99.9]) / 1000
    return {
        "mean": float(ns.mean()) / 1000,
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "p99.9": float(p999),
        "max": float(ns.max()) / 1000,
    }


def throughput(count: int, quiet: bool, minutes: float, tick_seconds: float, cpu: int) -> Any:
    """One case, in this (fresh, pinned) process."""
    os.sched_setaffinity(0, {cpu})
    market = listings()
    gc.collect()
    rss_before = harness.rss_mib(os.getpid())
    started = time.perf_counter()
    planned = plan_triggers(market, count, quiet=quiet)
    plan_seconds = time.perf_counter() - started
    kinds = {t.trigger_id: kind_of(t.config) for t in planned}
    per_symbol = Counter(t.config.symbol for t in planned)
    measures = measures_per_symbol(planned, len(market))
    index = TriggerIndex()
    for listing in market:
        index.set_average_volume(listing.symbol, Decimal(listing.average_volume))
    started, cpu_started = time.perf_counter(), time.process_time()
    rejected = index.replace_all(planned)
    build_seconds = time.perf_counter() - started
    build_cpu_seconds = time.process_time() - cpu_started
    gc.collect()
    # Measured while the plan is alive (its configs and ids are the index's), less the plan's
    # own objects: freed memory would stay in the process and count otherwise.
    scaffolding = count * (sys.getsizeof(planned[0]) + 8) + sys.getsizeof(kinds)
    index_mib = harness.rss_mib(os.getpid()) - rss_before - scaffolding / 2**20
    del planned

    tape = Tape(market, SIM_START - WARMUP_SECONDS)
    order = [int(i) for i in tape.rng.permutation(len(market))]
    offsets = [k * tick_seconds / len(order) for k in range(len(order))]
    costs: array[int] = array("q")
    fired: Counter[str] = Counter()

    def next_round() -> list[Quote]:
        at = tape.at + tick_seconds
        tape.advance(at)
        return [tape.quote(i, at + offsets[k]) for k, i in enumerate(order)]

    warmup_rounds = int(WARMUP_SECONDS / tick_seconds)
    warmup_fired = sum(len(index.evaluate(q)) for _ in range(warmup_rounds) for q in next_round())
    eval_cpu = eval_wall = 0.0
    gc_before = gc.get_stats()[2]["collections"]
    cpu_before, core_before = time.process_time(), core_busy_seconds(cpu)
    wall_before = time.perf_counter()
    evaluate, clock = index.evaluate, time.perf_counter_ns
    for _ in range(int(minutes * 60 / tick_seconds)):
        quotes = next_round()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for quote in quotes:
            t0 = clock()
            firings = evaluate(quote)
            costs.append(clock() - t0)
            for firing in firings:
                fired[kinds[firing.trigger_id]] += 1
        eval_cpu += time.process_time() - cpu0
        eval_wall += time.perf_counter() - wall0
    wall = time.perf_counter() - wall_before
    own = time.process_time() - cpu_before
    others_on_core = (core_busy_seconds(cpu) - core_before - own) / wall
    ticks = len(costs)
    total = sum(fired.values())
    return {
        "triggers": count,
        "mode": "quiet" if quiet else "realistic",
        "rejected": len(rejected),
        "symbols": len(market),
        "triggers_per_symbol": {
            "max": max(per_symbol.values()),
            "median": sorted(per_symbol.values())[len(per_symbol) // 2],
            "min": min(per_symbol.values()),
            "symbols_with_triggers": len(per_symbol),
        },
        "measures_per_symbol": measures,
        "plan_seconds": plan_seconds,
        "build_seconds": build_seconds,
        "build_cpu_seconds": build_cpu_seconds,
        "index_rss_mib": index_mib,
        "bytes_per_trigger": index_mib * 2**20 / count,
        "cpu": cpu,
        "simulated_minutes": minutes,
        "tick_seconds": tick_seconds,
        "ticks": ticks,
        "eval_wall_seconds": eval_wall,
        "eval_cpu_seconds": eval_cpu,
        "ticks_per_second": ticks / eval_wall,
        "ticks_per_cpu_second": ticks / eval_cpu,
        "tick_us": micros(costs),
        "firings": total,
        "firings_by_kind": dict(fired),
        "firings_per_tick": total / ticks,
        "firings_per_eval_second": total / eval_wall,
        "firings_per_simulated_minute": total / minutes,
        "warmup_firings": warmup_fired,
        "gen2_collections": gc.get_stats()[2]["collections"] - gc_before,
        "others_on_our_core": others_on_core,
    }


# --------------------------------------------------------------------------- latency


@dataclass(frozen=True, slots=True)
class SimClock:
    """Simulated time runs `speed` times as fast as the wall clock from `anchor` (epoch s)."""

    anchor: float
    speed: float

    def simulated(self, wall: float) -> float:
        return SIM_START + self.speed * (wall - self.anchor)

    def wall(self, simulated: float) -> float:
        return self.anchor + (simulated - SIM_START) / self.speed


class AverageVolumes(MarketService):
    """The watcher's daily indicators, reduced to what price and volume triggers read: the
    average volume of each synthetic symbol (the simulated provider knows 76 symbols)."""

    def __init__(self, market: MarketService, averages: dict[str, Decimal]) -> None:
        super().__init__(market.provider, market.redis, clock=market.clock)
        self.averages = averages

    async def indicators(self, symbol: str, timeframe: Timeframe) -> Indicators:
        return Indicators(
            rsi14=None,
            macd=None,
            macd_signal=None,
            sma20=None,
            sma50=None,
            ema20=None,
            average_volume20=self.averages.get(symbol),
        )


class MeasuredWatcher(TriggerWatcher):
    """The real watcher, noting when each quote arrives and how long each `load()` takes."""

    def __init__(self, sim: SimClock, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sim = sim
        self.lags: array[float] = array("d")
        self.loads: list[tuple[float, float, float]] = []  # (wall start, seconds, CPU s)
        self.loaded = asyncio.Event()

    async def load(self) -> None:
        started, cpu = time.time(), time.process_time()
        await super().load()
        self.loads.append((started, time.time() - started, time.process_time() - cpu))
        self.loaded.set()

    async def on_quote(self, quote: Quote) -> None:
        self.lags.append(time.time() - self.sim.wall(quote.timestamp.timestamp()))
        await super().on_quote(quote)


def during(at: float, loads: Sequence[tuple[float, float, float]]) -> bool:
    return any(start <= at <= start + seconds for start, seconds, _ in loads)


async def watch(clock: SimClock) -> None:
    """The watcher role: the worker's TriggerWatcher on the benchmark's database and Redis.
    Answers `report` on stdin with what happened since the last report; ends on EOF."""
    averages = {x.symbol: Decimal(x.average_volume) for x in listings()}
    async with services(load_settings()) as svc:
        fires: list[tuple[float, float]] = []  # (publish wall time, enqueue done - publish)
        failures = 0

        async def enqueue(run: RunRequest) -> None:
            nonlocal failures
            try:
                await svc.agents.enqueue_run(run)
            except Exception:
                failures += 1
                raise
            published = clock.wall(datetime.fromisoformat(run.detail["firedAt"]).timestamp())
            fires.append((published, time.time() - published))

        watcher = MeasuredWatcher(
            clock,
            svc.db,
            AverageVolumes(svc.market, averages),
            svc.broadcast,
            svc.quote_demand,
            enqueue,
            clock=svc.trading.clock,
        )
        running = asyncio.create_task(watcher.run())
        loaded = asyncio.create_task(watcher.loaded.wait())
        await asyncio.wait([loaded, running], return_when=asyncio.FIRST_COMPLETED)
        if running.done():
            running.result()  # the watcher failed to start: say why
        _, seconds, cpu = watcher.loads[0]
        print(
            json.dumps(
                {"triggers": len(watcher.index), "load_seconds": seconds, "load_cpu_seconds": cpu}
            )
        )
        sys.stdout.flush()
        seen = {"fired": 0, "failures": 0, "loads": len(watcher.loads), "lags": 0}
        hub_seen = svc.broadcast.stats
        while (await asyncio.to_thread(sys.stdin.readline)).strip() == "report":
            hub = svc.broadcast.stats
            loads = watcher.loads[seen["loads"] :]
            inside = [lag for at, lag in fires if during(at, loads)]
            report = {
                "firings_enqueued": len(fires),
                "fire_ms": harness.summarize([lag for _, lag in fires]),
                "fire_ms_during_reloads": harness.summarize(inside),
                "fire_ms_outside_reloads": harness.summarize(
                    [lag for at, lag in fires if not during(at, loads)]
                ),
                "fired": watcher.fired - seen["fired"],
                "enqueue_failures": failures - seen["failures"],
                "quotes": len(watcher.lags) - seen["lags"],
                "quote_lag_ms": harness.summarize(watcher.lags[seen["lags"] :]),
                "received": hub.messages_received - hub_seen.messages_received,
                "coalesced": hub.coalesced - hub_seen.coalesced,
                "reload_seconds": [round(seconds, 2) for _, seconds, _ in loads],
                "reload_cpu_seconds": [round(cpu, 2) for _, _, cpu in loads],
                "triggers": len(watcher.index),
                "queued_jobs": await svc.jobs.zcard(svc.settings.job_queue),
                "watcher_crashed": repr(running.exception()) if running.done() else None,
            }
            print(json.dumps(report))
            sys.stdout.flush()
            fires.clear()
            seen = {
                "fired": watcher.fired,
                "failures": failures,
                "loads": len(watcher.loads),
                "lags": len(watcher.lags),
            }
            hub_seen = hub
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def publish(redis_url: str, clock: SimClock) -> None:
    """The publisher role: the feed's publish, on `phase <rate> <seconds>` lines of stdin,
    for the symbols somebody demands (as `Feed.wanted` reads them)."""
    market = listings()
    # As kianax.wiring builds the feed's hub.
    hub = Broadcast(redis_url, interrupt_strict_on_reconnect=True, max_publish_connections=4)
    await hub.connect()
    redis = Redis.from_url(redis_url)
    tape = Tape(market, clock.simulated(time.time()))
    shuffled = [int(i) for i in tape.rng.permutation(len(market))]
    print("ready", flush=True)
    try:
        while line := (await asyncio.to_thread(sys.stdin.readline)).split():
            rate, seconds = float(line[1]), float(line[2])
            wanted = {
                m.decode() for m in await redis.zrangebyscore(DEMAND_KEY, time.time(), "+inf")
            }
            order = [i for i in shuffled if market[i].symbol in wanted]
            interval = 1 / (rate * len(order))
            lateness: list[float] = []
            start = time.time()
            n = 0
            # A publisher that falls behind publishes back to back until the time is up:
            # the phase then runs at the rate it can reach, which the summary reports.
            while (now := time.time()) < start + seconds:
                due = start + n * interval
                # Sub-millisecond sleeps cost the publisher more than they smooth the rate.
                if due - now > 0.001:
                    await asyncio.sleep(due - now)
                    now = time.time()
                k = n % len(order)
                if k == 0:
                    tape.advance(clock.simulated(now))
                quote = tape.quote(order[k], clock.simulated(now))
                await hub.publish(quote_channel(quote.symbol), quote_to_dict(quote))
                lateness.append(max(now - due, 0.0))
                n += 1
            elapsed = time.time() - start
            summary = {
                "symbols": len(order),
                "due_per_second": rate * len(order),
                "published": n,
                "seconds": elapsed,
                "per_second": n / elapsed,
                "late_ms": harness.summarize(lateness),
            }
            print(json.dumps(summary), flush=True)
    finally:
        await redis.aclose()
        await hub.disconnect()


# --------------------------------------------------------------------------- the database


async def recreate_database() -> None:
    engine = create_async_engine(harness.PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
            await connection.execute(text(f"CREATE DATABASE {DATABASE}"))
    finally:
        await engine.dispose()


async def seed(planned: Sequence[IndexedTrigger]) -> dict[str, int]:
    """Users, agents and triggers as rows, with COPY as the owner (no quotas, no RLS)."""
    users: list[tuple[Any, ...]] = []
    agents: dict[uuid.UUID, tuple[uuid.UUID, set[str]]] = {}
    rows: list[tuple[Any, ...]] = []
    for trigger in planned:
        if not users or users[-1][0] != trigger.user_id:
            users.append((trigger.user_id, f"trig{len(users)}@kianax.test", "not-a-hash"))
        agents.setdefault(trigger.agent_id, (trigger.user_id, set()))[1].add(trigger.config.symbol)
        kind = trigger.config.type.value
        config = json.dumps(trigger.config.to_json())
        rows.append(
            (
                trigger.trigger_id,
                trigger.user_id,
                trigger.agent_id,
                kind,
                config,
                True,
                trigger.cooldown_seconds,
            )
        )
    per_user = Counter(user for user, _ in agents.values())
    slot: Counter[uuid.UUID] = Counter()
    agent_rows = []
    for agent_id, (user_id, symbols) in agents.items():
        slot[user_id] += 1
        agent_rows.append(
            (
                agent_id,
                user_id,
                "PROMPT",
                "ACTIVE",
                f"Watcher {slot[user_id]}",
                f"Trade {', '.join(sorted(symbols))} on my triggers.",
                sorted(symbols),
                "RULES",
                "rules",
                Decimal("0.2"),
                Decimal(100) / per_user[user_id],
            )
        )
    engine = create_async_engine(DATABASE_URL)
    try:
        async with engine.connect() as proxy:
            # COPY needs asyncpg's own connection.
            connection = (await proxy.get_raw_connection()).driver_connection
            assert connection is not None
            await _copy(connection, users, agent_rows, rows)
    finally:
        await engine.dispose()
    return {"users": len(users), "agents": len(agent_rows), "triggers": len(rows)}


async def _copy(
    connection: Any,
    users: list[tuple[Any, ...]],
    agent_rows: list[tuple[Any, ...]],
    rows: list[tuple[Any, ...]],
) -> None:
    async with connection.transaction():
        await connection.copy_records_to_table(
            "users", records=users, columns=["id", "email", "password_hash"]
        )
        await connection.copy_records_to_table(
            "agents",
            records=agent_rows,
            columns=[
                "id",
                "user_id",
                "kind",
                "status",
                "name",
                "prompt",
                "symbols",
                "llm_provider",
                "llm_model",
                "llm_temperature",
                "allocation_percent",
            ],
        )
        await connection.copy_records_to_table(
            "triggers",
            records=rows,
            columns=[
                "id",
                "user_id",
                "agent_id",
                "type",
                "config",
                "enabled",
                "cooldown_seconds",
            ],
        )
    await connection.execute("ANALYZE")


async def backend_pids() -> list[int]:
    engine = create_async_engine(harness.PG_ADMIN_URL)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text("SELECT pid FROM pg_stat_activity WHERE datname = :db"), {"db": DATABASE}
            )
            return [int(pid) for (pid,) in rows]
    finally:
        await engine.dispose()


def wait_for_redis(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if SyncRedis.from_url(url).ping():
                return
        except Exception:  # not listening yet
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def wait_subscribed(url: str, symbols: Sequence[str], timeout: float) -> None:
    """Until every `quotes:{SYMBOL}` channel has a subscriber (the watcher listens)."""
    redis = SyncRedis.from_url(url)
    channels = [quote_channel(s) for s in symbols]
    deadline = time.monotonic() + timeout
    while True:
        counts = redis.pubsub_numsub(*channels)
        assert isinstance(counts, list)
        if all(count > 0 for _, count in counts):
            return
        if time.monotonic() > deadline:
            raise TimeoutError("the watcher did not subscribe to every symbol")
        time.sleep(0.2)


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True, slots=True)
class Options:
    triggers: int
    minutes: float  # simulated, of the main throughput case
    scaling_minutes: float  # simulated, of the other cases
    scaling: tuple[int, ...]
    realistic_scaling: bool
    tick_seconds: float
    cpu: int
    rates: tuple[float, ...]
    phase_seconds: float
    warmup_seconds: float
    speed: float
    quiet_wait: float
    parts: tuple[str, ...]
    profile: bool


def role(name: str, *args: object) -> list[str]:
    return [sys.executable, "-m", "bench.triggers", "--role", name, *(str(a) for a in args)]


def throughput_cases(opts: Options) -> list[dict[str, Any]]:
    counts = sorted({opts.triggers, *opts.scaling})
    cases = [(opts.triggers, False, opts.minutes)]
    if opts.realistic_scaling:
        cases += [(n, False, opts.scaling_minutes) for n in counts if n != opts.triggers]
    # Nothing fires in the quiet stream, so its cost per tick is the index's own.
    cases += [(n, True, opts.scaling_minutes) for n in counts]
    results = []
    with harness.Children(harness.OUT) as children:
        for count, quiet, minutes in cases:
            background = harness.wait_quiet([os.getpid()], opts.quiet_wait)
            started = time.monotonic()
            argv = role("throughput", count, int(quiet), minutes, opts.tick_seconds, opts.cpu)
            child = children.start("triggers-throughput", argv, dict(os.environ), pipes=True)
            before = harness.CpuMark.take({"case": [child.pid]})
            result = json.loads(harness.read_line(child, HARD_LIMIT_SECONDS))
            after = harness.CpuMark.take({"case": [child.pid]})
            children.stop(child)
            cores = after.cores_since(before)
            result["background_cores_before"] = background
            result["other_cores"] = cores["machine"] - cores["case"]
            results.append(result)
            rate, elapsed = result["ticks_per_cpu_second"], time.monotonic() - started
            print(f"  {count:>9,} {result['mode']:<9} {rate:,.0f} ticks/CPU-s ({elapsed:.0f} s)")
    return results


def latency(opts: Options) -> dict[str, Any]:
    market = listings()
    result: dict[str, Any] = {}
    with harness.Children(harness.OUT) as children:
        port = harness.free_port()
        redis = children.start(
            "triggers-redis",
            [
                "redis-server",
                *("--port", str(port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no"),
            ],
            dict(os.environ),
        )
        redis_url = f"redis://127.0.0.1:{port}/0"
        wait_for_redis(redis_url, 10)
        env = harness.kianax_env(
            harness.free_port(), KIANAX_DATABASE_URL=DATABASE_URL, KIANAX_REDIS_URL=redis_url
        )
        asyncio.run(recreate_database())
        harness.migrate(env)
        planned = plan_triggers(market, opts.triggers)
        watched = sorted({t.config.symbol for t in planned})
        started = time.perf_counter()
        result["rows"] = asyncio.run(seed(planned))
        result["seed_seconds"] = time.perf_counter() - started
        del planned

        clock = SimClock(time.time(), opts.speed)
        watcher_argv = role("watcher", clock.anchor, clock.speed)
        watcher = children.start("triggers-watcher", watcher_argv, env, pipes=True)
        result["initial_load"] = json.loads(harness.read_line(watcher, 300))
        wait_subscribed(redis_url, watched, 120)
        publisher_argv = role("publisher", clock.anchor, clock.speed, redis_url)
        publisher = children.start("triggers-publisher", publisher_argv, env, pipes=True)
        harness.read_line(publisher, 60)

        def phase(rate: float, seconds: float, quiet: bool) -> dict[str, Any]:
            pids = {
                "watcher": [watcher.pid],
                "publisher": [publisher.pid],
                "redis": [redis.pid],
                "postgres": asyncio.run(backend_pids()),
                "bench": [os.getpid()],
            }
            ours = [pid for group in pids.values() for pid in group]
            background = harness.wait_quiet(ours, opts.quiet_wait) if quiet else None
            before = harness.CpuMark.take(pids)
            harness.write_line(publisher, f"phase {rate} {seconds}")
            published = json.loads(harness.read_line(publisher, seconds + 60))
            time.sleep(3.0)  # the watcher drains what it still holds
            after = harness.CpuMark.take(pids)
            harness.write_line(watcher, "report")
            seen = json.loads(harness.read_line(watcher, 60))
            seen["rss_mib"] = harness.rss_mib(watcher.pid)
            cores = after.cores_since(before)
            cores["others"] = cores["machine"] - sum(cores[k] for k in pids)
            used = after.seconds_since(before)
            return {
                "rate_per_symbol": rate,
                "publisher": published,
                "watcher": seen,
                "cores": cores,
                "watcher_cpu_us_per_quote": 1e6 * used["watcher"] / max(seen["quotes"], 1),
                "background_cores_before": background,
            }

        result["startup"] = phase(opts.rates[0], opts.warmup_seconds, quiet=False)
        spies = [
            harness.py_spy(watcher.pid, harness.PROFILES / f"triggers-watcher.{ext}", fmt)
            for fmt, ext in (("flamegraph", "svg"), ("raw", "txt"))
            if opts.profile
        ]
        result["phases"] = [phase(rate, opts.phase_seconds, quiet=True) for rate in opts.rates]
        for spy in spies:
            harness.stop_spy(spy)
        if spies:
            result["profile"] = harness.hot_spots(harness.PROFILES / "triggers-watcher.txt")
        harness.write_line(watcher, "stop")
    return result


def orchestrate(opts: Options) -> dict[str, Any]:
    harness.OUT.mkdir(exist_ok=True)
    redis_server = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[2]
    result: dict[str, Any] = {
        "benchmark": "triggers",
        "machine": harness.machine() | {"private_redis_server": redis_server},
        "settings": {
            "symbols": SYMBOLS,
            "triggers": opts.triggers,
            "triggers_per_user": TRIGGERS_PER_USER,
            "triggers_per_agent": TRIGGERS_PER_AGENT,
            "zipf": ZIPF,
            "seed": SEED,
            "kind_weights": dict(zip(KINDS, KIND_WEIGHTS, strict=True)),
            "cooldowns": dict(zip(COOLDOWNS, COOLDOWN_WEIGHTS, strict=True)),
            "simulated_start": harness.SIMULATED_START,
            "warmup_simulated_seconds": WARMUP_SECONDS,
            "tick_seconds": opts.tick_seconds,
            "minutes": opts.minutes,
            "scaling_minutes": opts.scaling_minutes,
            "realistic_scaling": opts.realistic_scaling,
            "pinned_cpu": opts.cpu,
            "rates_per_symbol": opts.rates,
            "phase_seconds": opts.phase_seconds,
            "startup_seconds": opts.warmup_seconds,
            "speed": opts.speed,
        },
    }
    if "throughput" in opts.parts:
        print("throughput:")
        result["throughput"] = throughput_cases(opts)
    if "latency" in opts.parts:
        print("latency:")
        result["latency"] = latency(opts)
    return result


def report(result: dict[str, Any]) -> str:
    tables = []
    if "throughput" in result:
        tables.append(throughput_table(result["throughput"]))
    if "latency" in result:
        tables += latency_tables(result["latency"])
    return "\n\n".join(tables)


def throughput_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        us = r["tick_us"]
        rows.append(
            [
                f"{r['triggers']:,}",
                r["mode"],
                f"{r['ticks']:,}",
                r["measures_per_symbol"],
                f"{r['ticks_per_cpu_second']:,.0f}",
                1e6 / r["ticks_per_cpu_second"],
                us["p50"],
                us["p90"],
                us["p99"],
                f"{r['firings']:,}",
                r["firings_per_tick"],
                r["build_cpu_seconds"],
                f"{r['index_rss_mib']:.0f} ({r['bytes_per_trigger']:.0f} B)",
                f"{r['others_on_our_core']:.2f} / {r['other_cores']:.2f}",
            ]
        )
    return harness.table(
        [
            "triggers",
            "stream",
            "ticks",
            "measures per symbol",
            "ticks/s per core",
            "CPU µs/tick",
            "wall µs/tick p50",
            "p90",
            "p99",
            "firings",
            "firings/tick",
            "build CPU s",
            "index MiB (per trigger)",
            "others: our core / machine",
        ],
        rows,
    )


def latency_tables(lat: dict[str, Any]) -> list[str]:
    rows = []
    for name, p in [("startup", lat["startup"])] + [
        (f"{p['rate_per_symbol']:g}/s", p) for p in lat["phases"]
    ]:
        w, fire, cores = p["watcher"], p["watcher"]["fire_ms"], p["cores"]
        rows.append(
            [
                name,
                f"{p['publisher']['per_second']:,.0f} of {p['publisher']['due_per_second']:,.0f}",
                f"{w['quotes']:,}",
                f"{w['coalesced']:,}",
                f"{w['firings_enqueued']:,}",
                fire.get("p50", "-"),
                fire.get("p95", "-"),
                fire.get("p99", "-"),
                fire.get("max", "-"),
                w["quote_lag_ms"].get("p99", "-"),
                cores["watcher"],
                p["watcher_cpu_us_per_quote"],
                f"{cores['publisher']:.2f} / {cores['redis']:.2f} / {cores['postgres']:.2f}",
                cores["others"],
                ", ".join(f"{s:g}" for s in w["reload_seconds"]) or "-",
            ]
        )
    table = harness.table(
        [
            "phase",
            "quotes/s published of due",
            "evaluated",
            "coalesced",
            "runs enqueued",
            "fire p50 ms",
            "p95",
            "p99",
            "max",
            "quote lag p99 ms",
            "watcher cores",
            "watcher µs/quote",
            "cores publisher / Redis / PostgreSQL",
            "other cores",
            "reloads s",
        ],
        rows,
    )
    load = lat["initial_load"]
    summary = (
        f"watcher: {load['triggers']:,} triggers of {lat['rows']['users']:,} users loaded "
        f"from PostgreSQL in {load['load_seconds']:.1f} s ({load['load_cpu_seconds']:.1f} s CPU)"
    )
    return [table, summary]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.triggers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--triggers", type=int, default=TRIGGERS, help="triggers of the main case")
    parser.add_argument(
        "--minutes", type=float, default=20, help="simulated minutes replayed in the main case"
    )
    parser.add_argument(
        "--scaling", default="10000,1000000", help="trigger counts of the other cases"
    )
    parser.add_argument("--scaling-minutes", type=float, default=5)
    parser.add_argument(
        "--realistic-scaling",
        action="store_true",
        help="replay the realistic stream at the other counts too (slow at 1M)",
    )
    parser.add_argument(
        "--tick-seconds", type=float, default=5, help="simulated seconds between a symbol's ticks"
    )
    parser.add_argument(
        "--cpu",
        type=int,
        default=max(os.sched_getaffinity(0)),
        help="the CPU the throughput cases are pinned to",
    )
    parser.add_argument("--rates", default="1,2,4", help="quotes/s per symbol, one phase each")
    parser.add_argument("--phase-seconds", type=float, default=30)
    parser.add_argument(
        "--startup-seconds", type=float, default=15, help="the first, unmeasured-for-rate phase"
    )
    parser.add_argument(
        "--speed", type=float, default=1, help="simulated seconds per wall second (latency part)"
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=10, help="max seconds to wait for an idle machine"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a small smoke run (10k triggers, short phases)"
    )
    parser.add_argument(
        "--parts", default="throughput,latency", help="which parts to run, comma-separated"
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the watcher during the rate phases"
    )
    parser.add_argument("--role", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    if args.role == "throughput":
        count, quiet, minutes, tick, cpu = rest
        result = throughput(int(count), quiet == "1", float(minutes), float(tick), int(cpu))
        print(json.dumps(result), flush=True)
        return 0
    if args.role == "watcher":
        asyncio.run(watch(SimClock(float(rest[0]), float(rest[1]))))
        return 0
    if args.role == "publisher":
        asyncio.run(publish(rest[2], SimClock(float(rest[0]), float(rest[1]))))
        return 0
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    opts = Options(
        triggers=args.triggers,
        minutes=args.minutes,
        scaling_minutes=args.scaling_minutes,
        scaling=tuple(int(n) for n in args.scaling.split(",") if n),
        realistic_scaling=args.realistic_scaling,
        tick_seconds=args.tick_seconds,
        cpu=args.cpu,
        rates=tuple(float(r) for r in args.rates.split(",")),
        phase_seconds=args.phase_seconds,
        warmup_seconds=args.startup_seconds,
        speed=args.speed,
        quiet_wait=args.quiet_wait,
        parts=tuple(part for part in args.parts.split(",") if part),
        profile=args.profile,
    )
    if unknown := set(opts.parts) - {"throughput", "latency"}:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if args.quick:
        opts = dataclasses.replace(
            opts,
            triggers=10_000,
            minutes=3,
            scaling_minutes=2,
            scaling=(2_000,),
            realistic_scaling=True,
            rates=(1.0,),
            phase_seconds=10,
            warmup_seconds=5,
            quiet_wait=5,
        )
    with harness.hard_limit(HARD_LIMIT_SECONDS):
        result = orchestrate(opts)
    name = "triggers" + ("-quick" if args.quick else "") + ("-profile" if opts.profile else "")
    print(f"results: {harness.save(name, result).relative_to(harness.REPO)}")
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

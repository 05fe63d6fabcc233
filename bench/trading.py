"""The trading engine through the real server: placeOrder, placement-to-fill, portfolio.

    .venv/bin/python -m bench.trading [--users 50] [--profile]

Starts `kianax run` (API, worker with the paper matcher, feed) on a fresh `kianax_bench`
database and Redis db 1, with the simulated market on a Wednesday session. Registers one
user per client (each gets its own paper account), binding registrations to source
addresses 127.0.1.x so that no address exceeds the 10-per-hour sign-up limit. Each user
listens to `orderEvents` over graphql-transport-ws. Then, with every user a concurrent
closed-loop client:

1. setup: each user buys 1 share of each of its 20 symbols (opening 20 positions);
2. placeOrder: market BUYs of 1 share, cycling over those symbols, for a fixed time;
   request latency, and placement-to-fill latency (placeOrder sent -> FILLED event);
3. portfolio: the `portfolio` query with its 20 positions, for a fixed time.

The per-user budget (600 operations a minute) is reset every 5 s while a phase runs, by
deleting the `rl:requests-user:*` keys in Redis db 1. PostgreSQL's pg_stat_activity is sampled every
100 ms to show what the database sessions wait for. Results:
bench/results/trading-<users>users-<time>.json and a Markdown summary on stdout.
Everything stops by itself (hard limit 20 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from bench import harness
from domain.market.universe import UNIVERSE
from domain.trading.service import NEW_ORDERS_CHANNEL

HARD_LIMIT_SECONDS = 20 * 60
POSITIONS = 20
FILL_WAIT_SECONDS = 120.0

REGISTER = """mutation($i: RegisterInput!) { register(input: $i) {
  __typename ... on AuthPayload { accessToken } ... on UserError { code message } } }"""
PLACE_ORDER = """mutation($i: PlaceOrderInput!) { placeOrder(input: $i) {
  __typename ... on OrderPlaced { order { id status } } ... on UserError { code message } } }"""
PORTFOLIO = """{ portfolio { cash equity buyingPower marketValue dayChange
  positions { symbol quantity averageCost marketPrice marketValue unrealizedPnl } } }"""
ORDER_EVENTS = "subscription { orderEvents { id clientOrderId status } }"


# --------------------------------------------------------------------------- one user


@dataclass
class User:
    index: int
    symbols: list[str]
    http: httpx.AsyncClient
    token: str = ""
    # clientOrderId -> status -> when its event arrived (perf_counter)
    events: dict[str, dict[str, float]] = field(default_factory=dict)
    stream_errors: list[str] = field(default_factory=list)

    async def graphql(self, query: str, variables: dict[str, Any] | None = None) -> Any:
        response = await self.http.post("/graphql", json={"query": query, "variables": variables})
        body = response.json()
        if body.get("errors"):
            codes = {e.get("extensions", {}).get("code", e["message"]) for e in body["errors"]}
            raise GraphQLFailed(", ".join(sorted(codes)))
        return body["data"]

    async def listen(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                received = time.perf_counter()
                message = json.loads(raw)
                if message["type"] == "ping":
                    await ws.send('{"type":"pong"}')
                elif message["type"] == "next" and not message["payload"].get("errors"):
                    order = message["payload"]["data"]["orderEvents"]
                    self.events.setdefault(order["clientOrderId"], {}).setdefault(
                        order["status"], received
                    )
                else:
                    self.stream_errors.append(json.dumps(message)[:300])
        except ConnectionClosed as exc:
            self.stream_errors.append(f"closed: {exc}")


class GraphQLFailed(Exception):
    """A top-level GraphQL error (e.g. RATE_LIMITED); the message holds the codes."""


async def register(port: int, index: int) -> tuple[str, httpx.AsyncClient]:
    """Sign up from 127.0.1.(1 + index // 10): at most 10 sign-ups per source address."""
    local = f"127.0.1.{1 + index // 10}"
    transport = httpx.AsyncHTTPTransport(local_address=local)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", transport=transport, trust_env=False, timeout=60
    ) as http:
        variables = {
            "i": {"email": f"bench{index}@kianax.test", "password": f"bench-pw-{index}!Zq"}
        }
        response = await http.post("/graphql", json={"query": REGISTER, "variables": variables})
    result = response.json()["data"]["register"]
    if result["__typename"] != "AuthPayload":
        raise RuntimeError(f"register failed: {result}")
    token = str(result["accessToken"])
    client = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        headers={"authorization": f"Bearer {token}"},
        trust_env=False,
        timeout=60,
    )
    return token, client


@contextlib.asynccontextmanager
async def order_stream(port: int, user: User) -> AsyncIterator[None]:
    """`orderEvents` for this user, recorded into user.events while the block runs."""
    async with connect(
        f"ws://127.0.0.1:{port}/graphql",
        subprotocols=[Subprotocol("graphql-transport-ws")],
        compression=None,
        proxy=None,
        ping_interval=None,
    ) as ws:
        init = {"authorization": f"Bearer {user.token}"}
        await ws.send(json.dumps({"type": "connection_init", "payload": init}))
        ack = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if ack.get("type") != "connection_ack":
            raise RuntimeError(f"expected connection_ack, got {ack}")
        subscribe = {"id": "1", "type": "subscribe", "payload": {"query": ORDER_EVENTS}}
        await ws.send(json.dumps(subscribe))
        listener = asyncio.create_task(user.listen(ws))
        try:
            yield
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener


# --------------------------------------------------------------------------- measurement


@dataclass
class Outcomes:
    """What the requests of one phase did."""

    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    errors: Counter[str] = field(default_factory=Counter)
    sent: dict[str, float] = field(default_factory=dict)  # clientOrderId -> perf_counter
    failed: list[str] = field(default_factory=list)  # clientOrderIds answered with an error
    started: float = 0.0
    ended: float = 0.0

    def summary(self) -> dict[str, Any]:
        elapsed = self.ended - self.started
        return {
            "requests": len(self.latencies),
            "seconds": round(elapsed, 2),
            "per_second": len(self.latencies) / elapsed if elapsed else 0.0,
            "latency_ms": harness.summarize(self.latencies),
            "errors": dict(self.errors),
        }


class DatabaseProbe:
    """Every 100 ms: what the app's PostgreSQL sessions are doing (pg_stat_activity), their
    CPU, and whether the paper matcher is subscribed to the new-orders channel."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._task: asyncio.Task[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.samples = 0
        self.states: Counter[str] = Counter()
        self.lock_waits: Counter[str] = Counter()
        self.cpu_first: dict[int, float] = {}
        self.cpu_last: dict[int, float] = {}
        self.matcher_unsubscribed = 0
        self.started = time.monotonic()

    async def _run(self) -> None:
        # Autocommit: inside one transaction pg_stat_activity would repeat its first snapshot.
        engine = create_async_engine(harness.PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        query = text(
            "SELECT pid, state, coalesce(wait_event_type || ':' || wait_event, '-'), "
            "left(regexp_replace(query, '\\s+', ' ', 'g'), 90) FROM pg_stat_activity "
            "WHERE datname = :db AND usename = 'kianax_app'"
        )
        try:
            async with engine.connect() as connection:
                while True:
                    rows = (await connection.execute(query, {"db": harness.BENCH_DB})).all()
                    self.samples += 1
                    for pid, state, wait, sql in rows:
                        if (cpu := harness.try_cpu_seconds(pid)) is not None:
                            self.cpu_first.setdefault(pid, cpu)
                            self.cpu_last[pid] = cpu
                        if state == "idle":
                            continue
                        self.states[f"{state} / {wait}"] += 1
                        if wait.startswith("Lock:"):
                            self.lock_waits[f"{wait} / {sql}"] += 1
                    [(_, subscribers)] = await self.redis.pubsub_numsub(NEW_ORDERS_CHANNEL)
                    self.matcher_unsubscribed += subscribers == 0
                    await asyncio.sleep(0.1)
        finally:
            await engine.dispose()

    def start(self) -> None:
        self._reset()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        n = max(self.samples, 1)
        cpu = sum(self.cpu_last[pid] - first for pid, first in self.cpu_first.items())
        return {
            "samples": self.samples,
            "backend_cores": cpu / (time.monotonic() - self.started),
            "backends_seen": len(self.cpu_first),
            "sessions_by_state": {k: round(v / n, 2) for k, v in self.states.most_common(8)},
            "lock_waits": {k: round(v / n, 2) for k, v in self.lock_waits.most_common(5)},
            "matcher_not_subscribed_to_new_orders": f"{100 * self.matcher_unsubscribed / n:.1f}%",
        }


@dataclass
class Bench:
    port: int
    users: list[User]
    pids: dict[str, list[int]]
    redis: Redis
    profile: bool

    def __post_init__(self) -> None:
        self.probe = DatabaseProbe(self.redis)

    async def reset_budgets(self) -> None:
        """Every 5 s: delete the per-user request budgets (the limiter still does its work)."""
        while True:
            keys = [k async for k in self.redis.scan_iter(match="rl:requests-user:*")]
            if keys:
                await self.redis.delete(*keys)
            await asyncio.sleep(5.0)

    async def place(self, user: User, symbol: str, cid: str, outcomes: Outcomes) -> None:
        order = {"symbol": symbol, "side": "BUY", "type": "MARKET", "quantity": "1"}
        variables = {"i": {**order, "clientOrderId": cid}}
        sent = time.perf_counter()
        outcomes.sent[cid] = sent
        try:
            data = await user.graphql(PLACE_ORDER, variables)
        except GraphQLFailed as exc:
            outcomes.errors[str(exc)] += 1
            outcomes.failed.append(cid)
            del outcomes.sent[cid]
            return
        result = data["placeOrder"]
        if result["__typename"] != "OrderPlaced":
            outcomes.errors[result.get("code", result["__typename"])] += 1
            del outcomes.sent[cid]
            return
        outcomes.latencies.append(time.perf_counter() - sent)

    async def portfolio(self, user: User, outcomes: Outcomes) -> None:
        started = time.perf_counter()
        try:
            data = await user.graphql(PORTFOLIO)
        except GraphQLFailed as exc:
            outcomes.errors[str(exc)] += 1
            return
        outcomes.latencies.append(time.perf_counter() - started)
        if len(data["portfolio"]["positions"]) != POSITIONS:
            outcomes.errors["positions != 20"] += 1

    async def closed_loop(
        self,
        name: str,
        step: Callable[[User, int, Outcomes], Awaitable[None]],
        *,
        warmup: float,
        duration: float,
        max_steps: int | None = None,
    ) -> tuple[Outcomes, dict[str, Any]]:
        """Every user runs `step` back to back; only steps started in the window count."""
        budgets = asyncio.create_task(self.reset_budgets())
        loop_start = time.perf_counter()
        window_from, window_to = loop_start + warmup, loop_start + warmup + duration
        measured, discarded = Outcomes(), Outcomes()

        async def client(user: User) -> None:
            for n in itertools.count():
                if (now := time.perf_counter()) >= window_to or n == max_steps:
                    return
                await step(user, n, measured if now >= window_from else discarded)

        tasks = [asyncio.create_task(client(u)) for u in self.users]
        await asyncio.sleep(max(0.0, window_from - time.perf_counter()))
        measured.started = time.perf_counter()
        self.probe.start()
        before = harness.CpuMark.take(self.pids)
        spies = self.spy(name) if self.profile else []
        await asyncio.gather(*tasks)
        measured.ended = time.perf_counter()
        budgets.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await budgets
        after = harness.CpuMark.take(self.pids)
        database = await self.probe.stop()
        for spy in spies:
            await asyncio.to_thread(harness.stop_spy, spy)
        cores = after.cores_since(before)
        cores["postgres"] = database["backend_cores"]
        cores["others"] = cores["machine"] - sum(cores[k] for k in self.pids) - cores["postgres"]
        used = after.seconds_since(before)
        extra = {
            "cores": cores,
            "api_cpu_ms_per_request": 1000 * used["api"] / max(len(measured.latencies), 1),
            "postgres": database,
        }
        if spies:
            extra["profile"] = {
                proc: harness.hot_spots(harness.PROFILES / f"trading-{name}-{proc}.txt")
                for proc in ("api", "worker")
            }
        return measured, extra

    def spy(self, name: str) -> list[subprocess.Popen[bytes]]:
        return [
            harness.py_spy(
                self.pids[proc][0], harness.PROFILES / f"trading-{name}-{proc}.{ext}", fmt
            )
            for proc in ("api", "worker")
            for fmt, ext in (("flamegraph", "svg"), ("raw", "txt"))
        ]

    async def fills(self, outcomes: Outcomes) -> dict[str, Any]:
        """Wait for every placed order's FILLED event; placement-to-fill latencies."""
        deadline = time.monotonic() + FILL_WAIT_SECONDS
        events: dict[str, dict[str, float]] = {}
        while True:
            for user in self.users:
                events.update(user.events)
            pending = [cid for cid in outcomes.sent if "FILLED" not in events.get(cid, {})]
            if not pending or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        latencies = [
            events[cid]["FILLED"] - sent
            for cid, sent in outcomes.sent.items()
            if "FILLED" in events.get(cid, {})
        ]
        statuses = Counter(
            max(events[cid], key=events[cid].__getitem__) if events.get(cid) else "(no event)"
            for cid in pending
        )
        return {
            "orders": len(outcomes.sent),
            "filled": len(latencies),
            "no_filled_event_after_wait": dict(statuses),
            "their_status_in_database": await statuses_in_database(pending),
            "errored_requests_status_in_database": await statuses_in_database(outcomes.failed),
            "latency_ms": harness.summarize(latencies),
        }


async def statuses_in_database(client_order_ids: Sequence[str]) -> dict[str, int]:
    """The orders' actual statuses (as the owner role, which row-level security lets see all)."""
    if not client_order_ids:
        return {}
    engine = create_async_engine(harness.DATABASE_URL)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text(
                    "SELECT status, count(*) FROM orders "
                    "WHERE client_order_id = ANY(:ids) GROUP BY 1"
                ),
                {"ids": list(client_order_ids)},
            )
            return {str(status): int(n) for status, n in rows}
    finally:
        await engine.dispose()


# --------------------------------------------------------------------------- the run


def symbols_of(index: int) -> list[str]:
    """20 symbols per user out of 40, shifted by user so that symbols are shared unevenly."""
    pool = [spec.symbol for spec in UNIVERSE[:40]]
    return [pool[(index + k) % len(pool)] for k in range(POSITIONS)]


async def bench(port: int, pids: dict[str, list[int]], opts: Options) -> dict[str, Any]:
    gate = asyncio.Semaphore(5)  # argon2 hashing makes sign-up CPU-bound on the server

    async def sign_up(index: int) -> User:
        async with gate:
            token, http = await register(port, index)
        return User(index=index, symbols=symbols_of(index), http=http, token=token)

    users = await asyncio.gather(*(sign_up(i) for i in range(opts.users)))
    redis = Redis.from_url(harness.REDIS_URL)
    runner = Bench(port=port, users=list(users), pids=pids, redis=redis, profile=opts.profile)
    result: dict[str, Any] = {}
    ours = [p for group in pids.values() for p in group]
    try:
        async with contextlib.AsyncExitStack() as streams:
            for user in users:
                await streams.enter_async_context(order_stream(port, user))
            await asyncio.sleep(2.0)  # the server subscribes to Redis after the WS subscribe

            async def open_position(user: User, n: int, outcomes: Outcomes) -> None:
                await runner.place(user, user.symbols[n], f"b{user.index}-open-{n}", outcomes)

            setup, extra = await runner.closed_loop(
                "setup", open_position, warmup=0, duration=600, max_steps=POSITIONS
            )
            result["setup"] = setup.summary() | {"fills": await runner.fills(setup)} | extra

            async def buy_more(user: User, n: int, outcomes: Outcomes) -> None:
                symbol = user.symbols[n % POSITIONS]
                await runner.place(user, symbol, f"b{user.index}-more-{n}", outcomes)

            await asyncio.to_thread(harness.wait_quiet, ours, opts.quiet_wait)
            placed, extra = await runner.closed_loop(
                "place_order", buy_more, warmup=opts.warmup, duration=opts.duration
            )
            result["place_order"] = placed.summary() | {"fills": await runner.fills(placed)} | extra

            async def read_portfolio(user: User, n: int, outcomes: Outcomes) -> None:
                await runner.portfolio(user, outcomes)

            await asyncio.to_thread(harness.wait_quiet, ours, opts.quiet_wait)
            read, extra = await runner.closed_loop(
                "portfolio", read_portfolio, warmup=opts.warmup, duration=opts.duration
            )
            result["portfolio"] = read.summary() | extra
            result["order_stream_errors"] = [e for u in users for e in u.stream_errors]
    finally:
        for user in users:
            await user.http.aclose()
        await redis.aclose()
    return result


@dataclass(frozen=True, slots=True)
class Options:
    users: int
    warmup: float
    duration: float
    profile: bool
    quiet_wait: float


def kianax_processes(run_pid: int) -> dict[str, list[int]]:
    """The api, worker and feed children of `kianax run`."""
    found: dict[str, list[int]] = {}
    for pid in harness.child_pids(run_pid):
        role = harness.cmdline(pid)[-1]
        if role in ("api", "worker", "feed"):
            found[role] = [pid]
    return found


def wait_for_worker(timeout: float) -> None:
    """The worker writes its heartbeat once its startup (and the paper matcher) ran."""
    deadline = time.monotonic() + timeout
    redis = SyncRedis.from_url(harness.REDIS_URL)
    while not redis.exists("kianax:worker:heartbeat"):
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not start")
        time.sleep(0.2)


def orchestrate(opts: Options) -> dict[str, Any]:
    harness.OUT.mkdir(exist_ok=True)
    result: dict[str, Any] = {
        "benchmark": "trading",
        "machine": harness.machine(),
        "settings": {
            "users": opts.users,
            "positions_per_user": POSITIONS,
            "warmup_seconds": opts.warmup,
            "measure_seconds": opts.duration,
        },
    }
    harness.reset_state()
    port = harness.free_port()
    env = harness.kianax_env(port)
    with harness.Children(harness.OUT) as children:
        run = children.start("trading-run", harness.kianax("run"), env)
        harness.wait_ready(port, [run], 120)
        wait_for_worker(60)
        pids = kianax_processes(run.pid)
        if sorted(pids) != ["api", "feed", "worker"]:
            raise RuntimeError(f"kianax run children not found: {pids}")
        pids["bench"] = [os.getpid()]
        result |= asyncio.run(bench(port, pids, opts))
    return result


def report(result: dict[str, Any]) -> str:
    rows = []
    for phase in ("setup", "place_order", "portfolio"):
        r = result[phase]
        lat, cores = r["latency_ms"], r["cores"]
        fills = r.get("fills", {}).get("latency_ms", {})
        rows.append(
            [
                phase,
                r["requests"],
                r["per_second"],
                lat.get("p50", "-"),
                lat.get("p95", "-"),
                lat.get("p99", "-"),
                lat.get("max", "-"),
                fills.get("p50", "-"),
                fills.get("p95", "-"),
                fills.get("p99", "-"),
                fills.get("max", "-"),
                sum(r["errors"].values()),
                f"{cores['api']:.2f} / {cores['worker']:.2f} / {cores['postgres']:.2f}",
                cores["others"],
            ]
        )
    headers = [
        "phase",
        "requests",
        "req/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "fill p50 ms",
        "fill p95 ms",
        "fill p99 ms",
        "fill max ms",
        "errors",
        "cores API / worker / PostgreSQL",
        "other cores",
    ]
    return harness.table(headers, rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trading", description=__doc__)
    parser.add_argument("--users", type=int, default=50, help="concurrent clients (one user each)")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per phase")
    parser.add_argument("--profile", action="store_true", help="py-spy the API and the worker")
    parser.add_argument(
        "--quiet-wait", type=float, default=300, help="max seconds to wait for an idle machine"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.users <= 250:
        parser.error("--users must be between 1 and 250 (10 sign-ups per source address)")
    opts = Options(args.users, args.warmup, args.duration, args.profile, args.quiet_wait)
    with harness.hard_limit(HARD_LIMIT_SECONDS):
        result = orchestrate(opts)
    name = "trading" + ("-profile" if opts.profile else "") + f"-{opts.users}users"
    print(f"results: {harness.save(name, result).relative_to(harness.REPO)}")
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

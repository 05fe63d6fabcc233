"""Agent scheduling: 1,000 agents fired by the same schedule, each model call taking 1 s.

    .venv/bin/python -m bench.agents [--users 50] [--max-jobs 100 ...]

Setup: a private `redis-server` (its own port: pub/sub channels are global to a Redis
server), a fresh `kianax_bench_agents` database, `kianax migrate`, then `kianax api` with
OpenAI configured to point at a fake OpenAI server that runs in this process and answers
every Chat Completion with a valid HOLD decision after exactly 1 s. 50 users register
through the API (from source addresses 127.0.1.x, 10 per address, the sign-up limit) and
each creates 20 agents (the per-user maximum) with `createAgent`, provider OPENAI and one
TIME trigger `*/15 * * * *` (New York, market days) in the same mutation, as a user would.
A 51st user's single "canary" agent fires every minute but the quarter hours: it never adds
to the measured minute, and its runs show when (and whether) the cron ticks of the minutes
that follow scheduled their triggers while the worker was busy. The API is then stopped,
so every PostgreSQL session seen while measuring is the worker's.

Each measurement starts the feed and ONE worker with a simulated clock anchored so that a
quarter hour of a Wednesday session (10:15, 10:30, ... New York) begins at the next
whole wall-clock minute W: the worker's cron `schedule_time_triggers` fires at W and all
1,000 TIME triggers are due in that minute. A fresh quarter hour per measurement gives
fresh event keys, so earlier runs' rows do not answer for later ones, and the private
Redis is emptied after each measurement, so no unfinished job carries over. Measured from W:

- each `agent_executions` row's own `started_at`/`finished_at` (simulated time, which
  with a whole-minute anchor is wall time shifted by a whole number of minutes);
- each run job's enqueue time (when the cron job queued it) and tries, from arq's results
  in Redis (tries - 1 = busy-retries: the per-user cap of 2 runs at once, `Retry(defer=3)`);
- what the fake server received (exactly one call per agent and minute expected);
- the canary's run jobs: for each minute after W, how late its cron tick queued them;
- every 100 ms: PostgreSQL sessions of the app role (pg_stat_activity), worker RSS, and
  the jobs due in the arq queue;
- CPU of the worker, feed, Redis, this process (the fake server and the probes) and the
  PostgreSQL backends, and how busy everything else on the machine was.

The first measurement runs `kianax worker` exactly as shipped (max_jobs=20). Each
`--max-jobs N` adds one with the same worker but `max_jobs=N` (launched through this
module, as `kianax worker` launches it, with that one setting overridden). `--profile`
samples the worker with py-spy (bench/profiles/agents-max_jobs-N-worker.{svg,txt}).
Results: bench/results/agents-<users>x<agents>-<time>.json and Markdown tables on stdout.
Everything stops by itself: measuring ends 90 s before the hard limit of 15 minutes (what
was measured is saved; a measurement with no time left is skipped and listed as such).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from arq.jobs import JobResult, deserialize_job, deserialize_result
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench import harness
from bench.trading import register
from domain.agents.service import MAX_AGENTS
from domain.market.universe import UNIVERSE
from jobs.agents import MAX_RUNS_PER_USER
from jobs.worker import WORKER_HEARTBEAT_KEY, WorkerSettings
from kianax.settings import Settings
from tests.fakes.openai_server import (
    API_KEY,
    FakeOpenAI,
    RecordedRequest,
    Reply,
    decision_reply,
    slow,
)

HARD_LIMIT_SECONDS = 15 * 60
# Measuring stops this long before the hard limit, so that what was measured is saved.
STOP_BEFORE_LIMIT_SECONDS = 90
MIN_MEASURE_SECONDS = 30  # a measurement that could not last this long is skipped
DATABASE = "kianax_bench_agents"
DATABASE_URL = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DATABASE}"
MODEL_SECONDS = 1.0
CRON = "*/15 * * * *"
# The canary: one more user's single agent, due every minute but the quarter hours, so it
# never adds to the measured minute and its event keys show which minutes the cron ticks
# that follow actually scheduled, and when.
CANARY_CRON = "1-14,16-29,31-44,46-59 * * * *"
# The cron's quarter hours of the Wednesday session harness.SIMULATED_START opens: one per
# measurement, 10:15 New York first.
FIRST_QUARTER = datetime.fromisoformat(harness.SIMULATED_START) + timedelta(minutes=15)
# The worker and feed start at least this long before their minute: time to import,
# connect and write the first heartbeat, with margin on a busy machine.
LEAD_SECONDS = 25.0
DRAIN_SECONDS = 420.0  # a measurement that has not finished by then is recorded as is
AFTER_SECONDS = 3.0  # kept watching after the last row, for late duplicate model calls
SAMPLE_SECONDS = 0.1
# The children's environment has no KIANAX_JOB_QUEUE (harness.kianax_env drops KIANAX_*).
QUEUE = str(Settings.model_fields["job_queue"].default)

CREATE_AGENT = """mutation($i: CreateAgentInput!) { createAgent(input: $i) {
  __typename ... on AgentSaved { agent { id } } ... on UserError { code message } } }"""

HOLD = {
    "reasoning": "Nothing in the context calls for a trade.",
    "actions": [
        {
            "reasoning": "Hold.",
            "action": "HOLD",
            "symbol": None,
            "orderType": "MARKET",
            "quantity": None,
            "notional": None,
            "limitPrice": None,
            "confidence": None,
        }
    ],
    "confidence": 0.5,
}
# Each agent's prompt names it and the context names the scheduled minute, so the fake can
# tell a second call for the same run.
_TAG = re.compile(r"bench agent (u\d+a\d+)")
_SCHEDULED = re.compile(r'"scheduledFor": "([^"]+)"')


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True, slots=True)
class Call:
    at: float  # wall clock, when the request arrived
    agent: str  # the tag in its prompt, "" if none
    scheduled: str  # the scheduled minute in its context (simulated, ISO), "" if none
    retry: int  # the SDK's x-stainless-retry-count


class HoldingOpenAI(FakeOpenAI):
    """Answers every valid request with HOLD after MODEL_SECONDS, however many come."""

    def __init__(self) -> None:
        super().__init__(API_KEY)
        self.calls: list[Call] = []

    def check(self, request: RecordedRequest) -> Reply | None:
        messages = request.body.get("messages") or []
        prompt = " ".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        tag = _TAG.search(prompt)
        scheduled = _SCHEDULED.search(prompt)
        self.calls.append(
            Call(
                time.time(),
                tag.group(1) if tag else "",
                scheduled.group(1) if scheduled else "",
                request.retry_count,
            )
        )
        # The requests' bodies are not needed after this, and 1,000 prompts a run add up.
        self.requests.clear()
        return super().check(request)

    def unscripted(self) -> Reply:
        return slow(decision_reply(HOLD), MODEL_SECONDS)


def model_calls(calls: Sequence[Call], run: Run, expected: int, minute: float) -> dict[str, Any]:
    """The calls for this run's minute; calls for other minutes (the canary's) apart."""
    mine = [c for c in calls if c.scheduled == run.quarter.isoformat()]
    per_agent = Counter(c.agent for c in mine)
    arrivals = sorted(c.at for c in mine)
    return {
        "calls": len(mine),
        "expected": expected,
        "distinct_agents": len([a for a in per_agent if a]),
        "duplicates": sum(n - 1 for a, n in per_agent.items() if a and n > 1),
        "untagged": per_agent.get("", 0),
        "other_minutes": len(calls) - len(mine),
        "sdk_retries": sum(1 for c in mine if c.retry > 0),
        "max_in_flight": max_overlap([(a, a + MODEL_SECONDS) for a in arrivals]),
        "first_arrival_s": arrivals[0] - minute if arrivals else None,
        "last_arrival_s": arrivals[-1] - minute if arrivals else None,
    }


def max_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    peak = level = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    return peak


# --------------------------------------------------------------------------- setup


async def graphql(http: httpx.AsyncClient, query: str, variables: dict[str, Any]) -> Any:
    response = await http.post("/graphql", json={"query": query, "variables": variables})
    body = response.json()
    if body.get("errors"):
        raise RuntimeError(f"GraphQL errors: {body['errors']}")
    return body["data"]


def symbol_of(user: int, agent: int) -> str:
    pool = [spec.symbol for spec in UNIVERSE[:40]]
    return pool[(user * MAX_AGENTS + agent) % len(pool)]


async def create_agents(
    http: httpx.AsyncClient, user: int, agents: int, cron: str = CRON
) -> list[float]:
    """One user's agents, one createAgent after the other; each request's seconds."""
    allocation = format(100 / agents, ".4f").rstrip("0").rstrip(".")
    took: list[float] = []
    for agent in range(agents):
        tag = f"u{user}a{agent}"
        variables = {
            "i": {
                "name": f"bench {tag}",
                "prompt": f"You are bench agent {tag}. Watch ${symbol_of(user, agent)} and "
                "hold unless something extraordinary happens.",
                "llm": {"provider": "OPENAI"},
                "riskLimits": {"allocationPercent": allocation},
                "triggers": [{"time": {"cron": cron}}],
            }
        }
        started = time.perf_counter()
        result = (await graphql(http, CREATE_AGENT, variables))["createAgent"]
        took.append(time.perf_counter() - started)
        if result["__typename"] != "AgentSaved":
            raise RuntimeError(f"createAgent {tag} failed: {result}")
    return took


async def setup(port: int, users: int, agents: int) -> dict[str, Any]:
    gate = asyncio.Semaphore(5)  # argon2 makes sign-up CPU-bound on the server

    async def sign_up(index: int) -> httpx.AsyncClient:
        async with gate:
            _, http = await register(port, index)
        return http

    started = time.perf_counter()
    *clients, canary = await asyncio.gather(*(sign_up(i) for i in range(users + 1)))
    registered = time.perf_counter()
    try:
        took = await asyncio.gather(
            *(create_agents(http, i, agents) for i, http in enumerate(clients))
        )
        await create_agents(canary, users, 1, CANARY_CRON)
    finally:
        await canary.aclose()
        for http in clients:
            await http.aclose()
    created = time.perf_counter()
    return {
        "register_seconds": round(registered - started, 1),
        "create_agents_seconds": round(created - registered, 1),
        "create_agent_latency_ms": harness.summarize([s for user in took for s in user]),
    }


async def recreate_database() -> None:
    engine = create_async_engine(harness.PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
            await connection.execute(text(f"CREATE DATABASE {DATABASE}"))
    finally:
        await engine.dispose()


def start_redis(children: harness.Children, port: int) -> subprocess.Popen[bytes]:
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no"]
    proc = children.start("agents-redis", argv, os.environ)
    client = SyncRedis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return proc
        except RedisConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the private redis-server did not start") from None
            time.sleep(0.05)


# --------------------------------------------------------------------------- measuring


@dataclass
class Probe:
    """Every SAMPLE_SECONDS: the app role's PostgreSQL sessions, the worker's RSS, and how
    many arq jobs are due (a job stays in the queue while it runs, so at most max_jobs of
    them are being worked on; the rest wait for the worker)."""

    worker_pid: int
    redis: Redis
    samples: int = 0
    due: list[int] = field(default_factory=list)
    connections: list[int] = field(default_factory=list)
    states: Counter[str] = field(default_factory=Counter)
    peak_states: Counter[str] = field(default_factory=Counter)
    cpu_first: dict[int, float] = field(default_factory=dict)
    cpu_last: dict[int, float] = field(default_factory=dict)
    rss: list[float] = field(default_factory=list)

    async def run(self) -> None:
        # Autocommit: inside one transaction pg_stat_activity repeats its first snapshot.
        engine = create_async_engine(harness.PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        query = text(
            "SELECT pid, coalesce(state, '?') FROM pg_stat_activity "
            "WHERE datname = :db AND usename = 'kianax_app'"
        )
        try:
            async with engine.connect() as connection:
                while True:
                    rows = (await connection.execute(query, {"db": DATABASE})).all()
                    self.samples += 1
                    self.connections.append(len(rows))
                    now = Counter(str(state) for _, state in rows)
                    self.states.update(now)
                    for state, n in now.items():
                        self.peak_states[state] = max(self.peak_states[state], n)
                    for pid, _ in rows:
                        if (cpu := harness.try_cpu_seconds(pid)) is not None:
                            self.cpu_first.setdefault(pid, cpu)
                            self.cpu_last[pid] = cpu
                    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                        self.rss.append(harness.rss_mib(self.worker_pid))
                    now_ms = int(time.time() * 1000)
                    self.due.append(int(await self.redis.zcount(QUEUE, "-inf", now_ms)))
                    await asyncio.sleep(SAMPLE_SECONDS)
        finally:
            await engine.dispose()

    def summary(self) -> dict[str, Any]:
        n = max(self.samples, 1)
        return {
            "samples": self.samples,
            "connections_max": max(self.connections, default=0),
            "connections_mean": round(sum(self.connections) / n, 1),
            "by_state_mean": {k: round(v / n, 1) for k, v in self.states.most_common()},
            "by_state_max": dict(self.peak_states.most_common()),
            "backends_seen": len(self.cpu_first),
            "backend_cpu_seconds": round(
                sum(self.cpu_last[p] - first for p, first in self.cpu_first.items()), 2
            ),
            "due_jobs": {
                "max": max(self.due, default=0),
                "mean": round(sum(self.due) / max(len(self.due), 1), 1),
            },
            "worker_rss_mib": {
                "first": round(self.rss[0], 1) if self.rss else None,
                "peak": round(max(self.rss), 1) if self.rss else None,
                "last": round(self.rss[-1], 1) if self.rss else None,
            },
        }


@dataclass(frozen=True, slots=True)
class Run:
    """One measurement: which worker, and the simulated quarter hour it fires."""

    label: str
    max_jobs: int
    quarter: datetime  # the simulated minute every trigger is due in

    @property
    def event_suffix(self) -> str:
        return f":{self.quarter:%Y%m%dT%H%MZ}"  # as domain.agents.schedule keys the event

    def worker_argv(self) -> list[str]:
        if self.max_jobs == WorkerSettings.max_jobs:
            return harness.kianax("worker")
        return [sys.executable, "-m", "bench.agents", "--serve-worker", str(self.max_jobs)]


async def finished_count(engine: AsyncEngine, run: Run) -> int:
    async with engine.connect() as connection:
        query = text(
            "SELECT count(*) FROM agent_executions "
            "WHERE event_key LIKE :suffix AND finished_at IS NOT NULL"
        )
        return int(
            (await connection.execute(query, {"suffix": "%" + run.event_suffix})).scalar_one()
        )


async def execution_rows(engine: AsyncEngine, run: Run) -> list[dict[str, Any]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT agent_id, user_id, status::text AS status, outcome, error, started_at,"
                " finished_at, latency_ms FROM agent_executions WHERE event_key LIKE :suffix"
            ),
            {"suffix": "%" + run.event_suffix},
        )
        return [dict(r._mapping) for r in rows]


async def job_records(redis: Redis, run: Run) -> tuple[list[JobResult], dict[str, float]]:
    """arq's results of this minute's run_agent jobs (cron jobs keep none), and when the run
    job of each other minute (the canary's) was queued, finished or not. The private Redis
    is emptied between measurements, so all it holds is this measurement's."""
    mine: list[JobResult] = []
    canary: dict[str, float] = {}
    for prefix in ("arq:result:agent:", "arq:job:agent:"):
        async for key in redis.scan_iter(match=prefix + "*", count=1000):
            name = key.decode()
            if (raw := await redis.get(key)) is None:
                continue
            finished = prefix == "arq:result:agent:"
            if name.endswith(run.event_suffix):
                if finished:
                    mine.append(deserialize_result(raw))
                continue
            queued = (deserialize_result(raw) if finished else deserialize_job(raw)).enqueue_time
            canary[name.rsplit(":", 1)[1]] = queued.timestamp()
    return mine, canary


def canary_ticks(run: Run, canary: dict[str, float], minute: float, ended: float) -> dict[str, Any]:
    """Which of the minutes after W the cron scheduled, and how late: the canary run's
    enqueue time minus the start of the minute it was scheduled for. A minute missing
    between two scheduled ones was lost: its tick ran after the minute was over."""
    shift = run.quarter - datetime.fromtimestamp(minute, UTC)  # simulated - wall
    late: dict[int, float] = {}
    for stamp, queued in canary.items():
        wall = (datetime.strptime(stamp, "%Y%m%dT%H%MZ").replace(tzinfo=UTC) - shift).timestamp()
        late[round((wall - minute) / 60)] = round(queued - wall, 1)
    elapsed = int((ended - minute) // 60)  # minute ticks that were due while measuring
    return {
        "late_seconds_by_minute_after_w": dict(sorted(late.items())),
        "lost": [m for m in range(1, max(late, default=0)) if m % 15 and m not in late],
        "not_scheduled_by_end": [m for m in range(max(late, default=0) + 1, elapsed + 1) if m % 15],
    }


async def measure(
    run: Run,
    worker: subprocess.Popen[bytes],
    minute: float,
    redis_url: str,
    expected: int,
    deadline: float,
) -> dict[str, Any]:
    """From W - 1 s until every row of the minute is finished, or the deadline."""
    engine = create_async_engine(DATABASE_URL)
    redis = Redis.from_url(redis_url)
    probe = Probe(worker.pid, redis)
    try:
        await asyncio.sleep(max(0.0, minute - 1.0 - time.time()))
        commands_before = (await redis.info("stats"))["total_commands_processed"]
        sampler = asyncio.create_task(probe.run())
        done = 0
        while time.time() < deadline:
            done = await finished_count(engine, run)
            if done >= expected or worker.poll() is not None:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(AFTER_SECONDS)
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        commands = (await redis.info("stats"))["total_commands_processed"] - commands_before
        rows = await execution_rows(engine, run)
        jobs, canary = await job_records(redis, run)
    finally:
        await redis.aclose()
        await engine.dispose()
    return {
        "ended": time.time(),
        "canary": canary,
        "finished_when_measured": done,
        "worker_exited": worker.poll(),
        "rows": rows,
        "jobs": jobs,
        "database": probe.summary(),
        "redis_commands": commands,
    }


def analyse(
    run: Run,
    raw: dict[str, Any],
    minute: float,
    calls: Sequence[Call],
    expected: int,
) -> dict[str, Any]:
    """Times relative to the scheduled minute W, in seconds."""
    quarter = run.quarter
    rows: list[dict[str, Any]] = raw["rows"]
    finished = sorted(
        (r["finished_at"] - quarter).total_seconds() for r in rows if r["finished_at"]
    )
    started = sorted((r["started_at"] - quarter).total_seconds() for r in rows)
    service = [
        (r["finished_at"] - r["started_at"]).total_seconds() for r in rows if r["finished_at"]
    ]
    intervals = [
        ((r["started_at"] - quarter).total_seconds(), (r["finished_at"] - quarter).total_seconds())
        for r in rows
        if r["finished_at"]
    ]
    window = (finished[-1] - started[0]) if finished else 0.0

    def at(share: float) -> float | None:
        """Seconds after W by which `share` of the expected runs had finished."""
        rank = math.ceil(share * expected)
        return round(finished[rank - 1], 2) if len(finished) >= rank else None

    jobs: list[JobResult] = raw["jobs"]
    tries = [j.job_try for j in jobs]
    # The cron job queues them one after the other once due_time_runs has read the triggers.
    enqueued = sorted(j.enqueue_time.timestamp() - minute for j in jobs)
    failures = Counter(
        f"{r['status']}/{r['outcome']}: {r['error']}" for r in rows if r["status"] != "SUCCEEDED"
    )
    return {
        "label": run.label,
        "max_jobs": run.max_jobs,
        "scheduled_minute_simulated": quarter.isoformat(),
        "scheduled_minute_wall": datetime.fromtimestamp(minute, UTC).isoformat(),
        "rows": len(rows),
        "finished": len(finished),
        "statuses": dict(Counter(str(r["status"]) for r in rows)),
        "outcomes": dict(Counter(str(r["outcome"]) for r in rows)),
        "failures": dict(failures.most_common(10)),
        "enqueued_s": {
            "first": round(enqueued[0], 3) if enqueued else None,
            "last": round(enqueued[-1], 3) if enqueued else None,
        },
        "first_start_s": round(started[0], 3) if started else None,
        "all_done_s": round(finished[-1], 2) if len(finished) >= expected else None,
        "done_at_s": {f"{p}%": at(p / 100) for p in (10, 50, 90, 100)},
        "runs_per_second": round(len(finished) / window, 2) if window else None,
        "run_seconds": harness.summarize(service),  # claim to finish, model call included
        "model_latency_ms": harness.summarize(
            [r["latency_ms"] / 1000 for r in rows if r["latency_ms"] is not None]
        ),
        "wait_before_start": harness.summarize(started),
        "concurrent_runs": {
            "max": max_overlap(intervals),
            "mean": round(sum(e - s for s, e in intervals) / window, 1) if window else None,
        },
        "jobs": {
            "results": len(jobs),
            "busy_retries": sum(t - 1 for t in tries),
            "max_tries": max(tries, default=0),
            "jobs_retried": sum(1 for t in tries if t > 1),
            "tries_histogram": dict(sorted(Counter(tries).items())),
            "failed": sum(1 for j in jobs if not j.success),
        },
        "model": model_calls(calls, run, expected, minute),
        "later_cron_ticks": canary_ticks(run, raw["canary"], minute, raw["ended"]),
        "database": raw["database"],
        "redis_commands": raw["redis_commands"],
        "worker_exited": raw["worker_exited"],
    }


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True, slots=True)
class Options:
    users: int
    agents: int
    max_jobs: list[int]
    quiet_wait: float
    profile: bool
    deadline: float  # epoch seconds: measuring stops by then, whatever is unfinished


def next_minute(lead: float) -> float:
    """The first whole wall-clock minute at least `lead` seconds from now (epoch seconds)."""
    return math.ceil((time.time() + lead) / 60) * 60


def profile(pid: int, name: str) -> list[subprocess.Popen[bytes]]:
    return [
        harness.py_spy(pid, harness.PROFILES / f"{name}-worker.{ext}", fmt)
        for fmt, ext in (("flamegraph", "svg"), ("raw", "txt"))
    ]


def wait_for_heartbeat(redis: SyncRedis, proc: subprocess.Popen[bytes], until: float) -> None:
    while not redis.exists(WORKER_HEARTBEAT_KEY):
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode}; see bench/.out")
        if time.time() > until:
            raise TimeoutError("the worker did not start before its minute")
        time.sleep(0.1)


def measure_one(
    run: Run,
    children: harness.Children,
    env: dict[str, str],
    fake: HoldingOpenAI,
    pids: dict[str, list[int]],
    opts: Options,
) -> dict[str, Any]:
    expected = opts.users * opts.agents
    ours = [p for group in pids.values() for p in group]
    background = harness.wait_quiet(ours, opts.quiet_wait)
    minute = next_minute(LEAD_SECONDS)
    wall = datetime.fromtimestamp(minute, UTC)
    clock = {
        "KIANAX_SIMULATED_TIME_START": run.quarter.isoformat(),
        "KIANAX_SIMULATED_TIME_ANCHOR": wall.isoformat(),
    }
    redis = SyncRedis.from_url(env["KIANAX_REDIS_URL"])
    redis.delete(WORKER_HEARTBEAT_KEY)  # the previous worker's
    name = f"agents-{run.label}"
    feed = children.start(f"{name}-feed", harness.kianax("feed"), env | clock)
    worker = children.start(f"{name}-worker", run.worker_argv(), env | clock)
    try:
        wait_for_heartbeat(redis, worker, minute - 2.0)
        groups = pids | {"worker": [worker.pid], "feed": [feed.pid]}
        time.sleep(max(0.0, minute - 1.0 - time.time()))
        calls_before = len(fake.calls)
        spies = profile(worker.pid, name) if opts.profile else []
        before = harness.CpuMark.take(groups)
        deadline = min(minute + DRAIN_SECONDS, opts.deadline)
        raw = asyncio.run(measure(run, worker, minute, env["KIANAX_REDIS_URL"], expected, deadline))
        after = harness.CpuMark.take(groups)
        for spy in spies:
            harness.stop_spy(spy)
    finally:
        children.stop(worker)
        children.stop(feed)
        # Jobs left unfinished must not run in the next measurement (this benchmark's own
        # redis-server: nobody else's data is in it).
        redis.flushall()
    result = analyse(run, raw, minute, fake.calls[calls_before:], expected)
    if spies:
        result["profile"] = harness.hot_spots(harness.PROFILES / f"{name}-worker.txt")
    cores = after.cores_since(before)
    used = after.seconds_since(before)
    postgres = raw["database"]["backend_cpu_seconds"] / (after.at - before.at)
    cores["postgres"] = postgres
    cores["others"] = cores["machine"] - sum(cores[k] for k in groups) - postgres
    result["cores"] = {k: round(v, 2) for k, v in cores.items()}
    result["worker_cpu_seconds"] = round(used["worker"], 2)
    result["worker_cpu_ms_per_run"] = round(1000 * used["worker"] / max(result["finished"], 1), 1)
    result["measured_seconds"] = round(after.at - before.at, 1)
    result["background_cores_before"] = round(background, 2)
    return result


def orchestrate(opts: Options) -> dict[str, Any]:
    harness.OUT.mkdir(exist_ok=True)
    redis_port = harness.free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    port = harness.free_port()
    result: dict[str, Any] = {
        "benchmark": "agents",
        "settings": {
            "users": opts.users,
            "agents_per_user": opts.agents,
            "agents": opts.users * opts.agents,
            "model_seconds": MODEL_SECONDS,
            "cron": CRON,
            "worker_max_jobs_default": WorkerSettings.max_jobs,
            "max_runs_per_user": MAX_RUNS_PER_USER,
            "created_through": "GraphQL API: register, then createAgent with its TIME trigger",
        },
    }
    asyncio.run(recreate_database())
    with harness.Children(harness.OUT) as children, contextlib.ExitStack() as stack:
        redis_proc = start_redis(children, redis_port)
        result["machine"] = harness.machine(redis_url)
        fake = HoldingOpenAI()
        fake.start()
        stack.callback(fake.stop)
        env = harness.kianax_env(
            port,
            KIANAX_DATABASE_URL=DATABASE_URL,
            KIANAX_REDIS_URL=redis_url,
            KIANAX_OPENAI_API_KEY=API_KEY,
            KIANAX_OPENAI_BASE_URL=fake.base_url,
        )
        harness.migrate(env)
        api = children.start("agents-api", harness.kianax("api"), env)
        harness.wait_ready(port, [api], 120)
        result["setup"] = asyncio.run(setup(port, opts.users, opts.agents))
        # Only the worker should hold PostgreSQL sessions while measuring.
        children.stop(api)
        pids = {"redis": [redis_proc.pid], "bench": [os.getpid()]}
        runs = [
            Run(f"max_jobs-{n}", n, FIRST_QUARTER + timedelta(minutes=15 * i))
            for i, n in enumerate([WorkerSettings.max_jobs, *opts.max_jobs])
        ]
        result["runs"] = []
        for run in runs:
            if time.time() + LEAD_SECONDS + 60 + MIN_MEASURE_SECONDS > opts.deadline:
                result.setdefault("skipped", []).append(run.label)
                continue
            result["runs"].append(measure_one(run, children, env, fake, pids, opts))
        result["model_calls_total"] = len(fake.calls)
    return result


def serve_worker(max_jobs: int) -> int:
    """`kianax worker` (kianax.cli.cmd_worker) with WorkerSettings.max_jobs overridden."""
    from arq import run_worker

    from jobs.worker import redis_settings
    from kianax.logs import configure_logging
    from kianax.settings import load_settings

    settings = load_settings()
    configure_logging(settings.log_level, json_format=settings.log_json)
    assert settings.redis_url
    run_worker(
        WorkerSettings,  # type: ignore[arg-type]
        redis_settings=redis_settings(settings.redis_url),
        queue_name=settings.job_queue,
        max_jobs=max_jobs,
    )
    return 0


# --------------------------------------------------------------------------- the report


def _s(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f} s" if abs(value) < 10 else f"{value:.1f} s"


def _ticks(ticks: dict[str, Any]) -> str:
    late = ticks["late_seconds_by_minute_after_w"].values()
    lost = len(ticks["lost"]) + len(ticks["not_scheduled_by_end"])
    return f"{_s(max(late, default=None))} / {lost}"


def report(result: dict[str, Any]) -> str:
    runs: list[dict[str, Any]] = result["runs"]
    main = runs[0]
    n = result["settings"]["agents"]
    timeline = harness.table(
        [
            "worker",
            "runs queued (first → last)",
            "first run starts",
            "10 %",
            "50 %",
            "90 %",
            "100 % (all done)",
            "runs/s",
            "run p50 (model 1 s)",
            "concurrent runs mean / max",
            "next minutes' cron ticks: latest / lost",
        ],
        [
            [
                f"max_jobs={r['max_jobs']}" + (" (default)" if r is main else ""),
                f"{_s(r['enqueued_s']['first'])} → {_s(r['enqueued_s']['last'])}",
                _s(r["first_start_s"]),
                _s(r["done_at_s"]["10%"]),
                _s(r["done_at_s"]["50%"]),
                _s(r["done_at_s"]["90%"]),
                _s(r["done_at_s"]["100%"]),
                r["runs_per_second"],
                f"{r['run_seconds'].get('p50', 0) / 1000:.2f} s",
                f"{r['concurrent_runs']['mean']} / {r['concurrent_runs']['max']}",
                _ticks(r["later_cron_ticks"]),
            ]
            for r in runs
        ],
    )
    outcomes = harness.table(
        [
            "worker",
            "rows finished / expected",
            "outcomes",
            "busy-retries (jobs retried, max tries)",
            "due jobs in queue max / mean",
            "model calls (distinct agents, duplicates)",
            "worker cores (CPU ms/run)",
            "worker RSS MiB first → peak",
            "PG sessions max (mean idle-in-tx)",
            "PG cores",
            "other cores",
        ],
        [
            [
                f"max_jobs={r['max_jobs']}",
                f"{r['finished']} / {n}",
                ", ".join(f"{k} {v}" for k, v in r["outcomes"].items()),
                f"{r['jobs']['busy_retries']:,} ({r['jobs']['jobs_retried']}, "
                f"{r['jobs']['max_tries']})",
                f"{r['database']['due_jobs']['max']} / {r['database']['due_jobs']['mean']}",
                f"{r['model']['calls']} ({r['model']['distinct_agents']}, "
                f"{r['model']['duplicates']})",
                f"{r['cores']['worker']:.2f} ({r['worker_cpu_ms_per_run']})",
                f"{r['database']['worker_rss_mib']['first']} → "
                f"{r['database']['worker_rss_mib']['peak']}",
                f"{r['database']['connections_max']} "
                f"({r['database']['by_state_mean'].get('idle in transaction', 0)})",
                r["cores"]["postgres"],
                r["cores"]["others"],
            ]
            for r in runs
        ],
    )
    skipped = result.get("skipped")
    note = f"\n\nskipped (no time left before the hard limit): {skipped}" if skipped else ""
    return timeline + "\n\n" + outcomes + note


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agents", description=__doc__)
    parser.add_argument("--users", type=int, default=50, help="users, each with --agents agents")
    parser.add_argument("--agents", type=int, default=MAX_AGENTS, help="agents per user")
    parser.add_argument(
        "--max-jobs",
        type=int,
        action="append",
        default=None,
        help="after the default worker, measure one with this max_jobs (repeatable; default: 100)",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=60, help="max seconds to wait for an idle machine"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the worker")
    parser.add_argument("--serve-worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_worker is not None:
        return serve_worker(args.serve_worker)
    if not 1 <= args.users <= 250:
        parser.error("--users must be between 1 and 250 (10 sign-ups per source address)")
    if not 1 <= args.agents <= MAX_AGENTS:
        parser.error(f"--agents must be between 1 and {MAX_AGENTS} (the per-user quota)")
    extra = [100] if args.max_jobs is None else args.max_jobs
    deadline = time.time() + HARD_LIMIT_SECONDS - STOP_BEFORE_LIMIT_SECONDS
    opts = Options(args.users, args.agents, extra, args.quiet_wait, args.profile, deadline)
    with harness.hard_limit(HARD_LIMIT_SECONDS):
        result = orchestrate(opts)
    name = "agents" + ("-profile" if opts.profile else "") + f"-{opts.users}x{opts.agents}"
    print(f"results: {harness.save(name, result).relative_to(harness.REPO)}")
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

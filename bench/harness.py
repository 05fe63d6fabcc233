"""The benchmarks' shared plumbing: machine facts, the servers, child processes, statistics.

Everything here targets 127.0.0.1 only. Process figures are read from /proc (the same
counters psutil reads), so the benchmarks are Linux-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any

import httpx
from redis import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
OUT = BENCH / ".out"  # logs and raw samples of the last run (not committed)
RESULTS = BENCH / "results"
PROFILES = BENCH / "profiles"
PY_SPY = Path(sys.executable).parent / "py-spy"

BENCH_DB = "kianax_bench"
PG_ADMIN_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
DATABASE_URL = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{BENCH_DB}"
REDIS_URL = "redis://127.0.0.1:6379/1"
# A Wednesday, 10:00 in New York: the simulated market is open whatever today is.
SIMULATED_START = "2026-11-18T15:00:00+00:00"

CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- the machine


def machine(redis_url: str = REDIS_URL) -> dict[str, str]:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    model = next(
        (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line),
        platform.processor(),
    )
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    return {
        "nproc": nproc,
        "cpu": model,
        "memory": f"{_meminfo('MemTotal') / 2**20:.1f} GiB",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": asyncio.run(_postgres_version()),
        "redis": _redis_version(redis_url),
        "code": _code_version(),
    }


def _code_version() -> str:
    """The commit measured, and whether the working tree had uncommitted changes."""
    git = ["git", "-C", str(REPO)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    status = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True)
    changed = len(status.stdout.splitlines())
    return (
        f"{head.stdout.strip()} + {changed} uncommitted paths" if changed else head.stdout.strip()
    )


def _redis_version(url: str) -> str:
    info = Redis.from_url(url).info("server")
    assert isinstance(info, dict)
    return str(info["redis_version"])


def _meminfo(field: str) -> int:
    """A /proc/meminfo field, in KiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


async def _postgres_version() -> str:
    engine = create_async_engine(PG_ADMIN_URL)
    try:
        async with engine.connect() as connection:
            return str((await connection.execute(text("SHOW server_version"))).scalar_one())
    finally:
        await engine.dispose()


# --------------------------------------------------------------------------- processes


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (everything but idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK


def child_pids(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_text().rstrip("\0").split("\0")


def try_cpu_seconds(pid: int) -> float | None:
    """cpu_seconds, or None when the process is gone (or not ours to read)."""
    try:
        return cpu_seconds(pid)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


@dataclass(frozen=True, slots=True)
class CpuMark:
    """CPU seconds of groups of processes and of the whole machine at one instant."""

    at: float
    processes: Mapping[str, Mapping[int, float]]
    machine: float

    @classmethod
    def take(cls, groups: Mapping[str, Sequence[int]]) -> CpuMark:
        processes = {
            name: {pid: v for pid in pids if (v := try_cpu_seconds(pid)) is not None}
            for name, pids in groups.items()
        }
        return cls(at=time.monotonic(), processes=processes, machine=machine_busy_seconds())

    def seconds_since(self, start: CpuMark) -> dict[str, float]:
        """CPU seconds per group between two marks (processes present at both)."""
        return {
            name: sum(
                v - start.processes[name][pid]
                for pid, v in now.items()
                if pid in start.processes[name]
            )
            for name, now in self.processes.items()
        }

    def cores_since(self, start: CpuMark) -> dict[str, float]:
        """Average cores used per group (and by the whole machine) between two marks."""
        elapsed = self.at - start.at
        used = {name: v / elapsed for name, v in self.seconds_since(start).items()}
        used["machine"] = (self.machine - start.machine) / elapsed
        return used


def wait_quiet(ours: Sequence[int], max_wait: float, threshold: float = 0.3) -> float:
    """Wait (at most `max_wait` s) until processes other than `ours` use under `threshold`
    cores over 3 s: other people's work on a 2-core machine skews the numbers. Returns the
    last background load seen, in cores."""
    deadline = time.monotonic() + max_wait
    while True:
        start = CpuMark.take({"ours": ours})
        time.sleep(3.0)
        cores = CpuMark.take({"ours": ours}).cores_since(start)
        background = cores["machine"] - cores["ours"]
        if background < threshold or time.monotonic() >= deadline:
            return background


class Children:
    """Child processes in their own sessions, stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        for log in self._logs:
            log.close()

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        pipes: bool = False,
    ) -> subprocess.Popen[bytes]:
        """`pipes`: stdin and stdout are pipes (the benchmark's own workers talk over them)."""
        log = (self.log_dir / f"{name}.log").open("ab")
        self._logs.append(log)
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=dict(env),
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else log,
            stderr=log,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # Whatever the child started and left behind is in its session's process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """One line from a child's stdout pipe, or TimeoutError."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise TimeoutError(f"no answer from pid {proc.pid} within {timeout:g}s")
    return proc.stdout.readline().decode().strip()


def write_line(proc: subprocess.Popen[bytes], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line.encode() + b"\n")
    proc.stdin.flush()


@contextlib.contextmanager
def hard_limit(seconds: int) -> Iterator[None]:
    """Abort the whole run after `seconds` (SIGALRM); SIGTERM aborts it too. Cleanup runs."""

    def abort(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"aborted by signal {signum} (hard limit {seconds}s)")

    previous_alarm = signal.signal(signal.SIGALRM, abort)
    previous_term = signal.signal(signal.SIGTERM, abort)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous_alarm)
        signal.signal(signal.SIGTERM, previous_term)


# --------------------------------------------------------------------------- servers


def reset_state() -> None:
    """Drop and recreate the benchmark database; flush Redis db 1 (nobody else's)."""
    asyncio.run(_recreate_database())
    Redis.from_url(REDIS_URL).flushdb()


async def _recreate_database() -> None:
    engine = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)"))
            await connection.execute(text(f"CREATE DATABASE {BENCH_DB}"))
    finally:
        await engine.dispose()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def kianax_env(port: int, **extra: str) -> dict[str, str]:
    """The environment of a Kianax process on the benchmark's database and Redis db."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIANAX_")}
    env.update(
        KIANAX_ENV="development",
        KIANAX_HOST="127.0.0.1",
        KIANAX_PORT=str(port),
        KIANAX_DATABASE_URL=DATABASE_URL,
        KIANAX_REDIS_URL=REDIS_URL,
        KIANAX_LOG_LEVEL="WARNING",
        KIANAX_SIMULATED_TIME_START=SIMULATED_START,
        # Long enough that no token expires during a run.
        KIANAX_ACCESS_TOKEN_TTL_SECONDS="3600",
    )
    env.update(extra)
    return env


def kianax(*command: str) -> list[str]:
    return [sys.executable, "-m", "kianax", *command]


def migrate(env: Mapping[str, str]) -> None:
    subprocess.run(kianax("migrate"), cwd=REPO, env=dict(env), check=True, timeout=180)


def wait_ready(port: int, procs: Sequence[subprocess.Popen[bytes]], timeout: float) -> None:
    """Until /readyz answers 200; fails early if one of `procs` exits."""
    deadline = time.monotonic() + timeout
    with httpx.Client(trust_env=False, timeout=2.0) as client:
        while time.monotonic() < deadline:
            for proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{proc.args!r} exited with {proc.returncode}; see bench/.out"
                    )
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    return
            time.sleep(0.2)
    raise TimeoutError(f"the API on port {port} was not ready within {timeout:g}s")


# --------------------------------------------------------------------------- statistics


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """Count, mean and nearest-rank percentiles of latencies given in seconds, in ms."""
    if not seconds:
        return {"n": 0}
    ordered = sorted(seconds)

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] * 1000

    return {
        "n": len(ordered),
        "mean": sum(ordered) / len(ordered) * 1000,
        "p50": rank(50),
        "p95": rank(95),
        "p99": rank(99),
        "max": ordered[-1] * 1000,
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def save(name: str, result: Mapping[str, Any]) -> Path:
    """bench/results/<name>-<UTC time>.json: every run is kept."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{datetime.now(UTC):%Y%m%dT%H%MZ}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


# --------------------------------------------------------------------------- profiles


def py_spy(pid: int, out: Path, fmt: str) -> subprocess.Popen[bytes]:
    """Start sampling `pid` at 100 Hz (`fmt`: flamegraph or raw) until `stop_spy`."""
    if not PY_SPY.exists():
        raise RuntimeError(f"{PY_SPY} is missing: .venv/bin/pip install py-spy")
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [str(PY_SPY), "record", "--nonblocking", "-r", "100", "-d", "900"]
    argv += ["-f", fmt, "-o", str(out), "--pid", str(pid)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_spy(spy: subprocess.Popen[bytes]) -> None:
    """py-spy writes its output when interrupted."""
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()
        raise


_LINE_NUMBER = re.compile(r":\d+\)$")
_SITE = re.compile(r".*/site-packages/")


def _frame(raw: str) -> str:
    """`func (/long/path/site-packages/pkg/mod.py:12)` -> `func (pkg/mod.py)`."""
    frame = _LINE_NUMBER.sub(")", raw)
    frame = _SITE.sub("", frame)
    return frame.replace(str(REPO) + "/", "").replace(sys.base_prefix + "/lib/", "")


def _package(frame: str) -> str:
    """The top-level package (or stdlib module) a frame's file belongs to."""
    inside = frame.rsplit("(", 1)[-1].rstrip(")")
    parts = inside.split("/")
    if parts[0].startswith("python3"):
        return "stdlib:" + (parts[1].removesuffix(".py") if len(parts) > 1 else "?")
    return parts[0].removesuffix(".py")


def hot_spots(collapsed: Path, top: int = 25) -> dict[str, Any]:
    """Read py-spy's raw (collapsed) output: share of active samples by package and frame.

    `self` is where the interpreter was (the leaf frame); `inclusive` counts a frame once
    for every sample it is on the stack of.
    """
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    pending = ""  # a frame name may contain line breaks: a record ends with " <count>"
    for line in collapsed.read_text().splitlines():
        pending += line
        stack, _, count_text = pending.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        pending = ""
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        packages[_package(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in counter.most_common(top)]

    return {
        "samples": total,
        "self_by_package": share(packages),
        "self": share(own),
        "inclusive": share(inclusive),
    }

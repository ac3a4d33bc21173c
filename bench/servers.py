"""Starting, measuring and stopping the servers under test, each a real subprocess.

CPU time and memory are read from /proc for the server process and its descendants only
(uvicorn --workers forks children), never for the benchmark's own client processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

from app.core.security import create_access_token, hash_password

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
SECRET = "bench-secret-key-long-enough-for-hs256-signatures"  # noqa: S105 - throwaway
PASSWORD = "bench password 1234"  # noqa: S105 - throwaway
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Limits that would otherwise throttle or cut a load test; unknown names are ignored.
CHATROOM_BENCH_ENV = {
    "CHATROOM_SECRET_KEY": SECRET,
    "CHATROOM_SEND_BUFFER_FRAMES": "1000000",
    "CHATROOM_SEND_BUFFER_BYTES": str(1 << 30),
    "CHATROOM_RATE_LIMIT": "0",
    "CHATROOM_RATE_BURST": "0",
    "CHATROOM_MAX_CONNECTIONS_PER_USER": "0",
    "CHATROOM_OPEN_REGISTRATION": "true",
    "CHATROOM_HISTORY_LIMIT": "50",
}

# PostgreSQL for `--database postgres` (trust auth): a fresh database per server, dropped after.
POSTGRES_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class ServerSpec:
    """What to start: chatroom (through `chatroom serve` unless an implementation is forced)
    or the tutorial baseline, with uvicorn's ws/http/loop choices ("auto" = uvicorn's), and
    for chatroom the worker count (`serve --workers N`), broker URL and database engine."""

    kind: str  # "chatroom" | "tutorial" | "depends" | "bare" (both bench/depends_server.py)
    ws: str = "auto"
    http: str = "auto"
    loop: str = "auto"
    workers: int = 1
    broker: str = "memory://"
    database: str = "sqlite"  # "sqlite" (a file, WAL) | "postgres" (POSTGRES_ADMIN_DSN's server)

    @property
    def default_uvicorn(self) -> bool:
        return (self.ws, self.http, self.loop) == ("auto", "auto", "auto")

    @property
    def name(self) -> str:
        parts = [] if self.default_uvicorn else [f"ws={self.ws},http={self.http},loop={self.loop}"]
        if self.workers != 1 or not self.broker.startswith("memory"):
            parts.append(f"workers={self.workers},{self.broker.split(':', 1)[0]}")
        if self.database != "sqlite":
            parts.append(self.database)
        return f"{self.kind}[{','.join(parts)}]" if parts else self.kind


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def descendants(pid: int) -> list[int]:
    """pid and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes, in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLOCK_TICKS


def memory_kb(pids: list[int], key: str) -> int:
    """Sum of a /proc/<pid>/status field (VmRSS, VmHWM) in KiB."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


@functools.cache
def bench_token(user: str) -> str:
    return create_access_token(user, key=SECRET, minutes=600)


@dataclass
class Server:
    """A running server subprocess and its scratch directory."""

    spec: ServerSpec
    port: int
    process: subprocess.Popen[bytes]
    workdir: tempfile.TemporaryDirectory[str]
    tokens: dict[str, str] = field(default_factory=dict)
    postgres_database: str | None = None  # dropped by stop()
    known_pids: set[int] = field(default_factory=set)  # every pid seen below the server

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def database(self) -> Path:
        return Path(self.workdir.name) / "bench.db"

    def pids(self) -> list[int]:
        found = descendants(self.pid)
        self.known_pids.update(found)
        return found

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pids())

    def rss_kb(self) -> int:
        return memory_kb(self.pids(), "VmRSS")

    def peak_rss_kb(self) -> int:
        return memory_kb(self.pids(), "VmHWM")

    def ws_url(self, room: str, client_id: int, user: str) -> str:
        if self.spec.kind == "chatroom":
            return f"ws://127.0.0.1:{self.port}/items/{room}/ws?token={self.tokens[user]}"
        if self.spec.kind == "depends":
            # The same kind of token chatroom gets: the page keeps the URL and the token's
            # string for the socket's life, so a shorter one would flatter it by ~0.7 KiB.
            token = bench_token(user)
            return f"ws://127.0.0.1:{self.port}/items/{room or 'storm'}/ws?token={token}"
        if self.spec.kind == "bare":
            return f"ws://127.0.0.1:{self.port}/bare/ws"
        if room == "":
            return f"ws://127.0.0.1:{self.port}/ws/{client_id}"
        return f"ws://127.0.0.1:{self.port}/rooms/{room}/ws/{client_id}"

    def count_messages(self) -> int:
        """Rows in chatroom's messages table (read beside the running server, WAL)."""
        if self.postgres_database is not None:
            sql = "SELECT count(*) FROM messages"
            return int(str(asyncio.run(_postgres(self.postgres_database, sql, fetch=True))))
        with sqlite3.connect(self.database) as connection:
            (count,) = connection.execute("SELECT count(*) FROM messages").fetchone()
        return int(count)

    def stop(self) -> None:
        self.pids()  # remember the workers, to make sure none outlives the parent
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        deadline = time.monotonic() + 10
        for pid in sorted(self.known_pids - {self.pid}):
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self.postgres_database is not None:
            drop_postgres_database(self.postgres_database)
            self.postgres_database = None
        self.workdir.cleanup()


def _alive(pid: int) -> bool:
    """pid is a live process (not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _postgres_dsn(database: str) -> str:
    return POSTGRES_ADMIN_DSN.rsplit("/", 1)[0] + "/" + database


async def _postgres(
    database: str,
    sql: str,
    *args: object,
    fetch: bool = False,
    many: Sequence[tuple[object, ...]] | None = None,
) -> object:
    import asyncpg  # type: ignore[import-untyped]

    connection = await asyncpg.connect(_postgres_dsn(database), timeout=5)
    try:
        if many is not None:
            await connection.executemany(sql, many)
            return None
        if fetch:
            return await connection.fetchval(sql, *args)
        return await connection.execute(sql, *args)
    finally:
        await connection.close()


def postgres_unavailable() -> str | None:
    """Why POSTGRES_ADMIN_DSN cannot be used, or None."""
    try:
        asyncio.run(_postgres("postgres", "SELECT 1", fetch=True))
    except Exception as exc:  # asyncpg missing, refused, auth: all mean "skip"
        return f"{type(exc).__name__}: {exc}"
    return None


def create_postgres_database() -> str:
    name = f"chatroom_bench_{uuid4().hex[:10]}"
    asyncio.run(_postgres("postgres", f'CREATE DATABASE "{name}"'))
    return name


def drop_postgres_database(name: str) -> None:
    asyncio.run(_postgres("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def database_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def migrate(env: dict[str, str]) -> None:
    """`chatroom migrate` against env's CHATROOM_DATABASE_URL."""
    subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"],
        env=env,
        cwd=source_dir,
        check=True,
        capture_output=True,
    )


def seed_users(database: Path | str, names: list[str]) -> None:
    """Accounts written straight into the migrated database with one real Argon2 hash:
    registering thousands through /auth/register would spend minutes hashing.
    database: a SQLite file, or the name of a PostgreSQL database."""
    password_hash = hash_password(PASSWORD)
    if isinstance(database, str):
        rows = [(name, password_hash, datetime.now(UTC)) for name in names]
        sql = "INSERT INTO users (username, password_hash, created_at) VALUES ($1, $2, $3)"
        asyncio.run(_postgres(database, sql, many=rows))
        return
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    with sqlite3.connect(database) as connection:
        connection.executemany(
            "INSERT INTO users (username, password_hash, created_at) VALUES (?, ?, ?)",
            [(name, password_hash, now) for name in names],
        )


# Where the servers import chatroom from: the working tree, or a snapshot (see snapshot()).
source_dir = REPO_DIR


def snapshot(revision: str, into: Path) -> None:
    """Serve chatroom as committed at revision instead of the (shared, changing) work tree."""
    global source_dir
    archive = subprocess.run(
        ["git", "-C", str(REPO_DIR), "archive", revision, "app", "migrations", "alembic.ini"]
        + ["templates", "static"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    source_dir = into


def _environment(workdir: Path, spec: ServerSpec, postgres_database: str | None) -> dict[str, str]:
    env = dict(os.environ) | CHATROOM_BENCH_ENV
    if postgres_database is not None:
        url = "postgresql+asyncpg" + _postgres_dsn(postgres_database).removeprefix("postgresql")
        env["CHATROOM_DATABASE_URL"] = url
    else:
        env["CHATROOM_DATABASE_URL"] = database_url(workdir / "bench.db")
    env["CHATROOM_BROKER_URL"] = spec.broker
    # Ahead of the editable install's path, so a snapshot's `app` wins.
    env["PYTHONPATH"] = str(source_dir)
    return env


def start(
    spec: ServerSpec, users: list[str], attempts: int = 3, extra_env: dict[str, str] | None = None
) -> Server:
    """Start a fresh server; retried, as others may be editing app/ while the bench runs."""
    for attempt in range(1, attempts + 1):
        try:
            return _start(spec, users, extra_env=extra_env)
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            if attempt == attempts:
                raise
            print(f"# {spec.name} failed to start ({exc!s:.200}); retrying", file=sys.stderr)
            time.sleep(10)
    raise AssertionError("unreachable")


def _start(
    spec: ServerSpec,
    users: list[str],
    timeout: float = 30.0,
    extra_env: dict[str, str] | None = None,
) -> Server:
    """Start a fresh server (fresh database) with these users, and wait until it answers
    (with --workers N: until every worker has started, so that none gets all the sockets)."""
    workdir = tempfile.TemporaryDirectory(prefix="chatroom-bench-")
    path = Path(workdir.name)
    postgres_database = None
    if spec.kind == "chatroom" and spec.database == "postgres":
        postgres_database = create_postgres_database()
    env = _environment(path, spec, postgres_database) | (extra_env or {})
    port = free_port()
    tokens: dict[str, str] = {}
    try:
        if spec.kind == "chatroom":
            migrate(env)
            seed_users(postgres_database or path / "bench.db", users)
            tokens = {name: bench_token(name) for name in users}
    except BaseException:
        if postgres_database is not None:
            drop_postgres_database(postgres_database)
        workdir.cleanup()
        raise
    if spec.kind == "chatroom" and spec.default_uvicorn:
        command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
        command += ["--workers", str(spec.workers)]
    elif spec.kind == "chatroom":
        if spec.workers != 1:
            raise ValueError("bench/serve_chatroom.py runs one worker")
        command = [sys.executable, str(BENCH_DIR / "serve_chatroom.py"), "--port", str(port)]
    elif spec.kind in ("depends", "bare"):
        command = [sys.executable, str(BENCH_DIR / "depends_server.py"), "--port", str(port)]
    else:
        command = [sys.executable, str(BENCH_DIR / "tutorial_server.py"), "--port", str(port)]
    if not spec.default_uvicorn:
        command += ["--ws", spec.ws, "--http", spec.http, "--loop", spec.loop]
    log = open(path / "server.log", "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(command, env=env, cwd=source_dir, stdout=log, stderr=log)
    log.close()
    server = Server(spec, port, process, workdir, tokens, postgres_database)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            output = (path / "server.log").read_text(errors="replace")
            server.stop()
            raise RuntimeError(f"{spec.name} exited at start:\n{output}")
        try:
            started = server_log(server).count("Application startup complete")
            if spec.workers > 1 and started < spec.workers:
                raise OSError(f"{started} of {spec.workers} workers started")
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"{spec.name} did not start within {timeout}s") from None
            time.sleep(0.05)
    return server


def sockets_per_process(server: Server) -> list[int]:
    """Established TCP connections on the server's port held by each of its processes
    (the workers, with --workers N), largest first; processes holding none are left out."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    if int(fields[1].rsplit(":", 1)[1], 16) == server.port and fields[3] == "01":
                        inodes.add(fields[9])
        except OSError:
            continue
    counts = []
    for pid in server.pids():
        held = 0
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:[") and target[8:-1] in inodes:
                        held += 1
        except OSError:
            continue
        if held:
            counts.append(held)
    return sorted(counts, reverse=True)


def server_log(server: Server) -> str:
    return (Path(server.workdir.name) / "server.log").read_text(errors="replace")


# -- Redis (the multi-worker scenario's broker) ------------------------------------------


def redis_unavailable(url: str) -> str | None:
    """Why the Redis at url cannot be used, or None."""
    try:
        import redis

        with redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5) as client:
            client.ping()
    except Exception as exc:  # the package missing, refused, auth: all mean "skip"
        return f"{type(exc).__name__}: {exc}"
    return None


def redis_flushdb(url: str) -> None:
    """Empty url's database number (presence keys); pub/sub channels have no database."""
    import redis

    with redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5) as client:
        client.flushdb()


def redis_server_pid(url: str) -> int | None:
    """redis-server's pid, if it runs on this machine (for its CPU time)."""
    import redis

    with redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5) as client:
        pid = int(client.info("server")["process_id"])
    return pid if os.path.exists(f"/proc/{pid}/stat") else None


def processes_named(name: str) -> list[int]:
    """Every pid whose command name is name (e.g. every PostgreSQL backend)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as comm:
                    if comm.read().strip() == name:
                        found.append(int(entry))
            except OSError:
                continue
    return found

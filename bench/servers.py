"""Starting, measuring and stopping the servers under test, each a real subprocess.

CPU time and memory are read from /proc for the server process and its descendants only
(uvicorn --workers forks children), never for the benchmark's own client processes.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from app.security import create_access_token, hash_password

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


@dataclass(frozen=True)
class ServerSpec:
    """What to start: chatroom (through `chatroom serve` unless an implementation is forced)
    or the tutorial baseline, with uvicorn's ws/http/loop choices ("auto" = uvicorn's)."""

    kind: str  # "chatroom" | "tutorial"
    ws: str = "auto"
    http: str = "auto"
    loop: str = "auto"

    @property
    def name(self) -> str:
        if (self.ws, self.http, self.loop) == ("auto", "auto", "auto"):
            return self.kind
        return f"{self.kind}[ws={self.ws},http={self.http},loop={self.loop}]"


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


@dataclass
class Server:
    """A running server subprocess and its scratch directory."""

    spec: ServerSpec
    port: int
    process: subprocess.Popen[bytes]
    workdir: tempfile.TemporaryDirectory[str]
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def database(self) -> Path:
        return Path(self.workdir.name) / "bench.db"

    def pids(self) -> list[int]:
        return descendants(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pids())

    def rss_kb(self) -> int:
        return memory_kb(self.pids(), "VmRSS")

    def peak_rss_kb(self) -> int:
        return memory_kb(self.pids(), "VmHWM")

    def ws_url(self, room: str, client_id: int, user: str) -> str:
        if self.spec.kind == "chatroom":
            return f"ws://127.0.0.1:{self.port}/items/{room}/ws?token={self.tokens[user]}"
        if room == "":
            return f"ws://127.0.0.1:{self.port}/ws/{client_id}"
        return f"ws://127.0.0.1:{self.port}/rooms/{room}/ws/{client_id}"

    def count_messages(self) -> int:
        """Rows in chatroom's messages table (read beside the running server, WAL)."""
        with sqlite3.connect(self.database) as connection:
            (count,) = connection.execute("SELECT count(*) FROM messages").fetchone()
        return int(count)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.workdir.cleanup()


def _database_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def migrate(database: Path, env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"],
        env=env | {"CHATROOM_DATABASE_URL": _database_url(database)},
        cwd=source_dir,
        check=True,
        capture_output=True,
    )


def seed_users(database: Path, names: list[str]) -> None:
    """Accounts written straight into the migrated database with one real Argon2 hash:
    registering thousands through /auth/register would spend minutes hashing."""
    password_hash = hash_password(PASSWORD)
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


def _environment(workdir: Path) -> dict[str, str]:
    env = dict(os.environ) | CHATROOM_BENCH_ENV
    env["CHATROOM_DATABASE_URL"] = _database_url(workdir / "bench.db")
    # Ahead of the editable install's path, so a snapshot's `app` wins.
    env["PYTHONPATH"] = str(source_dir)
    return env


def start(spec: ServerSpec, users: list[str], attempts: int = 3) -> Server:
    """Start a fresh server; retried, as others may be editing app/ while the bench runs."""
    for attempt in range(1, attempts + 1):
        try:
            return _start(spec, users)
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            if attempt == attempts:
                raise
            print(f"# {spec.name} failed to start ({exc!s:.200}); retrying", file=sys.stderr)
            time.sleep(10)
    raise AssertionError("unreachable")


def _start(spec: ServerSpec, users: list[str], timeout: float = 30.0) -> Server:
    """Start a fresh server (fresh database) with these users, and wait until it answers."""
    workdir = tempfile.TemporaryDirectory(prefix="chatroom-bench-")
    path = Path(workdir.name)
    env = _environment(path)
    port = free_port()
    tokens: dict[str, str] = {}
    if spec.kind == "chatroom":
        migrate(path / "bench.db", env)
        seed_users(path / "bench.db", users)
        tokens = {name: create_access_token(name, key=SECRET, minutes=600) for name in users}
        if spec.name == "chatroom":
            command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
        else:
            command = [sys.executable, str(BENCH_DIR / "serve_chatroom.py"), "--port", str(port)]
    else:
        command = [sys.executable, str(BENCH_DIR / "tutorial_server.py"), "--port", str(port)]
    if spec.name != "chatroom":
        command += ["--ws", spec.ws, "--http", spec.http, "--loop", spec.loop]
    log = open(path / "server.log", "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(command, env=env, cwd=source_dir, stdout=log, stderr=log)
    log.close()
    server = Server(spec, port, process, workdir, tokens)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            output = (path / "server.log").read_text(errors="replace")
            workdir.cleanup()
            raise RuntimeError(f"{spec.name} exited at start:\n{output}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"{spec.name} did not start within {timeout}s") from None
            time.sleep(0.05)
    return server


def server_log(server: Server) -> str:
    return (Path(server.workdir.name) / "server.log").read_text(errors="replace")

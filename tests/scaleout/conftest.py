"""Scale-out harness: several `chatroom serve` processes sharing one database and one Redis.

These tests need real services, named by two environment variables:

- `CHATROOM_TEST_REDIS_URL`, e.g. `redis://127.0.0.1:6379/15`: a database number the tests
  may FLUSHDB before and after each test;
- `CHATROOM_TEST_DATABASE_URL`, e.g. `postgresql+asyncpg://postgres@127.0.0.1:5432/test`: a
  PostgreSQL database whose role may CREATE DATABASE; each test gets a database of its own,
  dropped afterwards.

Unset, the tests that need them are skipped with a reason saying so (`pytest -ra` shows it);
set but unreachable, they fail. `.ci/run` sets both.

Each `Worker` is one `python -m app.cli serve --no-migrate` subprocess on a free port, the
way `chatroom serve --workers N` runs N processes behind one port; here each has its own port
so a test can pick the worker a client talks to. Worker logs are kept under the test's
tmp_path, and their last lines are added to the report of a failing test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from app.core.migrate import upgrade
from tests.helpers import SECRET, ChatClient, connect, free_port, register

REPO = Path(__file__).resolve().parents[2]
REDIS_ENV = "CHATROOM_TEST_REDIS_URL"
DATABASE_ENV = "CHATROOM_TEST_DATABASE_URL"
REDIS_EXAMPLE = "redis://127.0.0.1:6379/15"
DATABASE_EXAMPLE = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"

PRESENCE_TTL = 3  # CHATROOM_PRESENCE_TTL_SECONDS for every worker: a dead worker's users leave
START_TIMEOUT = 30.0  # seconds for a worker to answer /healthz
LOG_TAIL_LINES = 60
# A test still running after this long is stuck: its workers are killed, so that every socket
# and request of the test fails at once instead of the suite hanging.
TEST_DEADLINE = 120.0

# What every worker of a test runs with; tests add or override settings per cluster.
WORKER_ENV = {
    "CHATROOM_SECRET_KEY": SECRET,  # tokens from one worker open sockets on any other
    "CHATROOM_PRESENCE_TTL_SECONDS": str(PRESENCE_TTL),
    # One machine plays every user: the per-user and per-address limits would get in the way.
    "CHATROOM_RATE_LIMIT": "0",
    "CHATROOM_MAX_CONNECTIONS_PER_USER": "0",
    "CHATROOM_LOGIN_FAILURES_PER_ADDRESS": "0",
    # Test clients share two cores with the workers; a slow reader is not what is tested.
    "CHATROOM_SEND_BUFFER_FRAMES": "100000",
    "CHATROOM_SEND_BUFFER_BYTES": str(1 << 28),
}


# --- the services named by the environment ---------------------------------------------------


def _required(env: str, example: str) -> str:
    url = os.environ.get(env, "").strip()
    if not url:
        pytest.skip(f"scale-out test: set {env}={example} to run")
    return url


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The shared test Redis (CHATROOM_TEST_REDIS_URL), emptied before and after the test."""
    url = _required(REDIS_ENV, REDIS_EXAMPLE)
    import redis  # the `redis` extra; CI installs it with the `test` extra

    client = redis.Redis.from_url(url)
    try:
        client.ping()  # set but unreachable: an error, not a skip
        client.flushdb()
        yield url
        client.flushdb()
    finally:
        client.close()


def _asyncpg_dsn(url: str) -> str:
    """postgresql+asyncpg://... as the plain postgresql://... DSN asyncpg.connect takes."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin(url: str, statement: str) -> None:
    import asyncpg  # the `postgres` extra; CI installs it with the `test` extra

    connection = await asyncpg.connect(_asyncpg_dsn(url), timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty PostgreSQL database for this test, dropped afterwards."""
    admin_url = _required(DATABASE_ENV, DATABASE_EXAMPLE)
    name = f"chatroom_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(admin_url, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        # FORCE: a killed worker's connections may not be gone yet.
        asyncio.run(_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def shared_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database every worker of the test shares, migrated to head once, beforehand."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"  # WAL, set by app.core.db
    upgrade(url)
    return url


# --- server processes -------------------------------------------------------------------------

# Linux: the child asks to be SIGKILLed when pytest dies (PR_SET_PDEATHSIG), then execs the real
# program; so a pytest killed outright (a CI timeout) leaves no server or Redis running.
_DIE_WITH_PARENT = """
import ctypes, os, signal, sys
if ctypes.CDLL(None).prctl(1, signal.SIGKILL) != 0 or os.getppid() != int(sys.argv[1]):
    sys.exit("parent gone before the child started")
os.execv(sys.argv[2], sys.argv[2:])
"""


def dying_with_pytest(argv: list[str]) -> list[str]:
    """argv (argv[0] a full path), wrapped so the process ends when pytest's does."""
    if not sys.platform.startswith("linux"):
        return argv
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *argv]


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


class Worker:
    """One `chatroom serve` process on a free port: start, wait for /healthz, stop or kill."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"  # what tests.conftest.connect needs
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._terminated = False

    def __repr__(self) -> str:
        return f"<Worker {self.name} :{self.port}>"

    def start(self) -> None:
        """Spawn the process; wait_ready() waits for it to serve."""
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                dying_with_pytest(
                    [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)]
                    + ["--no-migrate"]
                ),
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive:
                raise RuntimeError(f"{self.name} exited at start:\n{self.log_tail()}")
            if self.healthz() == 200:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not serve /healthz:\n{self.log_tail()}")
            time.sleep(0.1)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def healthz(self) -> int | None:
        """The status of GET /healthz, or None when nothing answers."""
        try:
            return httpx.get(f"{self.url}/healthz", timeout=5).status_code
        except httpx.TransportError:
            return None

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye to Redis or to the sockets."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def terminate(self) -> None:
        """SIGTERM, once: the graceful stop (a second signal would cut the drain short)."""
        if self.process is not None and self.process.poll() is None and not self._terminated:
            self._terminated = True
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it does not end in time."""
        self.terminate()
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with self.log_path.open("a") as log:
                log.write(f"\n[harness] no exit {timeout:g}s after SIGTERM: killed\n")
            self.kill()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return _tail(self.log_path, lines)


class RedisServer:
    """A throwaway redis-server of the test's own, which it may kill and restart."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = workdir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start on self.port (the same port again after a kill) and wait for PING."""
        self.spawn()
        self.wait_ready(timeout)

    async def restart(self) -> None:
        """Start again after kill(), on the same port, without blocking the event loop."""
        self.spawn()  # from this thread: PR_SET_PDEATHSIG follows the thread that forks
        await asyncio.to_thread(self.wait_ready)

    def spawn(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                dying_with_pytest(
                    [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
                    + ["--save", "", "--appendonly", "no", "--daemonize", "no"]
                    + ["--dir", str(self.workdir)]
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 10.0) -> None:
        import redis

        assert self.process is not None
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, socket_timeout=1)
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited:\n{_tail(self.log_path)}")
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                    if client.ping():
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer:\n{_tail(self.log_path)}")
                time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    async def wait_for_subscribers(self, count: int, timeout: float = 20.0) -> None:
        """Until count clients hold a (pattern) subscription: the workers listen again."""
        import redis.asyncio

        client = redis.asyncio.Redis(port=self.port)
        deadline = time.monotonic() + timeout
        try:
            while True:
                clients = await client.client_list()
                listening = [c for c in clients if int(c["psub"]) or int(c["sub"])]
                if len(listening) >= count:
                    return
                assert time.monotonic() < deadline, f"{len(listening)} of {count} subscribers"
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server the test owns (the shared one must not be restarted under others)."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get(REDIS_ENV):
            pytest.fail(f"redis-server is not on PATH, and {REDIS_ENV} is set (as in CI)")
        pytest.skip("redis-server is not on PATH")
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = RedisServer(binary, workdir)
    server.start()
    try:
        yield server
    finally:
        server.kill()


class Cluster:
    """The workers of one test, sharing a database and a broker, and the clients it opened."""

    def __init__(self, *, database_url: str, broker_url: str, log_dir: Path) -> None:
        self.database_url = database_url
        self.broker_url = broker_url
        self.log_dir = log_dir
        self.workers: list[Worker] = []
        self.clients: list[ChatClient] = []
        self.extra_logs: list[Path] = []  # shown on failure too (the test's own redis-server)
        self._watchdog = threading.Timer(TEST_DEADLINE, self._expire)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _expire(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(OSError), worker.log_path.open("a") as log:
                log.write(f"\n[harness] the test ran over {TEST_DEADLINE:g}s: worker killed\n")
            worker.kill()

    def start(self, count: int, *, broker_url: str | None = None, **env: str) -> list[Worker]:
        """Start count more workers (in parallel) and wait until each serves."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("CHATROOM_")}
        worker_env = {
            **base,
            **WORKER_ENV,
            "CHATROOM_DATABASE_URL": self.database_url,
            "CHATROOM_BROKER_URL": broker_url or self.broker_url,
            **env,
        }
        first = len(self.workers)
        started = [
            Worker(f"worker-{chr(ord('a') + first + n)}", worker_env, self.log_dir)
            for n in range(count)
        ]
        self.workers += started
        for worker in started:
            worker.start()
        for worker in started:
            worker.wait_ready()
        return started

    async def register(self, *names: str) -> dict[str, str]:
        """Accounts (registered on the workers in turn, so in parallel); tokens by name."""
        workers = self.workers

        async def one(n: int, name: str) -> str:
            # Password hashing is slow on purpose, and the machine is busy: be patient.
            url = workers[n % len(workers)].url
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                return await register(http, name)

        tokens = await asyncio.gather(*(one(n, name) for n, name in enumerate(names)))
        return dict(zip(names, tokens, strict=True))

    async def connect(self, worker: Worker, room: str, token: str, query: str = "") -> ChatClient:
        client = await connect(worker, room, token, query)  # a Worker has the ws_url it needs
        self.clients.append(client)
        return client

    async def join(
        self, worker: Worker, room: str, token: str, query: str = ""
    ) -> tuple[ChatClient, dict[str, Any], dict[str, Any]]:
        """A socket that has read its welcome and history frames, and those two frames."""
        client = await self.connect(worker, room, token, query)
        welcome, history = await client.join()
        return client, welcome, history

    async def stored(self, room: str, token: str, after: int = 0) -> list[dict[str, Any]]:
        """Every stored message of room after the id, oldest first, paged over REST."""
        messages: list[dict[str, Any]] = []
        serving = next(w for w in self.workers if w.alive)
        async with httpx.AsyncClient(base_url=serving.url, timeout=30) as http:
            while True:
                response = await http.get(
                    f"/items/{room}/messages",
                    params={"after": after, "limit": 200},
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert response.status_code == 200, response.text
                page = response.json()
                messages += page["messages"]
                if not page["has_more"]:
                    return messages
                after = page["messages"][-1]["id"]

    async def close_clients(self) -> None:
        async def close(client: ChatClient) -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.ws.close(), 5)

        await asyncio.gather(*(close(c) for c in self.clients))
        self.clients.clear()

    def stop(self) -> None:
        self._watchdog.cancel()
        for worker in self.workers:
            worker.terminate()  # all at once, then wait for each
        for worker in self.workers:
            worker.stop()

    def logs(self) -> list[tuple[str, str]]:
        shown = [(f"{w.name} :{w.port} log, last lines", w.log_tail()) for w in self.workers]
        return shown + [(f"{p.name}, last lines", _tail(p)) for p in self.extra_logs]


CLUSTER = pytest.StashKey[Cluster]()


@pytest.fixture
async def cluster(
    request: pytest.FixtureRequest, redis_url: str, shared_database_url: str, tmp_path: Path
) -> AsyncIterator[Cluster]:
    """No workers yet (cluster.start(n) adds them); everything is stopped afterwards."""
    the_cluster = Cluster(database_url=shared_database_url, broker_url=redis_url, log_dir=tmp_path)
    request.node.stash[CLUSTER] = the_cluster
    try:
        yield the_cluster
    finally:
        await the_cluster.close_clients()
        await asyncio.to_thread(the_cluster.stop)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failing test's report ends with the last lines of each worker's log."""
    report = yield
    the_cluster = item.stash.get(CLUSTER, None)
    if report.failed and the_cluster is not None:
        for title, text in the_cluster.logs():
            report.sections.append((title, text))
    return report


# --- reading a room as a client does --------------------------------------------------------


async def read_messages(
    client: ChatClient, count: int, timeout: float = 15.0
) -> list[dict[str, Any]]:
    """The next count message frames, skipping presence; an error frame fails the test."""
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(messages) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{len(messages)} of {count} messages within {timeout}s")
        frame = await client.recv(timeout=remaining)
        assert frame["type"] != "error", frame
        if frame["type"] == "message":
            messages.append(frame)
    return messages


async def messages_within(
    client: ChatClient, count: int, timeout: float = 10.0, idle: float | None = None
) -> list[dict[str, Any]]:
    """Up to count message frames: what arrived within timeout, or before nothing came for
    idle seconds. The caller compares them with the database, which says what is missing."""
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    with contextlib.suppress(TimeoutError):
        while len(messages) < count and (remaining := deadline - time.monotonic()) > 0:
            frame = await client.recv(timeout=min(remaining, idle or remaining))
            if frame["type"] == "message":
                messages.append(frame)
    return messages


def ids(messages: list[dict[str, Any]]) -> list[int]:
    return [m["id"] for m in messages]


def new_room() -> str:
    return f"room-{uuid.uuid4().hex[:10]}"


def assert_same_messages(
    seen: list[dict[str, Any]], stored: list[dict[str, Any]], *, who: str
) -> None:
    """seen is exactly stored: the same ids in the same order, each once, same contents."""
    got, want = ids(seen), ids(stored)
    if got != want:
        at = next(
            (n for n, (x, y) in enumerate(zip(got, want, strict=False)) if x != y),
            min(len(got), len(want)),
        )
        missing = [(m["id"], m["user"], m["body"]) for m in stored if m["id"] not in set(got)]
        doubled = sorted({i for i in got if got.count(i) > 1})
        unknown = sorted(set(got) - set(want))
        raise AssertionError(
            f"{who} saw {len(got)} messages where {len(want)} are stored; first difference at "
            f"#{at}: saw {got[max(0, at - 3) : at + 6]}, stored {want[max(0, at - 3) : at + 6]}; "
            f"missing {missing[:10]}, doubled {doubled[:10]}, not stored {unknown[:10]}"
        )
    contents = [(m["user"], m["body"], m["created_at"]) for m in seen]
    assert contents == [(m["user"], m["body"], m["created_at"]) for m in stored], who


async def acknowledged(
    client: ChatClient, client_msg_id: str, timeout: float = 15.0
) -> dict[str, Any]:
    """Read on until the broadcast of our message with this client_msg_id (its ack)."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no acknowledgement of {client_msg_id!r} within {timeout}s")
        frame = await client.recv(timeout=remaining)
        if frame["type"] == "message" and frame.get("client_msg_id") == client_msg_id:
            return frame

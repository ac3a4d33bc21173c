"""Benchmark chatroom against the FastAPI tutorial chat and a plain sqlite3 loop.

    python bench/run.py                      # every scenario, full sizes (about 4 minutes)
    python bench/run.py --quick              # small sizes, for development
    python bench/run.py --scenario fan-out   # one scenario (repeatable)
    python bench/run.py --uvicorn-matrix     # chatroom fan-out under each uvicorn ws/http/loop
    python bench/run.py --profile DIR        # also py-spy the chatroom server (raw stacks)
    python bench/run.py --scenario multi-worker --workers 1,2,4   # --workers N over Redis

Prints one JSON line per scenario and server, then a table of the targets (ratios within
this run). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import servers
from clients import ClientSpec, Plan, worker_main
from servers import Server, ServerSpec, cpu_seconds, sockets_per_process, start
from sqlite_baseline import insert_loop, prepare

CHATROOM = ServerSpec("chatroom")
TUTORIAL = ServerSpec("tutorial")
SCENARIOS = ("fan-out", "rooms", "ingest", "join-storm", "idle-memory", "latency")
# Run only when named: minutes long, or needing Redis (and PostgreSQL).
EXTRA_SCENARIOS = ("join-storm-distinct", "multi-worker")
REDIS_URL = "redis://127.0.0.1:6379/14"  # a database number of the bench's own, flushed per run


@dataclass(frozen=True)
class Sizes:
    fanout_clients: int = 200
    rooms: int = 20
    room_clients: int = 25
    room_senders: int = 2
    ingest_rooms: int = 50
    ingest_clients: int = 2
    ingest_window: int = 16
    storm_clients: int = 2000
    storm_history: int = 50
    storm_shared_users: int = 20
    idle_warmup: int = 20  # connections opened before the storm (the idle RSS baseline)
    window: int = 4
    duration: float = 6.0
    client_procs: int = 2
    latency_rate: float | None = None  # msgs/s for latency; None: half of fan-out's


QUICK = Sizes(
    fanout_clients=50,
    rooms=5,
    room_clients=10,
    ingest_rooms=10,
    storm_clients=300,
    storm_shared_users=10,
    duration=3.0,
)


@dataclass
class Result:
    scenario: str
    server: str
    values: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return json.dumps({"scenario": self.scenario, "server": self.server, **self.values})


class Workers:
    """Client processes, each holding a share of the clients, driven command by command."""

    def __init__(self, plans: list[Plan]) -> None:
        context = multiprocessing.get_context("fork")
        self.pipes = []
        self.processes = []
        for plan in plans:
            parent, child = context.Pipe()
            process = context.Process(target=worker_main, args=(plan, child), daemon=True)
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)
        for pipe in self.pipes:
            kind, _pid = pipe.recv()
            assert kind == "started"
        self.pids = [p.pid for p in self.processes if p.pid is not None]
        self.sizes = [len(plan.clients) for plan in plans]

    def command(self, name: str, per_worker: Callable[[int], dict[str, Any]]) -> list[Any]:
        """Send a command to every worker at once; wait for every answer."""
        for index, pipe in enumerate(self.pipes):
            pipe.send((name, per_worker(index)))
        answers = []
        for pipe in self.pipes:
            kind, answer = pipe.recv()
            assert kind == name, (kind, name)
            answers.append(answer)
        return answers

    def all(self, name: str, **kwargs: Any) -> list[Any]:
        return self.command(name, lambda _index: kwargs)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pids)

    def close(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("exit", {}))
            except OSError:
                pass
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()


def split(specs: list[ClientSpec], parts: int) -> list[list[ClientSpec]]:
    """Round-robin, so that each process holds some of every room and of the senders."""
    return [specs[index::parts] for index in range(parts)]


def percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def latency_summary(chunks: list[bytes]) -> dict[str, float]:
    samples = array("d")
    for chunk in chunks:
        samples.frombytes(chunk)
    ordered = sorted(samples)
    return {
        "p50_ms": round(percentile(ordered, 0.50) * 1000, 2),
        "p99_ms": round(percentile(ordered, 0.99) * 1000, 2),
        "max_ms": round((ordered[-1] if ordered else float("nan")) * 1000, 2),
    }


class Bench:
    def __init__(self, sizes: Sizes, profile_dir: Path | None) -> None:
        self.sizes = sizes
        self.profile_dir = profile_dir
        self.results: list[Result] = []

    def emit(self, result: Result) -> Result:
        self.results.append(result)
        print(result.line(), flush=True)
        return result

    def find(self, scenario: str, server: str) -> Result | None:
        """The result of scenario for server (a name, or a kind: "chatroom[ws=...]" matches
        "chatroom")."""
        for result in self.results:
            if result.scenario == scenario and server in (
                result.server,
                result.server.split("[")[0],
            ):
                return result
        return None

    @contextmanager
    def profiled(self, server: Server, scenario: str) -> Iterator[None]:
        """py-spy the server (either kind) for the measured part of a scenario."""
        if self.profile_dir is None:
            yield
            return
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        output = self.profile_dir / f"{scenario}-{server.spec.name}.txt"
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        spy = subprocess.Popen(
            [py_spy, "record", "--pid", str(server.pid), "--rate", "200", "--format", "raw"]
            + ["--nonblocking", "-o", str(output)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=30)

    # -- load: closed- or open-loop senders, every receiver counts and times ------------

    def load(
        self,
        scenario: str,
        spec: ServerSpec,
        rooms: list[tuple[str, int, int]],
        *,
        window: int,
        rate: float = 0.0,
        check_order: bool = False,
        other_cpu: dict[str, Callable[[], float]] | None = None,
    ) -> Result:
        """rooms: (name, clients, senders); the tutorial's single room is named "".

        check_order: every socket checks that its room's message ids arrive strictly
        increasing (chatroom). other_cpu: more CPU clocks (e.g. redis-server) read around the
        measured part like the server's, reported as <name>_cpu_s and per delivery."""
        other_cpu = other_cpu or {}
        names = [f"user{i}" for i in range(sum(clients for _, clients, _ in rooms))]
        server = start(spec, names)
        specs: list[ClientSpec] = []
        for room, clients, senders in rooms:
            for index in range(clients):
                client_id = len(specs)
                url = server.ws_url(room, client_id, names[client_id])
                specs.append(ClientSpec(client_id, url, room, sender=index < senders))
        protocol = spec.kind
        plans = [
            Plan(protocol, part, window=window, rate=rate, check_order=check_order)
            for part in split(specs, self.sizes.client_procs)
        ]
        workers = Workers(plans)
        try:
            workers.all("connect", start=0, stop=len(specs), concurrency=50)
            workers.all("settle", quiet=0.5, within=120)
            per_process = sockets_per_process(server) if spec.workers > 1 else []
            senders = [s.client_id for s in specs if s.sender]
            offsets = {c: (i / len(senders)) / rate if rate else 0.0 for i, c in enumerate(senders)}
            workers.all("reset")
            with self.profiled(server, scenario):
                server_cpu, client_cpu = server.cpu_seconds(), workers.cpu_seconds()
                others = {name: clock() for name, clock in other_cpu.items()}
                began = time.monotonic()
                sent: dict[int, int] = {}
                for answer in workers.all(
                    "run", duration=self.sizes.duration, rate_offsets=offsets
                ):
                    sent.update(answer)
                room_of = {s.client_id: s.room for s in specs}
                expected: dict[str, int] = {}
                for client_id, count in sent.items():
                    expected[room_of[client_id]] = expected.get(room_of[client_id], 0) + count
                stats = workers.all("drain", expected=expected, within=15)
                server_cpu = server.cpu_seconds() - server_cpu
                client_cpu = workers.cpu_seconds() - client_cpu
                others = {name: clock() - others[name] for name, clock in other_cpu.items()}
            elapsed = max(s["last_frame"] for s in stats) - began
            deliveries = sum(s["received"] for s in stats)
            messages = sum(sent.values())
            acked = sum(s["acked"] for s in stats)
            values: dict[str, Any] = {
                "clients": len(specs),
                "senders": len(senders),
                "messages": messages,
                "acked": acked,
                "deliveries": deliveries,
                "seconds": round(elapsed, 3),
                "msgs_per_s": round(messages / elapsed, 1),
                "acked_per_s": round(acked / elapsed, 1),
                "deliveries_per_s": round(deliveries / elapsed, 1),
                "server_cpu_s": round(server_cpu, 3),
                "server_cpu_us_per_delivery": round(server_cpu / max(1, deliveries) * 1e6, 2),
                **latency_summary([s["latencies"] for s in stats]),
                "loss": sum(s["lost"] for s in stats),
                "peak_rss_mb": round(server.peak_rss_kb() / 1024, 1),
                "client_procs": len(plans),
                "client_cpu_s": round(client_cpu, 3),
                "client_cpu_us_per_delivery": round(client_cpu / max(1, deliveries) * 1e6, 2),
            }
            for name, seconds in others.items():
                values[f"{name}_cpu_s"] = round(seconds, 3)
                values[f"{name}_cpu_us_per_delivery"] = round(seconds / max(1, deliveries) * 1e6, 2)
            if check_order:
                values["order_errors"] = sum(s["order_errors"] for s in stats)
                values["duplicates"] = sum(s["extra"] for s in stats)
            if spec.workers > 1 or not spec.broker.startswith("memory"):
                values["workers"] = spec.workers
                values["broker"] = spec.broker
                values["sockets_per_worker"] = "/".join(map(str, per_process))
            if spec.database != "sqlite":
                values["database"] = spec.database
            if rate:
                values["rate_per_sender"] = round(rate, 1)
            if spec.kind == "chatroom":
                values["persisted"] = server.count_messages()
            return self.emit(Result(scenario, spec.name, values))
        finally:
            workers.close()
            server.stop()

    def fan_out(self, spec: ServerSpec) -> Result:
        room = "" if spec.kind == "tutorial" else "fanout"
        return self.load("fan-out", spec, [(room, self.sizes.fanout_clients, 1)], window=4)

    def rooms(self, spec: ServerSpec) -> Result:
        s = self.sizes
        rooms = [(f"room{i}", s.room_clients, s.room_senders) for i in range(s.rooms)]
        return self.load("rooms", spec, rooms, window=s.window)

    def ingest(self, spec: ServerSpec) -> Result:
        s = self.sizes
        rooms = [(f"ingest{i}", s.ingest_clients, s.ingest_clients) for i in range(s.ingest_rooms)]
        return self.load("ingest", spec, rooms, window=s.ingest_window)

    def latency(self, spec: ServerSpec) -> Result:
        rate = self.sizes.latency_rate
        if rate is None:
            fan_out = self.find("fan-out", spec.name) or self.fan_out(spec)
            rate = fan_out.values["msgs_per_s"] / 2
        room = "" if spec.kind == "tutorial" else "fanout"
        return self.load(
            "latency", spec, [(room, self.sizes.fanout_clients, 1)], window=0, rate=rate
        )

    def sqlite_baseline(self) -> Result:
        with tempfile.TemporaryDirectory(prefix="chatroom-sqlite-") as scratch:
            database = Path(scratch) / "bench.db"
            prepare(database)
            values = insert_loop(database, self.sizes.duration, rooms=self.sizes.ingest_rooms)
        values = {k: round(v, 3) for k, v in values.items()}
        return self.emit(Result("ingest", "sqlite3-loop", values))

    def multi_worker(self, counts: list[int], databases: list[str]) -> None:
        """The rooms load against `chatroom serve --workers N` sharing one Redis broker and one
        database, for each N, after one worker with the memory broker (the baseline)."""
        reason = servers.redis_unavailable(REDIS_URL)
        if reason is not None:
            print(f"# multi-worker: SKIPPED, Redis unreachable at {REDIS_URL} ({reason})")
            return
        redis_pid = servers.redis_server_pid(REDIS_URL)
        for database in databases:
            if database == "postgres":
                reason = servers.postgres_unavailable()
                if reason is not None:
                    print(f"# multi-worker postgres: SKIPPED, PostgreSQL unreachable ({reason})")
                    continue
            self.multi_worker_run(ServerSpec("chatroom", database=database), redis_pid)
            for count in counts:
                servers.redis_flushdb(REDIS_URL)
                spec = ServerSpec("chatroom", workers=count, broker=REDIS_URL, database=database)
                self.multi_worker_run(spec, redis_pid)
            servers.redis_flushdb(REDIS_URL)

    def multi_worker_run(self, spec: ServerSpec, redis_pid: int | None) -> Result:
        s = self.sizes
        # Pub/sub channels are global to a Redis server, whatever the database number: rooms
        # named afresh per run never meet another run's (or the test suite's) rooms.
        tag = uuid.uuid4().hex[:6]
        rooms = [(f"mw{tag}-room{i}", s.room_clients, s.room_senders) for i in range(s.rooms)]
        other_cpu: dict[str, Callable[[], float]] = {}
        if redis_pid is not None and not spec.broker.startswith("memory"):
            other_cpu["redis"] = lambda: cpu_seconds([redis_pid])
        if spec.database == "postgres":
            other_cpu["postgres"] = lambda: cpu_seconds(servers.processes_named("postgres"))
        return self.load(
            "multi-worker", spec, rooms, window=s.window, check_order=True, other_cpu=other_cpu
        )

    # -- connection storms ---------------------------------------------------------------

    def join_storm(self, spec: ServerSpec, shared_users: int = 0, distinct: bool = False) -> Result:
        """A few clients warm the server up; then `storm_clients` connect at once.

        Measures the time until each has its history (chatroom) or its own join notice
        (tutorial), and until the last presence notice has arrived; then, with every socket
        idle, the RSS each added (the idle-memory result). chatroom announces a user's first
        connection only: with `shared_users` users it sends that many join notices; with
        distinct users (or the tutorial) one per client, each to everyone already there.
        """
        s = self.sizes
        total = s.idle_warmup + s.storm_clients
        users = [f"user{i % shared_users if shared_users else i}" for i in range(total)]
        server = start(spec, sorted(set(users)) + ["seeder"])
        scenario = "join-storm-distinct" if distinct else "join-storm"
        if spec.kind == "chatroom" and s.storm_history:
            asyncio.run(seed_history(server.ws_url("storm", 0, "seeder"), s.storm_history))
        room = "storm" if spec.kind == "chatroom" else ""
        specs = [
            ClientSpec(i, server.ws_url(room, i, users[i]), room, sender=False)
            for i in range(total)
        ]
        warm = split(specs[: s.idle_warmup], s.client_procs)
        storm = split(specs[s.idle_warmup :], s.client_procs)
        parts = [w + c for w, c in zip(warm, storm, strict=True)]
        workers = Workers([Plan(spec.kind, part) for part in parts])
        try:
            workers.command(
                "connect", lambda i: {"start": 0, "stop": len(warm[i]), "concurrency": 10}
            )
            workers.all("settle", quiet=1.0, within=60)
            time.sleep(0.5)
            warm_rss = server.rss_kb()
            with self.profiled(server, scenario):
                server_cpu, client_cpu = server.cpu_seconds(), workers.cpu_seconds()
                began = time.monotonic()
                connected = workers.command(
                    "connect",
                    lambda i: {
                        "start": len(warm[i]),
                        "stop": len(parts[i]),
                        "concurrency": 100_000,
                    },
                )
                settled = workers.all("settle", quiet=1.5, within=600)
                server_cpu = server.cpu_seconds() - server_cpu
                client_cpu = workers.cpu_seconds() - client_cpu
            time.sleep(0.5)
            idle_rss = server.rss_kb()
            joined = sum(a["joined"] for a in connected)
            values = {
                "clients": s.storm_clients,
                "users": len(set(users[s.idle_warmup :])),
                "history": s.storm_history if spec.kind == "chatroom" else 0,
                "joined": joined,
                "errors": sum(a["error_count"] for a in connected),
                "dropped_before_join": sum(a["dropped_before_join"] for a in connected),
                "error_sample": [e for a in connected for e in a["errors"]][:2],
                "all_joined_s": round(max(a["last_joined"] for a in connected) - began, 3),
                "settled_s": round(max(a["last_frame"] for a in settled) - began, 3),
                "frames": sum(a["frames"] for a in settled),
                "server_cpu_s": round(server_cpu, 3),
                "server_cpu_ms_per_join": round(server_cpu / max(1, joined) * 1000, 2),
                "peak_rss_mb": round(server.peak_rss_kb() / 1024, 1),
                "client_procs": len(parts),
                "client_cpu_s": round(client_cpu, 3),
            }
            idle = {
                "connections": joined + s.idle_warmup,
                "rss_warm_mb": round(warm_rss / 1024, 1),
                "rss_idle_mb": round(idle_rss / 1024, 1),
                "kb_per_connection": round((idle_rss - warm_rss) / max(1, joined), 2),
                "peak_rss_mb": values["peak_rss_mb"],
            }
            if not distinct:
                self.emit(Result("idle-memory", spec.name, idle))
            return self.emit(Result(scenario, spec.name, values))
        finally:
            workers.close()
            server.stop()

    # -- the whole run -------------------------------------------------------------------

    def run(
        self,
        scenarios: list[str],
        servers: list[ServerSpec],
        workers: list[int] = [1, 2, 4],  # noqa: B006 - never mutated
        databases: list[str] = ["sqlite"],  # noqa: B006 - never mutated
    ) -> None:
        for scenario in scenarios:
            if scenario == "multi-worker":
                if any(spec.kind == "chatroom" for spec in servers):
                    self.multi_worker(workers, databases)
                continue
            for spec in servers:
                if spec.kind in ("depends", "bare") and scenario not in (
                    "join-storm",
                    "idle-memory",
                ):
                    continue  # baselines of a socket's cost only: no chat to measure
                if scenario == "fan-out":
                    self.fan_out(spec)
                elif scenario == "rooms":
                    self.rooms(spec)
                elif scenario == "ingest":
                    self.ingest(spec)
                elif scenario in ("join-storm", "idle-memory"):
                    if self.find("join-storm", spec.name) is None:
                        shared = self.sizes.storm_shared_users if spec.kind == "chatroom" else 0
                        self.join_storm(spec, shared_users=shared)
                elif scenario == "join-storm-distinct" and spec.kind == "chatroom":
                    self.join_storm(spec, distinct=True)
                elif scenario == "latency":
                    self.latency(spec)
            if scenario == "ingest":
                self.sqlite_baseline()

    def uvicorn_matrix(self) -> None:
        """chatroom's fan-out and a 300-client join storm under each uvicorn implementation."""
        full = self.sizes
        for ws in ("websockets-sansio", "websockets", "wsproto"):
            for http in ("httptools", "h11"):
                for loop in ("uvloop", "asyncio"):
                    spec = ServerSpec("chatroom", ws=ws, http=http, loop=loop)
                    self.fan_out(spec)
                    self.sizes = replace(full, storm_clients=300)
                    try:
                        self.join_storm(spec, shared_users=full.storm_shared_users)
                    finally:
                        self.sizes = full


async def seed_history(url: str, count: int) -> None:
    """Store `count` messages in the room, one at a time, each acknowledged."""
    from websockets.asyncio.client import connect

    async with connect(url, compression=None) as ws:
        acked = 0
        for index in range(count):
            await ws.send(f"history message {index}")
            while acked <= index:
                frame = json.loads(await ws.recv())
                if frame["type"] == "message" and frame["user"] == "seeder":
                    acked += 1


# -- the summary table ----------------------------------------------------------------


def _get(bench: Bench, scenario: str, server: str, key: str) -> float | None:
    result = bench.find(scenario, server)
    if result is None or key not in result.values:
        return None
    return float(result.values[key])


Row = tuple[str, str, str, str, str, float, Callable[[float], bool]]


def targets(bench: Bench) -> list[Row]:
    """(target, chatroom, baseline, ratio, verdict, judged figure, goal) for each target
    that was measured; the last two let --repeat judge the median of several rounds."""
    rows: list[Row] = []

    def ratio_row(
        label: str, chat: float | None, base: float | None, unit: str, goal: str, ok: Callable
    ) -> None:
        if chat is None or base is None or base == 0 or chat == 0:
            return
        ratio = chat / base
        verdict = "met" if ok(ratio) else "MISSED"
        rows.append(
            (
                label,
                f"{chat:g} {unit}",
                f"{base:g} {unit}",
                f"x{ratio:.2f}",
                f"{verdict} (goal {goal})",
                ratio,
                ok,
            )
        )

    ratio_row(
        "fan-out server CPU/delivery",
        _get(bench, "fan-out", "chatroom", "server_cpu_us_per_delivery"),
        _get(bench, "fan-out", "tutorial", "server_cpu_us_per_delivery"),
        "us",
        "<= x0.6",
        lambda r: r <= 0.6,
    )
    tut_storm = _get(bench, "join-storm", "tutorial", "all_joined_s")
    for scenario in ("join-storm", "join-storm-distinct"):
        result = bench.find(scenario, "chatroom")
        if result is None or not tut_storm:
            continue
        chat_storm = float(result.values["all_joined_s"])
        speedup = tut_storm / chat_storm
        complete = result.values["joined"] == result.values["clients"]
        verdict = "met" if speedup >= 10 and complete else "MISSED"
        rows.append(
            (
                f"join storm, all joined ({result.values['users']} chatroom users"
                + ("" if complete else f"; only {result.values['joined']} joined")
                + ")",
                f"{chat_storm:g} s",
                f"{tut_storm:g} s",
                f"{speedup:.2f}x faster",
                f"{verdict} (goal >= 10x)",
                speedup if complete else 0.0,
                lambda x: x >= 10,
            )
        )
        bare = _get(bench, "join-storm", "bare", "all_joined_s")
        if bare and scenario == "join-storm":
            rows.append(
                (
                    "join storm vs a bare FastAPI accept (no goal)",
                    f"{chat_storm:g} s",
                    f"{bare:g} s",
                    f"x{chat_storm / bare:.2f}",
                    "reported",
                    chat_storm / bare,
                    lambda x: True,
                )
            )
    ratio_row(
        "ingest acked msgs/s vs sqlite3 loop",
        _get(bench, "ingest", "chatroom", "acked_per_s"),
        _get(bench, "ingest", "sqlite3-loop", "rows_per_s"),
        "/s",
        ">= x1.0",
        lambda r: r >= 1.0,
    )
    ratio_row(
        "idle memory per connection vs the docs' Depends page",
        _get(bench, "idle-memory", "chatroom", "kb_per_connection"),
        _get(bench, "idle-memory", "depends", "kb_per_connection"),
        "KiB",
        "<= x1.0",
        lambda r: r <= 1.0,
    )
    p99 = _get(bench, "latency", "chatroom", "p99_ms")
    if p99 is not None:
        base = _get(bench, "latency", "tutorial", "p99_ms")
        rows.append(
            (
                "p99 latency at half max fan-out rate",
                f"{p99:g} ms",
                f"{base:g} ms" if base is not None else "-",
                f"x{p99 / base:.2f}" if base else "-",
                f"{'met' if p99 < 10 else 'MISSED'} (goal < 10 ms)",
                p99,
                lambda x: x < 10,
            )
        )
    return rows


def multi_worker_table(bench: Bench) -> list[str]:
    """The multi-worker runs side by side, as ratios to the 1-worker memory:// run of their
    database."""
    runs = [r for r in bench.results if r.scenario == "multi-worker"]
    if not runs:
        return []
    lines = [
        "",
        "| database | broker | workers | deliveries/s | vs memory | server CPU/delivery"
        " | vs memory | redis CPU/delivery | postgres CPU/delivery | p50 | p99 | loss | dup"
        " | order errors | sockets per worker |",
        "| --- " * 15 + "|",
    ]
    for run in runs:
        v = run.values
        database = v.get("database", "sqlite")
        base = next(
            r.values
            for r in runs
            if r.values.get("database", "sqlite") == database and "broker" not in r.values
        )
        broker = v.get("broker", "memory://").split(":", 1)[0]
        redis = v.get("redis_cpu_us_per_delivery")
        postgres = v.get("postgres_cpu_us_per_delivery")
        lines.append(
            f"| {database} | {broker} | {v.get('workers', 1)} | {v['deliveries_per_s']:,.0f}"
            f" | x{v['deliveries_per_s'] / base['deliveries_per_s']:.2f}"
            f" | {v['server_cpu_us_per_delivery']} us"
            f" | x{v['server_cpu_us_per_delivery'] / base['server_cpu_us_per_delivery']:.2f}"
            f" | {'-' if redis is None else f'{redis} us'}"
            f" | {'-' if postgres is None else f'{postgres} us'}"
            f" | {v['p50_ms']} ms | {v['p99_ms']} ms | {v['loss']} | {v['duplicates']}"
            f" | {v['order_errors']} | {v.get('sockets_per_worker') or '-'} |"
        )
    return lines


def repeat_table(rounds: list[Bench]) -> list[str]:
    """Each target's figure in every round, and the verdict on their median."""
    figures: dict[str, list[float]] = {}
    goals: dict[str, Callable[[float], bool]] = {}
    for bench in rounds:
        for row in targets(bench):
            figures.setdefault(row[0], []).append(row[5])
            goals[row[0]] = row[6]
    lines = [
        "",
        f"Over {len(rounds)} rounds (ratio, speedup or p99 ms; median judged):",
        "",
        "| target | rounds | median | verdict |",
        "| --- | --- | --- | --- |",
    ]
    for label, values in figures.items():
        middle = statistics.median(values)
        verdict = "met" if goals[label](middle) else "MISSED"
        shown = ", ".join(f"{value:.2f}" for value in values)
        lines.append(f"| {label} | {shown} | {middle:.2f} | {verdict} |")
    return lines


def markdown(bench: Bench, command: str, rounds: list[Bench] | None = None) -> str:
    lines = [f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: `{command}`"]
    if rounds and len(rounds) > 1:
        lines += repeat_table(rounds)
        lines += ["", "The last round:"]
    rows = targets(bench)
    if rows:
        lines += [
            "",
            "| target | chatroom | baseline | ratio | verdict |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += ["| " + " | ".join(row[:5]) + " |" for row in rows]
    lines += multi_worker_table(bench)
    lines += ["", "| scenario | server | measurements |", "| --- | --- | --- |"]
    for result in bench.results:
        shown = {k: v for k, v in result.values.items() if k not in ("error_sample",)}
        text = ", ".join(f"{k}={v}" for k, v in shown.items())
        lines.append(f"| {result.scenario} | {result.server} | {text} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for development")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS + EXTRA_SCENARIOS)
    parser.add_argument(
        "--server", action="append", choices=("chatroom", "tutorial", "depends", "bare")
    )
    parser.add_argument("--uvicorn-matrix", action="store_true")
    parser.add_argument(
        "--uvicorn",
        metavar="WS,HTTP,LOOP",
        help="serve both servers under these uvicorn implementations, e.g. wsproto,h11,asyncio",
    )
    parser.add_argument("--duration", type=float, help="seconds each load scenario sends")
    parser.add_argument("--client-procs", type=int, help="client processes (default 2)")
    parser.add_argument(
        "--latency-rate",
        type=float,
        metavar="MSGS",
        help="latency: this many msgs/s for every server (default: half its fan-out rate)",
    )
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy raw stacks here")
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run everything N times, alternating servers, and judge each target's median",
    )
    parser.add_argument(
        "--workers",
        default="1,2,4",
        metavar="N,N,...",
        help="multi-worker: worker counts to run over Redis (default 1,2,4)",
    )
    parser.add_argument(
        "--database",
        default="sqlite",
        metavar="ENGINES",
        help="multi-worker: sqlite, postgres or sqlite,postgres (default sqlite)",
    )
    parser.add_argument(
        "--app-rev", metavar="REV", help="serve chatroom as committed at REV, not the work tree"
    )
    args = parser.parse_args()
    if args.app_rev:
        scratch = tempfile.TemporaryDirectory(prefix="chatroom-src-")
        servers.snapshot(args.app_rev, Path(scratch.name))
    sizes = QUICK if args.quick else Sizes()
    if args.duration:
        sizes = replace(sizes, duration=args.duration)
    if args.client_procs:
        sizes = replace(sizes, client_procs=args.client_procs)
    if args.latency_rate:
        sizes = replace(sizes, latency_rate=args.latency_rate)
    bench = Bench(sizes, args.profile)
    rounds = []
    began = time.monotonic()
    if args.uvicorn_matrix:
        bench.uvicorn_matrix()
    else:
        kinds = args.server or ["chatroom", "tutorial", "depends", "bare"]
        if args.uvicorn:
            ws, http, loop = args.uvicorn.split(",")
            chosen = [ServerSpec(kind, ws=ws, http=http, loop=loop) for kind in kinds]
        else:
            chosen = [ServerSpec(kind) for kind in kinds]
        worker_counts = [int(n) for n in args.workers.split(",")]
        databases = args.database.split(",")
        if not set(databases) <= {"sqlite", "postgres"}:
            parser.error("--database: sqlite, postgres or sqlite,postgres")
        for round_ in range(args.repeat):
            if round_:
                bench = Bench(sizes, args.profile)
                print(f"# round {round_ + 1} of {args.repeat}", flush=True)
            bench.run(args.scenario or list(SCENARIOS), chosen, worker_counts, databases)
            rounds.append(bench)
    command = "python bench/run.py " + " ".join(sys.argv[1:])
    table = markdown(bench, command.strip(), rounds)
    print()
    print(table)
    print(f"\n{len(bench.results)} results in {time.monotonic() - began:.0f}s", file=sys.stderr)
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()

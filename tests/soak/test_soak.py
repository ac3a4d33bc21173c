"""Soak: hundreds of clients in ten rooms for minutes, dropping and resuming, never a gap.

Run it by hand (a plain `pytest` deselects it):

    pytest -m soak tests/soak -s
    CHATROOM_SOAK_SECONDS=60 pytest -m soak tests/soak -s     # a shorter run

chatroom runs as a real subprocess (`python -m app.cli serve`) on a temporary SQLite file,
with the abuse limits off. 500 clients (50 users, 10 connections each: 2 in each of 5 rooms)
live in 2-4 client processes. Each client keeps reconnecting: it stays a random while, then
leaves (politely, or by dropping its TCP connection) and comes back with `?since=<last id it
saw>`. A fifth of them send a message every couple of seconds.

Every client records each message id it sees, from history frames and live frames. At the end,
against the database: for each client, the ids it saw, in the order it saw them, are exactly
the ids of its room from the first it saw to the last it saw: increasing, none missing, none
twice. Every message acknowledged to its sender (the echo carrying its client_msg_id) is in the
database, in the right room with the right body.

Settings (environment): CHATROOM_SOAK_SECONDS (default 180), CHATROOM_SOAK_CLIENTS (500),
CHATROOM_SOAK_PROCESSES (3), CHATROOM_SOAK_SEND_INTERVAL (seconds between one sender's
messages, default 2.0).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.helpers import PASSWORD, SECRET, free_port

REPO = Path(__file__).resolve().parents[2]
ROOMS = 10
USERS = 50
SENDER_FRACTION = 0.2
SESSION_SECONDS = (3.0, 30.0)  # how long a client stays before it drops
AWAY_SECONDS = (0.05, 2.0)  # how long it stays away
ABRUPT_FRACTION = 0.5  # drops that cut the TCP connection instead of closing politely


def env_number(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass
class ClientSpec:
    index: int
    user: str
    token: str
    room: str
    sender: bool


@dataclass
class ClientResult:
    index: int
    room: str
    user: str
    ids: list[int] = field(default_factory=list)  # every id seen, in the order seen
    acks: list[tuple[str, int, str]] = field(default_factory=list)  # (client_msg_id, id, body)
    sent: int = 0
    sessions: int = 0
    resumes_over_limit: int = 0  # a ?since= replay that said has_more
    connect_failures: int = 0
    dropped_by_server: list[int | None] = field(default_factory=list)  # close codes
    errors: list[str] = field(default_factory=list)  # error frames' codes


class SoakClient:
    def __init__(self, spec: ClientSpec, ws_url: str, deadline: float, interval: float) -> None:
        self.spec = spec
        self.ws_url = ws_url
        self.deadline = deadline  # time.time()
        self.interval = interval
        self.result = ClientResult(spec.index, spec.room, spec.user)
        self.latencies: list[float] = []
        self.pending: dict[str, str] = {}  # client_msg_id -> body, sent and not yet echoed
        self.seq = 0

    def see(self, frame: dict[str, Any], *, live: bool) -> None:
        self.result.ids.append(frame["id"])
        if not live:
            return
        with contextlib.suppress(ValueError, IndexError):
            self.latencies.append(time.time() - float(frame["body"].split(":")[2]))
        cmid = frame.get("client_msg_id")
        if frame["user"] == self.spec.user and cmid in self.pending:
            self.result.acks.append((cmid, frame["id"], self.pending.pop(cmid)))

    async def run(self) -> None:
        await asyncio.sleep(random.uniform(0, 5))  # stagger the first connections
        while time.time() < self.deadline:
            stay = random.uniform(*SESSION_SECONDS)
            await self.session(min(time.time() + stay, self.deadline))
            if time.time() < self.deadline:
                await asyncio.sleep(random.uniform(*AWAY_SECONDS))

    async def session(self, until: float) -> None:
        ids = self.result.ids
        query = f"token={self.spec.token}" + (f"&since={ids[-1]}" if ids else "")
        url = f"{self.ws_url}/items/{self.spec.room}/ws?{query}"
        try:
            ws = await websockets.connect(url, open_timeout=30, close_timeout=5, max_size=None)
        except (OSError, TimeoutError, InvalidHandshake):
            self.result.connect_failures += 1
            await asyncio.sleep(1)
            return
        self.result.sessions += 1
        sender: asyncio.Task[None] | None = None
        abrupt = random.random() < ABRUPT_FRACTION
        try:
            welcome = json.loads(await ws.recv())
            assert welcome["type"] == "welcome", welcome
            history = json.loads(await ws.recv())
            assert history["type"] == "history", history
            if ids and history["has_more"]:
                self.result.resumes_over_limit += 1
            for message in history["messages"]:
                self.see(message, live=False)
            if self.spec.sender:
                sender = asyncio.create_task(self.talk(ws))
            async with asyncio.timeout(max(0.0, until - time.time())):
                async for raw in ws:
                    frame = json.loads(raw)
                    if frame["type"] == "message":
                        self.see(frame, live=True)
                    elif frame["type"] == "error":
                        self.result.errors.append(frame["code"])
            self.result.dropped_by_server.append(ws.close_code)  # closed cleanly, by the server
        except TimeoutError:
            pass  # the session's time is up: leave
        except ConnectionClosed as exc:
            self.result.dropped_by_server.append(exc.rcvd.code if exc.rcvd else None)
        finally:
            if sender is not None:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await sender
            if abrupt:
                ws.transport.abort()
            else:
                with contextlib.suppress(ConnectionClosed, OSError, TimeoutError):
                    await ws.close()

    async def talk(self, ws: websockets.ClientConnection) -> None:
        await asyncio.sleep(random.uniform(0, self.interval))
        while True:
            self.seq += 1
            cmid = f"c{self.spec.index}-{self.seq}"
            body = f"{self.spec.index}:{self.seq}:{time.time():.6f}"
            self.pending[cmid] = body
            await ws.send(json.dumps({"type": "message", "body": body, "client_msg_id": cmid}))
            self.result.sent += 1
            await asyncio.sleep(self.interval * random.uniform(0.5, 1.5))


def run_clients(
    specs: list[ClientSpec], ws_url: str, deadline: float, interval: float, out: str
) -> None:
    """One client process: run its clients until the deadline, then write what they saw."""

    async def main() -> list[SoakClient]:
        clients = [SoakClient(spec, ws_url, deadline, interval) for spec in specs]
        await asyncio.gather(*(client.run() for client in clients))
        return clients

    clients = asyncio.run(main())
    data = {
        "results": [asdict(client.result) for client in clients],
        "latencies": [round(x, 5) for client in clients for x in client.latencies],
    }
    Path(out).write_text(json.dumps(data))


def start_server(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "CHATROOM_DATABASE_URL": f"sqlite+aiosqlite:///{tmp / 'soak.db'}",
        "CHATROOM_SECRET_KEY": SECRET,
        # Limits that would get in the way of one machine playing 500 clients.
        "CHATROOM_RATE_LIMIT": "0",
        "CHATROOM_MAX_CONNECTIONS_PER_USER": "0",
        "CHATROOM_LOGIN_FAILURES_PER_ADDRESS": "0",
        "CHATROOM_SEND_BUFFER_FRAMES": "100000",
        "CHATROOM_SEND_BUFFER_BYTES": str(1 << 30),
    }
    with (tmp / "server.log").open("wb") as log:  # the child keeps its own descriptor
        server = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited: {(tmp / 'server.log').read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return server
        time.sleep(0.2)
    server.kill()
    raise RuntimeError("server did not start")


def stop_server(server: subprocess.Popen[bytes]) -> None:
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def tokens_for(base_url: str, count: int) -> list[str]:
    tokens = []
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for n in range(count):
            name = f"soak{n:03d}"
            response = client.post("/auth/register", json={"username": name, "password": PASSWORD})
            assert response.status_code == 201, response.text
            response = client.post("/auth/token", data={"username": name, "password": PASSWORD})
            assert response.status_code == 200, response.text
            tokens.append(response.json()["access_token"])
    return tokens


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@pytest.mark.soak
def test_soak_no_gaps_no_duplicates(tmp_path: Path) -> None:
    seconds = env_number("CHATROOM_SOAK_SECONDS", 180)
    n_clients = int(env_number("CHATROOM_SOAK_CLIENTS", 500))
    n_procs = int(env_number("CHATROOM_SOAK_PROCESSES", 3))
    interval = env_number("CHATROOM_SOAK_SEND_INTERVAL", 2.0)
    port = free_port()
    server = start_server(tmp_path, port)
    try:
        tokens = tokens_for(f"http://127.0.0.1:{port}", USERS)
        per_user = max(1, n_clients // USERS)
        rng = random.Random(4)
        specs = [
            ClientSpec(
                index=i,
                user=f"soak{(i // per_user) % USERS:03d}",
                token=tokens[(i // per_user) % USERS],
                room=f"soak-room-{(i // 2) % ROOMS}",  # a user has 2 sockets in each of 5 rooms
                sender=rng.random() < SENDER_FRACTION,
            )
            for i in range(n_clients)
        ]
        started = time.time()
        deadline = started + seconds
        context = multiprocessing.get_context("spawn")
        outs = [tmp_path / f"clients-{p}.json" for p in range(n_procs)]
        workers = [
            context.Process(
                target=run_clients,
                args=(specs[p::n_procs], f"ws://127.0.0.1:{port}", deadline, interval, str(out)),
            )
            for p, out in enumerate(outs)
        ]
        for worker in workers:
            worker.start()
        try:
            for worker in workers:
                worker.join(timeout=seconds + 120)
                assert worker.exitcode == 0, f"client process failed: {worker.exitcode}"
        finally:
            for worker in workers:
                if worker.is_alive():
                    worker.kill()
                    worker.join()
        elapsed = time.time() - started
    finally:
        stop_server(server)

    results: list[dict[str, Any]] = []
    latencies: list[float] = []
    for out in outs:
        data = json.loads(out.read_text())
        results += data["results"]
        latencies += data["latencies"]

    with contextlib.closing(sqlite3.connect(tmp_path / "soak.db")) as db:
        rows = db.execute("SELECT id, room, body FROM messages ORDER BY id").fetchall()
    room_ids: dict[str, list[int]] = {}
    stored: dict[int, tuple[str, str]] = {}
    for id_, room, body in rows:
        room_ids.setdefault(room, []).append(id_)
        stored[id_] = (room, body)

    gaps = duplicates = out_of_order = 0
    examples: list[str] = []
    for result in results:
        seen: list[int] = result["ids"]
        if not seen:
            continue
        counts = Counter(seen)
        duplicates += sum(n - 1 for n in counts.values())
        out_of_order += sum(1 for a, b in zip(seen, seen[1:], strict=False) if b <= a)
        first, last = min(seen), max(seen)
        expected = [i for i in room_ids.get(result["room"], []) if first <= i <= last]
        missing = sorted(set(expected) - counts.keys())
        foreign = sorted(counts.keys() - set(expected))  # ids not of this room at all
        gaps += len(missing) + len(foreign)
        if (missing or foreign or len(counts) != len(seen)) and len(examples) < 5:
            examples.append(
                f"client {result['index']} ({result['room']}): missing {missing[:10]}, "
                f"foreign {foreign[:10]}, repeated {[i for i, n in counts.items() if n > 1][:10]}"
            )
    acks = [ack for result in results for ack in result["acks"]]
    unstored_acks = [
        (cmid, id_)
        for result in results
        for cmid, id_, body in result["acks"]
        if stored.get(id_) != (result["room"], body)
    ]

    sent = sum(r["sent"] for r in results)
    sessions = sum(r["sessions"] for r in results)
    deliveries = sum(len(r["ids"]) for r in results)
    drops = Counter(code for r in results for code in r["dropped_by_server"])
    errors = Counter(code for r in results for code in r["errors"])
    print(
        f"\nsoak: {n_clients} clients ({USERS} users) in {ROOMS} rooms, {n_procs} client "
        f"processes, {elapsed:.0f} s (asked {seconds:.0f} s)\n"
        f"  messages sent {sent}, stored {len(rows)}, acknowledged {len(acks)}\n"
        f"  deliveries (history + live) {deliveries}, live deliveries timed {len(latencies)}\n"
        f"  sessions {sessions}, reconnects {sessions - len(results)}, "
        f"connect failures {sum(r['connect_failures'] for r in results)}, "
        f"resumes past the replay limit {sum(r['resumes_over_limit'] for r in results)}\n"
        f"  closed by the server: {dict(drops) or 'none'}; error frames: {dict(errors) or 'none'}\n"
        f"  delivery latency p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms, "
        f"max {max(latencies, default=0) * 1000:.1f} ms"
        + (f" (mean {statistics.fmean(latencies) * 1000:.1f} ms)" if latencies else "")
        + f"\n  gaps {gaps}, duplicates {duplicates}, out of order {out_of_order}, "
        f"acknowledged but not stored {len(unstored_acks)}"
    )
    for line in examples:
        print("  " + line)

    # The run did what a soak is for: traffic, and clients coming back with ?since=.
    assert sent > 0 and acks and deliveries > len(rows)
    assert sessions > len(results), "no client ever reconnected"
    assert gaps == 0, examples
    assert duplicates == 0, examples
    assert out_of_order == 0, examples
    assert unstored_acks == [], unstored_acks[:10]
    # A resume past the replay limit would need REST paging, which these clients skip.
    assert sum(r["resumes_over_limit"] for r in results) == 0

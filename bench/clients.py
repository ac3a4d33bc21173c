"""Client worker processes: many WebSocket clients per process, driven over a pipe.

Each worker runs one asyncio loop (uvloop when installed) holding its share of the clients,
and obeys the orchestrator's commands in order (see `Worker.serve`). A client is a picows
listener: frames are parsed in Cython and handed to `on_ws_frame` where they arrive, with no
task, future or queue per frame. The client processes share the 2 cores with the server, so
what a delivery costs them takes CPU from the server and adds to every latency measured:
per fan-out delivery, 11-12 us with the websockets asyncio client, 6-7 us with websockets'
Sans-I/O protocol driven from an asyncio protocol, 3.5-4.5 us with picows.

Messages carry their origin and send time in the body,
`~<client id>:<seq>:<time.monotonic()>~`, which both servers pass through verbatim, so any
receiver measures send-to-receive latency (one machine, one monotonic clock) and a sender
recognises its own message coming back as its acknowledgement.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from typing import Any

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

MARK = b"~"
FILLER = "the quick brown fox jumps over the lazy dog " * 4


@dataclass(frozen=True, slots=True)
class ClientSpec:
    client_id: int
    url: str
    room: str
    sender: bool


@dataclass(frozen=True)
class Plan:
    """What one worker process runs."""

    # "chatroom", "tutorial", or "depends"/"bare" (joined once open): how to tell that a
    # client has joined
    protocol: str
    clients: list[ClientSpec]
    window: int = 4  # closed loop: a sender's unacknowledged messages at most
    rate: float = 0.0  # open loop: messages/s per sender (0: closed loop)
    body_chars: int = 64
    # chatroom: check that each socket gets its room's message ids strictly increasing
    check_order: bool = False


class Client(WSListener):
    """One socket: reads every frame, counts and times the marked ones."""

    def __init__(self, spec: ClientSpec, worker: Worker) -> None:
        super().__init__()
        self.spec = spec
        self.worker = worker
        self.transport: WSTransport | None = None
        self.opened = False  # the handshake succeeded
        self.joined = asyncio.Event()
        self.joined_at = 0.0
        self.frames = 0
        self.received = 0
        self.in_flight = 0
        self.sent = 0
        self.acked = 0
        self.acked_event = asyncio.Event()
        self.closed = False
        self.last_id = 0  # largest message id seen (check_order)
        self.order_errors = 0  # message ids at or below the previous one (check_order)
        self._is_join: Callable[[bytes], bool]
        if worker.plan.protocol == "chatroom":
            self._is_join = _is_history
        else:
            own = f"Client #{spec.client_id} joined the chat".encode()
            self._is_join = own.__eq__

    async def open(self) -> None:
        self.transport, _ = await ws_connect(
            lambda: self,
            self.spec.url,
            websocket_handshake_timeout=600,
            max_frame_size=2**31,
        )
        self.opened = True
        if self.worker.plan.protocol in ("depends", "bare"):  # they send nothing on join
            self.joined_at = time.monotonic()
            self.joined.set()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.TEXT:
            self._on_text(frame.get_payload_as_bytes())

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        self.acked_event.set()
        self.joined.set()  # wake whoever waits for the join; joined_at stays 0

    def _on_text(self, text: bytes) -> None:
        worker = self.worker
        now = time.monotonic()
        worker.last_frame = now
        self.frames += 1
        if not self.joined.is_set():
            if self._is_join(text):
                self.joined_at = now
                self.joined.set()
            return
        start = text.find(MARK)
        if start < 0:
            return
        end = text.find(MARK, start + 1)
        sender, _seq, sent = text[start + 1 : end].split(b":")
        worker.latencies.append(now - float(sent))
        self.received += 1
        if worker.plan.check_order:
            # '{"type":"message","id":123,...': the first "id" key is the message's
            at = text.find(ID_KEY) + len(ID_KEY)
            message_id = int(text[at : text.find(b",", at)])
            if message_id <= self.last_id:
                self.order_errors += 1
            self.last_id = message_id
        if int(sender) == self.spec.client_id:
            self.in_flight -= 1
            self.acked += 1
            self.acked_event.set()

    def send(self, body: str) -> None:
        if not self.closed and self.transport is not None:
            self.transport.send(WSMsgType.TEXT, body.encode())

    def _body(self) -> str:
        head = f"~{self.spec.client_id}:{self.sent}:{time.monotonic():.6f}~ "
        return head + FILLER[: max(0, self.worker.plan.body_chars - len(head))]

    async def send_closed_loop(self, deadline: float, window: int) -> None:
        """Keep at most `window` messages unacknowledged until the deadline."""
        while not self.closed and time.monotonic() < deadline:
            while self.in_flight >= window and not self.closed:
                self.acked_event.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self.acked_event.wait(), max(0.001, deadline - time.monotonic())
                    )
                if time.monotonic() >= deadline:
                    return
            self.send(self._body())
            self.sent += 1
            self.in_flight += 1

    async def send_open_loop(self, deadline: float, rate: float, offset: float) -> None:
        """Send at a fixed rate whatever the acknowledgements do (latency under load)."""
        interval = 1.0 / rate
        due = time.monotonic() + offset
        while not self.closed and due < deadline:
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.send(self._body())
            self.sent += 1
            self.in_flight += 1
            due += interval


ID_KEY = b'"id":'


def _is_history(text: bytes) -> bool:
    return text.startswith(b'{"type":"history"')


class Worker:
    """The clients of one process and the command loop that drives them."""

    def __init__(self, plan: Plan, pipe: Pipe) -> None:
        self.plan = plan
        self.pipe = pipe
        self.clients = [Client(spec, self) for spec in plan.clients]
        self.latencies: array[float] = array("d")
        self.last_frame = 0.0
        self.errors: list[str] = []

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        commands: dict[str, Callable[..., Any]] = {
            "connect": self.connect,
            "settle": self.settle,
            "reset": self.reset,
            "run": self.run,
            "drain": self.drain,
            "stats": self.stats,
        }
        self.pipe.send(("started", os.getpid()))
        while True:
            name, kwargs = await loop.run_in_executor(None, self.pipe.recv)
            if name == "exit":
                return
            self.pipe.send((name, await commands[name](**kwargs)))

    async def connect(self, start: int, stop: int, concurrency: int) -> dict[str, Any]:
        """Open clients[start:stop] and wait until each has joined (history / own notice)."""
        gate = asyncio.Semaphore(concurrency)
        began = time.monotonic()

        async def join(client: Client) -> None:
            async with gate:
                try:
                    await client.open()
                except Exception as exc:  # a refused or timed-out handshake is a result
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    return
            await client.joined.wait()

        chosen = self.clients[start:stop]
        await asyncio.gather(*(join(client) for client in chosen))
        joined = [c.joined_at for c in chosen if c.joined_at]
        dropped = sum(1 for c in chosen if c.opened and not c.joined_at)
        return {
            "began": began,
            "joined": len(joined),
            "dropped_before_join": dropped,
            "last_joined": max(joined, default=began),
            "errors": self.errors[:5],
            "error_count": len(self.errors),
        }

    async def settle(self, quiet: float, within: float) -> dict[str, Any]:
        """Wait until no frame has arrived for `quiet` seconds."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            idle = time.monotonic() - self.last_frame
            if idle >= quiet:
                break
            await asyncio.sleep(min(0.1, quiet - idle + 0.01))
        return {"last_frame": self.last_frame, "frames": sum(c.frames for c in self.clients)}

    async def reset(self) -> None:
        """Zero the counters (every worker, before any sender starts)."""
        for client in self.clients:
            client.received = 0
            client.sent = client.acked = client.in_flight = client.order_errors = 0
        del self.latencies[:]  # readers hold this array

    async def run(self, duration: float, rate_offsets: dict[int, float]) -> dict[int, int]:
        """Senders send for `duration` seconds; returns what each sent."""
        deadline = time.monotonic() + duration
        senders = [c for c in self.clients if c.spec.sender and c.opened]
        if self.plan.rate > 0:
            tasks = [
                c.send_open_loop(deadline, self.plan.rate, rate_offsets.get(c.spec.client_id, 0))
                for c in senders
            ]
        else:
            tasks = [c.send_closed_loop(deadline, self.plan.window) for c in senders]
        await asyncio.gather(*tasks)
        return {c.spec.client_id: c.sent for c in senders}

    async def drain(self, expected: dict[str, int], within: float) -> dict[str, Any]:
        """Wait until every client has every message sent to its room (or the timeout)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if all(c.received >= expected.get(c.spec.room, 0) for c in self.clients):
                break
            await asyncio.sleep(0.02)
        return await self.stats(expected)

    async def stats(self, expected: dict[str, int] | None = None) -> dict[str, Any]:
        expected = expected or {}
        return {
            "received": sum(c.received for c in self.clients),
            "acked": sum(c.acked for c in self.clients),
            "lost": sum(max(0, expected.get(c.spec.room, 0) - c.received) for c in self.clients),
            # more than was sent to the room: duplicates
            "extra": sum(max(0, c.received - expected.get(c.spec.room, 0)) for c in self.clients)
            if expected
            else 0,
            "order_errors": sum(c.order_errors for c in self.clients),
            "frames": sum(c.frames for c in self.clients),
            "last_frame": self.last_frame,
            "latencies": self.latencies.tobytes(),
            "closed": sum(c.closed for c in self.clients if c.opened),
        }


def worker_main(plan: Plan, pipe: Pipe) -> None:
    """Entry point of a worker process."""
    worker = Worker(plan, pipe)
    try:
        import uvloop

        uvloop.run(worker.serve())
    except ImportError:
        asyncio.run(worker.serve())
    # Leave without closing handshakes: the server sees the sockets drop, as at a crash.
    pipe.send(("exit", None))
    os._exit(0)

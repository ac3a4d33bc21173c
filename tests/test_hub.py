"""The hub's fan-out against fake sockets whose sends can be made to wait.

The real-socket tests (test_reliability.py) show the same from outside; these pin down the
order and exactly-once guarantees around a socket that is slow, replaying or refusing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

from starlette.websockets import WebSocket

from app.chat.hub import Connection, Frame, Hub
from app.core.security import TokenClaims
from app.wire import PREPARED_FRAMES, prepared_frame

TOKEN = TokenClaims(username="ann", rooms=None, issued_at=None, expires_at=0)


class FakeSocket:
    """Records what was sent; while `paused`, a send waits like a full transport.

    With prepared=True its server also takes prepared frames, unless it `refuses` them (as
    a full or closing transport does).
    """

    def __init__(self, *, prepared: bool = False) -> None:
        self.sent: list[str] = []
        self.written: list[bytes] = []
        self.paused = False
        self.refuses = False
        self.unsent = 0  # bytes written that the peer has not taken
        self.resumed = asyncio.Event()
        extensions = {PREPARED_FRAMES: self} if prepared else {}
        self.scope: dict[str, Any] = {"type": "websocket", "extensions": extensions}

    async def send_text(self, text: str) -> None:
        if self.paused:
            await self.resumed.wait()
        self.sent.append(text)

    def write_prepared(self, frames: Sequence[bytes]) -> bool:
        if self.refuses or self.paused:
            return False
        self.written.append(frames[0] if len(frames) == 1 else b"".join(frames))
        return True

    def unsent_bytes(self) -> int:
        return self.unsent

    def resume(self) -> None:
        self.paused = False
        self.resumed.set()


class Ending:
    """Stands in for the timeout around a socket's receiving: records when an abort ends it."""

    def __init__(self) -> None:
        self.at: float | None = None

    def reschedule(self, when: float | None) -> None:
        self.at = when


def ended() -> asyncio.Timeout:
    return cast(asyncio.Timeout, Ending())


def join(
    hub: Hub, socket: FakeSocket, *, room: str = "r", max_frames: int = 0, skip_through: int = 0
) -> Connection:
    """A connection of socket in room, sending."""
    connection = Connection(user="ann", room=room, max_frames=max_frames, max_bytes=0, token=TOKEN)
    hub.add(connection)
    connection.start(cast(WebSocket, socket), skip_through=skip_through, until=ended())
    return connection


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_frames_behind_a_waiting_send_arrive_once_and_in_order() -> None:
    hub, socket = Hub(), FakeSocket()
    join(hub, socket)
    socket.paused = True
    hub.deliver("r", [Frame("a", 1)])
    await settle()  # "a" is now stuck in its send
    for message_id, text in ((2, "b"), (3, "c"), (2, "b"), (4, "d")):  # a repeat of 2
        hub.deliver("r", [Frame(text, message_id)])
    socket.resume()
    await settle()
    assert socket.sent == ["a", "b", "c", "d"]


async def test_frames_queued_before_the_replay_skip_what_it_held() -> None:
    socket = FakeSocket()
    connection = Connection(user="ann", room="r", max_frames=0, max_bytes=0, token=TOKEN)
    for message_id in (4, 5, 6):
        connection.offer([Frame(f"m{message_id}", message_id)])
    connection.offer([Frame("notice")])
    # The replay held messages up to 5.
    connection.start(cast(WebSocket, socket), skip_through=5, until=ended())
    await settle()
    assert socket.sent == ["m6", "notice"]


async def test_an_outbox_over_its_limit_is_closed_1013_while_others_still_get_frames() -> None:
    hub = Hub()
    slow, fast = FakeSocket(), FakeSocket()
    slow_connection = join(hub, slow, max_frames=2)
    join(hub, fast)
    slow.paused = True
    for message_id in range(1, 6):
        hub.deliver("r", [Frame(f"m{message_id}", message_id)])
        await settle()
    assert slow_connection.close_code == 1013
    assert fast.sent == ["m1", "m2", "m3", "m4", "m5"]
    slow.resume()
    await settle()
    assert slow.sent == []  # the waiting send was cancelled, not completed after the abort


async def test_an_outbox_over_its_byte_limit_is_closed_1013() -> None:
    hub, slow = Hub(), FakeSocket()
    connection = Connection(user="ann", room="r", max_frames=0, max_bytes=10, token=TOKEN)
    hub.add(connection)
    slow.paused = True
    connection.start(cast(WebSocket, slow), skip_through=0, until=ended())
    hub.deliver("r", [Frame("12345", 1)])
    await settle()  # taken by the sender, waiting in its send: no longer in the outbox
    hub.deliver("r", [Frame("67890", 2)])
    assert connection.close_code is None
    hub.deliver("r", [Frame("abcdef", 3)])  # 11 bytes waiting
    assert connection.close_code == 1013


async def test_bytes_written_but_not_taken_count_against_the_byte_limit() -> None:
    """A history replay the peer has not read yet counts against the send buffer."""
    hub, slow = Hub(), FakeSocket(prepared=True)
    connection = Connection(user="ann", room="r", max_frames=0, max_bytes=10, token=TOKEN)
    hub.add(connection)
    slow.unsent, slow.paused = 8, True  # a replay of 8 bytes, unread; nothing more is taken
    connection.start(cast(WebSocket, slow), skip_through=0, until=ended())
    hub.deliver("r", [Frame("12", 1)])
    assert connection.close_code is None
    hub.deliver("r", [Frame("3", 2)])  # 11 bytes not taken
    assert connection.close_code == 1013


async def test_a_broadcast_is_framed_once_and_written_as_is_to_every_socket() -> None:
    hub = Hub()
    sockets = [FakeSocket(prepared=True) for _ in range(3)]
    for socket in sockets:
        join(hub, socket)
    hub.deliver("r", [Frame("héllo", 1)])
    await settle()
    first = sockets[0].written[0]
    assert first == prepared_frame("héllo")
    assert all(socket.written == [first] and socket.written[0] is first for socket in sockets)
    assert all(socket.sent == [] for socket in sockets)  # ASGI not used


async def test_frames_a_socket_refuses_go_through_asgi_in_order() -> None:
    hub, socket = Hub(), FakeSocket(prepared=True)
    join(hub, socket)
    socket.refuses = True  # a closing or full transport
    hub.deliver("r", [Frame("a", 1)])
    hub.deliver("r", [Frame("b", 2)])
    await settle()
    socket.refuses = False
    hub.deliver("r", [Frame("c", 3)])
    await settle()
    assert socket.sent == ["a", "b"]
    assert socket.written == [prepared_frame("c")]


async def test_a_rooms_messages_committed_together_reach_each_socket_in_one_write() -> None:
    hub = Hub()
    sockets = [FakeSocket(prepared=True) for _ in range(2)]
    for socket in sockets:
        join(hub, socket)
    await settle()
    hub.deliver("r", [Frame("a", 1), Frame("b", 2)])
    both = prepared_frame("a") + prepared_frame("b")
    assert all(socket.written == [both] for socket in sockets)
    # Delivered again (a catch-up overlapping what was sent): nothing is sent twice.
    hub.deliver("r", [Frame("b", 2), Frame("c", 3)])
    assert all(socket.written == [both, prepared_frame("c")] for socket in sockets)


async def test_frames_that_queue_behind_a_waiting_send_follow_in_one_write() -> None:
    hub, socket = Hub(), FakeSocket(prepared=True)
    join(hub, socket)
    await settle()
    socket.paused = True  # a full transport: prepared writes refused, sends wait
    hub.deliver("r", [Frame("a", 1)])
    await settle()  # "a" is stuck in its ASGI send
    socket.refuses = False
    hub.deliver("r", [Frame("b", 2)])
    hub.deliver("r", [Frame("c", 3)])
    assert socket.written == []  # queued behind "a", not written past it
    socket.resume()
    await settle()
    assert socket.sent == ["a"]
    assert socket.written == [prepared_frame("b") + prepared_frame("c")]

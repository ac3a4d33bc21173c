"""The hub's per-socket sending, against a fake socket whose writes can be made to wait.

The real-socket tests (test_reliability.py) show the same from outside; these pin down the
order and exactly-once guarantees around a send that has to wait, which is where inline
sending hands over to a task.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest

from app.chat.hub import Connection, Frame, Hub
from app.wire import prepared_frame


class FakeSocket:
    """Records what was sent; while `paused`, a send waits like a full transport."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.paused = False
        self.resumed = asyncio.Event()
        self.fail: Exception | None = None

    async def send(self, message: MutableMapping[str, Any]) -> None:
        """The ASGI send of the socket."""
        assert message["type"] == "websocket.send"
        if self.paused:
            await self.resumed.wait()
        if self.fail is not None:
            raise self.fail
        self.sent.append(message["text"])

    def resume(self) -> None:
        self.paused = False
        self.resumed.set()


class PreparedSocket(FakeSocket):
    """A FakeSocket whose server also takes prepared frames, unless it `refuses` them (as a
    full or closing transport does)."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.refuses = False

    def write_prepared(self, frame: bytes) -> bool:
        if self.refuses:
            return False
        self.written.append(frame)
        return True


def connect(socket: FakeSocket, *, max_frames: int = 0, room: str = "r") -> Connection:
    write = socket.write_prepared if isinstance(socket, PreparedSocket) else None
    return Connection(
        user="ann",
        room=room,
        send=socket.send,
        max_frames=max_frames,
        max_bytes=0,
        write_prepared=write,
    )


def join(hub: Hub, socket: FakeSocket, room: str = "r") -> Connection:
    """A started connection of socket in room."""
    connection = connect(socket, room=room)
    hub.add(connection)
    connection.start()
    return connection


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_frames_are_written_in_the_fan_out_itself_when_the_socket_takes_them() -> None:
    socket = FakeSocket()
    connection = connect(socket)
    connection.start()
    connection.offer(Frame("a"))
    connection.offer(Frame("b"))
    # Nothing awaited yet: the writes happened inside offer().
    assert socket.sent == ["a", "b"]


async def test_frames_behind_a_waiting_send_arrive_once_and_in_order() -> None:
    socket = FakeSocket()
    connection = connect(socket)
    connection.start()
    socket.paused = True
    for text in "abcd":
        assert connection.offer(Frame(text))
    assert socket.sent == []
    socket.resume()
    await settle()
    assert socket.sent == ["a", "b", "c", "d"]
    connection.offer(Frame("e"))  # back to writing inline
    assert socket.sent == ["a", "b", "c", "d", "e"]


async def test_frames_queued_before_the_replay_skip_what_it_held() -> None:
    socket = FakeSocket()
    connection = connect(socket)
    for message_id in (4, 5, 6):
        connection.offer(Frame(f"m{message_id}", message_id))
    connection.offer(Frame("notice"))
    connection.start(skip_through=5)  # the history replay held messages up to 5
    assert socket.sent == ["m6", "notice"]


async def test_an_outbox_over_its_limit_is_refused_while_others_still_get_frames() -> None:
    slow, fast = FakeSocket(), FakeSocket()
    hub = Hub()
    slow_connection, fast_connection = connect(slow, max_frames=2), connect(fast)
    for connection in (slow_connection, fast_connection):
        hub.add(connection)
        connection.start()
    slow.paused = True
    for message_id in range(1, 5):
        hub.deliver("r", Frame(f"m{message_id}", message_id))
    assert slow_connection.aborted and slow_connection.close_code == 1013
    assert fast.sent == ["m1", "m2", "m3", "m4"]
    slow.resume()
    await settle()
    assert slow.sent == []  # the waiting send was cancelled, not completed after the abort


def receive_forever(connection: Connection, interrupted: asyncio.Event) -> asyncio.Task[None]:
    """A task standing in for the socket's own: waits for frames until an abort ends it."""

    async def receive() -> None:
        connection.owner = asyncio.current_task()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if connection.interrupted_by_abort():
                interrupted.set()
                return
            raise

    return asyncio.create_task(receive())


async def test_an_abort_interrupts_the_task_receiving_for_the_socket() -> None:
    connection = connect(FakeSocket())
    connection.start()
    interrupted = asyncio.Event()
    task = receive_forever(connection, interrupted)
    await settle()
    connection.abort(1008, "password changed")
    await asyncio.wait_for(task, 1)
    assert interrupted.is_set() and connection.close_code == 1008


async def test_a_real_cancellation_is_not_mistaken_for_an_abort() -> None:
    connection = connect(FakeSocket())
    interrupted = asyncio.Event()
    task = receive_forever(connection, interrupted)
    await settle()
    connection.abort(1008, "password changed")
    task.cancel()  # e.g. the server is being torn down, in the same loop turn
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not interrupted.is_set()


async def test_a_send_that_fails_ends_the_socket_without_a_close_frame() -> None:
    socket = FakeSocket()
    connection = connect(socket)
    connection.start()
    socket.fail = ConnectionResetError("peer gone")
    connection.offer(Frame("a"))
    assert connection.aborted and connection.close_code is None
    socket.fail = None
    connection.offer(Frame("b"))
    assert socket.sent == []


async def test_a_broadcast_is_framed_once_and_written_as_is_to_every_socket() -> None:
    hub = Hub()
    sockets = [PreparedSocket() for _ in range(3)]
    for socket in sockets:
        join(hub, socket)
    hub.deliver("r", Frame("héllo", 1))
    first = sockets[0].written[0]
    assert first == prepared_frame("héllo")
    assert all(socket.written == [first] and socket.written[0] is first for socket in sockets)
    assert all(socket.sent == [] for socket in sockets)  # ASGI not used


async def test_frames_a_socket_refuses_go_through_asgi_and_nothing_overtakes_them() -> None:
    socket = PreparedSocket()
    connection = connect(socket)
    connection.start()
    socket.refuses, socket.paused = True, True  # a full transport: ASGI's send waits
    connection.offer(Frame("a", 1), prepared=prepared_frame("a"))
    socket.refuses = False  # writable again, while "a" still waits in ASGI
    connection.offer(Frame("b", 2), prepared=prepared_frame("b"))
    assert socket.written == []  # "b" queued behind "a"
    socket.resume()
    await settle()
    assert socket.sent == ["a", "b"]
    connection.offer(Frame("c", 3), prepared=prepared_frame("c"))
    assert socket.written == [prepared_frame("c")]


async def test_a_rooms_messages_committed_together_reach_each_socket_in_one_write() -> None:
    hub = Hub()
    sockets = [PreparedSocket() for _ in range(2)]
    for socket in sockets:
        join(hub, socket)
    behind_socket = FakeSocket()  # no prepared frames: one ASGI send per message
    behind = join(hub, behind_socket)
    other_room = PreparedSocket()
    join(hub, other_room, room="s")
    hub.deliver_many([("r", Frame("a", 1)), ("s", Frame("x", 2)), ("r", Frame("b", 3))])
    both = prepared_frame("a") + prepared_frame("b")
    assert all(socket.written == [both] for socket in sockets)
    assert other_room.written == [prepared_frame("x")]
    # Delivered again (a catch-up overlapping what was sent): nothing is sent twice.
    hub.deliver_many([("r", Frame("b", 3)), ("r", Frame("c", 4))])
    assert all(socket.written == [both, prepared_frame("c")] for socket in sockets)
    assert behind.aborted is False and behind_socket.sent == ["a", "b", "c"]

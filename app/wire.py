"""Broadcast frames built once per message and written as bytes to every receiver.

A server's WebSocket frames are not masked, so a chat message is the same bytes on every
socket of its room. Through ASGI, each receiver's `send` encodes the text to UTF-8 again and
frames it again in websockets' Python code: most of what a delivery costs the server.

So chatroom runs uvicorn with `PreparedFrameProtocol`, its default WebSocket protocol
(websockets-sansio) plus one ASGI extension, PREPARED_FRAMES: an object whose
write_prepared() writes an already framed message straight to the socket's transport, after
the checks the protocol's own `send` makes, and answers False where that `send` would wait
or fail (a full write buffer, a closing or closed socket). The caller then falls back to the
ASGI `send`, which waits, queues or fails exactly as before. Under any other server or
protocol the extension is absent and every frame goes through ASGI. The extension also tells
how many written bytes the peer has not taken yet (unsent_bytes()), and the protocol drops a
closing connection whose peer does not read (`PreparedFrameProtocol._abort_if_stuck`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from starlette.types import Scope
from starlette.websockets import WebSocket
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State

logger = logging.getLogger("chatroom.wire")

PREPARED_FRAMES = "chatroom.websocket.prepared_frames"
# Frames kept framed: a few batches' broadcasts and the rooms' history replays, each given to
# many sockets. At most this many, of at most PREPARED_CACHE_MAX_CHARS each (4 MiB or so).
PREPARED_CACHE_FRAMES = 64
PREPARED_CACHE_MAX_CHARS = 64 * 1024

WritePrepared = Callable[[Sequence[bytes]], bool]


class PreparedFrames(Protocol):
    """What the PREPARED_FRAMES extension offers (the protocol object itself: one reference
    per socket, not a dict of bound methods kept for the socket's life)."""

    def write_prepared(self, frames: Sequence[bytes], /) -> bool: ...

    def unsent_bytes(self) -> int: ...


async def send_texts(websocket: WebSocket, texts: Sequence[str]) -> None:
    """Send texts in order: in one write of prepared frames where the server offers it,
    else (or where that write would wait or fail) one ASGI send each."""
    if not texts or write_now(websocket, prepare(texts)):
        return
    for text in texts:
        await websocket.send_text(text)


def prepare(texts: Sequence[str]) -> list[bytes]:
    """texts as prepared frames, for write_now: made once for all receivers of a broadcast."""
    return [prepared_frame(text) for text in texts]


def write_now(websocket: WebSocket, frames: Sequence[bytes]) -> bool:
    """Write prepared frames in one write if the socket takes it without waiting; False
    otherwise (another server, a full buffer, a closing socket): the caller then queues."""
    write = prepared_writer(websocket.scope)
    return write is not None and write(frames)


def unsent_bytes(websocket: WebSocket) -> int:
    """Bytes written to the socket that its peer has not taken yet (0 under another server):
    what a socket that does not read makes the server hold."""
    extension = _extension(websocket.scope)
    return 0 if extension is None else extension.unsent_bytes()


def prepared_frame(text: str) -> bytes:
    """text as one complete, unmasked WebSocket text frame, ready for any socket.

    Cached by text: the receivers of a broadcast all hand in the same string, framed once.
    """
    if len(text) > PREPARED_CACHE_MAX_CHARS:
        return _frame(text)
    return _cached_frame(text)


def _frame(text: str) -> bytes:
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False)


_cached_frame = functools.lru_cache(maxsize=PREPARED_CACHE_FRAMES)(_frame)


def prepared_writer(scope: Scope) -> WritePrepared | None:
    """The socket's writer of prepared frames, when its server offers one."""
    extension = _extension(scope)
    return None if extension is None else extension.write_prepared


def _extension(scope: Scope) -> PreparedFrames | None:
    # ASGI allows a server to set "extensions" to None as well as to leave it out.
    extension: PreparedFrames | None = (scope.get("extensions") or {}).get(PREPARED_FRAMES)
    return extension


class PreparedFrameProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, offering PREPARED_FRAMES to the application.

    It reads the parent's state (close_sent, disconnected, writable, conn, transport, as
    uvicorn 0.54 names them). Should a release rename them, the extension is not offered
    or its writes are refused, and every frame goes through ASGI as before:
    tests/test_wire.py fails on such a release, chatroom does not. It also extends two of
    the parent's methods (on_task_complete, keepalive_timeout): a socket the app or the
    heartbeat gave up on is dropped if its peer does not take what it was sent.
    """

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        try:
            # Only for a handshake the app will see, and only where frames are sent as they
            # are: an extension such as permessage-deflate would rewrite each one per socket.
            if self.response.status_code == 101 and not self.conn.extensions:
                # asgiref types every extension's value as a dict; ASGI itself does not.
                self.scope["extensions"][PREPARED_FRAMES] = self  # type: ignore[assignment]
        except AttributeError:
            logger.warning("uvicorn's protocol changed: prepared frames are not offered")

    def on_task_complete(self, task: asyncio.Task[None]) -> None:
        super().on_task_complete(task)
        self._abort_if_stuck()

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()
        self._abort_if_stuck()

    def _abort_if_stuck(self) -> None:
        """Once the socket is closing, give what it still has to send close_timeout, then
        drop the connection (as websockets' own client and server do).

        uvicorn only close()s the transport, which waits until its buffer is sent: a peer
        that never reads but whose TCP stack keeps acknowledging (a zero window) would hold
        that buffer, a whole history replay, for good.
        """
        if not self.disconnected and self.transport.get_write_buffer_size():
            self.loop.call_later(self.close_timeout, self._abort_unless_gone)

    def _abort_unless_gone(self) -> None:
        if not self.disconnected:
            self.transport.abort()

    def unsent_bytes(self) -> int:
        return int(self.transport.get_write_buffer_size())

    def write_prepared(self, frames: Sequence[bytes]) -> bool:
        """Write frames now, as send() would; False where send() would wait or refuse.

        One writelines: the frames go out in one system call without being copied into one
        buffer first (a room's history frame is shared by every joiner).

        Never raises: fan-out calls it for every socket of a room in one loop.
        """
        try:
            if (
                self.close_sent
                or self.disconnected
                or not self.writable.is_set()
                or self.conn.state is not State.OPEN
                or self.transport.is_closing()
            ):
                return False
        except AttributeError:
            return False
        self.transport.writelines(frames)
        return True

"""The life of one socket in a room: replay, presence, receiving and storing messages.

It wires the hub (local fan-out), the broker (fan-out across processes) and the store
(persistence) together; routes only authenticate and hand the accepted socket to serve().
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.websockets import WebSocket, WebSocketDisconnect

from app.chat.broker import Broker
from app.chat.hub import Connection, Frame, Hub
from app.chat.protocol import (
    FrameError,
    encode,
    error_frame,
    history_frame,
    message_payload,
    parse_client_frame,
    presence_frame,
    welcome_frame,
)
from app.chat.store import Committed, MessageWriter, StoreFailed, history_page
from app.config import Settings
from app.models import Message

logger = logging.getLogger("chatroom.chat")

SINCE_REPLAY_LIMIT = 1000  # messages replayed for ?since=; beyond it the client pages by REST
MAX_IN_FLIGHT = 16  # a connection's messages awaiting commit before it stops reading
CLOSE_GOING_AWAY = 1001
CLOSE_TIMEOUT_SECONDS = 5.0  # how long a close handshake may take before we move on


class ChatService:
    """Rooms of this process, connected through a broker, backed by the message store."""

    def __init__(
        self,
        *,
        settings: Settings,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        broker: Broker,
    ) -> None:
        self.settings = settings
        self.hub = Hub()
        self.broker = broker
        self.sessions = sessions
        self.writer = MessageWriter(engine, self._publish_committed)

    async def start(self) -> None:
        await self.broker.start(self.hub.deliver)
        self.writer.start()

    async def stop(self) -> None:
        """Finish in-flight writes and broadcasts, then close every socket with 1001."""
        await self.writer.stop()
        for room in self.hub.rooms:
            for connection in self.hub.connections(room):
                connection.abort(CLOSE_GOING_AWAY, "server shutting down")
        await self.broker.stop()

    async def _publish_committed(self, committed: Sequence[Committed]) -> None:
        for item in committed:
            payload = message_payload(item.message, item.client_msg_id)
            await self.broker.publish(item.message.room, Frame(encode(payload), item.message.id))

    async def serve(self, websocket: WebSocket, *, user: str, room: str, since: int | None) -> None:
        """Run an accepted socket until either side ends it."""
        settings = self.settings
        connection = Connection(
            user=user,
            room=room,
            send=websocket.send_text,
            max_frames=settings.send_buffer_frames,
            max_bytes=settings.send_buffer_bytes,
        )
        # Registered before the history query: whatever is committed from now on is queued,
        # and the sender drops what the replay already held, so nothing is missed or doubled.
        first = self.hub.add(connection)
        try:
            messages, has_more = await self._replay(room, since)
            await websocket.send_text(
                welcome_frame(user=user, room=room, online=self.hub.online(room))
            )
            await websocket.send_text(
                history_frame(room=room, messages=messages, has_more=has_more)
            )
            if first:
                await self.broker.publish(room, Frame(presence_frame("join", room=room, user=user)))
            skip_through = messages[-1].id if messages else (since or 0)
            await self._pump(websocket, connection, skip_through)
        except WebSocketDisconnect:
            pass
        finally:
            if self.hub.remove(connection):
                await self.broker.publish(
                    room, Frame(presence_frame("leave", room=room, user=user))
                )
            if connection.close_code is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        websocket.close(connection.close_code, connection.close_reason),
                        CLOSE_TIMEOUT_SECONDS,
                    )

    async def _replay(self, room: str, since: int | None) -> tuple[list[Message], bool]:
        if since is not None:
            return await history_page(
                self.sessions, room=room, limit=SINCE_REPLAY_LIMIT, after=since
            )
        return await history_page(self.sessions, room=room, limit=self.settings.history_limit)

    async def _pump(self, websocket: WebSocket, connection: Connection, skip_through: int) -> None:
        """Send and receive concurrently; the first to end (or an abort) ends both."""
        tasks = {
            asyncio.create_task(connection.run_sender(skip_through=skip_through)),
            asyncio.create_task(self._receive(websocket, connection)),
            asyncio.create_task(connection.aborted.wait()),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            # A send to a socket the peer already closed is how most connections end.
            if isinstance(result, Exception) and not isinstance(
                result, WebSocketDisconnect | RuntimeError | OSError
            ):
                logger.error("connection of %s failed", connection.user, exc_info=result)

    async def _receive(self, websocket: WebSocket, connection: Connection) -> None:
        in_flight: deque[asyncio.Future[Message]] = deque()
        max_chars = self.settings.max_message_chars
        while True:
            event = await websocket.receive()
            if event["type"] == "websocket.disconnect":
                return
            text = event.get("text")
            if text is None:
                connection.offer(
                    Frame(error_frame("binary_unsupported", "send text frames, not binary"))
                )
                continue
            try:
                message = parse_client_frame(text, max_chars=max_chars)
            except FrameError as exc:
                connection.offer(Frame(error_frame(exc.code, exc.detail)))
                continue
            future = self.writer.submit(
                room=connection.room,
                author=connection.user,
                body=message.body,
                client_msg_id=message.client_msg_id,
            )
            future.add_done_callback(lambda f: _report_store_failure(f, connection))
            in_flight.append(future)
            while in_flight and (in_flight[0].done() or len(in_flight) >= MAX_IN_FLIGHT):
                with contextlib.suppress(StoreFailed):
                    await in_flight.popleft()


def _report_store_failure(future: asyncio.Future[Message], connection: Connection) -> None:
    if future.cancelled():
        return
    if isinstance(future.exception(), StoreFailed):
        connection.offer(
            Frame(error_frame("store_failed", "the message could not be stored; send it again"))
        )

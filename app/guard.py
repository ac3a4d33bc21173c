"""Bounds on connections that have not made their request yet, which uvicorn 0.54 lacks.

uvicorn keeps a connection that never finishes its request for as long as the client likes,
and its default HTTP parser, httptools, takes a request head of any size. So chatroom serves
HTTP/1.1 with uvicorn's h11 protocol, whose buffer for an unfinished head is capped by
`h11_max_incomplete_event_size` (CHATROOM_MAX_HEADER_BYTES), extended here:

- a request must arrive whole (head and body) within CHATROOM_REQUEST_TIMEOUT_SECONDS of the
  connection's opening, or of its first byte on a kept-alive connection: else 408 and close;
- a head over the cap is answered 431, where h11's protocol says only 400;
- at the connection limit (uvicorn's `limit_concurrency`, CHATROOM_MAX_CONNECTIONS) a new
  connection closes the one that has waited longest on its client (a request not received
  yet, or idle between requests), so that idle connections cannot lock everyone out;
- a WebSocket handshake refused by the websockets parser (a header line over 8192 bytes,
  more than 128 headers) gets the answer websockets prepared, which uvicorn never writes.

It overrides two hooks of uvicorn's H11Protocol (on_response_complete, send_400_response:
were they renamed, idle connections would not give way and a long head would get 400) and reads
its conn, transport, config and server_state, as uvicorn 0.52 to 0.54 name them
(pyproject.toml); tests/test_guard.py fails on a release that changes them.
"""

from __future__ import annotations

import asyncio
import http
from collections.abc import Iterator
from typing import Any
from weakref import WeakKeyDictionary

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from app.wire import PreparedFrameProtocol

_WAITING_STATES = (h11.IDLE, h11.SEND_BODY)

# Per server, its connections waiting on their clients, the longest waiting first.
_waiting: WeakKeyDictionary[ServerState, dict[GuardedHttpProtocol, None]] = WeakKeyDictionary()


class GuardedHttpProtocol(H11Protocol):
    """uvicorn's h11 protocol with a request deadline, 431, and room made at the limit."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        request_timeout: float,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.request_timeout = request_timeout
        self.request_deadline: asyncio.TimerHandle | None = None
        self.waiting = _waiting.setdefault(server_state, {})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._track()
        self._make_room()

    def data_received(self, data: bytes) -> None:
        for piece in self._pieces(data):
            if self.transport.is_closing() or self.transport.get_protocol() is not self:
                break  # answered, or upgraded to a WebSocket
            super().data_received(piece)
        self._track()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._track()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        limit = self.config.h11_max_incomplete_event_size
        if limit is not None and len(self.conn.trailing_data[0]) > limit:
            self._answer(http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
        else:
            super().send_400_response(msg)

    def _pieces(self, data: bytes) -> Iterator[bytes]:
        """data, cut where a request head would pass the cap: h11 checks the size of a head
        only while it is incomplete, so one that came whole in a single read would pass."""
        limit = self.config.h11_max_incomplete_event_size
        while data:
            room = len(data)
            if limit is not None and self.conn.their_state is h11.IDLE:
                room = max(limit + 1 - len(self.conn.trailing_data[0]), 1)
            yield data[:room]
            data = data[room:]

    def _track(self) -> None:
        """Note whether the connection now waits on its client, and hold it to the deadline."""
        if (
            self.transport.is_closing()
            or self.transport.get_protocol() is not self  # upgraded to a WebSocket
            or self.conn.their_state not in _WAITING_STATES
        ):
            self._stop_waiting()
            return
        self.waiting.setdefault(self, None)  # a waiting connection keeps its place
        if getattr(self, "timeout_keep_alive_task", None) is not None:
            self._cancel_deadline()  # idle between requests: uvicorn's keep-alive timer
        elif self.request_deadline is None:
            self.request_deadline = self.loop.call_later(self.request_timeout, self._expire)

    def _make_room(self) -> None:
        """At the limit, close the connections waiting longest, so this one can be served."""
        limit = self.config.limit_concurrency
        connections = self.server_state.connections
        # uvicorn answers 503 to a request made while `limit` connections are open.
        while limit is not None and len(connections) >= limit:
            oldest = next(iter(self.waiting), self)
            if oldest is self:
                return
            oldest._stop_waiting()
            connections.discard(oldest)  # now: its transport closes on the next loop turn
            oldest.transport.close()

    def _expire(self) -> None:
        self.request_deadline = None
        self._stop_waiting()
        if self.conn.their_state is h11.IDLE:  # no request begun, or its head unfinished
            self._answer(http.HTTPStatus.REQUEST_TIMEOUT)
        else:
            self.transport.close()

    def _answer(self, status: http.HTTPStatus) -> None:
        body = status.phrase.encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status.value, body, len(body), body)
        )
        self.transport.close()

    def _stop_waiting(self) -> None:
        self.waiting.pop(self, None)
        self._cancel_deadline()

    def _cancel_deadline(self) -> None:
        if self.request_deadline is not None:
            self.request_deadline.cancel()
            self.request_deadline = None


class GuardedWebSocketProtocol(PreparedFrameProtocol):
    """chatroom's WebSocket protocol, answering a handshake that websockets could not parse."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.handshake_exc is not None and not self.transport.is_closing():
            # websockets queued its answer (17.x: 431 or 414) or only the end of the stream.
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.transport.close()

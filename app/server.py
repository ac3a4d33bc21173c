"""How chatroom runs under uvicorn: its options, and a graceful stop on SIGTERM/SIGINT.

uvicorn answers a signal by failing every WebSocket at once with 1012. chatroom first stops
taking messages, finishes the writes and broadcasts in flight, and closes its sockets with
1001, then hands the signal on to uvicorn. A second signal is handed on at once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import resource
import signal
import threading
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

from app.core.config import Settings
from app.guard import GuardedHttpProtocol, GuardedWebSocketProtocol

logger = logging.getLogger("chatroom")

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Open files kept for all but client connections: database, broker, listening socket, logs.
RESERVED_FILES = 64


def install_graceful_stop(drain: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    """Run drain() before the server's own signal handling; returns an uninstaller."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signals reach the main thread only (tests run servers in threads)
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {sig: signal.getsignal(sig) for sig in HANDLED_SIGNALS}
    draining: list[asyncio.Task[None]] = []

    def pass_on(sig: int, frame: FrameType | None) -> None:
        handler = previous[sig]
        if callable(handler):
            handler(sig, frame)

    async def drain_then_pass_on(sig: int) -> None:
        logger.info("draining chat before shutdown")
        try:
            await drain()
        finally:
            pass_on(sig, None)

    def on_signal(sig: int, frame: FrameType | None) -> None:
        if draining:
            pass_on(sig, frame)
            return
        loop.call_soon_threadsafe(
            lambda: draining.append(loop.create_task(drain_then_pass_on(sig)))
        )

    for sig in HANDLED_SIGNALS:
        signal.signal(sig, on_signal)

    def uninstall() -> None:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is on_signal:
                signal.signal(sig, handler)

    return uninstall


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for uvicorn.run / uvicorn.Config."""
    return {
        # Larger frames are refused by uvicorn with close code 1009 before we see them.
        "ws_max_size": settings.max_frame_bytes,
        "ws_ping_interval": settings.ping_interval_seconds or None,
        "ws_ping_timeout": settings.ping_timeout_seconds or None,
        # Compression costs CPU per receiver, and chat frames are small.
        "ws_per_message_deflate": False,
        # uvicorn's default protocol, plus writing a broadcast frame framed once (app/wire.py)
        # and answering a handshake the websockets parser refuses (app/guard.py).
        "ws": GuardedWebSocketProtocol,
        # h11, not uvicorn's default httptools: it caps a request head (app/guard.py).
        "http": functools.partial(
            GuardedHttpProtocol, request_timeout=settings.request_timeout_seconds
        ),
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "timeout_keep_alive": settings.keep_alive_seconds,
        "limit_concurrency": connection_limit(settings),
        "backlog": settings.backlog,
        "proxy_headers": True,
    }


def connection_limit(settings: Settings) -> int | None:
    """CHATROOM_MAX_CONNECTIONS, by default the open-file limit less RESERVED_FILES: beyond
    that, accept() fails and every new client is kept out, whoever holds the connections."""
    if settings.max_connections is not None:
        return settings.max_connections or None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    return max(soft - RESERVED_FILES, soft // 2)

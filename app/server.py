"""uvicorn options that chatroom needs, shared by the CLI, tests and benchmarks."""

from __future__ import annotations

from typing import Any

from app.config import Settings
from app.wire import PreparedFrameProtocol


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for uvicorn.run / uvicorn.Config."""
    return {
        # Larger frames are refused by uvicorn with close code 1009 before we see them.
        "ws_max_size": settings.max_frame_bytes,
        "ws_ping_interval": settings.ping_interval_seconds or None,
        "ws_ping_timeout": settings.ping_timeout_seconds or None,
        # Compression costs CPU per receiver, and chat frames are small.
        "ws_per_message_deflate": False,
        # uvicorn's default protocol, plus writing a broadcast frame framed once (app/wire.py).
        "ws": PreparedFrameProtocol,
        "proxy_headers": True,
    }

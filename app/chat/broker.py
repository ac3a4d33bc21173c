"""Brokers carry frames of a room to every process serving that room.

`memory://` (the default) is this process alone; `redis://` spans workers and hosts.
Backends are chosen by URL scheme and imported lazily so the default install needs no Redis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from app.chat.hub import Frame

Deliver = Callable[[str, Frame], None]


class Broker(Protocol):
    async def start(self, deliver: Deliver) -> None:
        """Begin handing every published frame to deliver(room, frame)."""

    async def publish(self, room: str, frame: Frame) -> None:
        """Send frame to every subscriber of room, in publish order."""

    async def stop(self) -> None: ...


class MemoryBroker:
    """One process: publishing is delivering."""

    def __init__(self) -> None:
        self._deliver: Deliver | None = None

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def publish(self, room: str, frame: Frame) -> None:
        if self._deliver is not None:
            self._deliver(room, frame)

    async def stop(self) -> None:
        self._deliver = None


def create_broker(url: str) -> Broker:
    scheme = url.split(":", 1)[0]
    if scheme == "memory":
        return MemoryBroker()
    raise ValueError(f"unsupported CHATROOM_BROKER_URL scheme {scheme!r}; use memory://")

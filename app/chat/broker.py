"""Brokers carry frames of a room to every process serving that room.

`memory://` (the default) is this process alone; `redis://` spans workers and hosts.
Backends are chosen by URL scheme and imported lazily so the default install needs no Redis.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from app.chat.hub import Frame

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger("chatroom.broker")

# Frames of one or more rooms, in publish order: a committed batch is handed over whole, so
# that each socket can get all of its room's messages in one write.
Deliver = Callable[[Sequence[tuple[str, Frame]]], None]
Resubscribed = Callable[[], Awaitable[None]]

RECONNECT_MAX_SECONDS = 5.0  # back-off ceiling while Redis is unreachable


class Broker(Protocol):
    async def start(self, deliver: Deliver, resubscribed: Resubscribed) -> None:
        """Begin handing every published frame to deliver([(room, frame), ...]).

        resubscribed() runs after a lost subscription is back, before new frames flow, so the
        caller can re-read what was published meanwhile.
        """

    async def publish_many(self, frames: Sequence[tuple[str, Frame]]) -> None:
        """Send each (room, frame) to every subscriber of room, in order, in as few round
        trips as the broker allows."""

    async def stop(self) -> None: ...


class MemoryBroker:
    """One process: publishing is delivering."""

    def __init__(self) -> None:
        self._deliver: Deliver | None = None

    async def start(self, deliver: Deliver, resubscribed: Resubscribed) -> None:
        self._deliver = deliver

    async def publish_many(self, frames: Sequence[tuple[str, Frame]]) -> None:
        if self._deliver is not None:
            self._deliver(frames)

    async def stop(self) -> None:
        self._deliver = None


class RedisBroker:
    """Redis pub/sub: every worker hears every room (one pattern subscription).

    A frame travels as "<message id or empty>:<text>", or as "-<user>:<text>" (to all but
    user) or "=<user>:<text>" (to user alone); usernames hold no colon. Redis pub/sub is
    at-most-once: frames published while a subscription is down are lost, which is why
    resubscribed() exists.
    Every frame, a worker's own included, comes back through Redis, so all workers see one
    order per room (see app/chat/ordering.py for how publishes are ordered).
    """

    def __init__(self, redis: Redis, subscriber: Redis, *, prefix: str = "chatroom:") -> None:
        self._redis = redis
        self._subscriber = subscriber
        self._channel_prefix = f"{prefix}room:"
        self._task: asyncio.Task[None] | None = None

    async def start(self, deliver: Deliver, resubscribed: Resubscribed) -> None:
        ready = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(
            self._listen(deliver, resubscribed, ready), name="chatroom-redis-listener"
        )
        await ready  # subscribed: nothing published from now on is missed

    async def publish_many(self, frames: Sequence[tuple[str, Frame]]) -> None:
        # One round trip for a whole committed batch; Redis runs a pipeline in order.
        async with self._redis.pipeline(transaction=False) as pipe:
            for room, frame in frames:
                pipe.publish(*self._envelope(room, frame))
            await pipe.execute()

    def _envelope(self, room: str, frame: Frame) -> tuple[str, str]:
        if frame.not_to is not None:
            head = f"-{frame.not_to}"
        elif frame.only_to is not None:
            head = f"={frame.only_to}"
        else:
            head = "" if frame.message_id is None else str(frame.message_id)
        return self._channel_prefix + room, f"{head}:{frame.text}"

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._redis.aclose()
        await self._subscriber.aclose()

    async def _listen(
        self, deliver: Deliver, resubscribed: Resubscribed, ready: asyncio.Future[None]
    ) -> None:
        delay, lost = 0.1, False
        prefix_length = len(self._channel_prefix)
        # Messages that arrived in one read are parsed without the loop running in between:
        # collect them and deliver them together once it does, as with memory://.
        pending: list[tuple[str, Frame]] = []
        loop = asyncio.get_running_loop()

        def flush() -> None:
            frames = pending.copy()
            pending.clear()
            deliver(frames)

        while True:
            try:
                async with self._subscriber.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.psubscribe(self._channel_prefix + "*")
                    if not ready.done():
                        ready.set_result(None)
                    if lost:
                        logger.warning("Redis subscription restored; catching up from the store")
                        await resubscribed()
                    delay, lost = 0.1, False
                    async for message in pubsub.listen():
                        if message["type"] != "pmessage":
                            continue
                        room = message["channel"][prefix_length:]
                        if not pending:
                            loop.call_soon(flush)
                        pending.append((room, _unwrap(message["data"])))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Loud, and retried for ever: a worker must outlive a Redis restart.
                logger.error("Redis subscription lost (%s); retrying in %.1f s", exc, delay)
                lost = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)


def _unwrap(data: str) -> Frame:
    """The frame of an envelope (RedisBroker._envelope)."""
    head, _, text = data.partition(":")
    if head[:1] == "-":
        return Frame(text, not_to=head[1:])
    if head[:1] == "=":
        return Frame(text, only_to=head[1:])
    return Frame(text, int(head) if head else None)


def create_broker(url: str) -> Broker:
    scheme = url.split(":", 1)[0]
    if scheme == "memory":
        return MemoryBroker()
    if scheme in ("redis", "rediss", "unix"):
        return RedisBroker(redis_client(url), redis_client(url, retry=False))
    raise ValueError(
        f"unsupported CHATROOM_BROKER_URL scheme {scheme!r}; use memory:// or redis://"
    )


def redis_client(url: str, *, retry: bool = True) -> Redis:
    """A client for url; retry: repeat a command that failed on a dropped connection.

    Publishing retries: a pooled connection opened before a Redis restart fails on first use,
    and retrying on a fresh one keeps that publish (a repeat is harmless: sockets drop ids they
    already have, and the room lock keeps the order). The subscriber must not: redis-py would
    quietly reconnect and resubscribe it, and the listener would never learn that it missed
    messages and must catch up.
    """
    try:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff, NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("a redis:// broker needs `pip install 'chatroom[redis]'`") from exc
    policy = (
        Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=5)
        if retry
        else Retry(NoBackoff(), retries=0)
    )
    return Redis.from_url(
        url,
        decode_responses=True,
        health_check_interval=10,
        socket_connect_timeout=5,
        retry=policy,
        retry_on_error=[RedisConnectionError, RedisTimeoutError] if retry else [],
    )

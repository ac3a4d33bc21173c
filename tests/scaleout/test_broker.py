"""The Redis broker on a real Redis: order, and a committed batch delivered together."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import pytest

from app.chat.broker import RedisBroker, redis_client
from app.chat.hub import Frame

pytestmark = pytest.mark.redis


async def test_frames_published_together_arrive_in_order_and_together(redis_url: str) -> None:
    calls: list[list[tuple[str, Frame]]] = []
    everything = asyncio.Event()
    frames = [(f"room{i % 3}", Frame(f"text {i}", i + 1)) for i in range(100)]

    def deliver(batch: Sequence[tuple[str, Frame]]) -> None:
        calls.append(list(batch))
        if sum(len(c) for c in calls) >= len(frames):
            everything.set()

    async def resubscribed() -> None:
        pass

    broker = RedisBroker(
        redis_client(redis_url),
        redis_client(redis_url, retry=False),
        prefix=f"test-{uuid.uuid4().hex}:",  # pub/sub channels are shared by every db
    )
    await broker.start(deliver, resubscribed)
    try:
        await broker.publish_many(frames)
        await asyncio.wait_for(everything.wait(), 10)
    finally:
        await broker.stop()
    assert [frame for call in calls for frame in call] == frames
    # One pipeline's messages are read in a few socket reads, not one by one, and each
    # read's messages are handed on together: one write per socket per room (Hub).
    assert len(calls) < len(frames) // 4, [len(call) for call in calls]

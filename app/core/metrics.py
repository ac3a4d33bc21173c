"""What an operator scrapes at `GET /metrics` (docs/operations.md): one registry per app.

A registry of its own, not prometheus_client's global one: tests run several apps in one
process, and each app's figures are its own. Counts the hub already keeps (sockets, rooms)
are read when scraped rather than kept twice on the hot path. No metric has a room or user
label: the figures say how much, never who or where.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Messages per transaction: MessageWriter's MAX_BATCH is 512.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Metrics:
    """The metrics of one running app; the parts that count hold a reference to it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._webhook_backlog: Callable[[], Awaitable[int]] | None = None
        counter = partial(Counter, registry=self.registry)
        gauge = partial(Gauge, registry=self.registry)
        histogram = partial(Histogram, registry=self.registry)
        self.open_sockets = gauge("chatroom_open_sockets", "Sockets joined to a room")
        self.rooms = gauge("chatroom_rooms", "Rooms with at least one socket here")
        self.messages_stored = counter(
            "chatroom_messages_stored", "Messages committed (resends not counted)"
        )
        self.deliveries = counter(
            "chatroom_deliveries", "Frames fanned out to sockets (messages and presence notices)"
        )
        self.socket_closes = counter(
            "chatroom_socket_closes",
            "Joined sockets that ended, by close code (the server's, else the peer's)",
            ["code"],
        )
        self.refusals = counter(
            "chatroom_refusals", "Refused sockets and messages, by reason", ["reason"]
        )
        self.store_batch_size = histogram(
            "chatroom_store_batch_size", "Messages per committed batch", buckets=BATCH_BUCKETS
        )
        self.store_commit_seconds = histogram(
            "chatroom_store_commit_seconds",
            "Time to insert and commit one batch",
            buckets=COMMIT_BUCKETS,
        )
        # The webhook sender's; see watch_webhooks().
        self.webhook_backlog = gauge("chatroom_webhook_backlog", "Webhook events not yet sent")
        self.webhook_failures = counter(
            "chatroom_webhook_failures", "Webhook deliveries that failed (each retry counts)"
        )

    def watch_hub(self, *, sockets: Callable[[], int], rooms: Callable[[], int]) -> None:
        """Read the hub's counts at each scrape."""
        self.open_sockets.set_function(sockets)
        self.rooms.set_function(rooms)

    def watch_webhooks(self, backlog: Callable[[], Awaitable[int]]) -> None:
        """backlog(): the events waiting in the outbox (every worker's), read at each scrape.
        The sender counts its failures in webhook_failures."""
        self._webhook_backlog = backlog

    async def exposition(self) -> bytes:
        """The Prometheus text format. On the event loop, where the hub's counts cannot
        change under it."""
        if self._webhook_backlog is not None:
            self.webhook_backlog.set(await self._webhook_backlog())
        return generate_latest(self.registry)

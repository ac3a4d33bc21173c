"""GET /metrics: what an operator's Prometheus reads, over real sockets (docs/operations.md)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.core.config import Settings
from tests.helpers import (
    HOOK_SECRET,
    SECRET,
    LiveServer,
    Receiver,
    connect,
    free_port,
    join,
    register,
)
from tests.test_webhooks import WAIT_SECONDS, post_messages, wait_for


async def scrape(http: httpx.AsyncClient) -> dict[str, float]:
    """Every sample, keyed `name` or `name{label=value}`."""
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


async def test_metrics_count_sockets_rooms_messages_and_deliveries(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    alice = await join(server, "r1", await register(http, "alice"))
    await alice.recv_type("join")  # her own join notice: 1 delivery
    bob = await join(server, "r1", await register(http, "bob"))
    for client in (alice, bob):  # bob's, to both: 2
        await client.recv_type("join")
    for sender, body in ((alice, "hi"), (bob, "hello")):  # 2 messages to 2 sockets each
        await sender.send(body)
        for client in (alice, bob):
            assert (await client.recv_type("message"))["body"] == body

    metrics = await scrape(http)
    assert metrics["chatroom_open_sockets"] == 2
    assert metrics["chatroom_rooms"] == 1
    assert metrics["chatroom_messages_stored_total"] == 2
    assert metrics["chatroom_deliveries_total"] == 1 + 2 + 2 * 2
    batches = metrics["chatroom_store_batch_size_count"]
    assert batches >= 1 and metrics["chatroom_store_batch_size_sum"] == 2
    assert metrics["chatroom_store_commit_seconds_count"] == batches
    assert metrics["chatroom_webhook_backlog"] == 0


@pytest.fixture
def strict_server(settings: Settings) -> Iterator[LiveServer]:
    # One message, then one every 10 s; one socket per user.
    limits = {"rate_limit": 0.1, "rate_burst": 1, "max_connections_per_user": 1}
    live = LiveServer(settings.model_copy(update=limits)).start()
    yield live
    live.stop()


async def test_metrics_count_refusals_and_closes_by_code(
    strict_server: LiveServer,
) -> None:
    async with httpx.AsyncClient(base_url=strict_server.url) as http:
        alice_token = await register(http, "alice")
        with pytest.raises(InvalidStatus):  # a forged token: refused at the handshake
            await connect(strict_server, "r1", "not-a-token")
        alice = await join(strict_server, "r1", alice_token)
        with pytest.raises(ConnectionClosed):  # a second socket: over her limit (1008)
            await (await connect(strict_server, "r1", alice_token)).recv()
        bob = await join(strict_server, "r1", await register(http, "bob"))
        await alice.send("first")
        await alice.send("too soon")
        assert (await alice.recv_type("error"))["code"] == "rate_limited"
        assert (await bob.recv_type("message"))["body"] == "first"
        await alice.ws.send("x" * (64 * 1024 + 1))  # over CHATROOM_MAX_FRAME_BYTES: 1009
        with pytest.raises(ConnectionClosed):
            while True:
                await alice.recv()
        assert (await bob.recv_type("leave"))["user"] == "alice"

        metrics = await scrape(http)
    assert metrics["chatroom_refusals_total{reason=auth}"] == 1
    assert metrics["chatroom_refusals_total{reason=connection_limit}"] == 1
    assert metrics["chatroom_refusals_total{reason=rate_limit}"] == 1
    assert metrics["chatroom_socket_closes_total{code=1009}"] == 1
    assert metrics["chatroom_open_sockets"] == 1
    assert metrics["chatroom_messages_stored_total"] == 1


async def test_chatroom_metrics_false_turns_it_off(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    for value, status in (("true", 200), ("false", 404)):
        monkeypatch.setenv("CHATROOM_METRICS", value)
        live = LiveServer(Settings(database_url=settings.database_url, secret_key=SECRET))
        live.start()
        try:
            async with httpx.AsyncClient(base_url=live.url) as http:
                assert (await http.get("/metrics")).status_code == status, value
        finally:
            live.stop()


async def test_metrics_show_the_webhook_backlog_and_failures(database_url: str) -> None:
    receiver = Receiver(free_port())
    receiver.answer = lambda event: 500  # the host fails until told otherwise
    receiver.start()
    live = LiveServer(
        Settings(
            database_url=database_url,
            secret_key=SECRET,
            webhook_url=f"http://127.0.0.1:{receiver.port}/hooks/chat",
            webhook_secret=HOOK_SECRET,
            webhook_retry_max_seconds=0.2,
        )
    ).start()
    try:
        async with httpx.AsyncClient(base_url=live.url) as http:
            await post_messages(live, await register(http, "alice"), "r1", "hi")
            await wait_for(lambda: len(receiver.events()) >= 2, "a retry after a 500")
            metrics = await scrape(http)
            assert metrics["chatroom_webhook_backlog"] == 1
            assert metrics["chatroom_webhook_failures_total"] >= 1

            receiver.answer = lambda event: 200
            deadline = time.monotonic() + WAIT_SECONDS
            while (await scrape(http))["chatroom_webhook_backlog"] != 0:
                assert time.monotonic() < deadline, "the backlog never emptied"
                await asyncio.sleep(0.05)
    finally:
        live.stop()
        receiver.stop()

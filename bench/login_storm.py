"""Concurrent logins against a real `chatroom serve`: the failed-login throttle and Argon2's cost.

Two storms, each against a fresh server (bench/servers.py):

- wrong: N concurrent `POST /auth/token` with a wrong password for one username, from one
  address; prints how many were answered 401, 429, 503.
- right: M concurrent correct logins of M users, each from its own loopback address
  (127.0.0.2, 127.0.0.3, ...: the per-address limit plays no part), while one chat socket
  sends a message and waits for it to come back, over and over; prints the answers, the
  server's RSS growth (peak VmRSS sampled every 20 ms, less RSS before) and the chat round
  trips during the storm.

    python bench/login_storm.py                        # the work tree
    python bench/login_storm.py --app-rev main         # as committed at a revision
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import servers
import websockets
from servers import PASSWORD, ServerSpec, start


class Logins:
    """(username, password, source address) each to be posted at once on its own connection.

    The clients are made beforehand: making one (its TLS context) blocks the loop for a while.
    """

    def __init__(self, url: str, logins: list[tuple[str, str, str]]) -> None:
        self.logins = logins
        self.clients = {
            address: httpx.AsyncClient(
                base_url=url,
                timeout=120,
                transport=httpx.AsyncHTTPTransport(local_address=address),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
            )
            for address in {address for _, _, address in logins}
        }

    async def post(self) -> Counter[int]:
        async def one(username: str, password: str, address: str) -> int:
            form = {"username": username, "password": password}
            response = await self.clients[address].post("/auth/token", data=form)
            return response.status_code

        try:
            codes = await asyncio.gather(*(one(*login) for login in self.logins))
        finally:
            for client in self.clients.values():
                await client.aclose()
        return Counter(codes)


async def wrong_storm(count: int) -> dict[str, object]:
    server = start(ServerSpec("chatroom"), ["victim"])
    try:
        logins = [("victim", "not the password", "127.0.0.1")] * count
        codes = await Logins(f"http://127.0.0.1:{server.port}", logins).post()
    finally:
        server.stop()
    return {"storm": "wrong", "attempts": count, "answers": dict(sorted(codes.items()))}


async def right_storm(count: int) -> dict[str, object]:
    users = [f"u{i}" for i in range(count)]
    server = start(ServerSpec("chatroom"), ["chatter", *users])
    try:
        url = f"ws://127.0.0.1:{server.port}/items/bench/ws?token={server.tokens['chatter']}"
        async with websockets.connect(url) as chat:
            await chat.recv()  # welcome
            await chat.recv()  # history

            async def round_trip() -> float:
                started = time.perf_counter()
                await chat.send(json.dumps({"type": "message", "body": "ping"}))
                while json.loads(await chat.recv())["type"] != "message":
                    pass
                return (time.perf_counter() - started) * 1000

            idle = [await round_trip() for _ in range(20)]
            before = server.rss_kb()
            peak = before
            logins = [(name, PASSWORD, f"127.0.0.{2 + i}") for i, name in enumerate(users)]
            crowd = Logins(f"http://127.0.0.1:{server.port}", logins)
            storm = asyncio.create_task(crowd.post())
            during: list[float] = []
            while not storm.done():
                during.append(await round_trip())
                peak = max(peak, server.rss_kb())
                await asyncio.sleep(0.02)
            codes = await storm
    finally:
        server.stop()
    return {
        "storm": "right",
        "logins": count,
        "answers": dict(sorted(codes.items())),
        "rss_growth_mb": round((peak - before) / 1024, 1),
        "round_trip_idle_ms": round(statistics.median(idle), 1),
        "round_trip_during_median_ms": round(statistics.median(during), 1),
        "round_trip_during_p95_ms": round(sorted(during)[int(len(during) * 0.95)], 1),
        "round_trip_during_max_ms": round(max(during), 1),
        "round_trips_during": len(during),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--wrong", type=int, default=200, help="concurrent wrong passwords")
    parser.add_argument("--right", type=int, default=100, help="concurrent correct logins")
    parser.add_argument("--app-rev", metavar="REV", help="serve chatroom as committed at REV")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chatroom-rev-") as scratch:
        if args.app_rev:
            servers.snapshot(args.app_rev, Path(scratch))
        print(json.dumps(asyncio.run(wrong_storm(args.wrong))))
        print(json.dumps(asyncio.run(right_storm(args.right))))


if __name__ == "__main__":
    main()

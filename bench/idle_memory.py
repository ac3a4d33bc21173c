"""What an idle socket costs a server, and (with --trace) which lines allocate it.

Opens 20 warm-up sockets, reads the server's RSS, opens N more at a chosen concurrency, waits
0.5 s and reads it again: (RSS after - RSS before) / N. With --trace the server runs under
tracemalloc (bench/tracemalloc_hook) and the difference between the two snapshots is printed
per source line, per socket. Unlike the join-storm scenario of run.py, the concurrency is
yours to choose: a storm leaves allocator fragmentation behind that a trickle does not.

    python bench/idle_memory.py --server chatroom --connections 2000 --concurrency 20
    python bench/idle_memory.py --server chatroom --connections 1000 --trace
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import tempfile
import tracemalloc
from pathlib import Path

import servers
import websockets
from servers import ServerSpec, start

WARM = 20
HOOK = Path(__file__).resolve().parent / "tracemalloc_hook"


async def measure(
    server: servers.Server, kind: str, count: int, concurrency: int, snap: str
) -> dict[str, float]:
    users = sorted(server.tokens) or [f"user{i}" for i in range(WARM)]
    sockets = []

    async def open_one(index: int) -> None:
        room = "room1" if kind in ("chatroom", "depends") else ""
        socket = await websockets.connect(
            server.ws_url(room, index, users[index % len(users)]),
            compression=None,
            ping_interval=None,
            max_size=None,
            open_timeout=120,
        )
        sockets.append(socket)

        async def drain() -> None:
            try:
                async for _ in socket:
                    pass
            except websockets.ConnectionClosed:
                pass

        asyncio.get_running_loop().create_task(drain())

    async def snapshot() -> None:
        if snap:
            os.kill(server.pid, signal.SIGUSR1)
            await asyncio.sleep(3)

    for index in range(WARM):
        await open_one(index)
    await asyncio.sleep(1)
    await snapshot()
    before = server.rss_kb()
    gate = asyncio.Semaphore(concurrency)

    async def gated(index: int) -> None:
        async with gate:
            await open_one(index)

    await asyncio.gather(*(gated(index) for index in range(WARM, WARM + count)))
    await asyncio.sleep(0.5)
    after = server.rss_kb()
    await snapshot()
    for socket in sockets:
        await socket.close()
    return {
        "kb_per_connection": round((after - before) / count, 2),
        "rss_before_mb": round(before / 1024, 1),
        "rss_after_mb": round(after / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--server", choices=("chatroom", "tutorial", "depends", "bare"), default="chatroom"
    )
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--trace", action="store_true", help="tracemalloc lines, per socket")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="chatroom-idle-")
    snap = f"{scratch}/snap" if args.trace else ""
    extra = (
        {"PYTHONPATH": f"{servers.source_dir}:{HOOK}", "CHATROOM_BENCH_SNAPSHOT": snap}
        if snap
        else {}
    )
    users = [f"user{i}" for i in range(WARM)] if args.server == "chatroom" else []
    server = start(ServerSpec(args.server), users, extra_env=extra)
    try:
        result = asyncio.run(measure(server, args.server, args.connections, args.concurrency, snap))
    finally:
        server.stop()
    print(
        json.dumps(
            {
                "server": args.server,
                "connections": args.connections,
                "concurrency": args.concurrency,
            }
            | result
        )
    )
    if snap:
        first = tracemalloc.Snapshot.load(f"{snap}-1.snap")
        second = tracemalloc.Snapshot.load(f"{snap}-2.snap")
        stats = second.compare_to(first, "lineno")
        total = sum(stat.size_diff for stat in stats)
        print(f"traced: {total / args.connections:.0f} B per connection; largest lines:")
        for stat in stats[: args.top]:
            frame = stat.traceback[0]
            where = frame.filename.split("site-packages/")[-1]
            size, count = stat.size_diff / args.connections, stat.count_diff / args.connections
            print(f"{size:8.0f} B {count:6.2f} objects  {where}:{frame.lineno}")


if __name__ == "__main__":
    main()

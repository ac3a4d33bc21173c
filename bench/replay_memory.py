"""What sockets that never read make a server hold: issue 15's replay attack.

A room holds --messages messages of --chars NUL characters (each escaped to 6 bytes of
JSON), written straight into the database. One user opens --sockets raw TCP sockets that
send the WebSocket handshake for `?since=0` and then never read. The server's RSS is read
before, then every second for --wait seconds; the script prints the baseline, the peak
growth and the growth at the end, and how many of the sockets the server had dropped by then.
The server runs with chatroom's default limits (not bench's raised ones).

    python bench/replay_memory.py                       # the working tree
    python bench/replay_memory.py --app-rev 81366ed     # chatroom as committed there
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import sqlite3
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import servers
from servers import ServerSpec, start

ROOM = "flood"
# chatroom's own defaults, where servers.CHATROOM_BENCH_ENV raises them for load tests.
DEFAULT_LIMITS = {
    "CHATROOM_SEND_BUFFER_FRAMES": "256",
    "CHATROOM_SEND_BUFFER_BYTES": str(1 << 20),
    "CHATROOM_MAX_CONNECTIONS_PER_USER": "20",
    "CHATROOM_RATE_LIMIT": "10",
    "CHATROOM_RATE_BURST": "20",
}


def fill(database: Path, messages: int, chars: int) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    with sqlite3.connect(database) as connection:
        connection.executemany(
            "INSERT INTO messages (room, author, body, created_at) VALUES (?, ?, ?, ?)",
            [(ROOM, "alice", "\0" * chars, now)] * messages,
        )


def silent_socket(port: int, token: str) -> socket.socket:
    """A socket that asks to join with ?since=0, then never reads."""
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /items/{ROOM}/ws?token={token}&since=0 HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    return sock


def established(port: int) -> int:
    """Connections the server still holds open on port (it drops one that does not read
    with a reset, or with a FIN queued behind what the peer never took)."""
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return sum(1 for row in rows if int(row[1].split(":")[1], 16) == port and row[3] == "01")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sockets", type=int, default=20)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--chars", type=int, default=4000)
    parser.add_argument("--wait", type=float, default=50.0, help="seconds to watch the RSS")
    parser.add_argument("--app-rev", help="serve chatroom as committed at this revision")
    args = parser.parse_args()
    if args.app_rev:
        servers.snapshot(args.app_rev, Path(tempfile.mkdtemp(prefix="chatroom-rev-")))
    server = start(ServerSpec("chatroom"), ["alice"], extra_env=DEFAULT_LIMITS)
    try:
        fill(server.database, args.messages, args.chars)
        time.sleep(1)
        before = server.rss_kb()
        sockets = [silent_socket(server.port, server.tokens["alice"]) for _ in range(args.sockets)]
        peak, started = before, time.monotonic()
        while time.monotonic() - started < args.wait:
            time.sleep(1)
            peak = max(peak, server.rss_kb())
        after = server.rss_kb()
        gone = args.sockets - established(server.port)
        for sock in sockets:
            sock.close()
    finally:
        server.stop()
    print(
        json.dumps(
            {
                "app_rev": args.app_rev or "working tree",
                "sockets": args.sockets,
                "messages": args.messages,
                "chars": args.chars,
                "rss_before_mb": round(before / 1024, 1),
                "peak_growth_mb": round((peak - before) / 1024, 1),
                f"growth_after_{args.wait:g}s_mb": round((after - before) / 1024, 1),
                "sockets_dropped_by_server": gone,
            }
        )
    )


if __name__ == "__main__":
    main()

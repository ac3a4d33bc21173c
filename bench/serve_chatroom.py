"""chatroom under a chosen uvicorn WebSocket / HTTP / event-loop implementation.

`chatroom serve` runs uvicorn's default loop (uvloop when installed), h11 extended by
app/guard.py for HTTP, and websockets-sansio extended by app/wire.py and app/guard.py for
WebSockets. This starts the same app factory with the same options, changing only those
three (`auto` keeps chatroom's), to compare them (`python bench/run.py --uvicorn-matrix`).
The database must already be migrated.

    python bench/serve_chatroom.py --port 8002 --ws wsproto --http h11 --loop asyncio
"""

from __future__ import annotations

import argparse

import uvicorn

from app.core.config import Settings
from app.server import uvicorn_options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ws", default="auto")
    parser.add_argument("--http", default="auto")
    parser.add_argument("--loop", default="auto")
    args = parser.parse_args()
    options = uvicorn_options(Settings())
    if args.ws != "auto":
        options["ws"] = args.ws
    if args.http != "auto":
        options["http"] = args.http
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host="127.0.0.1",
        port=args.port,
        loop=args.loop,
        **options,
    )


if __name__ == "__main__":
    main()

"""chatroom under a chosen uvicorn WebSocket / HTTP / event-loop implementation.

`chatroom serve` always runs uvicorn's defaults ("auto": websockets-sansio, httptools,
uvloop when installed). This starts the same app factory with the same options, changing
only those three, to compare them (`python bench/run.py --uvicorn-matrix`). The database
must already be migrated.

    python bench/serve_chatroom.py --port 8002 --ws wsproto --http h11 --loop asyncio
"""

from __future__ import annotations

import argparse

import uvicorn

from app.config import Settings
from app.server import uvicorn_options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ws", default="auto")
    parser.add_argument("--http", default="auto")
    parser.add_argument("--loop", default="auto")
    args = parser.parse_args()
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host="127.0.0.1",
        port=args.port,
        ws=args.ws,
        http=args.http,
        loop=args.loop,
        **uvicorn_options(Settings()),
    )


if __name__ == "__main__":
    main()

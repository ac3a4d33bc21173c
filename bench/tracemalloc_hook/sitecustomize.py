"""Loaded by a server started with this directory on PYTHONPATH (bench/idle_memory.py).

With CHATROOM_BENCH_SNAPSHOT=PREFIX it traces allocations, and each SIGUSR1 writes a
tracemalloc snapshot to PREFIX-<n>.snap (after a full collection).
"""

import gc
import os
import signal
import tracemalloc

_prefix = os.environ.get("CHATROOM_BENCH_SNAPSHOT")
if _prefix:
    tracemalloc.start(1)
    _taken = [0]

    def _dump(*_: object) -> None:
        _taken[0] += 1
        gc.collect()
        tracemalloc.take_snapshot().dump(f"{_prefix}-{_taken[0]}.snap")

    signal.signal(signal.SIGUSR1, _dump)

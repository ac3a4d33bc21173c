"""Failed-login throttling per username and per client address, and the bound on Argon2 work."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

MAX_TRACKED_KEYS = 100_000  # bounds memory when someone sprays random usernames
# What a client refused because of attempts still being checked (not of recorded failures),
# or because every password check is busy, is told to wait: about one Argon2 check.
BUSY_RETRY_SECONDS = 1.0

T = TypeVar("T")


class TryLater(Exception):
    """The attempt was not tried; retry_after seconds until one may be."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"try again in {retry_after:.0f} s")
        self.retry_after = retry_after


class LoginThrottled(TryLater):
    """Too many recent failed (or still unchecked) logins for the username or the address."""


class HashingBusy(TryLater):
    """Every password check is busy and the queue for them is full."""


class LoginThrottle:
    """Counts failures in a sliding window; a key over its limit is refused until one expires.

    An attempt counts from before its password is checked (reserve) until it is settled, so
    a crowd of concurrent attempts gets no more checks than the limit. A limit of 0, or a
    window of 0, turns that check off. Kept per process: with several workers an attacker
    gets at most workers x limit tries per window.
    """

    def __init__(self, *, per_username: int, per_address: int, window_seconds: float) -> None:
        on = window_seconds > 0
        self._limits = {"user": per_username if on else 0, "addr": per_address if on else 0}
        self._window = window_seconds
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._pending: Counter[tuple[str, str]] = Counter()

    def reserve(self, *, username: str, address: str) -> None:
        """Count an attempt now; raise LoginThrottled when either key has used up its tries.

        Every reserve that returns must be followed by one settle.
        """
        keys = self._keys(username, address)
        now = time.monotonic()
        wait = max((self._wait(key, now) for key in keys), default=0.0)
        if wait > 0:
            raise LoginThrottled(wait)
        self._pending.update(keys)

    def settle(self, *, username: str, address: str, succeeded: bool | None) -> None:
        """End a reserved attempt: a failure is recorded, a success forgets the username's
        failures, None (never checked: busy, or the database failed) leaves no trace."""
        keys = self._keys(username, address)
        self._pending.subtract(keys)
        for key in keys:
            if self._pending[key] <= 0:
                del self._pending[key]
        if succeeded:
            self._failures.pop(("user", username), None)
        elif succeeded is not None:
            now = time.monotonic()
            for key in keys:
                if key not in self._failures and len(self._failures) >= MAX_TRACKED_KEYS:
                    del self._failures[next(iter(self._failures))]
                self._failures.setdefault(key, deque()).append(now)

    def _keys(self, username: str, address: str) -> list[tuple[str, str]]:
        keys = [("user", username), ("addr", address)]
        return [key for key in keys if self._limits[key[0]]]

    def _wait(self, key: tuple[str, str], now: float) -> float:
        limit = self._limits[key[0]]
        stamps = self._failures.get(key, deque())
        while stamps and stamps[0] <= now - self._window:
            stamps.popleft()
        if not stamps:
            self._failures.pop(key, None)
        if len(stamps) >= limit:
            return stamps[-limit] + self._window - now
        if len(stamps) + self._pending[key] >= limit:
            return BUSY_RETRY_SECONDS  # attempts in flight: they settle within a check
        return 0.0


class HashGate:
    """Runs Argon2 (hashing, verifying) in at most `running` threads at once, off the event
    loop; up to `waiting` more calls queue for them, and any beyond get HashingBusy.

    Each Argon2 call holds 64 MiB and the CPU for a while: without a bound a crowd of logins
    takes the memory, and the cores every socket needs. A dedicated pool, so the bound holds
    even for a call whose request is gone (its thread finishes what it started).
    """

    def __init__(self, *, running: int, waiting: int) -> None:
        self._pool = ThreadPoolExecutor(
            running, thread_name_prefix="argon2", initializer=_below_the_event_loop
        )
        self._admitted = 0
        self._capacity = running + waiting

    async def run(self, function: Callable[..., T], *args: object) -> T:
        if self._admitted >= self._capacity:
            raise HashingBusy(BUSY_RETRY_SECONDS)
        self._admitted += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)
        finally:
            self._admitted -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _below_the_event_loop() -> None:
    """Lower this thread's priority (on Linux, niceness is per thread, and the threads
    libargon2 starts for its lanes inherit it): the chat's event loop comes first."""
    if sys.platform == "linux":
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)

"""Failed-login throttling, per username and per client address."""

from __future__ import annotations

import time
from collections import deque

MAX_TRACKED_KEYS = 100_000  # bounds memory when someone sprays random usernames


class LoginThrottled(Exception):
    """Too many recent failed logins; retry_after seconds until the next attempt."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many failed logins; retry in {retry_after:.0f} s")
        self.retry_after = retry_after


class LoginThrottle:
    """Counts failures in a sliding window; a key over its limit is refused until one expires.

    A limit of 0 turns that check off. Kept per process: with several workers an attacker
    gets at most workers x limit tries per window.
    """

    def __init__(self, *, per_username: int, per_address: int, window_seconds: float) -> None:
        self._limits = {"user": per_username, "addr": per_address}
        self._window = window_seconds
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def check(self, *, username: str, address: str) -> None:
        """Raise LoginThrottled when either key has used up its failures."""
        now = time.monotonic()
        waits = [
            self._wait(kind, key, now) for kind, key in (("user", username), ("addr", address))
        ]
        if max(waits) > 0:
            raise LoginThrottled(max(waits))

    def failed(self, *, username: str, address: str) -> None:
        now = time.monotonic()
        for key in (("user", username), ("addr", address)):
            if self._limits[key[0]]:
                if key not in self._failures and len(self._failures) >= MAX_TRACKED_KEYS:
                    del self._failures[next(iter(self._failures))]
                self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, *, username: str) -> None:
        self._failures.pop(("user", username), None)

    def _wait(self, kind: str, key: str, now: float) -> float:
        limit = self._limits[kind]
        stamps = self._failures.get((kind, key))
        if not limit or not stamps or self._window <= 0:
            return 0.0
        while stamps and stamps[0] <= now - self._window:
            stamps.popleft()
        if not stamps:
            del self._failures[(kind, key)]
            return 0.0
        if len(stamps) < limit:
            return 0.0
        return stamps[-limit] + self._window - now

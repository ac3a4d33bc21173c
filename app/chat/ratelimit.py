"""Token buckets: the per-user send rate limit."""

from __future__ import annotations

import time


class TokenBucket:
    """`rate` tokens a second, holding at most `burst`; rate 0 means unlimited."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(max(burst, 1))
        self._tokens = self._burst
        self._stamp = time.monotonic()

    def full(self) -> bool:
        """True when the bucket has refilled: forgetting it now changes nothing."""
        if self._rate <= 0:
            return True
        return self._tokens + (time.monotonic() - self._stamp) * self._rate >= self._burst

    def take(self) -> float:
        """Spend one token: 0.0 when allowed, else the seconds until one is available."""
        if self._rate <= 0:
            return 0.0
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._rate


class RateLimited(Exception):
    """Over the send rate: nothing was stored; retry_after seconds until a token is free."""

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after

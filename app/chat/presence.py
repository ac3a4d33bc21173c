"""Who is in which room: for one process (memory) or shared by many (Redis, with expiry).

The service calls join() when a user's first socket in a room opens in this process and
leave() when the last one closes; both answer whether the user's presence in the room as a
whole began or ended, so join and leave notices go out once, however many workers and tabs.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from app.chat.hub import Hub

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger("chatroom.presence")

Announce = Callable[[str, str, str], Awaitable[None]]  # ("join" | "leave", room, user)


class Presence(Protocol):
    async def start(self, announce: Announce) -> None:
        """Keep this process's members alive; announce changes found on the way."""

    async def stop(self) -> None: ...

    async def join(self, room: str, user: str) -> bool:
        """Record user in room; True when no other process already had them there."""

    async def leave(self, room: str, user: str) -> bool:
        """Forget user in room here; True when no other process still has them there."""

    async def online(self, room: str) -> list[str]: ...


class MemoryPresence:
    """One process: the hub's count of sockets is the whole truth."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    async def start(self, announce: Announce) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def join(self, room: str, user: str) -> bool:
        return True

    async def leave(self, room: str, user: str) -> bool:
        return True

    async def online(self, room: str) -> list[str]:
        return self._hub.users(room)


# A room's presence is a sorted set of "user|worker" members scored by the time they expire.
# Each worker renews its members every ttl/3; a worker that dies stops renewing, and the first
# live worker to sweep the room removes them and announces who left.
_JOIN = """
if ARGV[6] == '1' and redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return 0
end
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[3], '+inf')
local first = 1
for _, member in ipairs(live) do
  if member ~= ARGV[1] and string.sub(member, 1, #ARGV[2]) == ARGV[2] then first = 0 end
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return first
"""
_LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[3], '+inf')
for _, member in ipairs(live) do
  if string.sub(member, 1, #ARGV[2]) == ARGV[2] then return 0 end
end
return 1
"""
_SWEEP = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if #expired == 0 then return {} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
local gone = {}
for _, member in ipairs(expired) do
  local user = string.match(member, '^(.*)|[^|]*$')
  local still = false
  for _, other in ipairs(live) do
    if string.sub(other, 1, #user + 1) == user .. '|' then still = true end
  end
  if not still then table.insert(gone, user) end
end
return gone
"""


class RedisPresence:
    """Presence shared through Redis; entries of a dead worker expire after ttl seconds."""

    def __init__(
        self, redis: Redis, hub: Hub, *, ttl_seconds: float, prefix: str = "chatroom:"
    ) -> None:
        self._redis = redis
        self._hub = hub
        self._ttl = ttl_seconds
        self._prefix = prefix
        self._worker = uuid.uuid4().hex
        self._join = redis.register_script(_JOIN)
        self._leave = redis.register_script(_LEAVE)
        self._sweep = redis.register_script(_SWEEP)
        self._task: asyncio.Task[None] | None = None

    def _key(self, room: str) -> str:
        return f"{self._prefix}presence:{room}"

    async def start(self, announce: Announce) -> None:
        self._task = asyncio.create_task(self._renew(announce), name="chatroom-presence")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._redis.aclose()

    async def join(self, room: str, user: str, *, renew: bool = False) -> bool:
        """renew: a periodic refresh, which announces only an entry that had been swept."""
        now = time.time()
        first = await self._join(
            keys=[self._key(room)],
            args=[
                f"{user}|{self._worker}",
                f"{user}|",
                now,
                now + self._ttl,
                int(self._ttl * 4000),
                "1" if renew else "0",
            ],
        )
        return bool(first)

    async def leave(self, room: str, user: str) -> bool:
        last = await self._leave(
            keys=[self._key(room)], args=[f"{user}|{self._worker}", f"{user}|", time.time()]
        )
        return bool(last)

    async def online(self, room: str) -> list[str]:
        members = await self._redis.zrangebyscore(self._key(room), f"({time.time()}", "+inf")
        return sorted({str(member).rsplit("|", 1)[0] for member in members})

    async def _renew(self, announce: Announce) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                await self._renew_once(announce)
            except Exception as exc:  # Redis away: try again next round
                logger.warning("presence renewal failed: %s", exc)

    async def _renew_once(self, announce: Announce) -> None:
        members = self._hub.members()
        for room in {room for room, _ in members}:
            for user in await self._sweep(keys=[self._key(room)], args=[time.time()]):
                await announce("leave", room, str(user))
        for room, user in members:
            # Renewing also restores an entry swept while Redis was out of reach.
            if await self.join(room, user, renew=True):
                await announce("join", room, user)


def create_presence(broker_url: str, hub: Hub, *, ttl_seconds: float) -> Presence:
    """Memory presence with the memory broker; shared presence with a Redis broker."""
    if broker_url.startswith("memory:"):
        return MemoryPresence(hub)
    from app.chat.broker import redis_client

    return RedisPresence(redis_client(broker_url), hub, ttl_seconds=ttl_seconds)

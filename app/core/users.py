"""Accounts: creating users and checking their passwords."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.models import Moderator, User, utcnow
from app.core.revocations import ACCOUNT_DELETED, PASSWORD_CHANGED, record
from app.core.security import hash_password, verify_password
from app.core.throttle import HashGate, LoginThrottle

USER_CACHE_SECONDS = 5.0  # how stale a handshake's view of an account may be
# tokens_valid_after of a deleted account: every token was issued before it.
DELETED = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Account:
    """What a handshake needs to know of a user."""

    username: str
    tokens_valid_after: datetime | None  # tokens issued before it are refused
    moderates: frozenset[str]  # rooms where `chatroom moderator` made them a moderator


class UserCache:
    """Recently looked-up accounts, so a crowd of handshakes is not a crowd of queries.

    Entries live USER_CACHE_SECONDS. A revocation does not wait for them: the handshake
    checks app/core/revocations.py's in-memory list first. A moderator grant may: the
    writer asks the moderators table again when a delete arrives.
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._users: dict[str, tuple[float, Account | None]] = {}
        # One query per user at a time: a crowd of handshakes that all miss waits for it.
        self._loading: dict[str, asyncio.Task[Account | None]] = {}

    async def get(self, username: str) -> Account | None:
        hit = self._users.get(username)
        if hit is not None and time.monotonic() - hit[0] < USER_CACHE_SECONDS:
            return hit[1]
        loading = self._loading.get(username)
        if loading is None:
            loading = asyncio.create_task(self._load(username))
            self._loading[username] = loading
        return await asyncio.shield(loading)

    async def get_or_create(self, username: str) -> Account:
        """The account, created on first use (a user a host's token names) when absent."""
        account = await self.get(username)
        if account is not None:
            return account
        started = time.monotonic()
        async with self._sessions() as session:
            user = await create_if_absent(session, username=username)
            account = await _account(session, user)
        self._remember(username, started, account)
        return account

    async def _load(self, username: str) -> Account | None:
        started = time.monotonic()
        try:
            async with self._sessions() as session:
                user = await get_user(session, username=username)
                account = None if user is None else await _account(session, user)
        finally:
            del self._loading[username]
        self._remember(username, started, account)
        return account

    def _remember(self, username: str, started: float, account: Account | None) -> None:
        if len(self._users) >= 10_000:
            self._users.clear()  # bounded; a miss only costs one query
        self._users[username] = (started, account)


async def _account(session: AsyncSession, user: User) -> Account:
    grants = await session.scalars(
        select(Moderator.room).where(Moderator.username == user.username)
    )
    return Account(user.username, user.tokens_valid_after, frozenset(grants))


class UsernameTaken(Exception):
    """Another account already has this username."""


async def get_user(session: AsyncSession, *, username: str) -> User | None:
    """The user named username, or None."""
    return await session.scalar(select(User).where(User.username == username))


async def create_user(
    session: AsyncSession, hashing: HashGate, *, username: str, password: str
) -> User:
    """Create and commit an account; raise UsernameTaken on a clash, HashingBusy when busy."""
    password_hash = await hashing.run(hash_password, password)
    user = User(username=username, password_hash=password_hash)
    session.add(user)
    try:
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        raise UsernameTaken(username) from exc
    return user


async def create_if_absent(session: AsyncSession, *, username: str) -> User:
    """The account named username, created and committed without a password if there is
    none: it cannot sign in with one, only with tokens. Handshakes racing to create the
    same account all get it (ON CONFLICT DO NOTHING), on every process. A deleted account
    stays deleted: its row is there.
    """
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    # The write first: a SQLite transaction that reads before it writes cannot wait for
    # another process's write lock.
    await session.execute(
        insert(User)
        .values(username=username, password_hash="", created_at=utcnow())
        .on_conflict_do_nothing(index_elements=[User.username])
    )
    user = (await session.scalars(select(User).where(User.username == username))).one()
    await session.commit()
    return user


async def change_password(
    session: AsyncSession, hashing: HashGate, *, user: User, password: str, token_minutes: int
) -> None:
    """Set a new password and revoke every token issued before now.

    token_minutes: how long tokens live, so how long the revocation must be remembered.
    """
    user.password_hash = await hashing.run(hash_password, password)
    user.tokens_valid_after = utcnow()
    await _revoke_all(session, user, PASSWORD_CHANGED, token_minutes)


async def delete_user(session: AsyncSession, *, user: User, token_minutes: int) -> None:
    """Close the account: no password opens it, and every token of it is refused.

    The row stays, so the name stays taken: the user's messages stay in history under it,
    and no one can register it and appear as their author.
    """
    user.password_hash = ""  # no hash: verify_password refuses every password
    user.tokens_valid_after = DELETED
    await _revoke_all(session, user, ACCOUNT_DELETED, token_minutes)


def is_deleted(user: User) -> bool:
    return user.tokens_valid_after == DELETED


async def _revoke_all(session: AsyncSession, user: User, reason: str, token_minutes: int) -> None:
    """Commit user's change with a revocation of their tokens issued before it."""
    session.add(user)
    await record(
        session,
        username=user.username,
        reason=reason,
        issued_before=user.tokens_valid_after,
        expires_at=utcnow() + timedelta(minutes=token_minutes),
    )
    await session.commit()


async def login(
    session: AsyncSession,
    throttle: LoginThrottle,
    hashing: HashGate,
    *,
    username: str,
    password: str,
    address: str,
) -> User | None:
    """authenticate(), counted by the throttle before the password is checked: raises
    LoginThrottled after too many recent failures, HashingBusy when every check is busy."""
    throttle.reserve(username=username, address=address)
    succeeded: bool | None = None  # None: never checked (busy, or the database failed)
    try:
        user = await authenticate(session, hashing, username=username, password=password)
        succeeded = user is not None
    finally:
        throttle.settle(username=username, address=address, succeeded=succeeded)
    return user


async def authenticate(
    session: AsyncSession, hashing: HashGate, *, username: str, password: str
) -> User | None:
    """The user when the password matches, else None (same cost either way)."""
    user = await get_user(session, username=username)
    # The read ends here: a crowd of logins waiting for Argon2 must not hold the pool's
    # database connections (the chat needs them). Loaded attributes outlive the commit.
    await session.commit()
    ok = await hashing.run(
        verify_password, password, user.password_hash if user is not None else None
    )
    return user if ok else None

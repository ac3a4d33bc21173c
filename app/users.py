"""Accounts: creating users and checking their passwords."""

from __future__ import annotations

import asyncio

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import User, utcnow
from app.security import hash_password, verify_password
from app.throttle import LoginThrottle


class UsernameTaken(Exception):
    """Another account already has this username."""


async def get_user(session: AsyncSession, *, username: str) -> User | None:
    """The user named username, or None."""
    return await session.scalar(select(User).where(User.username == username))


async def create_user(session: AsyncSession, *, username: str, password: str) -> User:
    """Create and commit an account; raise UsernameTaken on a clash."""
    # Argon2 is deliberately slow; off the event loop it does not stall every socket.
    password_hash = await asyncio.to_thread(hash_password, password)
    user = User(username=username, password_hash=password_hash)
    session.add(user)
    try:
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        raise UsernameTaken(username) from exc
    return user


async def change_password(session: AsyncSession, *, user: User, password: str) -> None:
    """Set a new password and revoke every token issued before now."""
    user.password_hash = await asyncio.to_thread(hash_password, password)
    user.tokens_valid_after = utcnow()
    session.add(user)
    await session.commit()


async def login(
    session: AsyncSession,
    throttle: LoginThrottle,
    *,
    username: str,
    password: str,
    address: str,
) -> User | None:
    """authenticate(), refused with LoginThrottled after too many recent failures."""
    throttle.check(username=username, address=address)
    user = await authenticate(session, username=username, password=password)
    if user is None:
        throttle.failed(username=username, address=address)
    else:
        throttle.succeeded(username=username)
    return user


async def authenticate(session: AsyncSession, *, username: str, password: str) -> User | None:
    """The user when the password matches, else None (same cost either way)."""
    user = await get_user(session, username=username)
    ok = await asyncio.to_thread(
        verify_password, password, user.password_hash if user is not None else None
    )
    return user if ok else None

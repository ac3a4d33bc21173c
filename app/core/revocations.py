"""Revoked tokens: recorded in the database, learnt by every server process within a second.

A password change, a deleted account and a sign-out each add a row to `revocations`. Every
server process reads the rows after the last one it saw (one query on the primary key, once
a second, from the chat service's sweep) and keeps the live ones in memory: a handshake
checks them without a query, and the sweep closes the sockets they revoke. The table, not
the broker, carries them, because `chatroom delete-user` is another process than the
servers, and a memory:// broker reaches no other process.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.models import Revocation, utcnow
from app.core.security import TokenClaims

# Close reasons (docs/protocol.md).
PASSWORD_CHANGED = "password changed"  # noqa: S105 (a close reason, not a password)
ACCOUNT_DELETED = "account deleted"
SIGNED_OUT = "signed out"

# Held while a row is inserted, on PostgreSQL (any fixed number; see record()).
_INSERT_LOCK_KEY = 0x63686174_7265766F  # "chatrevo"


async def record(
    session: AsyncSession,
    *,
    username: str,
    reason: str,
    expires_at: datetime,
    jti: str | None = None,
    issued_before: datetime | None = None,
) -> None:
    """Revoke, in session's transaction, username's token jti, or else every token of theirs
    issued before issued_before; the caller commits. Rows that expired go at the same time.
    """
    if session.get_bind().dialect.name == "postgresql":
        # Ids must commit in their order, or a poller that saw id 12 skips an 11 still being
        # committed: one insert at a time (SQLite has one writer anyway).
        await session.execute(select(func.pg_advisory_xact_lock(_INSERT_LOCK_KEY)))
    await session.execute(delete(Revocation).where(Revocation.expires_at <= utcnow()))
    session.add(
        Revocation(
            username=username,
            jti=jti,
            issued_before=issued_before,
            reason=reason,
            expires_at=expires_at,
        )
    )


async def sign_out(session: AsyncSession, claims: TokenClaims) -> None:
    """Revoke this one token: by its jti, or, for a token without one (minted before
    chatroom gave tokens a jti, or by a host that gives none), with every token of its user
    issued until now."""
    await record(
        session,
        username=claims.username,
        reason=SIGNED_OUT,
        jti=claims.token_id,
        issued_before=utcnow() if claims.token_id is None else None,
        expires_at=datetime.fromtimestamp(claims.expires_at, UTC),
    )
    await session.commit()


@dataclass(frozen=True, slots=True)
class _Revoked:
    reason: str
    expires_at: float
    issued_before: datetime | None = None  # for a user's every token


class Revocations:
    """The live revocations, as this process last read them."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._after = 0  # the last row read
        self._tokens: dict[tuple[str, str], _Revoked] = {}  # (username, jti)
        self._users: dict[str, _Revoked] = {}

    async def refresh(self) -> None:
        """Read the rows added since the last refresh (all live ones, the first time)."""
        now = utcnow()
        async with self._sessions() as session:
            rows = (
                await session.scalars(
                    select(Revocation)
                    .where(Revocation.id > self._after, Revocation.expires_at > now)
                    .order_by(Revocation.id)
                )
            ).all()
        if not rows:
            return
        self._after = max(self._after, rows[-1].id)
        for row in rows:
            revoked = _Revoked(row.reason, row.expires_at.timestamp(), row.issued_before)
            if row.jti is not None:
                self._tokens[row.username, row.jti] = revoked
                continue
            known = self._users.get(row.username)
            if known is None or _later(row.issued_before, known.issued_before):
                self._users[row.username] = revoked
        self._forget_expired(now.timestamp())

    def refusal(self, claims: TokenClaims) -> str | None:
        """Why the token is revoked, or None when it is not."""
        if claims.token_id is not None:
            revoked = self._tokens.get((claims.username, claims.token_id))
            if revoked is not None:
                return revoked.reason
        revoked = self._users.get(claims.username)
        if revoked is not None and claims.issued_before(revoked.issued_before):
            return revoked.reason
        return None

    def _forget_expired(self, now: float) -> None:
        self._tokens = {k: v for k, v in self._tokens.items() if v.expires_at > now}
        self._users = {k: v for k, v in self._users.items() if v.expires_at > now}


def _later(moment: datetime | None, than: datetime | None) -> bool:
    return moment is not None and (than is None or moment > than)

"""FastAPI dependencies: services from the lifespan, and the current user.

A user is identified by a bearer token (Authorization header), the `session` cookie set by the
login page, or, for WebSockets, whose browsers cannot set headers, a `token` query parameter.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Cookie, Depends, HTTPException, Query, WebSocketException, status
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection

from app.models import User
from app.security import InvalidToken, TokenClaims, decode_access_token
from app.state import Services
from app.users import get_user

SESSION_COOKIE = "session"
CLOSE_POLICY_VIOLATION = 1008

bearer = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)


def get_services(connection: HTTPConnection) -> Services:
    services: Services = connection.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_db(services: ServicesDep) -> AsyncIterator[AsyncSession]:
    """A short session for one request (never held for a socket's lifetime)."""
    async with services.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_db)]


class Identity:
    """An authenticated user and what their token allows."""

    def __init__(self, user: User, claims: TokenClaims) -> None:
        self.user = user
        self.claims = claims

    @property
    def username(self) -> str:
        return self.user.username

    def may_enter(self, room: str) -> bool:
        return self.claims.rooms is None or room in self.claims.rooms


async def _identify(services: Services, token: str | None) -> Identity | None:
    if not token:
        return None
    try:
        claims = decode_access_token(token, key=services.secret_key)
    except InvalidToken:
        return None
    async with services.sessions() as session:
        user = await get_user(session, username=claims.username)
    return Identity(user, claims) if user is not None else None


async def current_identity(
    services: ServicesDep,
    bearer_token: Annotated[str | None, Depends(bearer)],
    session: Annotated[str | None, Cookie(include_in_schema=False)] = None,
) -> Identity:
    identity = await _identify(services, bearer_token or session)
    if identity is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "not authenticated",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return identity


CurrentIdentity = Annotated[Identity, Depends(current_identity)]


async def optional_identity(
    services: ServicesDep,
    session: Annotated[str | None, Cookie(include_in_schema=False)] = None,
) -> Identity | None:
    """The browser user from the session cookie, if any (for pages)."""
    return await _identify(services, session)


async def websocket_identity(
    services: ServicesDep,
    token: Annotated[str | None, Query(description="An access token")] = None,
    session: Annotated[str | None, Cookie(include_in_schema=False)] = None,
) -> Identity:
    """The socket's user; refuse the handshake (close 1008, HTTP 403) when unknown."""
    identity = await _identify(services, token or session)
    if identity is None:
        raise WebSocketException(CLOSE_POLICY_VIOLATION, "authentication required")
    return identity


WebSocketIdentity = Annotated[Identity, Depends(websocket_identity)]

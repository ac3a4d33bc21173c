"""FastAPI dependencies: services from the lifespan, and the current user.

A user is identified by a bearer token (Authorization header), the `session` cookie set by the
login page, or, for WebSockets, whose browsers cannot set headers, a `token` query parameter.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, NoReturn
from urllib.parse import urlsplit

from fastapi import (
    Cookie,
    Depends,
    Header,
    HTTPException,
    Query,
    WebSocket,
    WebSocketException,
    status,
)
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.requests import HTTPConnection

from app.api.schemas import RoomId
from app.chat.service import ChatService
from app.core.config import Settings
from app.core.metrics import Metrics
from app.core.revocations import Revocations
from app.core.security import InvalidToken, PublicKey, TokenClaims, decode_access_token
from app.core.throttle import HashGate, LoginThrottle
from app.core.users import UserCache

SESSION_COOKIE = "session"

logger = logging.getLogger("chatroom.auth")


@dataclass(frozen=True, slots=True)
class Services:
    """The long-lived objects of one running app, created by the lifespan."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    secret_key: str
    public_key: PublicKey | None  # a host's, for the tokens it mints (RS256, ES256)
    chat: ChatService
    revocations: Revocations
    login_throttle: LoginThrottle
    hashing: HashGate
    users: UserCache
    metrics: Metrics


bearer = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)


async def get_services(connection: HTTPConnection) -> Services:
    # async, though it never awaits: FastAPI runs a plain `def` dependency in a thread pool.
    services: Services = connection.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_db(services: ServicesDep) -> AsyncIterator[AsyncSession]:
    """A short session for one request (never held for a socket's lifetime)."""
    async with services.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_db)]


class Identity:
    """An authenticated user and what their token allows.

    The name, not the account row: a socket keeps its Identity for its whole life.
    """

    __slots__ = ("username", "claims", "granted")

    def __init__(self, username: str, claims: TokenClaims, granted: frozenset[str]) -> None:
        self.username = username
        self.claims = claims
        self.granted = granted  # rooms the CLI made them a moderator of (see UserCache)

    def may_enter(self, room: str) -> bool:
        return self.claims.rooms is None or room in self.claims.rooms

    def moderates(self, room: str) -> bool:
        return self.claims.moderates(room) or room in self.granted


async def _identify(services: Services, token: str | None) -> Identity | None:
    if not token:
        return None
    try:
        claims = decode_access_token(token, key=services.secret_key, public_key=services.public_key)
    except InvalidToken:
        return None
    if services.revocations.refusal(claims) is not None:
        return None
    # A valid token for a user chatroom has not seen is a host's: the account is made now.
    account = await services.users.get_or_create(claims.username)
    if claims.issued_before(account.tokens_valid_after):  # deleted accounts included
        return None
    return Identity(account.username, claims, account.moderates)


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


async def socket_identity(
    websocket: WebSocket,
    services: ServicesDep,
    item_id: RoomId,
    token: Annotated[str | None, Query(description="An access token (browsers)")] = None,
    session: Annotated[str | None, Cookie(include_in_schema=False)] = None,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Identity:
    """The room socket's user: from `?token=`, an `Authorization: Bearer` header or the
    `session` cookie (the FastAPI docs' get_cookie_or_token, with the checks a chat needs).

    Refuses with 1008 before accept, which the client sees as HTTP 403; the log says why.
    """
    scheme, _, bearer_token = (authorization or "").partition(" ")
    credential = token or (bearer_token if scheme.lower() == "bearer" else None)
    if not credential and session:
        # Browsers send cookies with a cross-site WebSocket handshake, and CORS does not
        # apply to it: without this check any page could talk in the user's name.
        if not same_site(websocket, services.settings.allowed_origin_list):
            _refuse(services, websocket, "origin not allowed")
        credential = session
    identity = await _identify(services, credential)
    if identity is None:
        _refuse(services, websocket, "authentication required")
    if not identity.may_enter(item_id):
        _refuse(services, websocket, "your token does not open this room")
    return identity


SocketIdentity = Annotated[Identity, Depends(socket_identity)]


def _refuse(services: Services, websocket: WebSocket, reason: str) -> NoReturn:
    # The path only: the query string may hold the token.
    logger.info("refused socket %s: %s", websocket.url.path, reason)
    services.metrics.refusals.labels("auth").inc()
    raise WebSocketException(status.WS_1008_POLICY_VIOLATION, reason)


def same_site(connection: HTTPConnection, allowed: frozenset[str]) -> bool:
    """True when the request's (a handshake's, a form post's) Origin is this server or an
    allowed origin.

    Non-browser clients send no Origin and cannot be made to carry a victim's cookie, nor to
    sign a victim in; browsers send one with every handshake and POST ("null" at least).
    """
    origin = connection.headers.get("origin")
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if origin in allowed:
        return True
    host = connection.headers.get("host", "")
    return urlsplit(origin).netloc == host and urlsplit(origin).scheme in ("http", "https")

"""Accounts and tokens for API clients: register, and trade a password for a token."""

from __future__ import annotations

import logging
import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, Field
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.deps import CurrentIdentity, Services, ServicesDep, SessionDep
from app.api.schemas import (
    NOT_AUTHENTICATED,
    PASSWORD_MAX_CHARS,
    PASSWORD_MIN_CHARS,
    Credentials,
    TokenOut,
    UserOut,
    error,
)
from app.core.models import User
from app.core.security import create_access_token
from app.core.throttle import LoginThrottled, TryLater
from app.core.users import UsernameTaken, change_password, create_user, login

router = APIRouter(prefix="/auth", tags=["auth"])
logger = logging.getLogger("chatroom.auth")

# What a route that checks or stores a password may answer instead of doing it.
NOT_NOW: dict[int | str, dict[str, Any]] = {
    429: error("Too many failed logins for this username or address; see Retry-After"),
    503: error("Password checks are all busy (see Retry-After), or the disk is full"),
}


def issue_token(services: Services, username: str) -> TokenOut:
    minutes = services.settings.access_token_minutes
    token = create_access_token(username, key=services.secret_key, minutes=minutes)
    return TokenOut(access_token=token, expires_in=minutes * 60)


def not_now(exc: TryLater | OperationalError) -> HTTPException:
    """The answer to an attempt that was not carried out, worded for people (pages show it)."""
    if isinstance(exc, OperationalError):
        # The driver's message only: the statement's parameters hold the password hash.
        logger.error("could not store an account change: %s", exc.orig)
        return HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "The server could not store this (its disk may be full). Try again later.",
        )
    seconds = math.ceil(exc.retry_after)
    headers = {"Retry-After": str(seconds)}
    if isinstance(exc, LoginThrottled):
        unit = "second" if seconds == 1 else "seconds"
        detail = f"Too many sign-in attempts. Try again in {seconds} {unit}."
        return HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, detail, headers=headers)
    detail = "The server is busy checking other passwords. Try again in a moment."
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail, headers=headers)


async def sign_in(
    request: Request, db: AsyncSession, services: Services, username: str, password: str
) -> User | None:
    """The user if the password matches, else None; not_now()'s answers when not checked."""
    try:
        return await login(
            db,
            services.login_throttle,
            services.hashing,
            username=username,
            password=password,
            address=request.client.host if request.client else "unknown",
        )
    except TryLater as exc:
        raise not_now(exc) from None


async def new_account(db: AsyncSession, services: Services, credentials: Credentials) -> User:
    """create_user(); raises UsernameTaken, or not_now()'s answers."""
    try:
        return await create_user(
            db, services.hashing, username=credentials.username, password=credentials.password
        )
    except (TryLater, OperationalError) as exc:
        raise not_now(exc) from None


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    responses={
        403: error("Registration is closed"),
        409: error("The username is taken"),
        503: NOT_NOW[503],
    },
)
async def register(body: Credentials, db: SessionDep, services: ServicesDep) -> UserOut:
    """Create an account."""
    if not services.settings.open_registration:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "registration is closed")
    try:
        user = await new_account(db, services, body)
    except UsernameTaken:
        raise HTTPException(status.HTTP_409_CONFLICT, "username is taken") from None
    return UserOut(username=user.username)


@router.post("/token", responses={401: error("Wrong username or password"), **NOT_NOW})
async def token(
    request: Request,
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    db: SessionDep,
    services: ServicesDep,
) -> TokenOut:
    """Trade a username and password (OAuth2 password form) for a bearer token."""
    user = await sign_in(request, db, services, form.username, form.password)
    if user is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "wrong username or password",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return issue_token(services, user.username)


class PasswordChange(BaseModel):
    current_password: str = Field(max_length=PASSWORD_MAX_CHARS)
    new_password: str = Field(min_length=PASSWORD_MIN_CHARS, max_length=PASSWORD_MAX_CHARS)


@router.post(
    "/password",
    responses={**NOT_AUTHENTICATED, 403: error("Wrong current password"), **NOT_NOW},
)
async def change_password_route(
    request: Request,
    body: PasswordChange,
    identity: CurrentIdentity,
    db: SessionDep,
    services: ServicesDep,
) -> TokenOut:
    """Change your password; every earlier token stops working and open sockets close.

    Answers a fresh token, so the caller stays signed in.
    """
    token = await renew_password(
        request,
        db,
        services,
        username=identity.username,
        current_password=body.current_password,
        new_password=body.new_password,
    )
    if token is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "wrong current password")
    return token


async def renew_password(
    request: Request,
    db: AsyncSession,
    services: Services,
    *,
    username: str,
    current_password: str,
    new_password: str,
) -> TokenOut | None:
    """Set a new password when current_password is right: every earlier token stops working
    and the user's open sockets close. A fresh token; None for a wrong current password.

    Raises not_now()'s answers (a wrong current password counts as a failed login).
    """
    user = await sign_in(request, db, services, username, current_password)
    if user is None:
        return None
    try:
        await change_password(
            db,
            services.hashing,
            user=user,
            password=new_password,
            token_minutes=services.settings.access_token_minutes,
        )
    except (TryLater, OperationalError) as exc:
        raise not_now(exc) from None
    await services.chat.check_credentials()  # here at once; other processes within a second
    return issue_token(services, user.username)

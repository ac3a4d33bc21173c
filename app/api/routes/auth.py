"""Accounts and tokens for API clients: register, and trade a password for a token."""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, Field
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
from app.core.throttle import LoginThrottled
from app.core.users import UsernameTaken, change_password, create_user, login

router = APIRouter(prefix="/auth", tags=["auth"])


def issue_token(services: Services, username: str) -> TokenOut:
    minutes = services.settings.access_token_minutes
    token = create_access_token(username, key=services.secret_key, minutes=minutes)
    return TokenOut(access_token=token, expires_in=minutes * 60)


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    responses={403: error("Registration is closed"), 409: error("The username is taken")},
)
async def register(body: Credentials, db: SessionDep, services: ServicesDep) -> UserOut:
    """Create an account."""
    if not services.settings.open_registration:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "registration is closed")
    try:
        user = await create_user(db, username=body.username, password=body.password)
    except UsernameTaken:
        raise HTTPException(status.HTTP_409_CONFLICT, "username is taken") from None
    return UserOut(username=user.username)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def too_many_failures(exc: LoginThrottled) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        "too many failed logins; try again later",
        headers={"Retry-After": str(math.ceil(exc.retry_after))},
    )


@router.post(
    "/token",
    responses={
        401: error("Wrong username or password"),
        429: error("Too many failed logins for this username or address"),
    },
)
async def token(
    request: Request,
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    db: SessionDep,
    services: ServicesDep,
) -> TokenOut:
    """Trade a username and password (OAuth2 password form) for a bearer token."""
    user = await _login_or_429(request, db, services, form.username, form.password)
    if user is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "wrong username or password",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return issue_token(services, user.username)


async def _login_or_429(
    request: Request, db: AsyncSession, services: Services, username: str, password: str
) -> User | None:
    """The user if the password matches; HTTP 429 after too many recent failures."""
    try:
        return await _verify(request, db, services, username, password)
    except LoginThrottled as exc:
        raise too_many_failures(exc) from None


async def _verify(
    request: Request, db: AsyncSession, services: Services, username: str, password: str
) -> User | None:
    """The user if the password matches; LoginThrottled after too many recent failures."""
    return await login(
        db,
        services.login_throttle,
        username=username,
        password=password,
        address=client_address(request),
    )


class PasswordChange(BaseModel):
    current_password: str = Field(max_length=PASSWORD_MAX_CHARS)
    new_password: str = Field(min_length=PASSWORD_MIN_CHARS, max_length=PASSWORD_MAX_CHARS)


@router.post(
    "/password",
    responses={
        **NOT_AUTHENTICATED,
        403: error("Wrong current password"),
        429: error("Too many failed logins"),
    },
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
    try:
        token = await renew_password(
            request,
            db,
            services,
            username=identity.username,
            current_password=body.current_password,
            new_password=body.new_password,
        )
    except LoginThrottled as exc:
        raise too_many_failures(exc) from None
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

    Raises LoginThrottled after too many failures (a wrong current password is one).
    """
    user = await _verify(request, db, services, username, current_password)
    if user is None:
        return None
    await change_password(
        db, user=user, password=new_password, token_minutes=services.settings.access_token_minutes
    )
    await services.chat.check_credentials()  # here at once; other processes within a second
    return issue_token(services, user.username)

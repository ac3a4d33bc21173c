"""Accounts and tokens for API clients: register, and trade a password for a token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.security import OAuth2PasswordRequestForm

from app.deps import ServicesDep, SessionDep
from app.schemas import Credentials, TokenOut, UserOut
from app.security import create_access_token
from app.state import Services
from app.users import UsernameTaken, authenticate, create_user

router = APIRouter(prefix="/auth", tags=["auth"])


def issue_token(services: Services, username: str) -> TokenOut:
    minutes = services.settings.access_token_minutes
    token = create_access_token(username, key=services.secret_key, minutes=minutes)
    return TokenOut(access_token=token, expires_in=minutes * 60)


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    responses={403: {"description": "Registration is closed"}, 409: {"description": "Taken"}},
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


@router.post("/token", responses={401: {"description": "Wrong username or password"}})
async def token(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], db: SessionDep, services: ServicesDep
) -> TokenOut:
    """Trade a username and password (OAuth2 password form) for a bearer token."""
    user = await authenticate(db, username=form.username, password=form.password)
    if user is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "wrong username or password",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return issue_token(services, user.username)

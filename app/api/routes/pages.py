"""Browser pages: login, registration, logout, the chat view and the room a host frames."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from app.api.deps import (
    SESSION_COOKIE,
    Identity,
    Services,
    ServicesDep,
    SessionDep,
    optional_identity,
)
from app.api.headers import content_security_policy
from app.api.routes.auth import client_address, issue_token, renew_password
from app.api.schemas import (
    PASSWORD_MAX_CHARS,
    PASSWORD_MIN_CHARS,
    ROOM_PATTERN,
    USERNAME_PATTERN,
    Credentials,
    RoomId,
    TokenOut,
)
from app.core.config import resource
from app.core.revocations import sign_out
from app.core.throttle import LoginThrottled
from app.core.users import UsernameTaken, create_user
from app.core.users import login as login_user

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=resource("templates"))
# The length rule of every new-password field.
templates.env.globals.update(min_password=PASSWORD_MIN_CHARS, max_password=PASSWORD_MAX_CHARS)

BrowserUser = Annotated[Identity | None, Depends(optional_identity)]
ROOM_RULE = "Item ids are 1 to 64 letters, digits, '.', '_', ':' or '-'."


def serves(route: object) -> bool:
    """Whether route, as matched for a request, is one of these pages."""
    endpoint = getattr(route, "endpoint", None)
    return any(endpoint is page.endpoint for page in router.routes if hasattr(page, "endpoint"))


def _safe_next(target: str | None) -> str:
    """Only same-site paths: never redirect a fresh login to another site."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/chat"


def _render(request: Request, name: str, code: int = 200, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=code)


def _signed_in(
    request: Request, services: Services, username: str, target: str, token: TokenOut | None = None
) -> Response:
    token = token or issue_token(services, username)
    response = RedirectResponse(_safe_next(target), status.HTTP_303_SEE_OTHER)
    secure = services.settings.cookie_secure
    response.set_cookie(
        SESSION_COOKIE,
        token.access_token,
        max_age=token.expires_in,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https" if secure is None else secure,
    )
    return response


@router.get("/")
async def index() -> Response:
    return RedirectResponse("/chat", status.HTTP_303_SEE_OTHER)


@router.get("/login")
async def login_form(request: Request, services: ServicesDep, next: str = "/chat") -> Response:
    return _render(
        request,
        "login.html",
        next=_safe_next(next),
        open_registration=services.settings.open_registration,
    )


@router.post("/login")
async def login(
    request: Request,
    services: ServicesDep,
    db: SessionDep,
    username: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/chat",
) -> Response:
    try:
        user = await login_user(
            db,
            services.login_throttle,
            username=username,
            password=password,
            address=client_address(request),
        )
    except LoginThrottled as exc:
        code, error = (
            status.HTTP_429_TOO_MANY_REQUESTS,
            (f"Too many failed sign-ins. Try again in {math.ceil(exc.retry_after)} seconds."),
        )
    else:
        if user is not None:
            return _signed_in(request, services, user.username, next)
        code, error = status.HTTP_401_UNAUTHORIZED, "Wrong username or password."
    return _render(
        request,
        "login.html",
        code,
        error=error,
        username=username,
        next=_safe_next(next),
        open_registration=services.settings.open_registration,
    )


@router.get("/register")
async def register_form(request: Request, services: ServicesDep, next: str = "/chat") -> Response:
    if not services.settings.open_registration:
        return _render(request, "closed.html", status.HTTP_403_FORBIDDEN)
    return _register_page(request, next=next)


def _register_page(
    request: Request,
    code: int = status.HTTP_200_OK,
    *,
    next: str,
    username: str = "",
    error: str | None = None,
    error_field: str | None = None,
) -> Response:
    return _render(
        request,
        "register.html",
        code,
        next=_safe_next(next),
        username=username,
        error=error,
        error_field=error_field,
    )


@router.post("/register")
async def register(
    request: Request,
    services: ServicesDep,
    db: SessionDep,
    username: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/chat",
) -> Response:
    if not services.settings.open_registration:
        return _render(request, "closed.html", status.HTTP_403_FORBIDDEN)
    bad = status.HTTP_400_BAD_REQUEST
    if not re.fullmatch(USERNAME_PATTERN, username):
        return _register_page(
            request,
            bad,
            next=next,
            username=username,
            error="Usernames are 3 to 32 letters, digits, '.', '_' or '-'.",
            error_field="username",
        )
    try:
        credentials = Credentials(username=username, password=password)
    except ValueError:
        return _register_page(
            request,
            bad,
            next=next,
            username=username,
            error=f"Passwords are {PASSWORD_MIN_CHARS} to {PASSWORD_MAX_CHARS} characters.",
            error_field="password",
        )
    try:
        await create_user(db, username=credentials.username, password=credentials.password)
    except UsernameTaken:
        return _register_page(
            request,
            status.HTTP_409_CONFLICT,
            next=next,
            username=username,
            error="That username is taken.",
            error_field="username",
        )
    return _signed_in(request, services, credentials.username, next)


@router.post("/logout")
async def logout(services: ServicesDep, db: SessionDep, identity: BrowserUser) -> Response:
    if identity is not None:  # the cookie's token stops working too, here and everywhere
        await sign_out(db, identity.claims)
        await services.chat.check_credentials()
    response = RedirectResponse("/login", status.HTTP_303_SEE_OTHER)
    response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="lax")
    return response


@router.get("/account")
async def account_form(request: Request, identity: BrowserUser, changed: bool = False) -> Response:
    if identity is None:
        return _to_login(request)
    return _account_page(request, identity, changed=changed)


def _account_page(
    request: Request,
    identity: Identity,
    code: int = status.HTTP_200_OK,
    *,
    changed: bool = False,
    error: str | None = None,
    error_field: str | None = None,
) -> Response:
    return _render(
        request,
        "account.html",
        code,
        user=identity.username,
        changed=changed,
        error=error,
        error_field=error_field,
    )


@router.post("/account")
async def account(
    request: Request,
    services: ServicesDep,
    db: SessionDep,
    identity: BrowserUser,
    current_password: Annotated[str, Form()] = "",
    new_password: Annotated[str, Form()] = "",
    repeat_password: Annotated[str, Form()] = "",
) -> Response:
    """POST /auth/password for the pages: a fresh session cookie, or the form with the error."""
    if identity is None:
        return _to_login(request)
    if not PASSWORD_MIN_CHARS <= len(new_password) <= PASSWORD_MAX_CHARS:
        error = f"New passwords are {PASSWORD_MIN_CHARS} to {PASSWORD_MAX_CHARS} characters."
        return _account_page(
            request, identity, status.HTTP_400_BAD_REQUEST, error=error, error_field="new"
        )
    if new_password != repeat_password:
        return _account_page(
            request,
            identity,
            status.HTTP_400_BAD_REQUEST,
            error="The two new passwords differ.",
            error_field="repeat",
        )
    try:
        token = await renew_password(
            request,
            db,
            services,
            username=identity.username,
            current_password=current_password,
            new_password=new_password,
        )
    except LoginThrottled as exc:
        error = f"Too many failed attempts. Try again in {math.ceil(exc.retry_after)} seconds."
        return _account_page(
            request, identity, status.HTTP_429_TOO_MANY_REQUESTS, error=error, error_field="current"
        )
    if token is None:
        return _account_page(
            request,
            identity,
            status.HTTP_403_FORBIDDEN,
            error="Your current password is wrong.",
            error_field="current",
        )
    return _signed_in(request, services, identity.username, "/account?changed=1", token)


@router.get("/chat")
async def chat_home(
    request: Request, services: ServicesDep, identity: BrowserUser, room: str | None = None
) -> Response:
    if room is None:
        return _chat_page(request, services, identity, room="")
    room = room.strip()
    if re.fullmatch(ROOM_PATTERN, room):
        # The room form works without JavaScript: /chat?room=x -> /chat/x.
        return RedirectResponse(f"/chat/{room}", status.HTTP_303_SEE_OTHER)
    return _chat_page(
        request,
        services,
        identity,
        room="",
        code=status.HTTP_400_BAD_REQUEST,
        room_query=room,
        room_error=ROOM_RULE,
    )


@router.get("/chat/{item_id}")
async def chat_room(
    request: Request, services: ServicesDep, identity: BrowserUser, item_id: RoomId
) -> Response:
    return _chat_page(request, services, identity, room=item_id)


@router.get("/embed/{item_id}")
async def embedded_room(request: Request, services: ServicesDep, item_id: RoomId) -> Response:
    """The room for a host's item page to frame (docs/embedding.md).

    No cookie and no user here: the host hands the page a token in the fragment or by
    postMessage, which never reach a server log. Only the allowed origins may frame it.
    """
    origins = sorted(services.settings.allowed_origin_list)
    response = _render(
        request,
        "embed.html",
        room=item_id,
        origins=" ".join(origins),
        max_chars=services.settings.max_message_chars,
    )
    response.headers["Content-Security-Policy"] = content_security_policy(framers=origins)
    return response


def _chat_page(
    request: Request,
    services: Services,
    identity: Identity | None,
    *,
    room: str,
    code: int = status.HTTP_200_OK,
    **context: Any,
) -> Response:
    if identity is None:
        return _to_login(request)
    return _render(
        request,
        "chat.html",
        code,
        user=identity.username,
        room=room,
        max_chars=services.settings.max_message_chars,
        **context,
    )


def _to_login(request: Request) -> Response:
    """To the login form, which brings the visitor back here afterwards."""
    target = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
    return RedirectResponse(f"/login?next={target}", status.HTTP_303_SEE_OTHER)

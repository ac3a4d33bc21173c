"""The `chatroom` command: serve, migrate, create-user, set-password, delete-user, token,
webhooks, moderator."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

from pydantic import ValidationError
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.schemas import Credentials
from app.chat.webhooks import backlog
from app.core.config import Settings
from app.core.db import create_engine, create_session_factory
from app.core.migrate import NotMigrated, ensure_at_head, upgrade
from app.core.models import Moderator, utcnow
from app.core.security import BadPublicKey, create_access_token, load_public_key, load_secret_key
from app.core.throttle import HashGate
from app.core.users import (
    UsernameTaken,
    change_password,
    create_user,
    delete_user,
    get_user,
    is_deleted,
)
from app.server import uvicorn_options

HASHING = HashGate(running=1, waiting=0)  # a command hashes one password


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chatroom", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server (migrates the database first)")
    serve.add_argument("--host", help="address to bind (CHATROOM_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (CHATROOM_PORT, default 8080)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.add_argument("--no-migrate", action="store_true", help="skip `alembic upgrade head`")

    commands.add_parser("migrate", help="migrate the database to the newest revision")

    for name, what in (
        ("create-user", "create an account"),
        ("set-password", "set a user's password; their earlier tokens stop working"),
    ):
        command = commands.add_parser(name, help=what)
        command.add_argument("name")
        command.add_argument(
            "--password-stdin", action="store_true", help="read the password from standard input"
        )

    delete = commands.add_parser(
        "delete-user",
        help="delete an account and close its sockets on every server (its messages stay)",
    )
    delete.add_argument("name")

    token = commands.add_parser("token", help="print an access token for a user")
    token.add_argument("name")
    token.add_argument(
        "--minutes", type=int, help="lifetime (default CHATROOM_ACCESS_TOKEN_MINUTES)"
    )
    token.add_argument(
        "--room",
        action="append",
        dest="rooms",
        metavar="ITEM_ID",
        help="restrict the token to this room (repeatable)",
    )

    commands.add_parser("webhooks", help="the webhook backlog: count, oldest, last error")

    moderator = commands.add_parser(
        "moderator", help="let a user delete anyone's message in a room (at once, on every server)"
    )
    moderator.add_argument("name")
    moderator.add_argument("--room", required=True, metavar="ITEM_ID")
    moderator.add_argument("--revoke", action="store_true", help="take the grant back")

    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"chatroom: invalid settings: {_settings_errors(exc)}", file=sys.stderr)
        return 2
    # Alembic's and uvicorn's progress for the long-running commands; the others say one line.
    verbose = args.command in ("serve", "migrate")
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s:     %(message)s"
    )
    try:
        if args.command == "serve":
            return _serve(settings, args)
        if args.command == "migrate":
            upgrade(settings.database_url)
            return 0
        if args.command == "webhooks":
            return asyncio.run(_print_backlog(settings))
        if args.command == "create-user":
            return asyncio.run(_create_user(settings, args.name, args.password_stdin))
        if args.command == "set-password":
            return asyncio.run(_set_password(settings, args.name, args.password_stdin))
        if args.command == "delete-user":
            return asyncio.run(_delete_user(settings, args.name))
        if args.command == "moderator":
            return asyncio.run(_moderator(settings, args.name, args.room, revoke=args.revoke))
        return asyncio.run(_print_token(settings, args.name, args.minutes, args.rooms))
    except (NotMigrated, BadPublicKey) as exc:
        # NotMigrated's usual cause: run from another directory than the server.
        print(f"chatroom: {exc}", file=sys.stderr)
        return 1


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    load_public_key(settings)  # one line now, not a traceback per worker
    if args.no_migrate:
        asyncio.run(_check_database(settings))  # one line now, not a traceback per worker
    else:
        upgrade(settings.database_url)
    if args.workers > 1 and settings.broker_url.startswith("memory"):
        logging.warning(
            "--workers %d with CHATROOM_BROKER_URL=memory://: each worker only sees its own "
            "sockets; set a redis:// broker to share rooms between workers",
            args.workers,
        )
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=args.workers,
        **uvicorn_options(settings),
    )
    return 0


def _settings_errors(exc: ValidationError) -> str:
    """One line: each bad setting by its variable, and what is wrong with it."""
    errors = []
    for error in exc.errors():
        names = [f"CHATROOM_{part}".upper() for part in error["loc"]]
        errors.append(": ".join([*names, error["msg"].removeprefix("Value error, ")]))
    return "; ".join(errors)


@asynccontextmanager
async def _database(settings: Settings) -> AsyncIterator[AsyncSession]:
    """A session on the server's database; NotMigrated, creating nothing, if it is not one."""
    engine = create_engine(settings.database_url)
    try:
        await ensure_at_head(engine)
        async with create_session_factory(engine)() as session:
            yield session
    finally:
        await engine.dispose()


async def _check_database(settings: Settings) -> None:
    async with _database(settings):
        pass


def _read_credentials(name: str, from_stdin: bool) -> Credentials | None:
    """The name with a password asked twice (or one line of stdin); None, said why, if invalid."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Repeat: "):
            raise SystemExit("passwords differ")
    try:
        return Credentials(username=name, password=password)
    except ValidationError as exc:
        print(f"invalid: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}", file=sys.stderr)
        return None


async def _create_user(settings: Settings, name: str, from_stdin: bool) -> int:
    async with _database(settings) as session:
        credentials = _read_credentials(name, from_stdin)
        if credentials is None:
            return 2
        try:
            await create_user(
                session, HASHING, username=credentials.username, password=credentials.password
            )
        except UsernameTaken:
            print(f"username {name!r} is taken", file=sys.stderr)
            return 1
    print(f"created {name}")
    return 0


async def _set_password(settings: Settings, name: str, from_stdin: bool) -> int:
    async with _database(settings) as session:
        user = await get_user(session, username=name)
        if user is None:
            print(f"no user {name!r}", file=sys.stderr)
            return 1
        credentials = _read_credentials(name, from_stdin)
        if credentials is None:
            return 2
        # As POST /auth/password: every token issued before now is refused from now on.
        await change_password(
            session,
            HASHING,
            user=user,
            password=credentials.password,
            token_minutes=settings.access_token_minutes,
        )
    print(f"password of {name} changed; tokens issued before now are refused")
    return 0


async def _delete_user(settings: Settings, name: str) -> int:
    async with _database(settings) as session:
        user = await get_user(session, username=name)
        if user is None or is_deleted(user):
            print(f"no user {name!r}", file=sys.stderr)
            return 1
        await delete_user(session, user=user, token_minutes=settings.access_token_minutes)
    print(f"deleted {name}: their sockets close within a second; their messages stay")
    return 0


async def _moderator(settings: Settings, name: str, room: str, *, revoke: bool) -> int:
    async with _database(settings) as session:
        user = await get_user(session, username=name)
        if user is None or is_deleted(user):
            print(f"no user {name!r}", file=sys.stderr)
            return 1
        grant = Moderator(username=name, room=room)
        if revoke:
            await session.execute(delete(Moderator).filter_by(username=name, room=room))
        else:
            await session.merge(grant)  # granting twice is no error
        await session.commit()
    print(f"{name} {'no longer moderates' if revoke else 'now moderates'} {room}")
    return 0


async def _print_token(
    settings: Settings, name: str, minutes: int | None, rooms: list[str] | None
) -> int:
    async with _database(settings) as session:
        user = await get_user(session, username=name)
    if user is None or is_deleted(user):
        print(f"no user {name!r}", file=sys.stderr)
        return 1
    print(
        create_access_token(
            name,
            key=load_secret_key(settings),
            minutes=minutes or settings.access_token_minutes,
            rooms=rooms,
        )
    )
    return 0


async def _print_backlog(settings: Settings) -> int:
    engine = create_engine(settings.database_url)
    try:
        await ensure_at_head(engine)
        pending = await backlog(engine)
    finally:
        await engine.dispose()
    print(f"webhooks: {'on' if settings.webhook_url else 'off (CHATROOM_WEBHOOK_URL unset)'}")
    print(f"backlog: {pending.events} event(s)")
    print(f"oldest pending: {_age(pending.oldest_at)}")
    print(f"last error: {pending.last_error or '-'}")
    return 0


def _age(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return f"{(utcnow() - moment).total_seconds():.0f} s ago ({moment:%Y-%m-%d %H:%M:%S} UTC)"


if __name__ == "__main__":
    raise SystemExit(main())

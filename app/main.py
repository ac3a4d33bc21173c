"""The application factory and its lifespan, which owns every long-lived object."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import WebSocketRequestValidationError
from fastapi.staticfiles import StaticFiles

from app.api import errors
from app.api.deps import Services
from app.api.headers import SecurityHeaders
from app.api.routes import auth, docs, history, pages, rooms, websocket
from app.chat.broker import create_broker
from app.chat.hub import Hub
from app.chat.presence import create_presence
from app.chat.service import ChatService
from app.chat.webhooks import create_webhook_sender
from app.core.config import Settings, resource
from app.core.db import create_engine, create_session_factory
from app.core.logs import install_redaction
from app.core.migrate import ensure_at_head
from app.core.revocations import Revocations
from app.core.security import load_secret_key
from app.core.throttle import LoginThrottle
from app.core.users import UserCache
from app.server import install_graceful_stop


def create_app(settings: Settings | None = None) -> FastAPI:
    """A chatroom app; each call builds independent state (tests make one per test)."""
    settings = settings or Settings()
    install_redaction()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings.database_url)
        try:
            await ensure_at_head(engine)
            sessions = create_session_factory(engine)
            hub = Hub()
            revocations = Revocations(sessions)
            webhooks = create_webhook_sender(settings, engine)
            chat = ChatService(
                settings=settings,
                engine=engine,
                sessions=sessions,
                hub=hub,
                broker=create_broker(settings.broker_url),
                presence=create_presence(
                    settings.broker_url, hub, ttl_seconds=settings.presence_ttl_seconds
                ),
                revocations=revocations,
                outbox=webhooks.outbox if webhooks else None,
            )
            await chat.start()
            if webhooks:
                webhooks.start()
            services = Services(
                settings=settings,
                engine=engine,
                sessions=sessions,
                secret_key=load_secret_key(settings),
                chat=chat,
                revocations=revocations,
                users=UserCache(sessions),
                login_throttle=LoginThrottle(
                    per_username=settings.login_failures_per_username,
                    per_address=settings.login_failures_per_address,
                    window_seconds=settings.login_lockout_seconds,
                ),
            )
            uninstall = install_graceful_stop(chat.stop)
            # On the app, not in lifespan state: that state is copied into every request's
            # and socket's scope, a dict per idle socket for one reference.
            app.state.services = services
            try:
                yield
            finally:
                uninstall()
                if webhooks:
                    await webhooks.stop()
                await chat.stop()
        finally:
            await engine.dispose()

    app = FastAPI(
        title="chatroom",
        version="0.1.0",
        description=docs.DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # docs.install serves them without a CDN
        redoc_url=None,  # ReDoc needs inline styles: the Swagger UI at /docs serves instead
    )
    # The room socket's routes go on the app's own router, and first: FastAPI keeps the
    # frames of an included router's dispatch, and of every router tried before the match,
    # for as long as a socket lives: 0.4 KiB per idle socket (bench/README.md).
    app.router.routes.extend(websocket.router.routes)
    for module in (auth, history, rooms, pages):
        app.include_router(module.router)
    app.add_exception_handler(WebSocketRequestValidationError, websocket.refuse_invalid_handshake)  # type: ignore[arg-type]
    errors.install(app)
    app.mount("/static", StaticFiles(directory=resource("static")), name="static")
    docs.install(app)
    app.add_middleware(SecurityHeaders)
    return app

"""The long-lived objects of one running app, created by the lifespan and shared by routes."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.chat.service import ChatService
from app.config import Settings
from app.throttle import LoginThrottle
from app.users import UserCache


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    secret_key: str
    chat: ChatService
    login_throttle: LoginThrottle
    users: UserCache

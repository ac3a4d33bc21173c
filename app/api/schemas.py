"""Validation rules and REST bodies shared by the routes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, Field

# Re-exported: the routes find every validation rule here.
from app.core.models import USERNAME_PATTERN as USERNAME_PATTERN

ROOM_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
PASSWORD_MIN_CHARS = 8
PASSWORD_MAX_CHARS = 1024  # Argon2 takes any length; this bounds the work one request costs
MAX_MESSAGE_ID = 2**63 - 1  # ids are 64-bit integers in every supported database

RoomId = Annotated[str, Path(pattern=ROOM_PATTERN, description="The item id naming the room")]


class Credentials(BaseModel):
    username: str = Field(pattern=USERNAME_PATTERN)
    password: str = Field(min_length=PASSWORD_MIN_CHARS, max_length=PASSWORD_MAX_CHARS)


class UserOut(BaseModel):
    username: str


class ErrorOut(BaseModel):
    detail: str


def error(description: str) -> dict[str, Any]:
    """An error answer for `responses=` in the OpenAPI description."""
    return {"model": ErrorOut, "description": description}


# Every endpoint that needs a user (CurrentIdentity) may answer this.
NOT_AUTHENTICATED: dict[int | str, dict[str, Any]] = {
    401: error("Missing, malformed, expired or revoked credentials")
}


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 (the OAuth2 token type, not a secret)
    expires_in: int


class MessageOut(BaseModel):
    id: int
    room: str
    user: str
    name: str | None = Field(None, description="The display name its author's token gave")
    body: str = Field(description="Empty when the message was deleted")
    created_at: str
    edited_at: str | None = Field(None, description="When its author last edited it")
    deleted_by: str | None = Field(None, description="Who deleted it (its author or a moderator)")


class MessageIn(BaseModel):
    """A message posted over REST; the body and client_msg_id rules are the socket's
    (app/chat/protocol.py), checked there."""

    body: str
    client_msg_id: str | None = None


class PostedMessageOut(MessageOut):
    """The stored message, as its `message` frame."""

    type: str = "message"
    client_msg_id: str | None = None


class ChangeOut(BaseModel):
    """An edit or delete, as its `edit` or `delete` frame (history with `changes=true`)."""

    type: Literal["edit", "delete"]
    id: int = Field(description="The message changed")
    seq: int = Field(description="The change's place in the room's id sequence")
    room: str
    user: str | None = Field(None, description="edit: its author")
    body: str | None = Field(None, description="edit: the new body")
    edited_at: str | None = None
    by: str | None = Field(None, description="delete: who deleted it")


class HistoryOut(BaseModel):
    room: str
    messages: list[MessageOut | ChangeOut]
    has_more: bool

"""WebSocket frames: parsing what clients send and encoding what the server sends.

Every outgoing frame is encoded here exactly once; fan-out hands the same string to every
receiver.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.chat.store import StoredMessage


MAX_CLIENT_MSG_ID_CHARS = 64
# A default `websockets` client (max_size) refuses a larger message, closing with 1009.
CLIENT_MAX_MESSAGE_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ClientMessage:
    body: str
    client_msg_id: str | None = None


@dataclass(frozen=True, slots=True)
class ClientChange:
    """An `edit` (with its new body) or a `delete` of message id."""

    kind: str
    id: int
    body: str = ""
    client_msg_id: None = None  # changes carry none; refusals share the message path


CHANGE_KINDS = ("edit", "delete")
FRAME_TYPES = ("message", *CHANGE_KINDS, "typing", "read")


@dataclass(frozen=True, slots=True)
class ClientTyping:
    """The sender is typing: passed on to the others in the room, never stored."""


@dataclass(frozen=True, slots=True)
class ClientRead:
    """The sender has read its room up to message id (never backwards)."""

    id: int


ClientFrame = ClientMessage | ClientChange | ClientTyping | ClientRead


class FrameError(Exception):
    """A client frame the server refuses; the connection stays open."""

    def __init__(self, code: str, detail: str, client_msg_id: str | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.client_msg_id = client_msg_id  # echoed, so the client knows which send failed


def parse_client_frame(text: str, *, max_chars: int) -> ClientFrame:
    """A JSON `message` frame, or any text that is not JSON taken whole as the body."""
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FrameError("invalid_json", f"frame is not valid JSON: {exc.msg}") from exc
        except (ValueError, RecursionError) as exc:
            # Valid JSON that Python refuses: an integer of more digits than
            # sys.get_int_max_str_digits(), or nesting deeper than the recursion limit.
            detail = "nested too deeply" if isinstance(exc, RecursionError) else "number too long"
            raise FrameError("invalid_json", f"frame is not valid JSON: {detail}") from exc
        return _parse_object(data, max_chars=max_chars)
    if _is_json(stripped):
        # `[1]` or `42` is a client that meant a frame, not a message that reads like code.
        raise FrameError("invalid_frame", "frame must be a JSON object (or text that is not JSON)")
    return ClientMessage(body=_check_body(text, max_chars=max_chars))


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):  # not JSON; or nested or numbered beyond our reading
        return False
    return True


def _parse_object(data: dict[str, Any], *, max_chars: int) -> ClientFrame:
    kind = data.get("type")
    if kind == "typing":
        return ClientTyping()
    if kind == "read":
        return _parse_read(data)
    if kind in CHANGE_KINDS:
        return _parse_change(data, kind, max_chars=max_chars)
    if kind != "message":
        raise FrameError(
            "unknown_type",
            f"unknown frame type {kind!r}; expected one of {', '.join(FRAME_TYPES)}",
        )
    return parse_message(data.get("body"), data.get("client_msg_id"), max_chars=max_chars)


def parse_message(body: Any, client_msg_id: Any, *, max_chars: int) -> ClientMessage:
    """The rules of a message's body and client_msg_id, for the socket and for REST alike."""
    if client_msg_id is not None and (
        not isinstance(client_msg_id, str)
        or not 1 <= len(client_msg_id) <= MAX_CLIENT_MSG_ID_CHARS
        or not _is_unicode(client_msg_id)
    ):
        raise FrameError(
            "invalid_client_msg_id",
            f"'client_msg_id' must be a string of 1 to {MAX_CLIENT_MSG_ID_CHARS} characters",
        )
    try:
        if not isinstance(body, str):
            raise FrameError("invalid_body", "'body' must be a string")
        return ClientMessage(
            body=_check_body(body, max_chars=max_chars), client_msg_id=client_msg_id
        )
    except FrameError as exc:
        exc.client_msg_id = client_msg_id
        raise


def _parse_read(data: dict[str, Any]) -> ClientRead:
    message_id = data.get("id")
    # bool is an int to Python, not to a client
    if not isinstance(message_id, int) or isinstance(message_id, bool) or message_id < 1:
        raise FrameError("invalid_id", "'id' must be the id of a message in this room")
    return ClientRead(message_id)


def _parse_change(data: dict[str, Any], kind: str, *, max_chars: int) -> ClientChange:
    target = data.get("id")
    if isinstance(target, bool) or not isinstance(target, int) or target < 1:
        raise FrameError("invalid_id", "'id' must be the id of a message (a positive integer)")
    if kind == "delete":
        return ClientChange(kind, target)
    body = data.get("body")
    if not isinstance(body, str):
        raise FrameError("invalid_body", "'body' must be a string")
    return ClientChange(kind, target, _check_body(body, max_chars=max_chars))


def _is_unicode(text: str) -> bool:
    """False for strings holding lone surrogates (JSON can spell them: "\\ud800").

    They cannot be encoded as UTF-8, so they could be neither stored nor sent on.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_body(body: str, *, max_chars: int) -> str:
    if not _is_unicode(body):
        raise FrameError("invalid_body", "'body' is not valid Unicode (lone surrogate)")
    body = body.strip()
    if not body:
        raise FrameError("empty_body", "message body is empty")
    if len(body) > max_chars:
        raise FrameError("body_too_long", f"message body exceeds {max_chars} characters")
    return body


def iso_utc(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def message_payload(message: StoredMessage) -> dict[str, Any]:
    """A message in its current state: an edited one says when, a deleted one has no body."""
    payload: dict[str, Any] = {
        "type": "message",
        "id": message.id,
        "room": message.room,
        "user": message.author,
        "body": message.body,
        "created_at": iso_utc(message.created_at),
    }
    if message.author_name is not None:
        payload["name"] = message.author_name
    if message.client_msg_id is not None:
        payload["client_msg_id"] = message.client_msg_id
    if message.edited_at is not None:
        payload["edited_at"] = iso_utc(message.edited_at)
    if message.deleted_by is not None:
        payload["body"] = ""
        payload["deleted_by"] = message.deleted_by
    return payload


def change_payload(change: StoredMessage) -> dict[str, Any]:
    """The `edit` or `delete` frame of a stored change; seq is its place in the room's id
    sequence (resume with the largest id or seq seen)."""
    head = {"type": change.kind, "id": change.target_id, "seq": change.id, "room": change.room}
    if change.kind == "delete":
        return {**head, "by": change.author}
    return {
        **head,
        "user": change.author,
        "body": change.body,
        "edited_at": iso_utc(change.created_at),
    }


def is_change(text: str) -> bool:
    """Whether an encoded frame is an edit or delete (encoded by stored_frame, type first)."""
    return text.startswith(('{"type":"edit"', '{"type":"delete"'))


def encode(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def welcome_frame(*, user: str, room: str, online: list[str], moderator: bool = False) -> str:
    """moderator: the user may delete anyone's message in room (said only when true)."""
    payload = {"type": "welcome", "user": user, "room": room, "online": online}
    return encode({**payload, "moderator": True} if moderator else payload)


def message_frame(message: StoredMessage) -> str:
    """The `message` frame of a stored message: encoded once, sent to every receiver."""
    return encode(message_payload(message))


def stored_frame(row: StoredMessage) -> str:
    """The frame of any row of a room's sequence: a message, an edit or a delete."""
    return encode(stored_payload(row))


def stored_payload(row: StoredMessage) -> dict[str, Any]:
    return message_payload(row) if row.kind == "message" else change_payload(row)


def history_frame(room: str, messages: Sequence[str], has_more: bool) -> str:
    """The `history` frame around already encoded message frames (kept so by the replay
    cache), joined as they are rather than decoded and encoded again."""
    return (
        f'{{"type":"history","room":{encode(room)},"messages":[{",".join(messages)}],'
        f'"has_more":{encode(has_more)}}}'
    )


def history_budget(send_buffer_bytes: int) -> int:
    """The most bytes a history frame may take.

    Half a socket's send buffer: the replay counts against that buffer, and what arrives
    while it is being read must fit behind it. Never more than a default websockets client
    accepts, also when the buffer is raised or unlimited (0).
    """
    half = send_buffer_bytes // 2
    return min(half, CLIENT_MAX_MESSAGE_BYTES) if half else CLIENT_MAX_MESSAGE_BYTES


def history_space(room: str, budget: int) -> int:
    """What a history frame of room within budget leaves its messages, of which each takes
    its message_bytes (which counts the comma that joins it to the next)."""
    return budget + 1 - len(history_frame(room, [], False))  # room ids are ASCII


def message_bytes(text: str) -> int:
    """What an encoded message takes in a history frame: its UTF-8 size and a comma."""
    return (len(text) if text.isascii() else len(text.encode())) + 1


def presence_frame(kind: str, *, room: str, user: str) -> str:
    return encode({"type": kind, "room": room, "user": user})


def read_frame(*, room: str, message_id: int) -> str:
    return encode({"type": "read", "room": room, "id": message_id})


def error_frame(code: str, detail: str, client_msg_id: str | None = None, **extra: Any) -> str:
    payload = {"type": "error", "code": code, "detail": detail, **extra}
    if client_msg_id is not None:
        payload["client_msg_id"] = client_msg_id
    return encode(payload)

"""What a batch of messages to store is, and what becomes of each message in it.

Shared by the writers of every database (app/chat/store.py for PostgreSQL, sqlite_writer.py
for SQLite): a message whose (author, client_msg_id) is already stored, or appears earlier in
the same batch, is a resend and resolves to the message stored first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A stored message as the chat passes it around (ORM instances cost far more to make)."""

    id: int
    room: str
    author: str
    body: str
    created_at: datetime
    client_msg_id: str | None = None


@dataclass(frozen=True, slots=True)
class Stored:
    """The outcome of a send; duplicate: an earlier send with its client_msg_id stored it."""

    message: StoredMessage
    duplicate: bool = False


@dataclass(slots=True)
class Pending:
    """A submitted message waiting for its batch to be committed."""

    room: str
    author: str
    body: str
    client_msg_id: str | None
    future: asyncio.Future[Stored] = field(repr=False)


Key = tuple[str, str | None]  # (author, client_msg_id)


def resend_keys(batch: list[Pending]) -> set[Key]:
    """The keys under which messages of batch may already be stored."""
    return {(p.author, p.client_msg_id) for p in batch if p.client_msg_id is not None}


def new_rows(batch: list[Pending], known: dict[Key, StoredMessage]) -> list[Pending]:
    """The messages of batch to insert: not resends of stored ones, nor of earlier ones."""
    seen: set[Key] = set()
    rows = []
    for pending in batch:
        key = (pending.author, pending.client_msg_id)
        if pending.client_msg_id is None or (key not in known and key not in seen):
            if pending.client_msg_id is not None:
                seen.add(key)
            rows.append(pending)
    return rows


def outcomes(
    batch: list[Pending],
    rows: list[Pending],
    ids: Sequence[int],
    known: dict[Key, StoredMessage],
    now: datetime,
) -> list[Stored]:
    """Each message's outcome, given the ids the inserted rows got."""
    inserted = [
        StoredMessage(id_, p.room, p.author, p.body, now, p.client_msg_id)
        for id_, p in zip(ids, rows, strict=True)
    ]
    if len(rows) == len(batch):  # no resends, the usual case: rows is batch
        return [Stored(message) for message in inserted]
    stored = {id(p): message for p, message in zip(rows, inserted, strict=True)}
    first = dict(known)
    for pending, message in zip(rows, inserted, strict=True):
        first.setdefault((pending.author, pending.client_msg_id), message)
    return [
        Stored(stored[id(p)])
        if id(p) in stored
        else Stored(first[(p.author, p.client_msg_id)], duplicate=True)
        for p in batch
    ]

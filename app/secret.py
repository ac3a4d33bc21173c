"""The JWT signing key: from the settings, or generated once and kept in a file."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from app.config import Settings

logger = logging.getLogger("chatroom")


def load_secret_key(settings: Settings) -> str:
    """CHATROOM_SECRET_KEY when set; else the key file, created on first use.

    Keeping a generated key on disk means a restart does not log everyone out.
    """
    if settings.secret_key:
        return settings.secret_key
    path = settings.resolved_secret_key_file
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        key = ""
    if key:
        return key
    logger.warning(
        "CHATROOM_SECRET_KEY is not set; using a generated key kept in %s. "
        "Set CHATROOM_SECRET_KEY to share one key between hosts.",
        path,
    )
    return _create_key_file(path)


def _create_key_file(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    try:
        # O_EXCL: when several workers start at once, exactly one writes the key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key

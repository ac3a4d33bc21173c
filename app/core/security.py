"""Password hashing (Argon2id), access tokens (HS256 JWTs) and their signing key.

All JWT code lives here.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from jose import JWTError, jwk, jwt
from jose.backends.base import Key
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from app.core.config import Settings
from app.core.models import JTI_MAX_CHARS

logger = logging.getLogger("chatroom")

ALGORITHM = "HS256"
# How far in the future an `iat` may be, for clocks of token-minting hosts that run ahead.
# Within it, a token minted just before a password change may outlive the change.
IAT_LEEWAY_SECONDS = 10
# The last second of the year 9999: a date beyond it is a minting bug, and no datetime holds it.
MAX_NUMERIC_DATE = 253_402_300_799

# pwdlib's Argon2 defaults exceed OWASP's floor (19 MiB, 2 iterations).
_hasher = PasswordHash((Argon2Hasher(),))
# Verifying against this when the user does not exist keeps the timing of a wrong username
# equal to that of a wrong password.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password: str, password_hash: str | None) -> bool:
    """True when password matches; always spends one Argon2 verification.

    None or "" (a deleted account) matches no password.
    """
    if not password_hash:
        _hasher.verify(password, _DUMMY_HASH)
        return False
    return _hasher.verify(password, password_hash)


@dataclass(frozen=True, slots=True)
class TokenClaims:
    username: str
    rooms: frozenset[str] | None  # None: every room
    issued_at: float | None  # seconds since the epoch
    expires_at: float
    token_id: str | None = None  # jti: what signing out revokes
    # The `moderator` claim: rooms whose messages this user may delete; "*" is every room.
    moderator: frozenset[str] = frozenset()

    def moderates(self, room: str) -> bool:
        return room in self.moderator or "*" in self.moderator

    def issued_before(self, moment: datetime | None) -> bool:
        """True when the token predates moment (a password change): it is revoked."""
        if moment is None:
            return False
        return self.issued_at is None or self.issued_at < moment.timestamp()


class InvalidToken(Exception):
    """The token is malformed, forged, expired or lacks a subject."""


def create_access_token(
    username: str, *, key: str, minutes: int, rooms: list[str] | None = None
) -> str:
    now = datetime.now(UTC)
    # iat keeps its fraction of a second, so a token minted just after a password change is
    # told apart from one minted just before it.
    claims: dict[str, object] = {
        "sub": username,
        "iat": now.timestamp(),
        "exp": now + timedelta(minutes=minutes),
        "jti": secrets.token_urlsafe(16),
    }
    if rooms is not None:
        claims["rooms"] = rooms
    return str(jwt.encode(claims, key, algorithm=ALGORITHM))


@functools.lru_cache(maxsize=4)
def _verification_key(secret: str) -> Key:
    """The HMAC key object for secret, made once. Given a string, python-jose first tries
    to read it as a JSON Web Key (a failed json.loads per token, a sixth of a join's CPU in
    a join storm), and a secret that happened to be JSON would be taken as one."""
    return jwk.construct(secret, ALGORITHM)


def decode_access_token(token: str, *, key: str) -> TokenClaims:
    """Verify signature (HS256 only), header and claims; raise InvalidToken otherwise.

    Stricter than python-jose, which takes "exp": "99999999999" or 2**70 through int(),
    fails with TypeError on "exp": [1], and ignores an `iat` in the future and `crit`.
    """
    try:
        claims = jwt.decode(
            token,
            _verification_key(key),
            algorithms=[ALGORITHM],
            # The time claims are checked below, as numbers.
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
        )
        header = jwt.get_unverified_header(token)  # its signature was verified just now
    except JWTError as exc:
        raise InvalidToken(str(exc)) from exc
    if "crit" in header:
        # RFC 7515: extensions listed in crit must be understood; chatroom knows none.
        raise InvalidToken("unsupported crit header")
    now = time.time()
    expires_at = _numeric_date(claims, "exp")
    issued_at = _numeric_date(claims, "iat")
    not_before = _numeric_date(claims, "nbf")
    if expires_at is None:
        raise InvalidToken("exp is missing")
    if expires_at <= now:
        raise InvalidToken("token expired")
    if issued_at is not None and issued_at > now + IAT_LEEWAY_SECONDS:
        raise InvalidToken("iat is in the future")
    if not_before is not None and not_before > now:
        raise InvalidToken("token not yet valid")
    username = claims.get("sub")
    rooms = claims.get("rooms")
    token_id = claims.get("jti")
    if not isinstance(username, str):
        raise InvalidToken("subject is missing or not a string")
    if token_id is not None and not (isinstance(token_id, str) and len(token_id) <= JTI_MAX_CHARS):
        raise InvalidToken(f"jti is not a string of at most {JTI_MAX_CHARS} characters")
    if rooms is not None and not (
        isinstance(rooms, list) and all(isinstance(room, str) for room in rooms)
    ):
        raise InvalidToken("rooms claim is not a list of strings")
    return TokenClaims(
        username=username,
        rooms=frozenset(rooms) if rooms is not None else None,
        issued_at=issued_at,
        expires_at=expires_at,
        token_id=token_id,
        moderator=_moderator_claim(claims.get("moderator")),
    )


def _moderator_claim(value: Any) -> frozenset[str]:
    """The `moderator` claim: absent, "*" (every room), or a list of room ids."""
    if value is None:
        return frozenset()
    if value == "*":
        return frozenset({"*"})
    if isinstance(value, list) and all(isinstance(room, str) for room in value):
        return frozenset(value)
    raise InvalidToken('moderator claim is not "*" or a list of strings')


def _numeric_date(claims: dict[str, Any], name: str) -> float | None:
    """The claim as seconds since the epoch, None when absent; RFC 7519 wants a number."""
    value = claims.get(name)
    if value is None and name not in claims:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken(f"{name} is not a number")
    if not 0 <= value <= MAX_NUMERIC_DATE:  # also refuses NaN
        raise InvalidToken(f"{name} is out of range")
    return float(value)


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

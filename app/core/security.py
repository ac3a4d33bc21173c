"""Password hashing (Argon2id), access tokens (JWTs) and the keys that sign and verify them.

Tokens are HS256 with the shared secret (chatroom's own, and a host's that shares the
secret) or, when a host's public key is configured, RS256 or ES256 with the host's private
key. All JWT code lives here.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from jose import JWTError, jwk, jwt
from jose.backends.base import Key
from jose.utils import base64_to_long
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from app.core.config import Settings
from app.core.models import JTI_MAX_CHARS, USERNAME_PATTERN

logger = logging.getLogger("chatroom")

ALGORITHM = "HS256"  # chatroom's own tokens, and a host's signed with the shared secret
# A host's public key verifies the one algorithm of its type, never another a token's header
# names (RFC 8725 3.1): an RSA key RS256, a P-256 EC key ES256.
PUBLIC_KEY_ALGORITHMS = ("RS256", "ES256")
MIN_RSA_BITS = 2048
NAME_MAX_CHARS = 64  # the `name` claim: a display name
MODERATE_EVERYWHERE = "*"
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


_USERNAME = re.compile(USERNAME_PATTERN)


# Every frozenset() is a new 216-byte object, and each socket keeps its token's claims.
NO_ROOMS: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class TokenClaims:
    username: str
    rooms: frozenset[str] | None  # None: every room
    issued_at: float | None  # seconds since the epoch
    expires_at: float
    token_id: str | None = None  # jti: what signing out revokes
    display_name: str | None = None  # name: stored with each message it sends
    # The `moderator` claim: rooms whose messages this user may delete; "*" is every room.
    moderator: frozenset[str] = NO_ROOMS

    def moderates(self, room: str) -> bool:
        return room in self.moderator or MODERATE_EVERYWHERE in self.moderator

    def issued_before(self, moment: datetime | None) -> bool:
        """True when the token predates moment (a password change): it is revoked."""
        if moment is None:
            return False
        return self.issued_at is None or self.issued_at < moment.timestamp()


class InvalidToken(Exception):
    """The token is malformed, forged, expired or lacks a subject."""


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A host's public key, loaded once at start, and the one algorithm it verifies."""

    algorithm: str
    key: Key


class BadPublicKey(Exception):
    """The configured public key cannot be used; the message says why, in one line."""


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


def decode_access_token(
    token: str, *, key: str, public_key: PublicKey | None = None
) -> TokenClaims:
    """Verify signature, header and claims; raise InvalidToken otherwise.

    HS256 is verified with the shared secret key, and the public key's one algorithm with
    it; any other algorithm, `none` included, is refused. Stricter than python-jose, which
    takes "exp": "99999999999" or 2**70 through int(), fails with TypeError on "exp": [1],
    and ignores an `iat` in the future and `crit`.
    """
    try:
        header = jwt.get_unverified_header(token)  # trusted once the signature verifies
        algorithm = header.get("alg")
        claims = jwt.decode(
            token,
            _key_for(algorithm, key, public_key),
            algorithms=[algorithm],
            # The time claims are checked below, as numbers.
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
        )
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
    token_id = claims.get("jti")
    name = claims.get("name")
    # A host's user is created on first use: a name no one could register is never one.
    if not (isinstance(username, str) and _USERNAME.fullmatch(username)):
        raise InvalidToken("sub is missing or not a valid username")
    if token_id is not None and not (isinstance(token_id, str) and len(token_id) <= JTI_MAX_CHARS):
        raise InvalidToken(f"jti is not a string of at most {JTI_MAX_CHARS} characters")
    if name is not None and not (
        isinstance(name, str) and 0 < len(name) <= NAME_MAX_CHARS and name.isprintable()
    ):
        raise InvalidToken(f"name is not 1 to {NAME_MAX_CHARS} printable characters")
    return TokenClaims(
        username=username,
        rooms=_item_ids(claims, "rooms"),
        issued_at=issued_at,
        expires_at=expires_at,
        token_id=token_id,
        display_name=name,
        moderator=_moderator_claim(claims),
    )


def _key_for(algorithm: object, secret: str, public_key: PublicKey | None) -> Key:
    """The one key that may verify a token signed with algorithm."""
    if algorithm == ALGORITHM:
        return _verification_key(secret)
    if public_key is not None and algorithm == public_key.algorithm:
        return public_key.key
    raise InvalidToken(f"algorithm {algorithm!r} is not accepted")


def _item_ids(claims: dict[str, Any], name: str) -> frozenset[str] | None:
    """A claim listing item ids; None when absent."""
    value = claims.get(name)
    if value is None:
        return None
    if not (isinstance(value, list) and all(isinstance(item, str) for item in value)):
        raise InvalidToken(f"{name} claim is not a list of strings")
    return frozenset(value)


def _moderator_claim(claims: dict[str, Any]) -> frozenset[str]:
    """The moderator claim: item ids, or "*" for every room; empty when absent."""
    if claims.get("moderator") == MODERATE_EVERYWHERE:
        return frozenset([MODERATE_EVERYWHERE])
    return _item_ids(claims, "moderator") or NO_ROOMS


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


def load_public_key(settings: Settings) -> PublicKey | None:
    """The host's public key, from CHATROOM_JWT_PUBLIC_KEY (the PEM text) or the file
    CHATROOM_JWT_PUBLIC_KEY_FILE names; None when neither is set. BadPublicKey otherwise."""
    pem, path = settings.jwt_public_key, settings.jwt_public_key_file
    source = "CHATROOM_JWT_PUBLIC_KEY"
    if path is not None:
        if pem:
            raise BadPublicKey(
                "set CHATROOM_JWT_PUBLIC_KEY or CHATROOM_JWT_PUBLIC_KEY_FILE, not both"
            )
        source = f"CHATROOM_JWT_PUBLIC_KEY_FILE ({path})"
        try:
            pem = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise BadPublicKey(f"{source} cannot be read: {exc}") from None
    if not pem:
        return None
    for algorithm in PUBLIC_KEY_ALGORITHMS:
        key = _pem_key(pem, algorithm)
        if key is None:
            continue
        if not key.is_public():
            raise BadPublicKey(f"{source} is a private key: give chatroom the public key only")
        params = key.to_dict()
        if params["kty"] == "RSA" and base64_to_long(params["n"]).bit_length() < MIN_RSA_BITS:
            raise BadPublicKey(f"{source} is an RSA key shorter than {MIN_RSA_BITS} bits")
        if params["kty"] == "EC" and params["crv"] != "P-256":
            raise BadPublicKey(f"{source} is an EC key on {params['crv']}: ES256 needs P-256")
        return PublicKey(algorithm, key)
    raise BadPublicKey(f"{source} is not a PEM RSA or P-256 EC public key")


def _pem_key(pem: str, algorithm: str) -> Key | None:
    """python-jose's key for algorithm from pem, or None when pem is no such key."""
    try:
        key: Key = jwk.construct(pem, algorithm)
        key.to_dict()  # an EC curve without a JWK name fails here
    except Exception:  # each backend's parsers raise errors of their own
        return None
    return key


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

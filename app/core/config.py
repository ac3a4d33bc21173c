"""Settings: every option is an environment variable named CHATROOM_<NAME>."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, HttpUrl, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url


class Settings(BaseSettings):
    """Server configuration; see docs/configuration.md for each option."""

    model_config = SettingsConfigDict(env_prefix="CHATROOM_", extra="ignore")

    database_url: str = "sqlite+aiosqlite:///./chatroom.db"
    broker_url: str = "memory://"
    # With a redis:// broker: a worker that stops renewing (killed) drops out of presence,
    # and its users are announced as gone, within this time.
    presence_ttl_seconds: float = Field(default=15.0, gt=0)
    # None: read from / generate into secret_key_file (see app/secret.py).
    secret_key: str | None = None
    secret_key_file: Path | None = None
    access_token_minutes: int = Field(default=24 * 60, ge=1)
    open_registration: bool = True
    history_limit: int = Field(default=50, ge=0, le=1000)
    # The join replays of recently joined rooms, kept encoded: at most this many bytes in all.
    replay_cache_bytes: int = Field(default=32 * 1024 * 1024, ge=0)
    max_message_chars: int = Field(default=4000, ge=1)
    max_frame_bytes: int = Field(default=64 * 1024, ge=1024)
    # Per-connection outbound buffer: a reader this far behind is closed with 1013.
    send_buffer_frames: int = Field(default=256, ge=0)
    send_buffer_bytes: int = Field(default=1024 * 1024, ge=0)
    # Heartbeat: uvicorn pings every interval and drops a peer silent for the timeout.
    ping_interval_seconds: float = Field(default=20.0, ge=0)
    ping_timeout_seconds: float = Field(default=20.0, ge=0)
    cookie_secure: bool | None = None  # None: Secure when the request came over HTTPS
    # Origins (scheme://host[:port]) besides the server's own whose pages may open sockets
    # authenticated by the session cookie; comma-separated.
    allowed_origins: str = ""

    # Abuse limits; 0 turns a limit off.
    rate_limit: float = Field(default=10.0, ge=0)  # messages per second per user
    rate_burst: int = Field(default=20, ge=0)
    max_connections_per_user: int = Field(default=20, ge=0)
    login_failures_per_username: int = Field(default=5, ge=0)
    login_failures_per_address: int = Field(default=20, ge=0)
    login_lockout_seconds: float = Field(default=300.0, ge=0)
    # Connections (see app/guard.py). A request must arrive whole within this time of the
    # connection's opening (or of its first byte on a kept-alive connection): else 408.
    request_timeout_seconds: float = Field(default=10.0, gt=0)
    keep_alive_seconds: int = Field(default=5, ge=1)  # idle between requests, then closed
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)  # request line and headers: 431
    # Open connections, WebSockets included; None: the open-file limit less a reserve; 0: off.
    max_connections: int | None = Field(default=None, ge=0)
    backlog: int = Field(default=2048, ge=1)  # connections the kernel queues before accept
    host: str = "127.0.0.1"
    port: int = 8080

    # Webhooks (app/chat/webhooks.py): every stored message POSTed here, signed with the
    # secret. Unset: off, and the writer keeps no outbox.
    webhook_url: HttpUrl | None = None
    webhook_secret: SecretStr | None = None
    # Failed deliveries are retried after 1, 2, 4, ... seconds, at most this long apart.
    webhook_retry_max_seconds: float = Field(default=60.0, gt=0)

    @field_validator("webhook_url", "webhook_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _webhook_needs_secret(self) -> Self:
        if self.webhook_url is not None and self.webhook_secret is None:
            raise ValueError("CHATROOM_WEBHOOK_SECRET must be set with CHATROOM_WEBHOOK_URL")
        return self

    @property
    def allowed_origin_list(self) -> frozenset[str]:
        return frozenset(
            o.strip().rstrip("/") for o in self.allowed_origins.split(",") if o.strip()
        )

    @property
    def resolved_secret_key_file(self) -> Path:
        """Where the generated key lives: beside a SQLite file, else the working directory."""
        if self.secret_key_file is not None:
            return self.secret_key_file
        database = sqlite_file(self.database_url)
        if database is not None:
            return database.parent / "chatroom.secret"
        return Path("chatroom.secret").resolve()


def sqlite_file(database_url: str) -> Path | None:
    """The absolute path of a SQLite database file; None for other databases and memory."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database).resolve()


_PACKAGE = Path(__file__).resolve().parent.parent


def resource(name: str) -> Path:
    """Path of a bundled top-level folder or file (templates, static, migrations).

    In a wheel they live in app/_bundled (see pyproject.toml); in a source checkout they are
    the top-level folders of the repository.
    """
    for candidate in (_PACKAGE / "_bundled" / name, _PACKAGE.parent / name):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"chatroom resource {name!r} is missing from the installation")

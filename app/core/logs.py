"""Logging filters: access tokens must never reach a log file."""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

# A query parameter: its name and value as sent, percent-encoded or not.
_QUERY_PARAM = re.compile(r"(?:^|(?<=[?&]))([^=&?\s\"']+)=([^&\s\"']*)")
# Names whose value is a credential once decoded as the server decodes them: `%74oken` is
# `token` to Starlette, and so to the log.
_SECRET_PARAMS = frozenset({"token", "access_token"})


def redact(text: str) -> str:
    if "=" not in text:  # every socket's handshake is logged: skip the regex then
        return text
    return _QUERY_PARAM.sub(_redact_param, text)


def _redact_param(param: re.Match[str]) -> str:
    name = param[1]
    if unquote_plus(name).lower() in _SECRET_PARAMS:
        return f"{name}=[redacted]"
    return param[0]


class RedactTokens(logging.Filter):
    """Rewrites token query values in a record's arguments (uvicorn logs request paths)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def install_redaction() -> None:
    """Attach the filter to uvicorn's loggers once (both log WebSocket paths)."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())

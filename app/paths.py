"""Where the bundled folders (templates, static, migrations) are on disk.

In a wheel they live in app/_bundled (see pyproject.toml); in a source checkout they are the
top-level folders of the repository.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource(name: str) -> Path:
    """Path of a bundled top-level folder or file, for installed and source layouts alike."""
    for candidate in (_PACKAGE / "_bundled" / name, _PACKAGE.parent / name):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"chatroom resource {name!r} is missing from the installation")

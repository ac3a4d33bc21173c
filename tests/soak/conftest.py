"""Soak tests run only when asked for: `pytest -m soak tests/soak -s`.

A plain `pytest` run deselects them (they take minutes and load the machine); any `-m`
expression that names `soak` keeps them.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "soak" in (config.getoption("markexpr", "") or ""):
        return
    deselected = [item for item in items if item.get_closest_marker("soak") is not None]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item.get_closest_marker("soak") is None]

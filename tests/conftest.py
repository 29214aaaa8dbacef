"""Shared fixtures: where ../shared lives, and skipping (with a reason) when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CITYTWIN_SHARED", REPO.parent / "shared"))


def shared_file(relative: str) -> Path:
    """A file under ../shared/data, or a skip that names it when ../shared is not on this machine."""
    path = SHARED / "data" / relative
    if not path.exists():
        pytest.skip(f"needs {path} (../shared/data is not on this machine)")
    return path


@pytest.fixture
def repo() -> Path:
    return REPO

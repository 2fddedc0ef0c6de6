"""pytest fixtures shared by every test folder; plain helpers live in tests/support.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import FIXTURES


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES

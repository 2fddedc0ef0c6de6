"""pytest fixtures and hooks shared by every test folder; plain helpers live in
tests/support.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import COSTS, FIXTURES, set_running_cost


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test without a cost marker is a unit test."""
    for item in items:
        if not any(item.get_closest_marker(cost) for cost in COSTS):
            item.add_marker(pytest.mark.unit)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before the test's fixtures run: what its cost marker admits (see require())."""
    set_running_cost(max(i for i, cost in enumerate(COSTS) if item.get_closest_marker(cost)))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES

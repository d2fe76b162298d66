"""Resilience scenarios: their figures are printed with each test and again in the run's summary."""

from __future__ import annotations

from typing import Any

import pytest

FIGURES = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session")
def figures_log(pytestconfig: pytest.Config) -> list[str]:
    """Where a scenario leaves its rendered figures for the terminal summary."""
    return pytestconfig.stash.setdefault(FIGURES, [])


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    blocks = config.stash.get(FIGURES, [])
    if blocks:
        terminalreporter.section("resilience figures")
        for block in blocks:
            terminalreporter.write_line(block)

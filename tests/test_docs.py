"""The documents that describe the protocol agree with the code that speaks it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aicq import protocol

REPO = Path(__file__).resolve().parent.parent
CLOSE_TABLES = [REPO / "docs" / "ARCHITECTURE.md", REPO / "aicq" / "docs" / "onboarding.md",
                REPO / "docs" / "RUNBOOK.md"]


def _close_rows(text: str) -> dict[int, str]:
    rows = {}
    for line in text.splitlines():
        match = re.match(r"^\|\s*`?(1\d{3})`?\s*\|(.*)$", line)
        if match:
            rows[int(match.group(1))] = match.group(2).lower()
    return rows


@pytest.mark.parametrize("path", CLOSE_TABLES, ids=lambda p: p.name)
def test_close_code_tables_match_the_protocol(path: Path) -> None:
    rows = _close_rows(path.read_text())
    missing = set(protocol.CLOSE_CODES) - set(rows)
    assert not missing, f"{path.name} lacks close codes {sorted(missing)}"
    for code, close in protocol.CLOSE_CODES.items():
        action = "reconnect" if close.reconnect else "fix"
        assert action in rows[code], f"{path.name}: close {code} should say '{action}': {rows[code]}"

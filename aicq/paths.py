"""Where the non-Python files live: beside the package in a checkout, inside it in a wheel."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _first_existing(*candidates: Path) -> Path:
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return candidates[0]


MIGRATIONS_DIR = _first_existing(_PACKAGE.parent / "migrations", _PACKAGE / "_migrations")
WEB_DIR = _first_existing(_PACKAGE.parent / "web", _PACKAGE / "_web")
DOCS_DIR = _PACKAGE / "docs"

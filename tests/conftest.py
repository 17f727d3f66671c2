"""Shared test fixtures: where the real data is.

Tests read the real data sets from ``$SECONDREAD_DATA`` (default ``../shared/data`` next to the
repository) and skip, rather than fail, where that folder is absent.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Let `python -m pytest` work from a checkout whose venv lacks the editable install of the package.
if importlib.util.find_spec("secondread") is None:
    sys.path.insert(0, str(REPO / "src"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data folder (``$SECONDREAD_DATA`` or ``<repo>/../shared/data``); skips if absent."""
    root = Path(os.environ.get("SECONDREAD_DATA") or REPO.parent / "shared" / "data")
    if not root.is_dir():
        pytest.skip(f"real data folder not found: {root} (set SECONDREAD_DATA)")
    return root

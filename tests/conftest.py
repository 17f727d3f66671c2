"""Shared test fixtures: where the real data is.

Tests read the real data sets from ``$SECONDREAD_DATA`` (default ``../shared/data`` next to the
repository) and skip, rather than fail, where that folder is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data folder (``$SECONDREAD_DATA`` or ``<repo>/../shared/data``); skips if absent."""
    root = Path(os.environ.get("SECONDREAD_DATA") or REPO.parent / "shared" / "data")
    if not root.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"real data folder not found in CI: {root} (set SECONDREAD_DATA)")
        pytest.skip(f"real data folder not found: {root} (set SECONDREAD_DATA)")
    return root


@pytest.fixture(scope="session")
def minimias_folder(data_root) -> Path:
    """The mini-MIAS folder (mammograms and the experts' circles); skips if absent."""
    path = data_root / "mammography" / "mini-mias"
    if not path.is_dir():
        pytest.skip("mini-MIAS not available")
    return path

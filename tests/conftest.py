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


@pytest.fixture(scope="session")
def renamed_copy(data_root, tmp_path_factory):
    """``renamed_copy("mri/lgg")``: a user's copy of a data set folder under another name, made of
    symbolic links to the real files (one per session and data set)."""
    made: dict[str, Path] = {}

    def copy(folder: str) -> Path:
        if folder not in made:
            source, target = data_root / folder, tmp_path_factory.mktemp("renamed") / "my copy 2026"
            for path in source.rglob("*"):
                if path.is_file():
                    link = target / path.relative_to(source)
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to(path.resolve())
            made[folder] = target
        return made[folder]

    return copy

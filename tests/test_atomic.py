"""Files written whole or not at all (``secondread.atomic``), with the permissions of a plain write.

Reference: the mode Python's own ``open()`` gives a new file in the same folder under the same umask.
"""

from __future__ import annotations

import stat

import numpy as np
import pytest

from secondread import atomic, segment


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture()
def plain_mode(tmp_path) -> int:
    ref = tmp_path / "reference.txt"
    with open(ref, "w") as fh:
        fh.write("x")
    return _mode(ref)


def test_written_files_have_the_permissions_of_a_plain_write(tmp_path, plain_mode):
    """Not mkstemp's 0600: a user's scripts (or a PACS importer running as another user of the
    group) read predictions and masks the way they read any file the user writes."""
    files = [atomic.write_csv(tmp_path / "p.csv", ["id"], [[1]]),
             atomic.write_bytes(tmp_path / "b.bin", b"\x00\x01"),
             segment.write_mask_png(tmp_path / "m" / "mask.png", np.eye(8, dtype=bool))]
    assert [_mode(f) for f in files] == [plain_mode] * 3
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["b.bin", "m", "mask.png", "p.csv", "reference.txt"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = atomic.write_bytes(tmp_path / "keep.txt", b"old")
    with pytest.raises(RuntimeError), atomic.replacing(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["keep.txt"]

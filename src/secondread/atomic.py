"""Files that appear whole or not at all.

Why: predictions and labels are read by users' scripts and by independent checks; a crash or a
full disk must leave the previous file (or none), never half a table. Write to a temporary file in
the target's own folder (same file system), then ``os.replace`` it over the target.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import SecondreadError


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence], *,
              delimiter: str = ",", make_parents: bool = False) -> Path:
    """Write ``header`` and ``rows`` as CSV (or TSV with ``delimiter="\\t"``) atomically.

    Raises ``SecondreadError`` naming the file when it is a folder, its folder is missing (unless
    ``make_parents``), or the write fails (e.g. the disk is full); the temporary file is removed.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "p.csv"
    >>> write_csv(out, ["id", "p"], [[0, 0.5]]).read_text()
    'id,p\\n0,0.5\\n'
    """
    target = Path(path)
    if target.is_dir():
        raise SecondreadError(target, "is a directory, expected a file name")
    if make_parents:
        target.parent.mkdir(parents=True, exist_ok=True)
    elif not target.parent.is_dir():
        raise SecondreadError(target, "the folder for this file does not exist")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, delimiter=delimiter, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise SecondreadError(target, f"cannot write the file ({exc.strerror or type(exc).__name__})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target

"""Files that appear whole or not at all.

Why: predictions and labels are read by users' scripts and by independent checks; a crash or a
full disk must leave the previous file (or none), never half a table. Write to a temporary file in
the target's own folder (same file system), then ``os.replace`` it over the target.
"""

from __future__ import annotations

import contextlib
import csv
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from .errors import SecondreadError


def _file_mode() -> int:
    """What ``open()`` would give a new file under the process's umask (``mkstemp`` gives 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file beside ``path`` for the caller to write; when the block ends normally it
    gets the permissions a plain write would have and replaces ``path`` (``os.replace``), and on
    any failure it is removed, so ``path`` is never half written.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with replacing(out) as tmp:
    ...     _ = tmp.write_text("whole")
    >>> out.read_text(), sorted(p.name for p in out.parent.iterdir())
    ('whole', ['a.txt'])
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` whole or not at all (:func:`replacing`)."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


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
    try:
        with replacing(target) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, delimiter=delimiter, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
    except OSError as exc:
        raise SecondreadError(target, f"cannot write the file ({exc.strerror or type(exc).__name__})") from None
    return target

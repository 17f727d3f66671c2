"""Reading a small user-given file with one-line errors.

Why: notes and FHIR bundles (and later other records) arrive as paths typed by a user; a missing
file, a folder, an oversized file or an unreadable one must each end in ``SecondreadError`` naming
the file, never in a traceback, and an oversized file must be refused before it is read.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import SecondreadError


def read_limited(path: str | os.PathLike, max_bytes: int, kind: str, expected: str) -> bytes:
    """The bytes of ``path``, refusing a missing path, a folder and a file over ``max_bytes``.

    ``kind`` names the file in messages ("note", "FHIR file"); ``expected`` says what a folder
    should have been ("a text note").

    >>> read_limited("/nonexistent.txt", 10, "note", "a text note")
    Traceback (most recent call last):
    ...
    secondread.errors.SecondreadError: /nonexistent.txt: note not found
    """
    p = Path(path)
    if not p.exists():
        raise SecondreadError(path, f"{kind} not found")
    if p.is_dir():
        raise SecondreadError(path, f"is a directory, expected {expected}")
    try:
        if p.stat().st_size > max_bytes:
            raise SecondreadError(path, f"{kind} is larger than {max_bytes // 1_000_000} MB")
        return p.read_bytes()
    except OSError as exc:
        raise SecondreadError(path, f"cannot read {kind} ({exc.strerror or type(exc).__name__})") from None

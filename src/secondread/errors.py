"""One exception type for every failure a user can cause.

Why: the command line, the service and the batch runner all need to turn a bad input into one line
that names the file and the problem, without a traceback and without patient identifiers. Carrying
the two parts separately lets each face format them its own way.
"""

from __future__ import annotations

import os


class SecondreadError(Exception):
    """A problem with one input (or output) file, reported as ``"<file>: <problem>"``.

    Parameters
    ----------
    path : str or os.PathLike or None
        The file the problem is about (``None`` when no file is involved).
    problem : str
        What is wrong, in plain words, on one line. Must never contain patient identifiers.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = " ".join(str(problem).split())  # always one line
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return self.problem if self.path is None else f"{self.path}: {self.problem}"

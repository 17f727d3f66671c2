"""Where the real data sets live, and one module per data set.

Why: tests, training and the demo must find ``../shared/data`` the same way, and a user must be able
to point at their own copy with ``--data`` or ``SECONDREAD_DATA``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import SecondreadError

ENV_VAR = "SECONDREAD_DATA"


def data_root(explicit: str | os.PathLike | None = None, *, must_exist: bool = True) -> Path:
    """Return the data folder: ``explicit`` if given, else ``$SECONDREAD_DATA``, else ``../shared/data``.

    The default is resolved against the current directory (the project root when run via ``make``).
    """
    if explicit is not None:
        root = Path(explicit)
    elif os.environ.get(ENV_VAR):
        root = Path(os.environ[ENV_VAR])
    else:
        root = Path("..") / "shared" / "data"
    if must_exist and not root.is_dir():
        raise SecondreadError(root, f"data folder not found (set --data or {ENV_VAR})")
    return root

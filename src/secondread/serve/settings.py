"""What the operator configures for ``secondread serve``, checked once at start-up.

Why: a service that starts with a guessable token, or none, is open to anyone on the network; so
there is no default token, and a missing or short one stops the service before it listens.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import SecondreadError

TOKEN_ENV = "SECONDREAD_API_TOKEN"
MIN_TOKEN_CHARS = 16
MB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Everything the app needs; ``create_app(Settings(token=...))`` is the whole service.

    Attributes
    ----------
    token : str
        The bearer token every ``/v1/*`` request must carry (compared in constant time).
    max_upload_bytes : int
        Largest request body accepted; larger ones get 413 before they are read whole.
    max_unzipped_bytes : int
        Largest total a zip may inflate to (zip bombs get 413 while being extracted).
    max_zip_members, max_zip_ratio : int, float
        More members, or a member compressed better than this ratio, is refused.
    max_files : int
        Most ``files`` parts in one request (a series sent slice by slice).
    max_record_bytes : int
        Largest ``notes`` or ``fhir`` part.
    workers : int
        Analyses run at once (each in a thread; the rest wait, /healthz stays free).
    model : str or None
        Always use this bundle; None: pick one per study.
    pacs_url : str or None
        DICOMweb root of a PACS the viewer may browse.
    view_slots, view_ttl_s : int, float
        The in-memory viewer cache: how many studies, for how long.
    """

    token: str
    max_upload_bytes: int = 512 * MB
    max_unzipped_bytes: int = 2048 * MB
    max_zip_members: int = 5000
    max_zip_ratio: float = 200.0
    max_files: int = 5000
    max_record_bytes: int = 2 * MB
    workers: int = 2
    model: str | None = None
    pacs_url: str | None = None
    view_slots: int = 8
    view_ttl_s: float = 1800.0

    def __post_init__(self) -> None:
        check_token(self.token)


def check_token(token: str | None) -> str:
    """Refuse a missing, short or multi-line token (a one-line error, never the token itself)."""
    if not token:
        raise SecondreadError(None, f"no API token: set {TOKEN_ENV} or give --token-file FILE "
                                    "(there is no default token)")
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise SecondreadError(None, f"the API token must be at least {MIN_TOKEN_CHARS} characters "
                                    "without spaces")
    return token


def read_token(token_file: str | os.PathLike | None, environ=os.environ) -> str:
    """The token from ``--token-file`` (its first line) or else from ``$SECONDREAD_API_TOKEN``."""
    if token_file is not None:
        path = Path(token_file)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SecondreadError(path, "token file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SecondreadError(path, f"cannot read the token file ({type(exc).__name__})") from None
        lines = text.splitlines()
        return check_token(lines[0].strip() if lines else "")
    return check_token(environ.get(TOKEN_ENV, "").strip())

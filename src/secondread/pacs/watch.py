"""Watch a PACS: poll for studies (QIDO-RS) and analyse each exactly once, across restarts.

Why a state file: a watcher is stopped, killed and restarted; the PACS does not remember what we
did. A small SQLite file (one row per study: status, attempts, one-line error, times) is the
memory. A study is marked ``done`` only after its results are stored; a study found ``running``
was interrupted by a killed run and is redone (inputs whose results already reached the PACS are
recognised there and skipped); a ``failed`` study is retried on later polls until
``max_attempts``. Rows hold UIDs, counts and error lines: never patient identifiers.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SecondreadError
from .client import PacsClient

log = logging.getLogger("secondread.pacs")

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    status    TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    attempts  INTEGER NOT NULL DEFAULT 0,
    error     TEXT,
    inputs    INTEGER,
    stored    INTEGER,
    started   TEXT,
    finished  TEXT
)
"""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class State:
    """The watcher's memory: study UID -> status, attempts, error, inputs, stored, times."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=30)
            self.db.execute(SCHEMA)
            self.db.commit()
        except (sqlite3.Error, OSError) as exc:
            raise SecondreadError(self.path, f"cannot open the state file ({exc})") from None

    def close(self) -> None:
        self.db.close()

    def rows(self) -> dict[str, dict]:
        cur = self.db.execute("SELECT * FROM studies")
        names = [d[0] for d in cur.description]
        return {r[0]: dict(zip(names, r)) for r in cur.fetchall()}

    def todo(self, study_uids: list[str], max_attempts: int) -> list[str]:
        """New studies, studies left ``running`` by a killed run, failed ones with attempts left."""
        rows = self.rows()
        out = []
        for uid in study_uids:
            row = rows.get(uid)
            if row is None or row["status"] == "running" or \
                    (row["status"] == "failed" and row["attempts"] < max_attempts):
                out.append(uid)
        return out

    def start(self, uid: str) -> None:
        self.db.execute("INSERT INTO studies (study_uid, status, attempts, started) VALUES (?, 'running', 1, ?) "
                        "ON CONFLICT(study_uid) DO UPDATE SET status='running', attempts=attempts+1, "
                        "error=NULL, started=excluded.started, finished=NULL", (uid, _now()))
        self.db.commit()

    def finish(self, uid: str, error: str | None, inputs: int | None, stored: int | None) -> None:
        self.db.execute("UPDATE studies SET status=?, error=?, inputs=?, stored=?, finished=? WHERE study_uid=?",
                        ("failed" if error else "done", error, inputs, stored, _now(), uid))
        self.db.commit()


@dataclass
class PollSummary:
    seen: int = 0
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def poll_once(client: PacsClient, state: State, out_dir: Path | None, model: str | None,
              max_attempts: int) -> PollSummary:
    """One QIDO-RS poll; analyse every study still to do; record each outcome as it ends."""
    from .study import run_study

    summary = PollSummary()
    uids = [s["study_uid"] for s in client.studies()]
    summary.seen = len(uids)
    for uid in state.todo(uids, max_attempts):
        state.start(uid)
        try:
            with tempfile.TemporaryDirectory(prefix="secondread-watch-") as tmp:
                result = run_study(client, uid, (out_dir or Path(tmp)) / uid, model)
            error, inputs, stored = result.error_line(), len(result.items), result.stored
        except SecondreadError as exc:  # the study could not be fetched or its results not stored
            error, inputs, stored = exc.message, None, None
        except Exception as exc:  # noqa: BLE001 - a bug of ours must not stop the watcher
            error, inputs, stored = f"internal error: {type(exc).__name__}", None, None
        state.finish(uid, error, inputs, stored)
        if error:
            summary.failed.append(uid)
            print(f"study {uid}: failed: {error}", file=sys.stderr)
        else:
            summary.done.append(uid)
            print(f"study {uid}: done, {inputs} input(s) analysed, {stored} object(s) stored")
    return summary


def watch(url: str, state_path: str | os.PathLike, out_dir: str | os.PathLike | None, interval: float,
          once: bool, model: str | None = None, max_attempts: int = 3, timeout: float = 60.0) -> int:
    """Poll every ``interval`` seconds (or once). Exit code of ``--once``: 1 if a study failed."""
    client = PacsClient(url, timeout=timeout)
    state = State(state_path)
    out = Path(out_dir) if out_dir else None
    try:
        while True:
            try:
                summary = poll_once(client, state, out, model, max_attempts)
            except SecondreadError as exc:
                if once:
                    raise
                log.warning("poll failed: %s", exc.message)  # the PACS may be back next time
            else:
                print(f"poll: {summary.seen} study(ies) on the server, {len(summary.done)} analysed, "
                      f"{len(summary.failed)} failed")
                if once:
                    return 1 if summary.failed else 0
            sys.stdout.flush()
            time.sleep(interval)
    finally:
        state.close()

"""Watch a PACS: poll for studies (QIDO-RS) and analyse each exactly once, across restarts.

Why a state file: a watcher is stopped, killed and restarted; the PACS does not remember what we
did. A small SQLite file (one row per study: status, attempts, one-line error, times) is the
memory. A study is marked ``done`` only after its results are stored; a study found ``running``
was interrupted by a killed run and is redone (inputs whose results already reached the PACS are
recognised there and skipped); a ``failed`` study is retried on later polls until
``max_attempts``. Rows hold UIDs, counts and error lines: never patient identifiers.

A study still arriving (its instance count still growing) would be analysed half-sent; with
``settle`` seconds > 0 a study is taken only once its count has stayed the same that long. One
watcher per state file: a second one exits with an error (an OS lock, released even on kill).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
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
);
CREATE TABLE IF NOT EXISTS arriving (
    study_uid TEXT PRIMARY KEY,
    instances INTEGER,
    since     REAL NOT NULL
);
"""


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


class State:
    """The watcher's memory: study UID -> status, attempts, error, inputs, stored, times."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # held open for the watcher's life: the OS releases the lock even when it is killed
            self._lock = open(self.path.with_name(self.path.name + ".lock"), "a")  # noqa: SIM115
        except OSError as exc:
            raise SecondreadError(self.path, f"cannot open the state file ({exc.strerror})") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise SecondreadError(self.path, "another watcher is using this state file") from None
        try:
            self.db = sqlite3.connect(self.path, timeout=30)
            self.db.executescript(SCHEMA)
            self.db.commit()
        except sqlite3.Error as exc:
            self._lock.close()
            raise SecondreadError(self.path, f"cannot open the state file ({exc})") from None

    def close(self) -> None:
        self.db.close()
        self._lock.close()

    def settled(self, studies: list[dict], settle: float) -> list[str]:
        """UIDs of the studies whose instance count has not changed for ``settle`` seconds."""
        if settle <= 0:
            return [s["study_uid"] for s in studies]
        seen = {r[0]: (r[1], r[2]) for r in self.db.execute("SELECT * FROM arriving")}
        now, out = time.time(), []
        for s in studies:
            uid, count = s["study_uid"], s.get("instances")
            if uid in seen and seen[uid][0] == count:
                if now - seen[uid][1] >= settle:
                    out.append(uid)
            else:
                self.db.execute("INSERT OR REPLACE INTO arriving VALUES (?, ?, ?)", (uid, count, now))
        self.db.commit()
        return out

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
    waiting: int = 0  # still arriving (instance count changed within `settle` seconds)
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def poll_once(client: PacsClient, state: State, out_dir: Path | None, model: str | None,
              max_attempts: int, settle: float = 0.0) -> PollSummary:
    """One QIDO-RS poll; analyse every study still to do; record each outcome as it ends."""
    from .study import run_study

    summary = PollSummary()
    found = client.studies()
    summary.seen = len(found)
    todo = state.todo([s["study_uid"] for s in found], max_attempts)
    if settle > 0:
        ready = set(state.settled([s for s in found if s["study_uid"] in todo], settle))
        summary.waiting = len(todo) - len(ready)
        todo = [u for u in todo if u in ready]
    for uid in todo:
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
          once: bool, model: str | None = None, max_attempts: int = 3, timeout: float = 60.0,
          settle: float = 0.0) -> int:
    """Poll every ``interval`` seconds (or once). Exit code of ``--once``: 1 if a study failed."""
    client = PacsClient(url, timeout=timeout)
    state = State(state_path)
    out = Path(out_dir) if out_dir else None
    try:
        while True:
            try:
                summary = poll_once(client, state, out, model, max_attempts, settle)
            except SecondreadError as exc:
                if once:
                    raise
                log.warning("poll failed: %s", exc.message)  # the PACS may be back next time
            else:
                print(f"poll: {summary.seen} study(ies) on the server, {len(summary.done)} analysed, "
                      f"{len(summary.failed)} failed"
                      + (f", {summary.waiting} still arriving" if summary.waiting else ""))
                if once:
                    return 1 if summary.failed else 0
            sys.stdout.flush()
            time.sleep(interval)
    finally:
        state.close()

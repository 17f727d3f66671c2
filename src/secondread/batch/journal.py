"""The batch journal: what is done, in SQLite in the output folder; and the folder's lock.

Why: a batch over thousands of studies must survive ``kill -9`` at any moment. The rule that
makes it exactly-once is an order of two atomic steps per study, both taken by the driver only:

1. the study's report folder is written beside its place and *renamed* into place (a rename is
   atomic; an older half-written folder is swapped out and removed);
2. then one SQLite transaction (WAL) records the study's rows.

A kill before 2 leaves a report folder without a journal entry: the next run redoes the study
and replaces the folder. A kill after 2 leaves both. ``results.parquet`` is never appended to:
it is rebuilt from the journal at the end of every run (temp file + ``os.replace``), so it
cannot hold a duplicate row or be truncated.

Two batches on one folder would break that rule, so the driver holds an exclusive
``fcntl.flock`` on ``DIR/.batch.lock`` for the whole run. The kernel drops it when the process
dies, even by ``kill -9``: unlike a PID file, a stale lock cannot block the next run.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from ..errors import SecondreadError
from .work import STAGES

JOURNAL_FILE = "journal.sqlite"
LOCK_FILE = ".batch.lock"
SCHEMA_VERSION = 1

# (name, SQLite type, Arrow type name): the columns of the journal and of results.parquet.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("study_id", "TEXT NOT NULL", "string"),
    ("model", "TEXT NOT NULL", "string"),
    ("source", "TEXT", "string"),
    ("kind", "TEXT", "string"),
    ("status", "TEXT NOT NULL", "string"),
    ("probability", "REAL", "float64"),
    ("decision", "TEXT", "string"),
    ("positive", "INTEGER", "bool_"),
    ("region", "TEXT", "string"),
    ("model_used", "TEXT", "string"),
    ("error", "TEXT", "string"),
    *((f"t_{s}", "REAL", "float64") for s in STAGES),
    ("t_total", "REAL", "float64"),
    ("report", "TEXT", "string"),
    ("model_sha256", "TEXT", "string"),
    ("attempts", "INTEGER", "int64"),
    ("finished_at", "TEXT", "string"),
)
NAMES = tuple(c[0] for c in COLUMNS)


class BatchLock:
    """An exclusive, non-blocking ``flock`` on ``DIR/.batch.lock``; a second batch is refused."""

    def __init__(self, out: Path):
        self.path = out / LOCK_FILE
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise SecondreadError(out, f"cannot create the batch lock file ({exc.strerror})") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise SecondreadError(out, "another batch is already running on this output folder "
                                       "(wait for it to finish, or choose another --out)") from None

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class Journal:
    """One row per (study, model); written only by the driver, one transaction per study."""

    def __init__(self, out: Path):
        self.path = out / JOURNAL_FILE
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a commit survives a killed process (the WAL is in the OS's page cache); only a
            # power cut may lose the last commits, which are then redone (never duplicated).
            self.db.execute("PRAGMA synchronous=NORMAL")
            cols = ", ".join(f"{n} {t}" for n, t, _ in COLUMNS)
            self.db.execute(f"CREATE TABLE IF NOT EXISTS results ({cols}, PRIMARY KEY (study_id, model))")
            have = {r[1] for r in self.db.execute("PRAGMA table_info(results)")}
            for name, kind, _ in COLUMNS:  # a journal of an earlier release: new columns start empty
                if name not in have:
                    self.db.execute(f"ALTER TABLE results ADD COLUMN {name} {kind.replace(' NOT NULL', '')}")
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.DatabaseError as exc:
            raise SecondreadError(self.path, f"the batch journal cannot be opened ({exc})") from None

    def statuses(self) -> dict[tuple[str, str], str]:
        """(study_id, model) -> status, for deciding what is left to do."""
        return {(s, m): st for s, m, st in self.db.execute("SELECT study_id, model, status FROM results")}

    def record(self, rows: Iterable[dict[str, Any]]) -> None:
        """All rows of one study in one transaction (upsert: a retried study replaces its rows)."""
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        names = [n for n in NAMES if n != "attempts"]
        sql = (f"INSERT INTO results ({', '.join(names)}, attempts) VALUES ({', '.join('?' * len(names))}, 1) "
               f"ON CONFLICT (study_id, model) DO UPDATE SET "
               + ", ".join(f"{n} = excluded.{n}" for n in names if n not in ("study_id", "model"))
               + ", attempts = results.attempts + 1")
        values = []
        for row in rows:
            row = dict(row, finished_at=now)
            values.append(tuple(None if row.get(n) is None else (int(row[n]) if n == "positive" else row[n])
                                for n in names))
        with self.db:  # BEGIN ... COMMIT
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany(sql, values)

    def rows(self) -> list[dict[str, Any]]:
        cur = self.db.execute(f"SELECT {', '.join(NAMES)} FROM results ORDER BY source, study_id, model")
        return [dict(zip(NAMES, r)) for r in cur]

    def close(self) -> None:
        self.db.close()


def arrow_schema():
    import pyarrow as pa

    return pa.schema([(n, getattr(pa, t)()) for n, _, t in COLUMNS])


def export_parquet(journal: Journal, out: Path, name: str = "results.parquet") -> Path:
    """Rebuild ``results.parquet`` from the journal: temp file in the same folder + ``os.replace``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = journal.rows()
    for r in rows:
        if r["positive"] is not None:
            r["positive"] = bool(r["positive"])
    table = pa.Table.from_pylist(rows, schema=arrow_schema())
    target = out / name
    tmp = out / f".{name}.tmp-{os.getpid()}"
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SecondreadError(target, f"cannot write the results ({exc.strerror})") from None
    return target

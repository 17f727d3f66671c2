"""Every MTSamples note through :func:`extract_facts`: no crash, and how fast.

Why: the note reader meets whatever a user pastes; 4,999 real transcriptions of 40 specialties are
a cheap way to find the inputs that break it. A failing note is listed (its id and a one-line
reason), never fatal, so one bad note cannot hide the rest.
"""

from __future__ import annotations

import csv
import sys
import time
from collections import Counter
from pathlib import Path

from secondread.errors import SecondreadError


def read_notes(mtsamples_csv) -> list[tuple[str, str]]:
    """``[(id, transcription)]`` from the MTSamples CSV (id = its unnamed first column)."""
    p = Path(mtsamples_csv)
    if not p.is_file():
        raise SecondreadError(mtsamples_csv, "MTSamples CSV not found" if not p.exists() else "is not a file")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        with p.open(encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header or "transcription" not in header:
                raise SecondreadError(mtsamples_csv, "not an MTSamples CSV: no 'transcription' column")
            col = header.index("transcription")
            notes = []
            for row in reader:
                if len(row) != len(header):
                    raise SecondreadError(mtsamples_csv, f"row {reader.line_num}: wrong number of fields")
                notes.append((row[0], row[col]))
    except UnicodeDecodeError:
        raise SecondreadError(mtsamples_csv, "not a UTF-8 CSV file") from None
    except csv.Error as exc:
        raise SecondreadError(mtsamples_csv, f"malformed CSV ({exc})") from None
    return notes


def robustness(mtsamples_csv, limit: int | None = None, area: str = "chest") -> dict:
    """Run every note (or the first ``limit``) through ``extract_facts`` with ``area``'s rules;
    count facts and failures.

    Empty transcriptions are counted as ``empty`` and skipped (there is nothing to read).
    Returns ``{"notes", "empty", "analysed", "failures": [{"id", "reason"}], "seconds",
    "notes_per_second", "facts", "facts_by_concept" (top 20), "facts_by_flag"}``.
    """
    from secondread.records.notes import build_pipeline, extract_facts

    notes = read_notes(mtsamples_csv)
    if limit is not None:
        notes = notes[:limit]
    build_pipeline(area)  # build time is not note time
    failures, concepts, flags = [], Counter(), Counter()
    empty = analysed = facts = 0
    start = time.perf_counter()
    for note_id, text in notes:
        if not text.strip():
            empty += 1
            continue
        try:
            record = extract_facts(text, area=area, source=f"mtsamples:{note_id}")
        except SecondreadError as exc:
            failures.append({"id": note_id, "reason": exc.problem})
            continue
        except Exception as exc:  # noqa: BLE001 - the point is to list, not crash
            failures.append({"id": note_id, "reason": f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"})
            continue
        analysed += 1
        facts += len(record.facts)
        for f in record.facts:
            concepts[f.concept] += 1
            for flag in ("negated", "uncertain", "historical", "hypothetical", "family"):
                flags[flag] += bool(getattr(f, flag))
    seconds = time.perf_counter() - start
    return {
        "area": area,
        "notes": len(notes),
        "empty": empty,
        "analysed": analysed,
        "failures": failures,
        "seconds": round(seconds, 2),
        "notes_per_second": round(analysed / seconds, 1) if seconds > 0 else None,
        "facts": facts,
        "facts_by_concept": dict(concepts.most_common(20)),
        "facts_by_flag": dict(flags),
    }

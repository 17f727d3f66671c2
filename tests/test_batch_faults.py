"""Faults a batch must survive: kill -9 at random moments, a worker dying mid-study, a full disk,
unreadable files and folders, and two batches on one output folder.

Killed batches run in forked children of this process (the imports and models are already
loaded, so 20+ trials take seconds, not minutes); SIGKILL is the same signal ``kill -9`` sends.
Tests run as root here, where ``chmod 000`` does not stop reads: unreadable inputs are simulated
with a broken symbolic link, a FIFO (which a naive reader would block on forever) and a folder
whose listing raises PermissionError (the walk's listing function is monkeypatched). When not
root, a real ``chmod 000`` file is added.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import secondread.batch.discover as discover_mod  # noqa: E402 (the module, for monkeypatching)
from secondread.batch import run_batch, runner, work
from secondread.errors import SecondreadError

from test_batch import N, rows_of, write_pngs

TRIALS = 24


@pytest.fixture(scope="module")
def inputs(data_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults") / "in"
    write_pngs(data_root, folder)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return folder


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("faults-ref") / "out"
    start = time.perf_counter()
    run_batch(inputs, out, workers=0, progress=False)
    return out, time.perf_counter() - start


def _fork_batch(inputs: Path, out: Path, workers: int, **kw) -> int:
    pid = os.fork()
    if pid == 0:  # the child: run the batch, never return into pytest
        code = 1
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
            runner._after_fork({})  # one torch thread: the parent's OpenMP pool is not in the child
            code = run_batch(inputs, out, workers=workers, progress=False, **kw).exit_code
        finally:
            os._exit(code)
    return pid


def _journal_count(out: Path) -> int:
    import sqlite3

    if not (out / "journal.sqlite").exists():
        return 0
    try:
        with sqlite3.connect(out / "journal.sqlite") as db:
            return db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.OperationalError:  # created, table not yet there
        return 0


def test_kill_9_at_random_points_loses_and_duplicates_nothing(inputs, reference, tmp_path, monkeypatch):
    ref_out, _ = reference
    out = tmp_path / "out"
    rng = random.Random(9)
    # 10 ms more per study (inherited by the forked batches) spreads the kills over the batch
    monkeypatch.setattr(work, "BEFORE_STUDY", lambda study: time.sleep(0.01))
    # how long a forked batch takes from fork to end with each back end: the kills land within it
    lifetime = {}
    for workers in (0, 2):
        start = time.perf_counter()
        _, status = os.waitpid(_fork_batch(inputs, tmp_path / f"timing{workers}", workers), 0)
        lifetime[workers] = time.perf_counter() - start
        assert os.waitstatus_to_exitcode(status) == 1  # 1: the corrupt file failed, the rest done
    progress = [0]
    for trial in range(TRIALS):
        workers = (0, 2)[trial % 2]
        left = (N + 1 - progress[-1]) / (N + 1)  # aim within what is left of the batch
        pid = _fork_batch(inputs, out, workers)
        time.sleep(rng.uniform(0.0, 0.7 * lifetime[workers] * max(left, 0.2)))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        progress.append(_journal_count(out))
        if (out / "results.parquet").exists():  # never a truncated file, even when killed while writing it
            pq.read_table(out / "results.parquet")
        time.sleep(0.05)  # let orphaned workers see the closed pipe and leave
    monkeypatch.setattr(work, "BEFORE_STUDY", None)
    summary = run_batch(inputs, out, workers=2, progress=False)
    ref = {r["study_id"]: r for r in rows_of(ref_out)}
    rows = rows_of(out)
    assert len(rows) == len(ref) == N + 1  # one row each: no duplicates, nothing lost
    by_id = {r["study_id"]: r for r in rows}
    assert by_id.keys() == ref.keys()
    for sid, r in by_id.items():
        assert (r["status"], r["probability"], r["decision"], r["error"]) == \
               (ref[sid]["status"], ref[sid]["probability"], ref[sid]["decision"], ref[sid]["error"])
        if r["status"] == "done":
            report = json.loads((out / r["report"] / "report.json").read_text())
            assert report["findings"][0]["probability"] == pytest.approx(r["probability"], abs=1e-4)  # rounded in the report
            assert sorted(p.name for p in (out / r["report"]).iterdir()) == \
                   sorted(p.name for p in (ref_out / ref[sid]["report"]).iterdir())
    # no half-written folder is left anywhere, and no study has a folder twice
    assert not (out / ".staging").exists() or not any((out / ".staging").iterdir())
    assert sorted(p.name for p in (out / "studies").iterdir()) == sorted(r["study_id"] for r in rows if r["status"] == "done")
    assert summary.analysed + summary.already == N + 1
    # some kills did land mid-batch (the others hit start-up, the final parquet rebuild, or a
    # run with nothing left to do: all moments a real kill can hit)
    assert len({p for p in progress if 0 < p < N + 1}) >= 2, (progress, lifetime)


def test_a_worker_that_dies_mid_study_costs_that_study_only(inputs, tmp_path, monkeypatch):
    def die_on_five(study):
        if study.source == "005.png":
            os._exit(7)

    monkeypatch.setattr(work, "BEFORE_STUDY", die_on_five)
    out = tmp_path / "out"
    summary = run_batch(inputs, out, workers=2, progress=False)
    rows = {r["source"]: r for r in rows_of(out)}
    assert len(rows) == N + 1
    assert rows["005.png"]["status"] == "failed"
    assert rows["005.png"]["error"] == "the worker process died while analysing this study (exit code 7)"
    assert sum(r["status"] == "done" for r in rows.values()) == N - 1
    assert summary.rows == {"done": N - 1, "failed": 2}
    monkeypatch.setattr(work, "BEFORE_STUDY", None)
    retry = run_batch(inputs, out, workers=2, retry_failed=True, progress=False)
    assert retry.analysed == 2 and {r["source"]: r for r in rows_of(out)}["005.png"]["status"] == "done"


def test_disk_full_while_writing_a_report(inputs, reference, tmp_path, monkeypatch):
    """The disk fills up while a worker writes one study's report (after its first picture): that
    study fails with a one-line reason, nothing half-written stays, the others are done."""
    out = tmp_path / "out"
    victim = next(r for r in rows_of(reference[0]) if r["positive"])  # has image, heatmap, overlay
    real_save = work.save_png

    def full_disk(path, array):
        if victim["study_id"] in str(path) and Path(path).name == "heatmap.png":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(path, array)

    monkeypatch.setattr(work, "save_png", full_disk)  # inherited by the forked workers
    run_batch(inputs, out, workers=2, progress=False)
    rows = {r["study_id"]: r for r in rows_of(out)}
    assert rows[victim["study_id"]]["status"] == "failed"
    assert rows[victim["study_id"]]["error"] == "cannot write the report (No space left on device)"
    assert rows[victim["study_id"]]["report"] is None
    assert not (out / "studies" / victim["study_id"]).exists() or not any((out / "studies" / victim["study_id"]).iterdir())
    assert not (out / ".staging").exists() or not any((out / ".staging").iterdir())  # nothing half-written
    assert sum(r["status"] == "done" for r in rows.values()) == N - 1
    # Ray's path: the driver writes the files it receives; a full disk there is handled the same way
    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(work, "_write_file", full)
    with pytest.raises(SecondreadError, match="No space left on device"):
        work.place_files(tmp_path / "ray-out", "abc", "pneumonia", {"report.json": b"{}"})
    assert not any((tmp_path / "ray-out" / ".staging").iterdir())


def test_unreadable_files_and_folders(inputs, tmp_path, monkeypatch):
    inp = tmp_path / "in"
    inp.mkdir()
    for name in ("000.png", "001.png"):
        (inp / name).write_bytes((inputs / name).read_bytes())
    (inp / "gone.png").symlink_to(tmp_path / "nowhere.png")  # a broken link
    os.mkfifo(inp / "pipe.png")  # opening it would block forever
    (inp / "locked").mkdir()
    (inp / "locked" / "002.png").write_bytes((inputs / "002.png").read_bytes())
    if os.geteuid() != 0:
        (inp / "secret.png").write_bytes((inputs / "003.png").read_bytes())
        (inp / "secret.png").chmod(0)
    real_list = discover_mod._list_dir

    def no_permission(folder):
        if Path(folder).name == "locked":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(folder))
        return real_list(folder)

    monkeypatch.setattr(discover_mod, "_list_dir", no_permission)
    summary = run_batch(inp, tmp_path / "out", workers=2, progress=False)
    rows = {r["source"]: r for r in rows_of(tmp_path / "out")}
    assert rows["000.png"]["status"] == rows["001.png"]["status"] == "done"
    assert rows["gone.png"]["error"] == "file not found (or a broken link)"
    assert rows["pipe.png"]["error"] == "not a regular file (a FIFO, socket or device)"
    assert rows["locked"]["status"] == "failed" and rows["locked"]["error"] == "cannot list the folder (Permission denied)"
    if os.geteuid() != 0:
        assert rows["secret.png"]["status"] == "failed"
    assert summary.exit_code == 1 and all("\n" not in (r["error"] or "") for r in rows.values())


def test_a_second_batch_on_the_same_folder_is_refused(inputs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(work, "BEFORE_STUDY", lambda study: time.sleep(0.2))  # keep the first one busy
    pid = _fork_batch(inputs, out, workers=0)
    try:
        deadline = time.monotonic() + 60
        while _journal_count(out) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _journal_count(out) > 0, "the first batch did not start"
        with pytest.raises(SecondreadError, match="another batch is already running on this output folder") as exc:
            run_batch(inputs, out, workers=0, progress=False)
        assert "\n" not in str(exc.value)
    finally:
        os.kill(pid, signal.SIGKILL)  # kill -9: the kernel releases its lock; no stale lock remains
        os.waitpid(pid, 0)
    monkeypatch.setattr(work, "BEFORE_STUDY", None)
    summary = run_batch(inputs, out, workers=0, progress=False)
    assert summary.analysed + summary.already == N + 1 and len(rows_of(out)) == N + 1

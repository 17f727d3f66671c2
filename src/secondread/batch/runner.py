"""The batch runner: studies in, report folders + journal + results.parquet out, exactly once.

Why this shape (measured with py-spy on PneumoniaMNIST PNGs before choosing it): per study, time
goes to the network (inference ~1 ms, Grad-CAM ~8 ms for a positive), rendering the report (PNGs,
HTML) and reading the file; batching inference across studies would save well under 1 ms of a
study's ~15-30 ms, while running whole studies side by side uses every core. So the local back end
is a pool of worker processes that each hold the models once (forked from the driver after the
bundles are loaded) and analyse whole studies with one thread each, renaming each report folder
into place; the driver only hands out studies and writes the journal, one transaction per study
after its folder is in place (see :mod:`secondread.batch.journal`). A first version had the
driver write every report folder: with two workers it became the bottleneck (2 workers ran at
0.66x of 1 in benchmarks/batch.py), so workers write their own, and only Ray sends files back. ``workers=0`` analyses in
the driver itself (the single-process baseline of ``benchmarks/batch.py``).

A worker that dies mid-study (a decoder crash, the OOM killer) costs that study only: it is
recorded as failed with the reason, a new worker takes its place, and the studies queued behind
it are sent again.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import SecondreadError
from . import work
from .discover import Study, discover
from .journal import BatchLock, Journal, export_parquet

STUDIES_DIR, STAGING_DIR = work.STUDIES_DIR, work.STAGING_DIR
PREFETCH = 2  # studies queued per worker, so a worker never waits for the driver


@dataclass
class Summary:
    """What a batch did. ``failed``/``skipped`` are ``(study_id, source, reason)`` per study×model."""

    out: Path
    results: Path | None
    studies: int = 0
    rows: Counter = field(default_factory=Counter)  # status -> rows (study×model) among this INPUT's studies
    analysed: int = 0  # studies analysed by this run
    already: int = 0  # studies found complete in the journal
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    ignored: int = 0
    seconds: float = 0.0
    backend: str = "local"
    workers: int = 1
    stage_seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def studies_per_second(self) -> float:
        return self.analysed / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """1 when any study failed (the CLI's exit code), else 0."""
        return 1 if self.failed else 0


# --- the local back ends ------------------------------------------------------------------------

def _crashed(study: Study, bundles: dict, reason: str) -> list[dict[str, Any]]:
    return [{"row": work._row(study, b, "failed", error=reason), "files": None} for b in bundles.values()]


def run_in_process(studies: Sequence[Study], bundles: dict, scratch: Path, out: Path) -> Iterator[tuple[Study, list]]:
    """Analyse in the driver, with one torch thread like a pool worker: on these small networks,
    intra-op threads cost more in synchronisation than they gain (Grad-CAM ran >10x slower with two
    threads on a busy 2-core machine)."""
    from ..models.nets import torch_threads

    with torch_threads(1):
        for study in studies:
            yield study, work.analyze_study(study, bundles, scratch, out)


def _worker_main(conn, bundles: dict, scratch: str, out: str, close_fds: Sequence[int]) -> None:
    """A pool worker: analyse the studies the driver sends, one at a time, until told to stop or
    until the driver is gone (EOF). Leaves with os._exit: the driver's inherited state (journal
    connection, lock) must not be finalised here."""
    for fd in close_fds:  # the driver's lock: a worker outliving a killed driver must not hold it
        try:
            os.close(fd)
        except OSError:
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    work.DRIVER_PID = os.getppid()
    _after_fork(bundles)
    code = 0
    try:
        while True:
            try:
                study = conn.recv()
            except (EOFError, OSError):
                break
            if study is None:
                break
            conn.send(work.analyze_study(study, bundles, scratch, out))
    except (BrokenPipeError, OSError):
        pass
    except BaseException:  # noqa: BLE001
        code = 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        os._exit(code)


def _after_fork(bundles: dict) -> None:
    """Make a forked process safe to run the models it inherited.

    Thread pools do not survive ``fork``: the child has only the forking thread. With one torch
    thread, ATen runs its loops inline instead of entering an OpenMP region of the parent's pool
    (GNU OpenMP hangs there after a fork). The processes are the parallelism.
    """
    import torch

    torch.set_num_threads(1)


class _Worker:
    def __init__(self, ctx, bundles: dict, scratch_root: Path, out: Path, close_fds: Sequence[int]):
        self.conn, child = ctx.Pipe()
        scratch = tempfile.mkdtemp(prefix="worker-", dir=scratch_root)
        # The child must not keep the driver's ends of any pipe (its own or its siblings'): when the
        # driver dies, the worker's recv() then sees EOF and the worker leaves instead of lingering.
        fds = (*close_fds, self.conn.fileno())
        self.proc = ctx.Process(target=_worker_main, args=(child, bundles, scratch, os.fspath(out), fds), daemon=True)
        self.proc.start()
        child.close()
        self.inflight: deque[Study] = deque()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()

    def results(self) -> Iterator[tuple[Study, list]]:
        """What the worker has sent so far; sets ``eof`` when its end of the pipe is closed."""
        while self.inflight and self.conn.poll():
            try:
                outcome = self.conn.recv()
            except (EOFError, OSError):
                self.eof = True
                return
            yield self.inflight.popleft(), outcome

    eof = False


def run_pool(studies: Sequence[Study], bundles: dict, scratch: Path, out: Path, workers: int,
             close_fds: Sequence[int] = ()) -> Iterator[tuple[Study, list]]:
    """Analyse ``studies`` in ``workers`` forked processes; yield each study's outcomes as it ends."""
    ctx = mp.get_context("fork")  # the bundles are loaded once in the driver and shared copy-on-write
    pending = deque(studies)
    pool: list[_Worker] = []

    def start() -> _Worker:
        return _Worker(ctx, bundles, scratch, out, (*close_fds, *(w.conn.fileno() for w in pool if not w.conn.closed)))

    for _ in range(workers):
        pool.append(start())
    try:
        while pending or any(w.inflight for w in pool):
            for w in pool:
                while pending and len(w.inflight) < PREFETCH:
                    study = pending.popleft()
                    try:
                        w.conn.send(study)
                    except (BrokenPipeError, OSError):
                        pending.appendleft(study)
                        break
                    w.inflight.append(study)
            wait([w.conn for w in pool] + [w.proc.sentinel for w in pool])
            for i, w in enumerate(pool):
                yield from w.results()
                if not (w.eof or not w.proc.is_alive()):
                    continue
                w.proc.join()
                yield from w.results()  # anything it sent just before it died
                if w.inflight:
                    study = w.inflight.popleft()  # the one it was analysing when it died
                    yield study, _crashed(study, bundles, f"the worker process died while analysing this "
                                                          f"study (exit code {w.proc.exitcode})")
                    pending.extendleft(reversed(w.inflight))  # queued behind it: sent again
                    w.inflight.clear()
                w.conn.close()
                pool[i] = start()
    finally:
        for w in pool:
            w.stop()


# --- the batch ----------------------------------------------------------------------------------

def _todo(studies: list[Study], models: Sequence[str], statuses: dict, retry_failed: bool) -> tuple[list[Study], int]:
    todo, already = [], 0
    for s in studies:
        states = [statuses.get((s.study_id, m)) for m in models]
        if all(st in ("done", "skipped") or (st == "failed" and not retry_failed) for st in states):
            already += 1
        else:
            todo.append(s)
    return todo, already


def _load_bundles(models: Sequence[str]) -> dict[str, Any]:
    """The bundles, run with PyTorch in every back end.

    Not ONNX Runtime, although it is installed: its sessions and thread pools are not fork-safe
    (creating a session in a forked worker hung in our tests), and on these networks it saves
    ~0.5 ms of a study's ~20 ms (py-spy and timing, benchmarks/batch.py). One back end everywhere
    also means a batch resumed with another ``--workers``/``--ray`` gives bit-identical numbers.
    """
    from ..models.bundle import load_bundle

    from .work import AUTO

    bundles = {}
    for name in models:
        bundle = AUTO if name == "auto" else load_bundle(name, backend="torch")
        bundles[bundle.name] = bundle
    return bundles


def _clean_staging(out: Path) -> None:
    """Leftovers of a killed run: half-written report folders that were never renamed into place."""
    shutil.rmtree(out / STAGING_DIR, ignore_errors=True)


def run_batch(input: str | os.PathLike, out: str | os.PathLike, models: Sequence[str] = ("pneumonia",),
              workers: int = 1, retry_failed: bool = False, ray_address: str | None = None,
              progress: bool = True, llm=None) -> Summary:
    """Analyse every study of ``input`` into ``out``, exactly once across interrupted runs.

    Parameters
    ----------
    input : folder, ``.csv`` manifest (``path[,notes][,fhir]``) or one file
        See :mod:`secondread.batch.discover` for what becomes a study.
    out : folder
        Gets ``studies/<study_id>/<model>/`` report folders, ``journal.sqlite`` and
        ``results.parquet`` (one row per study×model).
    models : bundle names or folders
    workers : int
        Worker processes (0 = analyse in this process). With Ray, the number of actors.
    retry_failed : bool
        Analyse again the studies the journal records as failed (done and skipped ones stay).
    ray_address : None, ``"local"`` or a Ray address
        Run on Ray (``"local"`` starts a local Ray instance) instead of the local pool.
    progress : bool
        A tqdm bar (studies/s, ETA) on stderr.
    llm : records.llm.LLMConfig, optional
        A local OpenAI-compatible server for the summaries (guarded as in ``analyze``); None: the
        deterministic summary.

    Raises
    ------
    SecondreadError
        Only for what stops the whole batch: no such input, an unknown model, another batch
        holding ``out``. A bad study never raises; it is a ``failed`` row.
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SecondreadError(out, f"cannot create the output folder ({exc.strerror})") from None
    lock = BatchLock(out)
    try:
        work.LLM = llm  # before any worker starts: forked workers inherit it
        return _run_locked(input, out, list(models), workers, retry_failed, ray_address, progress, lock)
    finally:
        lock.release()


def _run_locked(input, out: Path, models: list[str], workers: int, retry_failed: bool,
                ray_address: str | None, progress: bool, lock: BatchLock) -> Summary:
    found = discover(input)
    bundles = _load_bundles(models)
    names = list(bundles)
    _clean_staging(out)
    journal = Journal(out)
    summary = Summary(out=out, results=None, studies=len(found.studies), ignored=found.ignored,
                      backend="ray" if ray_address else ("in-process" if workers == 0 else "local"),
                      workers=workers, warnings=list(found.warnings))
    try:
        todo, summary.already = _todo(found.studies, names, journal.statuses(), retry_failed)
        (out / STAGING_DIR).mkdir(exist_ok=True)  # scratch inside: a killed run's is cleaned by the next
        scratch = Path(tempfile.mkdtemp(prefix="scratch-", dir=out / STAGING_DIR))
        bar = _progress(len(todo), progress)
        stages: Counter = Counter()
        failed_now = 0
        results = None
        start = time.perf_counter()
        try:
            if ray_address:
                from .ray_backend import run_ray

                results = run_ray(todo, models, bundles, ray_address, max(1, workers), work.LLM)
            elif workers == 0:
                results = run_in_process(todo, bundles, scratch, out)
            else:
                results = run_pool(todo, bundles, scratch, out, workers, close_fds=(lock.fd,))
            for study, outcomes in results:
                _commit(out, journal, study, outcomes, stages)
                summary.analysed += 1
                failed_now += any(o["row"]["status"] == "failed" for o in outcomes)
                if bar is not None:
                    bar.set_postfix(failed=failed_now, refresh=False)
                    bar.update(1)
        finally:
            if results is not None:
                results.close()  # stops the workers / Ray actors now, also on Ctrl-C
            summary.seconds = time.perf_counter() - start
            if bar is not None:
                bar.close()
            shutil.rmtree(scratch, ignore_errors=True)
            _clean_staging(out)  # what a worker that died mid-write left
            summary.results = export_parquet(journal, out)
        summary.stage_seconds = dict(stages)
        _tally(summary, found.studies, names, journal)
    finally:
        journal.close()
    return summary


def _commit(out: Path, journal: Journal, study: Study, outcomes: list, stages: Counter) -> None:
    """Place the report folders that came as bytes (Ray), then record the study's rows in one
    transaction: always after its report folders are in place."""
    rows = []
    for outcome in outcomes:
        row = dict(outcome["row"])
        if row["status"] == "done" and outcome.get("files"):
            t = time.perf_counter()
            try:
                row["report"] = work.place_files(out, study.study_id, row["model"], outcome["files"])
            except SecondreadError as exc:
                row.update(status="failed", error=exc.problem, probability=None, decision=None,
                           positive=None, region=None)
            row["t_write"] = time.perf_counter() - t
        stage_times = [row.get(f"t_{s}") or 0.0 for s in work.STAGES]
        row["t_total"] = sum(stage_times)
        for s, v in zip(work.STAGES, stage_times):
            stages[s] += v
        rows.append(row)
    journal.record(rows)


def _progress(total: int, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="study", file=sys.stderr, dynamic_ncols=True, smoothing=0.1,
                desc="secondread batch")


def _tally(summary: Summary, studies: list[Study], models: list[str], journal: Journal) -> None:
    wanted = {(s.study_id, m) for s in studies for m in models}
    for row in journal.rows():
        if (row["study_id"], row["model"]) not in wanted:
            continue
        summary.rows[row["status"]] += 1
        entry = (row["study_id"], row["source"], f"{row['model']}: {row['error']}")
        if row["status"] == "failed":
            summary.failed.append(entry)
        elif row["status"] == "skipped":
            summary.skipped.append(entry)


def format_summary(summary: Summary, max_listed: int = 20) -> str:
    """The table printed at the end: counts, speed, time per stage, failures with their reasons
    (sources are the user's own relative paths; reasons never hold header values), skips grouped by
    reason."""
    s = summary
    lines = [f"secondread batch: {s.studies} studies in the input ({s.ignored} other files ignored); "
             f"{s.analysed} analysed now, {s.already} already in the journal",
             f"  {'status':<9}{'rows':>7}   (one row per study x model)"]
    for status in ("done", "failed", "skipped"):
        lines.append(f"  {status:<9}{s.rows.get(status, 0):>7}")
    if s.analysed:
        lines.append(f"  speed: {s.studies_per_second:.1f} studies/s over {s.seconds:.1f} s "
                     f"({s.backend}, {s.workers} worker{'s' if s.workers != 1 else ''})")
        total = sum(s.stage_seconds.values()) or 1.0
        lines.append("  time per stage (summed over workers): " + ", ".join(
            f"{k} {v:.1f} s ({v / total:.0%})" for k, v in s.stage_seconds.items() if v > 0))
    if s.failed:
        lines.append(f"  failed ({len(s.failed)}):")
        lines += [f"    {sid}  {src}: {why}" for sid, src, why in s.failed[:max_listed]]
        if len(s.failed) > max_listed:
            lines.append(f"    ... and {len(s.failed) - max_listed} more (see results.parquet)")
    if s.skipped:
        lines.append(f"  skipped ({len(s.skipped)}):")
        for why, n in Counter(why for _, _, why in s.skipped).most_common():
            lines.append(f"    {n:>5} x {why}")
    lines += [f"  note: {w}" for w in s.warnings]
    lines.append(f"  results: {s.results}" if s.results else "  results: (not written)")
    return "\n".join(lines)

"""What a worker does with one study: read it once, run each model, render its report files.

Why: the same function runs in the driver (``workers=0``), in a reader/analysis process of the
local pool and in a Ray actor, so every back end produces the same rows and the same reports. It
returns the report *files as bytes* instead of writing them into the output folder: the driver is
the only writer of the output folder and the journal, which is what makes a batch exactly-once
(and lets Ray workers on other machines run without a shared output disk).

The analysis is :func:`secondread.analyze.compose`, the one ``analyze`` runs, so a batch report is
the report ``analyze`` writes (a test checks it); the stages are timed around it: ``load``,
``record``, ``infer`` (the model's forward pass), ``explain`` (the rest of the analysis: Grad-CAM,
nodule search, report and DICOM objects built), ``report`` (rendering) and ``write``.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import stat
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import analyze
from ..errors import SecondreadError
from ..explain import save_png
from ..report.build import render_html, to_json
from .discover import Study

STAGES = ("load", "record", "infer", "explain", "report", "write")

# The optional language model for the summaries (``records.llm.LLMConfig``), set by the runner
# before its workers start (forked pool workers inherit it; a Ray actor sets it itself). None: the
# deterministic summary.
LLM = None

# Test seam: called with each study in the worker before it is analysed (the fault tests make it
# call os._exit to kill a worker mid-study). None in normal use.
BEFORE_STUDY: Callable[[Study], None] | None = None


class _Timed:
    """A bundle whose ``predict_proba`` time is measured: it separates inference from the rest of
    :func:`secondread.analyze.compose` without changing it."""

    def __init__(self, bundle):
        self._bundle, self.seconds = bundle, 0.0

    def predict_proba(self, images):
        t = time.perf_counter()
        try:
            return self._bundle.predict_proba(images)
        finally:
            self.seconds += time.perf_counter() - t

    def __getattr__(self, name):
        return getattr(self._bundle, name)


@functools.lru_cache(maxsize=4)
def _npz_split(path: str, split: str) -> np.ndarray:
    from ..io.medmnist import load_split

    return load_split(path, split)[0]


def load_study(study: Study) -> "analyze.LoadedStudy":
    """The study read once (the Image, plus the DICOM headers its SR/SEG/SC reference); every
    problem is a SecondreadError (a FIFO or broken link is named as such before anything tries to
    open it)."""
    if study.error:
        raise SecondreadError(study.source, study.error)
    if study.kind == "series":
        return analyze.load_study(study.path, series_uid=study.series_uid)
    try:
        mode = os.stat(study.path).st_mode
    except FileNotFoundError:
        raise SecondreadError(study.path, "file not found (or a broken link)") from None
    except OSError as exc:
        raise SecondreadError(study.path, f"cannot read the file ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise SecondreadError(study.path, "not a regular file (a FIFO, socket or device)")
    if study.kind == "npz":
        from ..image import Image
        from ..io.medmnist import INFO, _dataset_name

        split, index = study.member.split("/")
        try:
            pixels = _npz_split(study.path, split)[int(index)]
        except SecondreadError:
            raise
        except Exception as exc:
            raise SecondreadError(study.source, f"cannot read the image ({type(exc).__name__})") from None
        info = INFO.get(_dataset_name(Path(study.path)) or "", {})
        return analyze.LoadedStudy(Image(pixels=np.asarray(pixels, dtype=np.float32), modality=info.get("modality", "OT"),
                                         spacing=info.get("spacing"), source=study.source.replace("/", "-")))
    return analyze.load_study(study.path)


class _Auto:
    """``--model auto``: the model is chosen per study (:func:`secondread.models.choose.choose_bundle`);
    the row's ``model`` stays ``auto`` (the journal's key) and ``model_used`` says which spoke."""

    name = "auto"
    sha256 = None
    finding = None


AUTO = _Auto()


def _auto_choice(image, bundle):
    """For ``auto``, the model chosen for this image, made once: the skip check and
    :func:`secondread.analyze.compose` share it. None for a named model."""
    if not isinstance(bundle, _Auto):
        return None
    from ..models.choose import choose_bundle

    return choose_bundle(image)


def _skip_reason(image, bundle, choice=None) -> str | None:
    """Why this model has nothing to say about this image (a stated skip, not a failure);
    ``choice`` is :func:`_auto_choice`'s for ``auto``."""
    if isinstance(bundle, _Auto):
        no_reader = choice.name is None and not (image.modality == "CT" and image.pixels.ndim == 3)
        return choice.reason if no_reader else None
    model_dims = len(bundle.config.get("input_shape", [])) or 2
    if image.pixels.ndim == 3 and model_dims == 2:
        return f"no model for {image.modality or 'image'} volumes yet ({bundle.name} reads 2D images)"
    if image.pixels.ndim == 2 and model_dims == 3:
        return f"{bundle.name} reads volumes; this is a 2D image"
    return None


def region_summary(region: dict | None) -> str | None:
    """One short line for results.parquet: the box, its area and where the map peaks."""
    if not region:
        return None
    text = (f"x {region['x_min']}-{region['x_max']}, y {region['y_min']}-{region['y_max']}, "
            f"{region['area_px']} px")
    if "area_mm2" in region:
        text += f" ({region['area_mm2']} mm²)"
    return text


def _row(study: Study, bundle, status: str, **values) -> dict[str, Any]:
    row = {"study_id": study.study_id, "source": study.source, "kind": study.kind,
           "model": getattr(bundle, "name", str(bundle)), "model_sha256": getattr(bundle, "sha256", None),
           "status": status, "probability": None, "decision": None, "positive": None, "region": None,
           "model_used": None, "error": None, **{f"t_{s}": None for s in STAGES}}
    row.update(values)
    return row


# Set in a pool worker to its driver's pid: a worker orphaned by a killed driver must not place a
# report while the next run may be placing the same study.
DRIVER_PID: int | None = None

STUDIES_DIR = "studies"
STAGING_DIR = ".staging"


def _write_file(path: Path, data: bytes) -> None:
    """One report file from bytes (a seam the fault tests use to simulate a full disk)."""
    with open(path, "wb") as fh:
        fh.write(data)


def place(out: Path, study_id: str, model: str, fill: Callable[[Path], Any]) -> str:
    """Fill a staging folder beside the report's place (``fill(folder)``), then rename it into place.

    ``studies/<study_id>/<model>/`` appears whole or not at all; a leftover of a killed run is
    swapped out and deleted. Returns the folder relative to ``out``. An OSError (a full disk)
    becomes a SecondreadError and leaves nothing behind.
    """
    final = out / STUDIES_DIR / study_id / model
    staging_root = out / STAGING_DIR
    tmp = staging_root / f"{study_id}-{model}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        fill(tmp)
        if DRIVER_PID is not None and os.getppid() != DRIVER_PID:
            raise SecondreadError(final, "the batch driver is gone; not placing the report")
        final.parent.mkdir(parents=True, exist_ok=True)
        _swap_in(tmp, final, staging_root)
    except (OSError, SecondreadError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        problem = exc.problem if isinstance(exc, SecondreadError) else f"cannot write the report ({exc.strerror or exc})"
        raise SecondreadError(final.relative_to(out), problem) from None
    return final.relative_to(out).as_posix()


def _swap_in(tmp: Path, final: Path, staging_root: Path) -> None:
    """Rename ``tmp`` to ``final``, moving an existing ``final`` aside first. Retried when another
    process placed the same study in between (a worker of a killed run finishing its last study):
    every candidate is a complete folder, so whichever lands last is a whole report."""
    for attempt in range(5):
        old = staging_root / f"old-{tmp.name}-{attempt}"
        try:
            final.rename(old)
        except FileNotFoundError:
            pass
        try:
            tmp.rename(final)
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or attempt == 4:
                raise
        finally:
            shutil.rmtree(old, ignore_errors=True)


def place_files(out: Path, study_id: str, model: str, files: dict[str, bytes]) -> str:
    """:func:`place` for report files that arrive as bytes (from a Ray actor)."""
    return place(out, study_id, model, lambda folder: [_write_file(folder / n, d) for n, d in files.items()])


def write_files(folder: Path, report: dict, pictures: dict, datasets: dict | None = None) -> None:
    """The files :func:`secondread.report.write_report` writes, with its renderers, straight into
    ``folder``: it is already a private staging folder that :func:`place` renames into place whole,
    so write_report's own staging (a temporary folder and a rename per file) would only add file
    system calls, the largest share of a small study's time (py-spy). A test checks that both
    write the same files and the same report.json."""
    from ..report import dicom

    for name, array in pictures.items():
        save_png(folder / name, array)
    for name, ds in (datasets or {}).items():
        dicom.save(ds, folder / name)
    (folder / "report.html").write_text(render_html(report), encoding="utf-8")
    (folder / "report.json").write_text(to_json(report) + "\n", encoding="utf-8")


def _render(report: dict, pictures: dict, datasets: dict, scratch: Path) -> dict[str, bytes]:
    """The report folder's files as bytes (written into a private scratch folder)."""
    folder = Path(tempfile.mkdtemp(dir=scratch))
    try:
        write_files(folder, report, pictures, datasets)
        return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _values(result: "analyze.Analysis", bundle) -> dict[str, Any]:
    """The row's outcome columns: the classifier's probability and decision, or for a CT read by
    the nodule search alone, the candidates (no probability: nothing there is calibrated)."""
    report = result.report
    if result.finding is None:
        nodules = report["findings"]
        largest = max((f["diameter_mm"] for f in nodules), default=None)
        region = f"{len(nodules)} nodule candidate(s)" + (f", largest {largest:.1f} mm" if largest else "")
        return {"probability": None, "decision": "review (>= 6 mm)" if report["suggestion"]["suggested"] else "none",
                "positive": bool(report["suggestion"]["suggested"]), "region": region,
                "model_used": report["model"]["name"]}
    spoke = analyze._shipped_bundle(report["model"]["name"]) if isinstance(bundle, _Auto) else bundle
    decision = spoke.decide(result.finding.probability)
    return {"probability": float(result.finding.probability), "decision": decision["operating_point"] or "none",
            "positive": bool(decision["positive"]), "region": region_summary(result.finding.region),
            "model_used": report["model"]["name"]}


def _analyse_one(study: Study, loaded, bundle, record, times: dict, scratch: Path, out: Path | None,
                 choice=None):
    timed = None if isinstance(bundle, _Auto) else _Timed(bundle)
    t = time.perf_counter()
    result = analyze.compose(loaded, timed, record, LLM, choice=choice)
    infer = timed.seconds if timed is not None else 0.0
    times["infer"], times["explain"] = infer, time.perf_counter() - t - infer
    values = _values(result, bundle)
    t = time.perf_counter()
    if out is None:  # Ray: the files travel to the driver, which writes them
        files = _render(result.report, result.pictures, result.datasets, scratch)
        times["report"] = time.perf_counter() - t
        return values, files
    values["report"] = place(out, study.study_id, bundle.name,
                             lambda folder: write_files(folder, result.report, result.pictures, result.datasets))
    times["write"] = time.perf_counter() - t
    return values, None


def _record(study: Study, loaded, bundle, times: dict):
    """The study's record, read with the rules of the model's body area and ages on the study date
    (for ``auto``, :func:`secondread.analyze.compose` reads it once the model is chosen)."""
    from ..records.merge import RecordSource

    source = RecordSource(study.notes, study.fhir)
    if not source or isinstance(bundle, _Auto):
        return source or None
    t = time.perf_counter()
    try:
        return analyze.read_record(source, bundle.finding, loaded)
    finally:
        times["record"] = time.perf_counter() - t


def analyze_study(study: Study, bundles: dict[str, Any], scratch: str | os.PathLike,
                  out: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Analyse one study with every bundle; one outcome per model: ``{"row": ..., "files": ...}``.

    With ``out``, each report folder is written into place under ``out`` (local back ends: the
    rename is atomic, and the driver records the journal entry only after it); without, the
    files come back as bytes for the driver to place (Ray, whose workers may not see ``out``).

    Never raises for a bad study: a SecondreadError (or any other exception, reported by its
    type only, so no header text can leak) becomes a ``failed`` row with a one-line reason.
    """
    if BEFORE_STUDY is not None:
        BEFORE_STUDY(study)
    scratch = Path(scratch)
    times = dict.fromkeys(STAGES, 0.0)
    t = time.perf_counter()
    try:
        loaded = load_study(study)
        image = loaded.image
        image.check_usable()
        times["load"] = time.perf_counter() - t
    except Exception as exc:  # noqa: BLE001 - every failure of one study is that study's, never the batch's
        reason = exc.problem if isinstance(exc, SecondreadError) else f"cannot read the study ({type(exc).__name__})"
        times["load"] = time.perf_counter() - t
        return [{"row": _row(study, b, "failed", error=reason, **{f"t_{k}": v for k, v in times.items()}),
                 "files": None} for b in bundles.values()]
    outcomes = []
    for bundle in bundles.values():
        per = dict(times)
        choice = _auto_choice(image, bundle)
        reason = _skip_reason(image, bundle, choice)
        if reason:
            outcomes.append({"row": _row(study, bundle, "skipped", error=reason,
                                         **{f"t_{k}": v for k, v in per.items()}), "files": None})
            continue
        try:
            record = _record(study, loaded, bundle, per)
            values, files = _analyse_one(study, loaded, bundle, record, per, scratch, None if out is None else Path(out),
                                         choice)
        except Exception as exc:  # noqa: BLE001
            reason = exc.problem if isinstance(exc, SecondreadError) else f"analysis failed ({type(exc).__name__})"
            outcomes.append({"row": _row(study, bundle, "failed", error=reason,
                                         **{f"t_{k}": v for k, v in per.items()}), "files": None})
            continue
        outcomes.append({"row": _row(study, bundle, "done", **values, **{f"t_{k}": v for k, v in per.items()}),
                         "files": files})
    return outcomes

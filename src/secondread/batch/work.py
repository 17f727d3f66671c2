"""What a worker does with one study: read it once, run each model, render its report files.

Why: the same function runs in the driver (``workers=0``), in a reader/analysis process of the
local pool and in a Ray actor, so every back end produces the same rows and the same reports. It
returns the report *files as bytes* instead of writing them into the output folder: the driver is
the only writer of the output folder and the journal, which is what makes a batch exactly-once
(and lets Ray workers on other machines run without a shared output disk).

The steps are those of :func:`secondread.analyze.analyze_image`, composed from its public parts
so that each stage can be timed (``load``, ``record``, ``infer``, ``explain``, ``report``); a test
checks that the report is the one ``analyze_image`` writes.
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

from ..analyze import detect, domain_caveats, image_info, model_info
from ..errors import SecondreadError
from ..explain import display_uint8, overlay
from ..io import load_image
from ..records.llm import summarise
from ..explain import save_png
from ..report import build_report
from ..report.build import render_html, to_json
from ..suggest import suggest
from .discover import Study

STAGES = ("load", "record", "infer", "explain", "report", "write")

# Test seam: called with each study in the worker before it is analysed (the fault tests make it
# call os._exit to kill a worker mid-study). None in normal use.
BEFORE_STUDY: Callable[[Study], None] | None = None


class _Timed:
    """A bundle whose ``predict_proba`` time is measured: it separates inference from Grad-CAM in
    :func:`secondread.analyze.detect` without changing it."""

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


def load_study(study: Study):
    """The study's Image; every problem is a SecondreadError (a FIFO or broken link is named as
    such before anything tries to open it)."""
    if study.error:
        raise SecondreadError(study.source, study.error)
    if study.kind == "series":
        from ..io.series import read_series

        try:
            return read_series(study.path, series_uid=study.series_uid)
        except SecondreadError:
            raise
        except Exception as exc:
            raise SecondreadError(study.path, f"cannot read the series ({type(exc).__name__})") from None
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
        return Image(pixels=np.asarray(pixels, dtype=np.float32), modality=info.get("modality", "OT"),
                     spacing=info.get("spacing"), source=study.source.replace("/", "-"))
    return load_image(study.path)


def _skip_reason(image, bundle) -> str | None:
    """Why this model has nothing to say about this image (a stated skip, not a failure)."""
    model_dims = len(bundle.config.get("input_shape", [])) or 2
    if image.pixels.ndim == 3 and model_dims == 2:
        return f"no model for {image.modality or 'image'} volumes yet ({bundle.name} reads 2D images)"
    if image.pixels.ndim == 2 and model_dims == 3:
        return f"{bundle.name} reads volumes; this is a 2D image"
    if model_dims == 3:
        return f"3D models are not run by the batch yet ({bundle.name})"
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
           "error": None, **{f"t_{s}": None for s in STAGES}}
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


def write_files(folder: Path, report: dict, pictures: dict) -> None:
    """The files :func:`secondread.report.write_report` writes, with its renderers, straight into
    ``folder``: it is already a private staging folder that :func:`place` renames into place whole,
    so write_report's own staging (a temporary folder and a rename per file) would only add file
    system calls, the largest share of a small study's time (py-spy). A test checks that both
    write the same files and the same report.json."""
    for name, array in pictures.items():
        save_png(folder / name, array)
    (folder / "report.html").write_text(render_html(report), encoding="utf-8")
    (folder / "report.json").write_text(to_json(report) + "\n", encoding="utf-8")


def _render(report: dict, pictures: dict, scratch: Path) -> dict[str, bytes]:
    """The report folder's files as bytes (written into a private scratch folder)."""
    folder = Path(tempfile.mkdtemp(dir=scratch))
    try:
        write_files(folder, report, pictures)
        return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _analyse_one(study: Study, image, bundle, record, times: dict, scratch: Path, out: Path | None):
    timed = _Timed(bundle)
    t = time.perf_counter()
    finding, heat = detect(image, timed)
    times["infer"] = timed.seconds
    times["explain"] = time.perf_counter() - t - timed.seconds
    t = time.perf_counter()
    pictures = {"image.png": display_uint8(image.pixels)}
    if heat is not None:
        finding.heatmap, finding.overlay = "heatmap.png", "overlay.png"
        pictures["heatmap.png"] = np.round(heat * 255).astype(np.uint8)
        pictures["overlay.png"] = overlay(image.pixels, heat, finding.region)
    facts = record["facts"] if record else None
    suggestion = suggest(finding, facts, float(bundle.threshold), bundle.metrics, domain_caveats(image, bundle))
    suggestion["summary"] = summarise(record, [finding.to_dict()], None).to_dict()  # deterministic template
    report = build_report(image_info=image_info(image), findings=[finding.to_dict()], record=record,
                          suggestion=suggestion, model=model_info(bundle))
    decision = bundle.decide(finding.probability)
    values = {"probability": float(finding.probability), "decision": decision["operating_point"] or "none",
              "positive": bool(decision["positive"]), "region": region_summary(finding.region)}
    if out is None:  # Ray: the files travel to the driver, which writes them
        files = _render(report, pictures, scratch)
        times["report"] = time.perf_counter() - t
        return values, files
    times["report"] = time.perf_counter() - t
    t = time.perf_counter()
    values["report"] = place(out, study.study_id, bundle.name, lambda folder: write_files(folder, report, pictures))
    times["write"] = time.perf_counter() - t
    return values, None


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
        image = load_study(study)
        image.check_usable()
        times["load"] = time.perf_counter() - t
        record = None
        if study.notes or study.fhir:
            from ..records.merge import load_record

            t = time.perf_counter()
            record = load_record(study.notes, study.fhir)
            times["record"] = time.perf_counter() - t
    except Exception as exc:  # noqa: BLE001 - every failure of one study is that study's, never the batch's
        reason = exc.problem if isinstance(exc, SecondreadError) else f"cannot read the study ({type(exc).__name__})"
        times["load"] = time.perf_counter() - t
        return [{"row": _row(study, b, "failed", error=reason, **{f"t_{k}": v for k, v in times.items()}),
                 "files": None} for b in bundles.values()]
    outcomes = []
    for bundle in bundles.values():
        per = dict(times)
        reason = _skip_reason(image, bundle)
        if reason:
            outcomes.append({"row": _row(study, bundle, "skipped", error=reason,
                                         **{f"t_{k}": v for k, v in per.items()}), "files": None})
            continue
        try:
            values, files = _analyse_one(study, image, bundle, record, per, scratch, None if out is None else Path(out))
        except Exception as exc:  # noqa: BLE001
            reason = exc.problem if isinstance(exc, SecondreadError) else f"analysis failed ({type(exc).__name__})"
            outcomes.append({"row": _row(study, bundle, "failed", error=reason,
                                         **{f"t_{k}": v for k, v in per.items()}), "files": None})
            continue
        outcomes.append({"row": _row(study, bundle, "done", **values, **{f"t_{k}": v for k, v in per.items()}),
                         "files": files})
    return outcomes

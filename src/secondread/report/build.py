"""The report: one JSON document per study, and an HTML page rendered from it.

Why: the JSON is what scripts, the service and PACS exporters read, so it is built once, here, with
fixed top-level keys (``findings``, ``record``, ``suggestion``, ``model``, ``disclaimer``); the
HTML is only a view of it. Files are written to a temporary folder first and moved into place,
``report.json`` last, so a crash never leaves a report that looks complete but is not.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from functools import partial
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape

from .. import DISCLAIMER, __version__
from ..errors import SecondreadError
from ..explain import save_png
from ..finding import format_probability

SCHEMA_VERSION = "1.0"


def build_report(*, image_info: dict[str, Any], findings: list[dict[str, Any]], record: dict[str, Any] | None,
                 suggestion: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    """Assemble the report dict. Every value must already be free of patient identifiers."""
    return {
        "schema_version": SCHEMA_VERSION,
        "generator": {"name": "secondread", "version": __version__},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": image_info,
        "findings": findings,
        "record": record,
        "suggestion": suggestion,
        "model": model,
        "disclaimer": DISCLAIMER,
    }


_ENV = Environment(loader=PackageLoader("secondread.report", "templates"),
                   autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)


_ENV.filters["prob"] = partial(format_probability, digits=3)


def render_html(report: dict[str, Any]) -> str:
    """Render ``report.html`` from the report dict (autoescaped: note text cannot inject markup)."""
    return _ENV.get_template("report.html.j2").render(r=report)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, default=_json_default, allow_nan=False)


def write_report(report: dict[str, Any], out_dir: str | os.PathLike, pictures: dict[str, np.ndarray],
                 datasets: dict[str, Any] | None = None) -> Path:
    """Write pictures (name -> array, saved as PNG), DICOM objects (name -> pydicom Dataset, e.g.
    ``sr.dcm``), ``report.html`` and ``report.json`` into ``out_dir``.

    Everything goes to a temporary folder beside ``out_dir`` first; files are then moved in with
    ``os.replace`` (atomic on one file system), ``report.json`` last. A DICOM object that cannot
    be written is one SecondreadError, and nothing of this report reaches ``out_dir``.
    """
    from . import dicom  # lazy: highdicom only when there are DICOM outputs

    datasets = datasets or {}
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".secondread-", dir=out))
    except OSError as exc:
        raise SecondreadError(out, f"cannot create the output folder ({exc.strerror})") from None
    try:
        for name, array in pictures.items():
            save_png(staging / name, array)
        for name, ds in datasets.items():
            _save_dicom(dicom, ds, staging / name, out)
        (staging / "report.html").write_text(render_html(report), encoding="utf-8")
        (staging / "report.json").write_text(to_json(report) + "\n", encoding="utf-8")
        for name in [*pictures, *datasets, "report.html", "report.json"]:
            os.replace(staging / name, out / name)
        for stale in set(dicom.WHAT) - set(datasets):  # a previous report's objects, not this one's
            (out / stale).unlink(missing_ok=True)
    except OSError as exc:
        raise SecondreadError(out, f"cannot write the report ({exc.strerror})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out / "report.json"


def _save_dicom(dicom, ds, path: Path, out: Path) -> None:
    """One DICOM object into the staging folder; pydicom refusing to encode it is one line naming
    the report folder and the file, with no header value."""
    try:
        dicom.save(ds, path)
    except OSError:
        raise
    except Exception as exc:
        raise SecondreadError(out, f"cannot write {path.name} ({type(exc).__name__})") from None

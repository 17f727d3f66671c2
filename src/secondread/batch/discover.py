"""What a batch analyses: an INPUT (folder, CSV manifest, data set folder or one file) -> studies.

Why: a batch is only resumable if every run finds the same studies under the same names. A study
is named by ``study_id``, a hash of its kind and its path *relative to INPUT* (plus the series UID
for a series): stable across runs and machines, and free of identifiers even when folder names
hold a patient's name. The relative path itself travels only as ``source`` (the user's own path,
shown to the user and kept in results.parquet), never in a report folder's name.

What counts as a study (a folder is walked recursively, in sorted order):

* a raster image (``.png``, ``.jpg``, ...) or a NIfTI file: one study each; ``*_mask.png`` files
  (segmentation ground truth beside their images, as in the LGG set) are not studies;
* DICOM files (by content, any extension) grouped per folder by Series Instance UID: a group of
  single-frame slices at distinct positions is one *series* study (read as a volume); files of one
  UID that do not stack (re-encodings or copies of one image, multi-frame files) are one study each;
* a MedMNIST ``.npz``: one study per image of each split it holds (``name.npz#val/12``);
* anything else (text, CSV, XML, ...) is ignored and counted.

A folder that cannot be listed becomes a study that fails with its reason; the walk goes on.
"""

from __future__ import annotations

import csv
import hashlib
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SecondreadError
from ..io import NIFTI_SUFFIXES, RASTER_SUFFIXES

IGNORED_SUFFIXES = (".csv", ".md", ".txt", ".xml", ".json", ".html", ".py", ".zip", ".gz", ".tsv", ".log")
MANIFEST_COLUMNS = ("path", "notes", "fhir")


@dataclass(frozen=True)
class Study:
    """One unit of work: what to read (``kind`` + ``path`` [+ ``series_uid`` / ``member``]) and
    what to call it (``study_id``, ``source``). ``error`` is set when discovery already knows it
    cannot be read (a folder that cannot be listed)."""

    study_id: str
    source: str
    kind: str  # image | series | nifti | npz | unreadable
    path: str
    series_uid: str | None = None
    member: str | None = None  # npz: "split/index"
    notes: str | None = None
    fhir: str | None = None
    error: str | None = None


@dataclass
class Discovery:
    studies: list[Study] = field(default_factory=list)
    ignored: int = 0  # files that are not images (counted, not studies)
    warnings: list[str] = field(default_factory=list)
    visited: set = field(default_factory=set, repr=False)  # real paths of walked folders (link loops)


def study_id(kind: str, source: str) -> str:
    """16 hex digits of SHA-256 over ``kind`` and the relative source: stable, identifier-free."""
    return hashlib.sha256(f"{kind}\0{source}".encode("utf-8")).hexdigest()[:16]


def _make(kind: str, source: str, path: Path, **kw) -> Study:
    key = source if kind != "series" else f"{source}\0{kw.get('series_uid') or ''}"
    return Study(study_id=study_id(kind if kind != "unreadable" else "folder", key), source=source,
                 kind=kind, path=os.fspath(path), **kw)


def _list_dir(folder: Path) -> list[os.DirEntry]:
    """The folder's entries, sorted by name (a seam the fault tests use to make a folder unreadable)."""
    with os.scandir(folder) as it:
        return sorted(it, key=lambda e: e.name)


def _dicom_header(path: Path):
    """The few header fields grouping needs (never a patient attribute), or None if not DICOM."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[
                "SeriesInstanceUID", "ImagePositionPatient", "NumberOfFrames", "Rows", "Columns"])
    except Exception:
        return None
    if "Rows" not in ds and "SeriesInstanceUID" not in ds:
        return None
    return ds


def _stackable(headers: list) -> bool:
    """Whether files of one series UID are slices of one volume: single-frame, one size, distinct
    positions. Re-encodings of one image share a UID and a position; they are studies one by one."""
    positions, sizes = set(), set()
    for ds in headers:
        try:
            if int(ds.get("NumberOfFrames", 1) or 1) != 1:
                return False
            pos = tuple(round(float(v), 3) for v in ds.ImagePositionPatient)
        except (AttributeError, TypeError, ValueError):
            return False
        positions.add(pos)
        sizes.add((ds.get("Rows"), ds.get("Columns")))
    return len(headers) > 1 and len(positions) == len(headers) and len(sizes) == 1


def _npz_studies(path: Path, source: str) -> list[Study]:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            splits = [(k[:-len("_images")], len(data[k])) for k in sorted(data.files) if k.endswith("_images")]
    except Exception:
        return [_make("image", source, path)]  # let the reader give the one-line reason
    return [_make("npz", f"{source}#{split}/{i}", path, member=f"{split}/{i}")
            for split, n in splits for i in range(n)]


def _is_regular_or_broken(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return True


def _walk(root: Path, folder: Path, found: Discovery) -> None:
    rel_folder = folder.relative_to(root).as_posix()
    real = os.path.realpath(folder)
    if real in found.visited:  # a symbolic link back up the tree: walked once
        return
    found.visited.add(real)
    try:
        entries = _list_dir(folder)
    except OSError as exc:
        found.studies.append(_make("unreadable", rel_folder or ".", folder,
                                   error=f"cannot list the folder ({exc.strerror or type(exc).__name__})"))
        return
    dicom: dict[str, list[tuple[Path, object]]] = {}
    for entry in entries:
        path = Path(entry.path)
        rel = path.relative_to(root).as_posix()
        name = entry.name.lower()
        if name.startswith("."):
            continue
        try:
            is_dir = entry.is_dir()  # links to folders are followed (archives are often assembled so)
        except OSError:
            is_dir = False
        if is_dir:
            _walk(root, path, found)
            continue
        if name.endswith(NIFTI_SUFFIXES):
            found.studies.append(_make("nifti", rel, path))
        elif name.endswith(RASTER_SUFFIXES):
            if Path(name).stem.endswith("_mask"):
                found.ignored += 1
            else:
                found.studies.append(_make("image", rel, path))
        elif name.endswith(".npz"):
            found.studies.extend(_npz_studies(path, rel))
        elif name.endswith(IGNORED_SUFFIXES):
            found.ignored += 1
        elif not _is_regular_or_broken(entry) or entry.is_symlink() and not path.exists():
            found.studies.append(_make("image", rel, path))  # a FIFO or broken link: fails with its reason
        else:
            ds = _dicom_header(path)
            if ds is None:
                found.ignored += 1
            else:
                dicom.setdefault(str(ds.get("SeriesInstanceUID", "") or ""), []).append((path, ds))
    groups = [(uid, items) for uid, items in sorted(dicom.items())]
    volumes = [uid for uid, items in groups if _stackable([ds for _, ds in items])]
    for uid, items in groups:
        if uid in volumes:
            label = rel_folder or "."
            if len(volumes) > 1:
                label += f"#series{volumes.index(uid) + 1}"
            found.studies.append(_make("series", label, folder, series_uid=uid))
        else:
            found.studies.extend(_make("image", p.relative_to(root).as_posix(), p) for p, _ in items)


def _manifest(csv_path: Path) -> Discovery:
    """``path[,notes][,fhir]`` rows; relative paths are relative to the manifest's folder."""
    found = Discovery()
    base = csv_path.parent
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip().lower() for c in (reader.fieldnames or [])]
            if "path" not in columns:
                raise SecondreadError(csv_path, "a manifest needs a 'path' column (path[,notes][,fhir])")
            rows = [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SecondreadError(csv_path, f"cannot read the manifest ({getattr(exc, 'strerror', None) or type(exc).__name__})") from None
    seen = set()
    for row in rows:
        if not row.get("path"):
            continue
        path = base / row["path"]
        notes = os.fspath(base / row["notes"]) if row.get("notes") else None
        fhir = os.fspath(base / row["fhir"]) if row.get("fhir") else None
        source = row["path"]
        if source in seen:
            continue  # one study once, even if listed twice
        seen.add(source)
        if path.is_dir():
            sub = Discovery()
            _walk(base, path, sub)
            found.studies.extend(Study(**{**s.__dict__, "notes": notes, "fhir": fhir}) for s in sub.studies)
            found.ignored += sub.ignored
        else:
            kind = "nifti" if path.name.lower().endswith(NIFTI_SUFFIXES) else "image"
            found.studies.append(_make(kind, source, path, notes=notes, fhir=fhir))
    return found


def discover(input_path: str | os.PathLike) -> Discovery:
    """The studies of ``input_path`` (a folder, a ``.csv`` manifest, or one file), in a stable order."""
    root = Path(input_path)
    try:
        st = root.stat()
    except OSError:
        raise SecondreadError(root, "input not found") from None
    if stat.S_ISDIR(st.st_mode):
        found = Discovery()
        _walk(root, root, found)
    elif root.suffix.lower() == ".csv":
        found = _manifest(root)
    else:
        found = Discovery()
        kind = "nifti" if root.name.lower().endswith(NIFTI_SUFFIXES) else "image"
        found.studies = _npz_studies(root, root.name) if root.suffix.lower() == ".npz" else [
            _make(kind, root.name, root)]
    # one study once: ids are unique by construction except for a manifest listing a folder twice
    unique: dict[str, Study] = {}
    for s in found.studies:
        unique.setdefault(s.study_id, s)
    found.studies = list(unique.values())
    return found

"""MedMNIST ``.npz`` files: find them, download them (checked), read a split or one image.

Why: the shipped models are trained on MedMNIST (PneumoniaMNIST, BreastMNIST, AdrenalMNIST3D).
The data folder holds copies without the test split; a user without it must get the official file
from the official place with its published checksum, written atomically so that an interrupted or
tampered download never leaves a file that looks valid.

Sources: :data:`INFO` copies ``url``, ``MD5``, labels, ``n_samples`` and licence from
``medmnist/info.py`` of the official package (MedMNIST v3.0.2, Zenodo record 10519652).

Example
-------
>>> images, labels = load_split(locate("pneumoniamnist"), "val")   # doctest: +SKIP
>>> images.shape, labels[:3]                                      # doctest: +SKIP
((524, 28, 28), array([1, 1, 1]))
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets import data_root
from ..errors import SecondreadError
from ..image import Image

_ZENODO = "https://zenodo.org/records/10519652/files/{}.npz?download=1"

INFO: dict[str, dict[str, Any]] = {
    "pneumoniamnist": {
        "url": _ZENODO.format("pneumoniamnist"),
        "md5": "28209eda62fecd6e6a2d98b1501bb15f",
        "labels": {0: "normal", 1: "pneumonia"},
        "n_samples": {"train": 4708, "val": 524, "test": 624},
        "license": "CC BY 4.0",
        "modality": "CR",
        "spacing": None,
    },
    "breastmnist": {
        "url": _ZENODO.format("breastmnist"),
        "md5": "750601b1f35ba3300ea97c75c52ff8f6",
        "labels": {0: "malignant", 1: "normal or benign"},
        "n_samples": {"train": 546, "val": 78, "test": 156},
        "license": "CC BY 4.0",
        "modality": "US",
        "spacing": None,
    },
    "adrenalmnist3d": {
        "url": _ZENODO.format("adrenalmnist3d"),
        "md5": "bbd3c5a5576322bc4cdfea780653b1ce",
        "labels": {0: "normal", 1: "hyperplasia"},
        "n_samples": {"train": 1188, "val": 98, "test": 298},
        "license": "CC BY 4.0",
        "modality": "CT",
        # info.py: "the center-cropped 64mm x 64mm x 64mm volume [resized] into 28x28x28".
        "spacing": (64 / 28,) * 3,
    },
}
"""Official facts per data set (``info.py`` of MedMNIST v3.0.2), plus the modality we attach."""

SPLITS = ("train", "val", "test")
_CHUNK = 1 << 20


def _info(name: str) -> dict[str, Any]:
    if name not in INFO:
        raise SecondreadError(None, f"unknown MedMNIST data set {name!r} (known: {', '.join(INFO)})")
    return INFO[name]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/secondread/medmnist`` (``~/.cache/secondread/medmnist`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "secondread" / "medmnist"


def md5sum(path: str | os.PathLike) -> str:
    """Hex MD5 of a file, read in chunks (the checksum MedMNIST publishes)."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def locate(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Path of ``<data root>/medmnist/<name>.npz`` (data root from :func:`secondread.datasets.data_root`).

    Raises ``SecondreadError`` saying where it looked and how to download the official file.
    """
    info = _info(name)
    path = data_root(data_dir, must_exist=False) / "medmnist" / f"{name}.npz"
    if path.is_file():
        return path
    raise SecondreadError(path, f"{name}.npz not found (looked in {path.parent}); secondread can download it "
                                f"from the official URL {info['url']} with "
                                f"secondread.io.medmnist.download({name!r})")


def download(name: str, cache_dir: str | os.PathLike | None = None, url: str | None = None,
             md5: str | None = None) -> Path:
    """Download ``<name>.npz`` into ``cache_dir`` (default :func:`default_cache_dir`), checking its MD5.

    The file is streamed into a temporary file in the same folder and moved into place with
    ``os.replace`` only after the MD5 matched, so a failed or corrupted download leaves nothing
    behind. A file already in the cache with the right MD5 is reused.

    Parameters
    ----------
    name : str
        A key of :data:`INFO`.
    cache_dir : path, optional
    url : str, optional
        Override of the official URL (a mirror, or a ``file://`` URL in tests).
    md5 : str, optional
        Override of the official MD5 (for a mirror of a different file, or tests).
    """
    info = _info(name)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    url, md5 = url or info["url"], (md5 or info["md5"]).lower()
    target = folder / f"{name}.npz"
    if target.is_file() and md5sum(target) == md5:
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SecondreadError(folder, f"cannot create the cache folder ({exc.strerror or type(exc).__name__})") from None
    tmp_name = None
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{name}.", suffix=".part", delete=False) as tmp:
            tmp_name = tmp.name
            got = _stream(url, tmp)
        if got != md5:
            raise SecondreadError(url, f"download of {name}.npz failed its checksum (MD5 {got}, expected {md5}); "
                                       f"nothing was saved")
        os.replace(tmp_name, target)
        tmp_name = None
        return target
    except SecondreadError:
        raise
    except Exception as exc:  # URLError, HTTPError, TimeoutError, OSError...
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__
        raise SecondreadError(url, f"download of {name}.npz failed ({reason})") from None
    finally:
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)


def _stream(url: str, out) -> str:
    """Copy ``url`` into the open file ``out`` in chunks; return the hex MD5 of what was written."""
    digest = hashlib.md5()
    with urllib.request.urlopen(url, timeout=60) as response:
        for chunk in iter(lambda: response.read(_CHUNK), b""):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def find_or_download(name: str, data_dir: str | os.PathLike | None = None,
                     allow_download: bool = False) -> Path:
    """The data folder's copy if present, else a previously downloaded copy in the cache, else
    (only when ``allow_download``) a fresh verified download; otherwise :func:`locate`'s error."""
    info = _info(name)
    try:
        return locate(name, data_dir)
    except SecondreadError:
        cached = default_cache_dir() / f"{name}.npz"
        if cached.is_file() and md5sum(cached) == info["md5"]:
            return cached
        if allow_download:
            return download(name)
        raise


def load_split(path: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split of a MedMNIST ``.npz``.

    Returns
    -------
    images : numpy.ndarray
        uint8, ``[N, H, W]`` (2D sets) or ``[N, D, H, W]`` (3D sets), as stored.
    labels : numpy.ndarray
        int64 ``[N]`` (the files store ``[N, 1]``).

    Raises
    ------
    SecondreadError
        Missing file, not a readable npz, the split absent (the shared copies hold only train and
        val), or images and labels of different lengths.
    """
    p = Path(path)
    if not p.is_file():
        raise SecondreadError(p, "file not found" if not p.exists() else "is not a file")
    try:
        with np.load(p, allow_pickle=False) as npz:
            keys = set(npz.files)
            available = [s for s in SPLITS if f"{s}_images" in keys and f"{s}_labels" in keys]
            if f"{split}_images" not in keys or f"{split}_labels" not in keys:
                raise SecondreadError(p, f"split {split!r} is not in {p.name} (available: {', '.join(available) or 'none'})")
            images, labels = np.asarray(npz[f"{split}_images"]), np.asarray(npz[f"{split}_labels"])
    except SecondreadError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise SecondreadError(p, f"not a readable MedMNIST .npz file: corrupt or not an npz ({type(exc).__name__})") from None
    labels = labels.reshape(len(labels), -1)
    if labels.shape[1] != 1 or len(labels) != len(images):
        raise SecondreadError(p, f"split {split!r}: {len(images)} images but labels of shape {labels.shape}")
    return images.astype(np.uint8, copy=False), labels[:, 0].astype(np.int64)


def _dataset_name(path: Path) -> str | None:
    """``pneumoniamnist`` from ``.../pneumoniamnist.npz`` (None if the name is not in INFO)."""
    stem = path.stem.lower()
    return stem if stem in INFO else None


def image_from_npz(path: str | os.PathLike, split: str, index: int) -> Image:
    """One image of a split as an :class:`Image`, with ``source`` ``"<path>#<split>[<index>]"``.

    The modality is the data set's (CR for pneumoniamnist, US for breastmnist, CT for
    adrenalmnist3d, OT for other file names); metadata holds ``dataset``, ``split``, ``index`` and
    the ``label`` with its name.
    """
    p = Path(path)
    images, labels = load_split(p, split)
    if not -len(images) <= index < len(images):
        raise SecondreadError(p, f"index {index} is out of range for split {split!r} ({len(images)} images)")
    name = _dataset_name(p)
    info = INFO.get(name, {}) if name else {}
    label = int(labels[index])
    metadata = {"dataset": name, "split": split, "index": int(index), "label": label,
                "label_name": info.get("labels", {}).get(label)}
    return Image(pixels=images[index], modality=info.get("modality", "OT"), spacing=info.get("spacing"),
                 source=f"{p}#{split}[{index}]", metadata=metadata)

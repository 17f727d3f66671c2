"""The common shapes every data set loader yields: :class:`Sample` and :class:`Lesion`.

Why: training, evaluation and the detection/segmentation metrics must not care whether ground truth
came as a mini-MIAS circle, an LGG mask PNG or four LIDC readers' XML outlines. Every loader turns
its own format into these two types, so one evaluation loop serves every data set.

Conventions (all loaders follow them):

- ``Sample.image`` is an :class:`~secondread.image.Image` read **on demand** (and then cached): a
  list of 1261 samples costs a CSV read, not 1261 PNG decodes.
- Pixel coordinates are those of ``Image.pixels``: ``x`` = column, ``y`` = row, origin at the
  top-left pixel centre; for volumes ``z`` = slice index along ``pixels`` axis 0.
- ``Lesion.mask`` is boolean and covers the image (2D: ``[rows, cols]``) or, when ``origin`` is set,
  a box of the volume starting at voxel ``origin`` = ``(slice, row, col)``; :meth:`Lesion.full_mask`
  pastes it into a whole-image array.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import SecondreadError
from ..image import Image
from . import data_root

KINDS = ("circle", "mask", "contour3d", "point", "unlocated")
"""``circle``: centre + radius (mini-MIAS); ``mask``: pixel mask (LGG, BUSI); ``contour3d``: per-slice
outlines with a voxel mask (LIDC); ``point``: a location without extent (LIDC nodules < 3 mm);
``unlocated``: the data says a lesion exists but not where (mini-MIAS mdb059, diffuse calcifications)."""


@dataclass
class Contour:
    """One closed outline on one slice (LIDC ``roi``).

    ``points`` is ``[N, 2]`` float as ``(x=column, y=row)``; ``z_mm`` the slice position along the
    patient axis as the data gives it; ``slice_index`` the slice in ``Image.pixels``; ``inclusion``
    False marks a hole to cut out of the filled region.
    """

    points: np.ndarray
    z_mm: float
    slice_index: int
    inclusion: bool = True
    sop_uid: str = ""


@dataclass
class Lesion:
    """One piece of lesion ground truth, in image pixel coordinates (see the module docstring).

    Attributes
    ----------
    kind : str
        One of :data:`KINDS`.
    label : str
        What the data calls it (``"CIRC"``, ``"tumour"``, ``"nodule"``...).
    center : tuple of float or None
        ``(x, y)`` for 2D, ``(x, y, z)`` for volumes, in pixels (z = slice index).
    radius : float or None
        In pixels (circles).
    mask : numpy.ndarray or None
        Boolean; whole image, or a box starting at ``origin``.
    origin : tuple of int or None
        Voxel ``(slice, row, col)`` of ``mask[0, 0, 0]`` when the mask is a box of a volume.
    contours : list of Contour
        Outlines (LIDC).
    readers : tuple of str
        Who marked it (LIDC reading sessions); empty when the data has one truth.
    attributes : dict
        Data-set specific facts: severity, malignancy, diameter_mm, center_mm...
    """

    kind: str
    label: str = ""
    center: tuple[float, ...] | None = None
    radius: float | None = None
    mask: np.ndarray | None = field(default=None, repr=False)
    origin: tuple[int, ...] | None = None
    contours: list[Contour] = field(default_factory=list, repr=False)
    readers: tuple[str, ...] = ()
    attributes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown lesion kind {self.kind!r} (known: {', '.join(KINDS)})")

    def full_mask(self, shape: tuple[int, ...]) -> np.ndarray:
        """The lesion as a boolean array of the whole image ``shape`` (circles are rasterised)."""
        out = np.zeros(shape, dtype=bool)
        if self.kind == "circle" and self.center is not None and self.radius is not None:
            rows, cols = np.ogrid[:shape[-2], :shape[-1]]
            out[...] = (cols - self.center[0]) ** 2 + (rows - self.center[1]) ** 2 <= self.radius ** 2
        elif self.mask is not None:
            origin = self.origin or (0,) * self.mask.ndim
            box = tuple(slice(o, o + n) for o, n in zip(origin, self.mask.shape))
            out[box] = self.mask
        return out


@dataclass(eq=False)
class Sample:
    """One image of a data set with its label and lesion ground truth.

    ``image`` and ``lesions`` are produced on first access by the loader's functions and cached, so
    listing a data set never decodes its pixels.

    Attributes
    ----------
    dataset, id : str
        ``id`` is unique within the data set (file stem, ``split/index``...).
    patient : str
        The unit that splits must keep together (woman, patient folder, case).
    label : int
        Image-level class; ``label_name`` says what it means.
    source : str
        The file (or ``file#split[index]``) the image comes from.
    attributes : dict
        Data-set specific facts (tissue, slice number, clinical row...).
    """

    dataset: str
    id: str
    patient: str
    label: int
    label_name: str
    source: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    load_image: Callable[[], Image] | None = field(default=None, repr=False)
    load_lesions: Callable[[], list[Lesion]] | None = field(default=None, repr=False)
    _image: Image | None = field(default=None, init=False, repr=False)
    _lesions: list[Lesion] | None = field(default=None, init=False, repr=False)

    @property
    def image(self) -> Image:
        if self._image is None:
            if self.load_image is None:
                raise SecondreadError(self.source or None, "this sample has no image loader")
            self._image = self.load_image()
        return self._image

    @property
    def lesions(self) -> list[Lesion]:
        if self._lesions is None:
            self._lesions = list(self.load_lesions()) if self.load_lesions is not None else []
        return self._lesions

    @property
    def circles(self) -> list[tuple[float, float, float]]:
        """The ``circle`` lesions as ``(x, y, radius)`` in pixels: what a mini-MIAS hit is scored against."""
        return [(les.center[0], les.center[1], les.radius) for les in self.lesions if les.kind == "circle"]


def dataset_dir(relative: str, data_dir: str | os.PathLike | None = None, *, what: str,
                marker: str | None = None) -> Path:
    """``<data root>/<relative>``, or ``data_dir`` itself when it is the data set's own folder (it holds
    the loader's ``marker`` file, whatever the folder is called); else a one-line error saying the
    data set is not available here.

    Why: BUSI and the brain-tumour yes/no set are not in the shared data; asking for them must say
    so plainly rather than fail later on a missing file. And a user's copy of mini-MIAS in
    ``/data/mias-2026`` is still mini-MIAS: its splits go by woman, not by folder name.
    """
    folder = data_root(data_dir, must_exist=False) / relative
    if not folder.is_dir() and data_dir is not None and marker and (Path(data_dir) / marker).is_file():
        return Path(data_dir)
    if not folder.is_dir():
        raise SecondreadError(folder, f"the {what} data set is not available here (folder not found)")
    return folder


def locate_dataset(loader, path: str | os.PathLike) -> tuple[Path, Path]:
    """``(what to give loader.samples, the data set's own folder)`` for ``path`` = the data root, the
    data set's folder under its usual name (``.../mri/lgg``) or a copy of it under any name (holding
    the loader's ``MARKER`` file); a one-line error otherwise. Both are absolute but not resolved, so
    the samples' paths lie under the folder even when the copy is made of symbolic links."""
    path, relative = Path(path), Path(loader.FOLDER)
    if not path.is_dir():
        raise SecondreadError(path, "data folder not found")
    path = Path(os.path.abspath(path))
    if (path / relative).is_dir():
        return path, path / relative
    marker = getattr(loader, "MARKER", None)
    if marker and (path / marker).is_file():
        return path, path
    parts = len(relative.parts)
    if path.parts[-parts:] == relative.parts:
        return path.parents[parts - 1], path
    hint = f" nor a copy of it (no {marker})" if marker else ""
    raise SecondreadError(path, f"not the {loader.NAME} data set folder ({relative}){hint} nor a data root holding it")


def relative_id(source: str | os.PathLike, folder: Path) -> str:
    """A sample's id in prediction files: its path relative to ``folder`` (absolute, as
    :func:`locate_dataset` gives it), with forward slashes."""
    return Path(os.path.abspath(source)).relative_to(folder).as_posix()


def count_labels(samples: list[Sample]) -> dict[str, int]:
    """``{label_name: count}`` in a stable order (by label value)."""
    counts = Counter((s.label, s.label_name) for s in samples)
    return {name: n for (_, name), n in sorted(counts.items())}


def filter_split(samples: list[Sample], dataset: str, split: str | None) -> list[Sample]:
    """Keep the samples whose patient is in ``split`` of the saved per-patient split of ``dataset``.

    ``split`` may be ``train``, ``val`` or ``fold<k>`` (see :mod:`secondread.datasets.splits`).
    """
    if split is None:
        return samples
    from .splits import patients_in  # local: splits imports the loaders

    keep = patients_in(dataset, split)
    return [s for s in samples if s.patient in keep]

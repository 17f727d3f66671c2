"""The one image type that every stage shares.

Why: loaders know file formats and nothing else does. Downstream stages (preprocessing, models,
explanation, reports) receive pixels with their physical meaning attached (modality, spacing in mm,
orientation) and never a pydicom dataset, so they cannot leak identifiers or depend on a format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import SecondreadError


@dataclass
class Image:
    """Pixels plus what they mean.

    Attributes
    ----------
    pixels : numpy.ndarray
        float32, 2D ``[rows, cols]`` or 3D ``[slices, rows, cols]``, already in display-ready or
        physical units (after the DICOM modality and VOI LUTs; MONOCHROME1 inverted).
    modality : str
        DICOM-style modality code (``"CR"``, ``"DX"``, ``"CT"``, ``"MR"``, ``"OT"`` ...).
    spacing : tuple of float or None
        Pixel spacing in mm, in the same axis order as ``pixels``; ``None`` when unknown.
    source : str
        Path the image was read from (a file, or ``file.npz#split[index]``).
    orientation : tuple of float or None
        Direction cosines (DICOM ImageOrientationPatient) where known.
    metadata : dict
        Technical attributes only (photometric interpretation, transfer syntax, bits...), never
        patient identifiers.
    """

    pixels: np.ndarray
    modality: str = "OT"
    spacing: tuple[float, ...] | None = None
    source: str = ""
    orientation: tuple[float, ...] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pixels = np.asarray(self.pixels, dtype=np.float32)
        if self.pixels.ndim not in (2, 3):
            raise SecondreadError(self.source, f"expected a 2D or 3D image, got shape {self.pixels.shape}")
        if self.spacing is not None:
            self.spacing = tuple(float(s) for s in self.spacing)
            if len(self.spacing) != self.pixels.ndim:
                raise SecondreadError(self.source, f"spacing {self.spacing} does not match shape {self.pixels.shape}")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.pixels.shape)

    def check_usable(self) -> None:
        """Refuse images a model cannot say anything about (empty, constant, not finite)."""
        if self.pixels.size == 0:
            raise SecondreadError(self.source, "the image is empty")
        if not np.isfinite(self.pixels).all():
            raise SecondreadError(self.source, "the image contains non-finite pixel values")
        if float(self.pixels.max()) == float(self.pixels.min()):
            raise SecondreadError(self.source, "the image is constant (every pixel has the same value)")

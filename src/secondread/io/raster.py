"""Ordinary raster images (PNG, JPEG, TIFF, PGM/PPM, BMP) as :class:`~secondread.image.Image`.

Why: many public data sets (mini-MIAS, the LGG MRI slices, exported screenshots) come as plain
raster files. They carry no physical spacing and no patient header, so the loader only has to keep
the stored grey levels exactly (8-bit stays 0..255, 16-bit stays 0..65535) and reduce colour to one
luminance channel, because every model downstream takes one channel.

This module also holds the two small helpers the DICOM reader shares: :func:`require_file` and
:func:`luminance`.

Example
-------
>>> img = read_raster("mdb001.png")            # doctest: +SKIP
>>> img.pixels.dtype, img.modality, img.spacing  # doctest: +SKIP
(dtype('float32'), 'OT', None)
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image as PILImage

from ..errors import SecondreadError
from ..image import Image

SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".pgm", ".ppm", ".bmp")

# Pillow modes whose numpy array already holds one channel of grey levels at their stored values.
_GREY_MODES = {"L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def require_file(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path, or raise ``SecondreadError`` if it is missing or not a file.

    Why: checking first turns ``FileNotFoundError``/``IsADirectoryError`` tracebacks into the one-line
    message every face of the program prints.
    """
    p = Path(path)
    if not p.exists():
        raise SecondreadError(p, "file not found")
    if p.is_dir():
        raise SecondreadError(p, "is a folder, not an image file")
    if not p.is_file():
        raise SecondreadError(p, "is not a regular file")
    return p


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Grey-level luminance of an RGB array ``[..., 3]`` as float32, keeping the input's scale.

    Uses OpenCV's ``COLOR_RGB2GRAY`` on float32 data: Y = 0.299 R + 0.587 G + 0.114 B, the ITU-R
    BT.601 weights that DICOM itself uses to define the Y of YBR_FULL (PS3.3 C.7.6.3.1.2) and that
    Pillow uses for mode "L", so DICOM and raster colour images give the same grey. Any leading
    axes (frames) are kept.

    >>> luminance(np.array([[[255, 255, 255]]], dtype=np.uint8))
    array([[255.]], dtype=float32)
    """
    rgb = np.asarray(rgb, dtype=np.float32)
    if rgb.shape[-1] != 3:
        raise ValueError(f"expected 3 colour samples in the last axis, got shape {rgb.shape}")
    lead = rgb.shape[:-1]
    flat = np.ascontiguousarray(rgb.reshape(-1, lead[-1], 3))  # cv2 wants a 2D image of pixels
    return cv2.cvtColor(flat, cv2.COLOR_RGB2GRAY).reshape(lead)


def _to_array(im: PILImage.Image) -> tuple[np.ndarray, str]:
    """One grey channel from a Pillow image, at its stored values; returns (array, colour note)."""
    mode = im.mode
    if mode in _GREY_MODES:
        return np.asarray(im), "grey"
    if mode == "1":
        return np.asarray(im.convert("L")), "grey"  # bilevel: 0 and 255
    if mode == "LA":
        return np.asarray(im.convert("L")), "grey"  # drop alpha; grey levels unchanged
    # RGB, RGBA, P (palette), PA, CMYK, YCbCr, LAB, HSV: to RGB with Pillow, then luminance.
    return luminance(np.asarray(im.convert("RGB"))), f"luminance of {mode}"


def read_raster(path: str | os.PathLike, *, modality: str = "OT") -> Image:
    """Read a PNG/JPEG/TIFF/PGM/PPM/BMP file into an :class:`Image`.

    Parameters
    ----------
    path : str or PathLike
        The image file. Multi-page files (TIFF) give their first page.
    modality : str
        DICOM-style modality code to attach (raster files do not say); ``"OT"`` (other) by default.

    Returns
    -------
    Image
        2D float32 pixels at their stored values (8-bit 0..255, 16-bit 0..65535; colour reduced to
        BT.601 luminance, see :func:`luminance`), ``spacing=None``, and metadata with the
        ``format``, Pillow ``mode``, ``colour`` handling, ``frames`` and ``rows``/``columns``.

    Raises
    ------
    SecondreadError
        Missing file, a folder, or a file Pillow cannot identify or decode (truncated, garbage).
    """
    p = require_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. DecompressionBombWarning: we report errors, not warnings
            with PILImage.open(p) as im:
                im.load()
                fmt, mode, frames = im.format, im.mode, int(getattr(im, "n_frames", 1))
                pixels, colour = _to_array(im)
    except SecondreadError:
        raise
    except PILImage.DecompressionBombError:
        raise SecondreadError(p, "image is too large to decode safely (Pillow's decompression-bomb limit)") from None
    except Exception as exc:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ValueError...
        raise SecondreadError(p, f"cannot decode the image: not a valid or complete raster file ({type(exc).__name__})") from None
    if pixels.ndim != 2:
        raise SecondreadError(p, f"unsupported raster layout (array shape {pixels.shape}, mode {mode})")
    metadata = {"format": fmt, "mode": mode, "colour": colour, "frames": frames,
                "rows": int(pixels.shape[0]), "columns": int(pixels.shape[1])}
    return Image(pixels=pixels, modality=modality, spacing=None, source=str(p), metadata=metadata)

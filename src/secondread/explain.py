"""Where the model looked: Grad-CAM heatmaps, the hottest region, and overlay images.

Why: "pneumonia, 0.93" is half an answer; a reader must see which part of the image drove it and
judge whether that is anatomy or artefact. Grad-CAM (Selvaraju et al., ICCV 2017) weights the last
convolutional feature maps by the gradient of the finding's logit; MONAI computes it. MONAI's default
post-processing maps (min, max) to (1, 0), which would flip the map, so we normalise ourselves.
"""

from __future__ import annotations

import contextlib

from pathlib import Path

import cv2
import numpy as np
import torch
from monai.visualize import GradCAM, GradCAMpp
from monai.visualize.visualizer import default_upsampler
from skimage import measure

from .errors import SecondreadError


class _AsColumn(torch.nn.Module):
    """Present a one-logit model as ``[N, 1]`` class scores, the shape MONAI's CAM classes expect."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).reshape(x.shape[0], -1)


# The explanation methods a report can use: Grad-CAM (Selvaraju et al. 2017) and Grad-CAM++
# (Chattopadhay et al. 2018), which weights positive gradients per location and tends to cover
# several instances of the evidence instead of the single most discriminative one.
METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMpp}
# A detector's own map (networks with ``probability_map``, e.g. the mammography lesion detector):
# not a post-hoc explanation but the model's evidence itself, a probability per cell, so it is not rescaled.
OWN_MAP = "heatmap"


def detector_map(model: torch.nn.Module, batch: torch.Tensor, out_shape: tuple[int, ...]) -> np.ndarray:
    """The lesion probability map of a detector, upsampled (bilinear) to ``out_shape``.

    Unlike a CAM it is not divided by its peak: its values are the per-cell probabilities the
    detector was trained to give (not temperature-scaled, so its peak is the sigmoid of the raw
    image logit, not the calibrated image probability), and a normal mammogram shows a faint map,
    not a saturated one."""
    if not hasattr(model, "probability_map"):
        raise SecondreadError(None, f"the {OWN_MAP!r} explanation needs a detector with its own map")
    model.eval()
    with torch.inference_mode():
        heat = model.probability_map(batch)
        heat = torch.nn.functional.interpolate(heat, size=tuple(int(s) for s in out_shape), mode="bilinear",
                                               align_corners=False)
    return heat[0, 0].numpy().astype(np.float32)


@contextlib.contextmanager
def _hooks_removed_after(module: torch.nn.Module):
    """Remove the hooks that MONAI's CAM registers on ``module`` once the map is made.

    Why: MONAI's ``ModelWithHooks`` registers a forward and a backward hook on the target layer
    each time a CAM is built and keeps no handle, so a long-running service or batch that explains
    with one loaded model piles up hooks: every later forward pass runs (and caches) all of them.
    """
    before = (set(module._forward_hooks), set(module._backward_hooks))
    try:
        yield
    finally:
        for hooks, kept in zip((module._forward_hooks, module._backward_hooks), before):
            for key in [k for k in hooks if k not in kept]:
                del hooks[key]


def gradcam(model: torch.nn.Module, layer: str, batch: torch.Tensor, out_shape: tuple[int, ...],
            method: str = "gradcam") -> np.ndarray:
    """Grad-CAM (or Grad-CAM++) of the positive logit, upsampled (bi/trilinear) to ``out_shape``, in [0, 1].

    Parameters
    ----------
    model : torch.nn.Module
        A network returning one logit per image.
    layer : str
        Name (as in ``model.named_modules()``) of the convolutional layer to explain.
    batch : torch.Tensor
        One preprocessed image, shape ``[1, C, *spatial]`` (2D or 3D).
    out_shape : tuple of int
        Shape of the original image, so the map lies over the pixels the user sees.
    method : str
        ``"gradcam"`` or ``"gradcam++"`` (both MONAI's; see :data:`METHODS`), or ``"heatmap"``: a
        detector's own probability map (:func:`detector_map`; ``layer`` is then unused).

    Returns
    -------
    numpy.ndarray
        float32 map of ``out_shape`` in [0, 1]; all zeros when no region raised the logit.
    """
    if method == OWN_MAP:
        return detector_map(model, batch, out_shape)
    if method not in METHODS:
        raise SecondreadError(None, f"unknown explanation method {method!r} ({', '.join([*METHODS, OWN_MAP])})")
    with _hooks_removed_after(dict(model.named_modules())[layer]):
        cam = METHODS[method](nn_module=_AsColumn(model), target_layers=f"net.{layer}",
                              upsampler=lambda _spatial: default_upsampler(tuple(out_shape)),
                              postprocessing=lambda x: x)
        with torch.enable_grad():
            raw = cam(batch.detach().clone().requires_grad_(True), class_idx=0)
    heat = raw.detach().cpu().numpy()[0, 0].astype(np.float32)
    heat = np.clip(heat, 0.0, None)
    peak = float(heat.max())
    return heat / peak if peak > 0 else np.zeros_like(heat)


def hottest_region(heat: np.ndarray, spacing: tuple[float, ...] | None = None, level: float = 0.5) -> dict | None:
    """The connected region around the map's peak where the map is at least ``level`` x its peak.

    Works on 2D maps ``[rows, cols]`` and 3D maps ``[slices, rows, cols]``. Returns a dict in image
    voxel coordinates (``x`` = column, ``y`` = row, ``z`` = slice; the ``*_max`` ends exclusive),
    the peak point, the region's size in pixels and, when ``spacing`` is known, in mm² (2D) or
    mm³ (3D). ``None`` when the map is empty.
    """
    if heat.max() <= 0:
        return None
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    labels = measure.label(heat >= level * float(heat.max()), connectivity=heat.ndim)
    region = next(r for r in measure.regionprops(labels) if r.label == labels[peak])
    lo, hi = region.bbox[:heat.ndim], region.bbox[heat.ndim:]
    out = {"x_min": int(lo[-1]), "y_min": int(lo[-2]), "x_max": int(hi[-1]), "y_max": int(hi[-2]),
           "peak": {"x": int(peak[-1]), "y": int(peak[-2])}, "area_px": int(region.area),
           "level": level, "source": "gradcam"}
    if heat.ndim == 3:
        out.update(z_min=int(lo[0]), z_max=int(hi[0]))
        out["peak"]["z"] = int(peak[0])
    if spacing is not None:
        key = "volume_mm3" if heat.ndim == 3 else "area_mm2"
        out[key] = round(float(region.area * np.prod(spacing)), 2)
    return out


def display_uint8(pixels: np.ndarray) -> np.ndarray:
    """Grey image as a viewer shows it, in 8 bits (the pixels are already after the VOI LUT)."""
    lo, hi = float(pixels.min()), float(pixels.max())
    unit = (pixels - lo) / (hi - lo) if hi > lo else np.zeros_like(pixels)
    return np.round(unit * 255).astype(np.uint8)


def overlay(pixels: np.ndarray, heat: np.ndarray, region: dict | None = None, alpha: float = 0.4) -> np.ndarray:
    """Colour overlay (RGB uint8): the image in grey, the map in OpenCV's JET colours, the box in green."""
    grey = cv2.cvtColor(display_uint8(pixels), cv2.COLOR_GRAY2RGB)
    colour = cv2.cvtColor(cv2.applyColorMap(np.round(heat * 255).astype(np.uint8), cv2.COLORMAP_JET),
                          cv2.COLOR_BGR2RGB)
    weight = (alpha * heat)[..., None]
    out = np.round(grey * (1 - weight) + colour * weight).astype(np.uint8)
    if region is not None:
        thickness = max(1, round(max(pixels.shape) / 300))
        cv2.rectangle(out, (region["x_min"], region["y_min"]), (region["x_max"] - 1, region["y_max"] - 1),
                      (0, 255, 0), thickness)
    return out


def save_png(path: str | Path, rgb_or_grey: np.ndarray) -> Path:
    """Write a PNG with OpenCV (RGB input), refusing silently failed writes."""
    path = Path(path)
    arr = rgb_or_grey if rgb_or_grey.ndim == 2 else cv2.cvtColor(rgb_or_grey, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), arr):
        raise SecondreadError(path, "could not write the PNG")
    return path

"""What the web viewer looks at: a study's pixels and overlays, kept in memory for a while.

Why: window/level and slice scrolling need the pixel values, not one rendered picture; sending a
whole CT volume to the browser would be slow, and keeping it on disk would leave patient data
behind. So the server keeps a reduced copy (int16 pixels, uint8 heat map and region mask) in a
small least-recently-used cache with an expiry, and renders one slice at a time as PNG.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from skimage import measure

MAX_SIDE = 512  # in-plane size the viewer gets at most (a 512 x 512 CT slice stays whole)


@dataclass
class View:
    """One analysed study, ready to be shown. Arrays are ``[slices, rows, cols]`` (2D images: 1 slice)."""

    pixels: np.ndarray            # int16, after ``offset`` and ``scale``: value = pixels * scale + offset
    scale: float
    offset: float
    heat: np.ndarray | None       # uint8 0..255
    mask: np.ndarray | None       # bool: the finding's region
    info: dict[str, Any]          # shape, window, boxes, spacing: JSON for the page

    def values(self, z: int) -> np.ndarray:
        return self.pixels[z].astype(np.float32) * self.scale + self.offset


def _reduce(volume: np.ndarray) -> tuple[np.ndarray, int]:
    """Shrink rows/cols by an integer step so neither exceeds MAX_SIDE; return array and step."""
    step = max(1, int(np.ceil(max(volume.shape[1:]) / MAX_SIDE)))
    return volume[:, ::step, ::step], step


def _to_int16(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Values as int16 (exact for integral HU; scaled otherwise) with the scale and offset to undo it."""
    lo, hi = float(values.min()), float(values.max())
    if float(np.abs(values - np.round(values)).max()) == 0 and lo >= -32768 and hi <= 32767:
        return values.astype(np.int16), 1.0, 0.0
    scale = (hi - lo) / 65535 if hi > lo else 1.0
    return np.round((values - lo) / scale - 32768).astype(np.int16), scale, lo + 32768 * scale


def default_window(values: np.ndarray, header: dict | None) -> dict[str, float]:
    """The header's window when there is one (CT), else the 0.5-99.5 percentile range."""
    if header and header.get("center") is not None and header.get("width"):
        return {"center": float(header["center"]), "width": float(header["width"])}
    lo, hi = np.percentile(values[:: max(1, values.shape[0] // 16)], [0.5, 99.5])
    return {"center": float((lo + hi) / 2), "width": float(max(hi - lo, 1e-3))}


def region_mask(heat: np.ndarray, region: dict | None) -> np.ndarray | None:
    """The finding's region as a mask: the connected part of ``heat >= level * peak`` holding the
    peak (what ``explain.hottest_region`` measured), so the contour drawn is what was measured."""
    if region is None or heat is None or heat.max() <= 0:
        return None
    labels = measure.label(heat >= region.get("level", 0.5) * float(heat.max()), connectivity=heat.ndim)
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return labels == labels[peak]


HEAT_SIDE_3D = 128  # in-plane size of a volume's heat map in the viewer (a smooth map; cheap to explain)


def viewer_heat(image, bundle, shape: tuple[int, ...]) -> np.ndarray:
    """The finding's Grad-CAM map, computed again at the viewer's grid ``shape``.

    Why again: ``analyze_image`` keeps only the picture of one plane; and explaining at the viewer's
    grid instead of the full CT grid costs a fraction of a second rather than many seconds. Same
    network, same layer, same method as the report (``explain.gradcam``), so it shows the same map.
    """
    from ..explain import gradcam
    batch = bundle.prepare(image.pixels)[None]
    return gradcam(bundle.model, bundle.explain_layer, batch, shape, method=bundle.explain_method)


def report_boxes(report: dict[str, Any], step: int) -> list[dict[str, Any]]:
    """Every box the report gives, in the viewer's grid, z range in slices (2D images: slice 0):
    each finding's ``region`` (x/y/z min/max, ends exclusive), each nodule candidate's ``bbox``
    (slice/row/col min/max, ends exclusive) and the ``bbox`` of a 2D outlined lesion or
    calcification cluster (x0/y0 inclusive, x1/y1 exclusive)."""
    boxes = []
    for f in report.get("findings") or []:
        r, b = f.get("region"), f.get("bbox")
        if r and {"x_min", "x_max", "y_min", "y_max"} <= set(r):
            boxes.append({"label": f.get("label"), "x_min": r["x_min"] / step, "x_max": r["x_max"] / step,
                          "y_min": r["y_min"] / step, "y_max": r["y_max"] / step,
                          "z_min": r.get("z_min", 0), "z_max": r.get("z_max", 1)})
        elif b and {"row_min", "row_max", "col_min", "col_max"} <= set(b):
            label = f"#{f['rank']} {f.get('diameter_mm', '')} mm" if "rank" in f else f.get("label")
            boxes.append({"label": label, "kind": f.get("kind"), "x_min": b["col_min"] / step,
                          "x_max": b["col_max"] / step, "y_min": b["row_min"] / step, "y_max": b["row_max"] / step,
                          "z_min": b.get("slice_min", 0), "z_max": b.get("slice_max", 1)})
        elif b and {"x0", "x1", "y0", "y1"} <= set(b) and "z0" not in b:
            label = f"{f.get('label')} #{f['rank']}" if "rank" in f else f.get("label")
            boxes.append({"label": label, "kind": f.get("kind"), "x_min": b["x0"] / step, "x_max": b["x1"] / step,
                          "y_min": b["y0"] / step, "y_max": b["y1"] / step, "z_min": 0, "z_max": 1})
    return boxes


def start_slice(report: dict[str, Any], slices: int) -> int:
    """Where the viewer opens a volume: the top nodule candidate's axial slice, else the peak of the
    model's map, else the middle."""
    findings = report.get("findings") or []
    for f in findings:
        if f.get("axial_slice") is not None:
            return int(f["axial_slice"])
    region = (findings[0].get("region") if findings else None) or {}
    return int(region.get("peak", {}).get("z", slices // 2))


def make_view(image, bundle, report: dict[str, Any], masks: np.ndarray | None = None) -> View:
    """Build a View from the loaded image, the bundle that read it (None: no classifier), its
    report and the lesion masks the analysis made (nodule candidates), whose outlines the contour
    layer shows when the report has no map region."""
    volume = np.asarray(image.pixels if image.pixels.ndim == 3 else image.pixels[None], dtype=np.float32)
    small, step = _reduce(volume)
    pixels, scale, offset = _to_int16(small)
    finding = (report.get("findings") or [{}])[0]
    region = finding.get("region")
    heat = mask = None
    if region:
        if image.pixels.ndim == 3:
            heat_step = max(1, int(np.ceil(max(small.shape[1:]) / HEAT_SIDE_3D)))
            grid = (small.shape[0], -(-small.shape[1] // heat_step), -(-small.shape[2] // heat_step))
            heat = viewer_heat(image, bundle, grid)
        else:
            heat = viewer_heat(image, bundle, small.shape[1:])[None]
        mask = region_mask(heat, region)
    elif masks is not None:
        mask = (masks if masks.ndim == 3 else masks[None])[:, ::step, ::step]
    boxes = report_boxes(report, step)
    meta = image.metadata or {}
    window = default_window(small, meta.get("window") if image.pixels.ndim == 3 else None)
    start = min(max(start_slice(report, volume.shape[0]), 0), volume.shape[0] - 1)
    info = {"slices": int(pixels.shape[0]), "rows": int(pixels.shape[1]), "cols": int(pixels.shape[2]),
            "step": step, "window": window, "range": [float(small.min()), float(small.max())],
            "start_slice": int(start), "boxes": boxes, "heatmap": heat is not None, "mask": mask is not None,
            "units": meta.get("units")}
    return View(pixels=pixels, scale=scale, offset=offset,
                heat=None if heat is None else np.round(heat * 255).astype(np.uint8), mask=mask, info=info)


def png(array: np.ndarray) -> bytes:
    """PNG bytes of a grey (2D) or RGBA (H x W x 4, RGBA order) uint8 array."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGBA2BGRA)
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def render_slice(view: View, z: int, center: float, width: float) -> bytes:
    """Slice ``z`` windowed linearly (PS3.3 C.11.2.1.2 style: center/width) to 8 bits."""
    values = view.values(z)
    lo = center - width / 2
    grey = np.clip((values - lo) / max(width, 1e-6), 0, 1)
    return png(np.round(grey * 255).astype(np.uint8))


def render_heat(view: View, z: int) -> bytes:
    """The heat map of slice ``z`` in JET colours, transparent where the map is cold."""
    heat = view.heat[z]
    colour = cv2.cvtColor(cv2.applyColorMap(heat, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    alpha = np.round(heat.astype(np.float32) * 0.45).astype(np.uint8)
    return png(np.dstack([colour, alpha]))


def render_contour(view: View, z: int) -> bytes:
    """The outline of the finding's region on slice ``z`` (yellow, 1-2 px), elsewhere transparent."""
    mask = view.mask[z].astype(np.uint8)
    out = np.zeros(mask.shape + (4,), np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, (255, 220, 0, 255), max(1, round(max(mask.shape) / 256)))
    return png(out)


class ViewStore:
    """A thread-safe LRU with an expiry (views, or DICOM outputs to download): memory only, never
    on disk; ids are unguessable (and the routes need the token)."""

    def __init__(self, slots: int, ttl_s: float):
        self.slots, self.ttl_s = slots, ttl_s
        self._views: OrderedDict[str, View] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, view: Any) -> str:
        key = secrets.token_urlsafe(16)
        with self._lock:
            self._expire()
            self._views[key] = (view, time.monotonic())
            while len(self._views) > self.slots:
                self._views.popitem(last=False)
        return key

    def get(self, key: str) -> Any:
        with self._lock:
            self._expire()
            entry = self._views.get(key)
            if entry is None:
                return None
            self._views.move_to_end(key)
            return entry[0]

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, (_, t) in self._views.items() if now - t > self.ttl_s]:
            del self._views[key]

    def __len__(self) -> int:
        return len(self._views)

"""One study, end to end: load -> check -> detect -> localise -> read the record -> suggest -> report.

Why: the command line, the demo and (later) the service and batch runner all analyse a study the
same way; this module is that one way, so the faces stay thin.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SecondreadError
from .explain import display_uint8, gradcam, hottest_region, overlay
from .finding import Finding
from .image import Image
from .io import load_image
from .records.llm import summarise
from .report import build_report, write_report
from .suggest import suggest

def domain_caveats(image: Image, bundle) -> list[str]:
    """Reasons this image differs from what the model was trained on, stated in the report.

    A modality outside the bundle's ``modalities`` (``OT``: a plain picture, whose modality is
    unknown, is always allowed) is a caveat, not a refusal: the reader decides.
    """
    caveats = []
    expected = bundle.config.get("modalities") or []
    if expected and image.modality.upper() not in expected + ["OT", ""]:
        named = [m for m in expected if m != "OT"] or expected
        caveats.append(f"the model was trained on {'/'.join(named)} images; "
                       f"this image's modality is {image.modality}")
    trained = tuple(bundle.config.get("input_shape", ()))
    if trained and min(image.shape) > 4 * max(trained):
        caveats.append(f"the image ({' × '.join(map(str, image.shape))}) was reduced to the model's "
                       f"{' × '.join(map(str, trained))}; fine detail is not seen")
    return caveats


def detect(image: Image, bundle, explain_with: str = "gradcam") -> tuple[Finding, np.ndarray | None]:
    """Run the bundle on one 2D image; for a finding that crosses any operating point, add Grad-CAM."""
    dims = len(bundle.config.get("input_shape", (0, 0)))
    if image.pixels.ndim != dims:
        kind = "volumes" if dims == 3 else "2D images"
        raise SecondreadError(image.source, f"model '{bundle.name}' reads {kind}; this input has shape {image.shape}")
    prob = float(bundle.predict_proba([image.pixels])[0])
    points = {name: {"threshold": float(op["threshold"]), "crossed": prob >= float(op["threshold"])}
              for name, op in bundle.operating_points.items()}
    finding = Finding(label=bundle.finding, probability=prob, operating_points=points,
                      positive=prob >= float(bundle.threshold))
    if not any(op["crossed"] for op in points.values()):
        return finding, None
    batch = bundle.prepare(image.pixels)[None]
    heat = gradcam(bundle.model, bundle.model.gradcam_layer, batch, image.shape, method=explain_with)
    finding.region = hottest_region(heat, image.spacing)
    if finding.region:
        finding.region["source"] = explain_with
    if finding.region:
        finding.measurements = {k: finding.region[k] for k in ("area_px", "area_mm2", "volume_mm3")
                                if k in finding.region}
    return finding, heat


def _display_plane(pixels: np.ndarray, region: dict | None) -> tuple:
    """Index of what the report shows: the image itself, or for a volume the slice through the
    map's peak (the middle slice when there is no map)."""
    if pixels.ndim == 2:
        return (slice(None), slice(None))
    z = region["peak"]["z"] if region else pixels.shape[0] // 2
    return (z, slice(None), slice(None))


def model_info(bundle) -> dict[str, Any]:
    """What the report says about the model that spoke: enough to reproduce and to judge it."""
    cfg = bundle.config
    training = cfg.get("training", {})
    return {"name": bundle.name, "version": bundle.version, "sha256": bundle.sha256,
            "architecture": cfg.get("architecture"), "data": training.get("dataset", cfg.get("data_source")),
            "validation": bundle.metrics, "operating_points": bundle.operating_points,
            "threshold": bundle.threshold, "temperature": bundle.temperature}


def image_info(image: Image) -> dict[str, Any]:
    """Technical description of the input, with its file name only (no folders, no identifiers)."""
    return {"name": Path(image.source).name, "modality": image.modality, "shape": list(image.shape),
            "spacing": list(image.spacing) if image.spacing else None, "picture": "image.png"}


def analyze_image(path: str | os.PathLike, out_dir: str | os.PathLike, bundle,
                  record: dict[str, Any] | None = None, llm=None, explain_with: str = "gradcam") -> dict[str, Any]:
    """Analyse one image file and write its report folder; return the report dict.

    ``record`` is the patient's record (``records.merge.load_record``: note and/or FHIR facts,
    demographics, contradictions) or None. ``llm`` is an optional ``records.llm.LLMConfig``: the
    summary then comes from the language model if its words pass the guardrail, else from the
    deterministic template (the report says which).
    """
    image = load_image(path)
    image.check_usable()
    finding, heat = detect(image, bundle, explain_with)
    plane = _display_plane(image.pixels, finding.region)
    pictures = {"image.png": display_uint8(image.pixels[plane])}
    if heat is not None:
        finding.heatmap, finding.overlay = "heatmap.png", "overlay.png"
        pictures["heatmap.png"] = np.round(heat[plane] * 255).astype(np.uint8)
        pictures["overlay.png"] = overlay(image.pixels[plane], heat[plane], finding.region)
    facts = record["facts"] if record else None
    suggestion = suggest(finding, facts, float(bundle.threshold), bundle.metrics, domain_caveats(image, bundle))
    suggestion["summary"] = summarise(record, [finding.to_dict()], llm).to_dict()
    report = build_report(image_info=image_info(image), findings=[finding.to_dict()], record=record,
                          suggestion=suggestion, model=model_info(bundle))
    write_report(report, out_dir, pictures)
    return report

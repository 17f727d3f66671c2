"""Which shipped model reads an image, when the user did not say.

Why: a PACS client, a service and a batch runner receive studies of every kind; asking a user to
name a bundle per study is not how a second reader is used. The choice is a plain rule on what the
image itself says (its dimensionality and DICOM modality) against what each shipped bundle declares
in its ``bundle.json`` (``input_shape`` and ``modalities``), and it is stated in the report with
its reason, so a reader can see that a chest model was used because the image was a CR.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..image import Image

PREFERRED = {"CR": "pneumonia", "DX": "pneumonia", "DR": "pneumonia", "RG": "pneumonia",
             "MG": "mammo-abnormal", "MR": "brain-mri-tumour", "US": "breast-us-28"}
"""2D modality -> the shipped bundle trained on that kind of image."""
VOLUME_DEFAULT = "adrenal-ct-3d"
"""The only shipped bundle that reads volumes."""
FALLBACK_2D = "pneumonia"
"""2D images of any other modality (CT slices, OT pictures...): the chest X-ray model, with the
domain caveat the report adds when the modality is not one it was trained on."""


@dataclass(frozen=True)
class Choice:
    """The bundle chosen for an image and why, in words a report can show."""

    name: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "reason": self.reason, "automatic": True}


def _dims(config: dict) -> int:
    return len(config.get("input_shape") or (0, 0))


def _fits(name: str, ndim: int, modality: str, configs: dict[str, dict]) -> bool:
    config = configs.get(name)
    if config is None or _dims(config) != ndim:
        return False
    declared = config.get("modalities") or []
    return not declared or modality in declared or modality in ("", "OT")


def _configs() -> dict[str, dict]:
    """The shipped bundles' ``bundle.json`` (no weights are loaded to choose)."""
    import json

    from .bundle import ZOO, shipped_names

    return {name: json.loads((ZOO / name / "bundle.json").read_text(encoding="utf-8")) for name in shipped_names()}


def choose_bundle(image: Image, configs: dict[str, dict] | None = None) -> Choice:
    """The shipped bundle whose dimensionality and modality fit ``image``.

    Rules, in order: a volume goes to the 3D bundle (:data:`VOLUME_DEFAULT`); a 2D image of a
    modality in :data:`PREFERRED` goes to that bundle; any other 2D image to :data:`FALLBACK_2D`.
    A preferred bundle that is missing or declares other ``modalities``/``input_shape`` is not
    used: the first shipped bundle that fits is, and failing that the fallback.

    >>> choose_bundle(Image(np.zeros((64, 64)), modality="MR")).name   # doctest: +SKIP
    'brain-mri-tumour'
    """
    configs = _configs() if configs is None else configs
    ndim, modality = image.pixels.ndim, (image.modality or "").upper()
    kind = "a volume" if ndim == 3 else "a 2D image"
    wanted = VOLUME_DEFAULT if ndim == 3 else PREFERRED.get(modality)
    if wanted and _fits(wanted, ndim, modality, configs):
        return Choice(wanted, f"the input is {kind} of modality {modality or 'unknown'}; "
                              f"{wanted} is the shipped model for {_trained_on(configs[wanted])}")
    for name in sorted(configs):
        if _fits(name, ndim, modality, configs) and modality not in ("", "OT"):
            return Choice(name, f"the input is {kind} of modality {modality}; {name} declares that modality")
    fallback = VOLUME_DEFAULT if ndim == 3 else FALLBACK_2D
    return Choice(fallback, f"the input is {kind} of modality {modality or 'unknown'}, for which no shipped "
                            f"model is made; {fallback} was used as the default for {kind.split(' ', 1)[1]}s")


def _trained_on(config: dict) -> str:
    shape = " x ".join(str(v) for v in config.get("input_shape", []))
    named = [m for m in config.get("modalities", []) if m != "OT"]
    return f"{'/'.join(named) or 'these'} images ({shape} input)"

"""What a model says about one image, in the shape every later stage reads.

Why: the suggestion, the JSON/HTML report and (later) DICOM SR all need the same few facts about a
finding: which label, how probable after calibration, which operating points it crossed, and where.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


def format_probability(p: float, digits: int = 2) -> str:
    """A probability as a reader should see it: never a false certainty of 0 or 1.

    >>> format_probability(0.99996), format_probability(0.4321, 3)
    ('> 0.99', '0.432')
    """
    edge = 10.0 ** -digits
    if p > 1 - edge / 2:
        return f"> {1 - edge:.{digits}f}"
    if p < edge / 2:
        return f"< {edge:.{digits}f}"
    return f"{p:.{digits}f}"


@dataclass
class Finding:
    """One finding of one model on one image.

    Attributes
    ----------
    label : str
        What the model looks for (``"pneumonia"``).
    probability : float
        Calibrated probability (temperature-scaled on validation data).
    operating_points : dict
        ``{name: {"threshold": t, "crossed": bool}}`` for each operating point of the bundle.
    positive : bool
        Whether the probability crossed the bundle's default (balanced) operating point.
    region : dict or None
        The hottest region of the explanation map in image pixels (see ``explain.hottest_region``).
    heatmap, overlay : str or None
        File names (relative to the report folder) of the map and of the overlay image.
    measurements : dict
        Sizes in pixels and, where spacing is known, in mm / mm².
    """

    label: str
    probability: float
    operating_points: dict[str, dict[str, Any]]
    positive: bool
    region: dict[str, Any] | None = None
    heatmap: str | None = None
    overlay: str | None = None
    measurements: dict[str, Any] = field(default_factory=dict)

    @property
    def crossed(self) -> list[str]:
        """Names of the operating points this probability reaches, most specific last."""
        # ascending threshold; on a tie the more specific point (balanced) comes last
        points = sorted(self.operating_points.items(),
                        key=lambda kv: (kv[1]["threshold"], kv[0] != "screening"))
        return [name for name, op in points if op["crossed"]]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["probability"] = round(float(self.probability), 4)
        out["operating_point_crossed"] = self.crossed[-1] if self.crossed else None
        return out

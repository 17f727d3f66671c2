"""Detection models: architectures (``nets``), the model bundle (``bundle``) and its ONNX export (``onnx``).

Why: a model is only meaningful together with the preprocessing it was trained with, its
calibration, its operating points and its validation figures. The bundle carries all of them (as
MONAI bundles do), so ``analyze`` and ``evaluate`` never have to guess. Shipped bundles live in
``zoo/`` and are addressed by name (``load_bundle("pneumonia")``).
"""

from .bundle import Bundle, load_bundle, save_bundle, shipped_names
from .nets import ARCHITECTURES, CompactResNet, SeedCNN, build

__all__ = ["ARCHITECTURES", "Bundle", "CompactResNet", "SeedCNN", "build", "load_bundle", "save_bundle", "shipped_names"]

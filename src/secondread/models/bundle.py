"""The model bundle: one folder holding a model with everything needed to use it honestly.

Why: a probability is only meaningful with the preprocessing the model was trained with, its
calibration, the operating points chosen on validation and the figures that justify them. As in
MONAI bundles, these travel together as data::

    <dir>/bundle.json    architecture, preprocessing, labels, temperature, operating points,
                         validation metrics, training and data provenance
    <dir>/weights.pt     the state_dict (loaded with ``weights_only=True``: no code is unpickled)
    <dir>/model_card.md  data, licence, date, intended use, limits, figures with CIs
    <dir>/model.onnx     the same network for ONNX Runtime (written when ``input_shape`` is known)
    <dir>/reliability.png  the reliability diagram before/after temperature scaling (from training)

Shipped bundles live in ``zoo/<name>/`` inside the package and are addressed by name.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from .. import preprocess
from ..errors import SecondreadError
from .nets import build
from .onnx import ONNX_FILE, OnnxNet, export_bytes, onnxruntime_available

ZOO = Path(__file__).parent / "zoo"
CONFIG_FILE, WEIGHTS_FILE, CARD_FILE = "bundle.json", "weights.pt", "model_card.md"
REQUIRED_KEYS = ("name", "architecture", "arch_args", "preprocessing", "labels", "threshold", "temperature")
BATCH_SIZE = 256


def shipped_names(task: str | None = "classification") -> list[str]:
    """Names of the bundles shipped inside the package (folders of ``zoo/`` with a bundle.json)
    whose ``task`` (default ``classification``) is ``task``; ``None`` for every bundle.

    Segmentation bundles (``"task": "segmentation"``) are read by :mod:`secondread.segment`, not
    by :func:`load_bundle`, so the classifier lists (model choice, the service's bundles) skip them.
    """
    if not ZOO.is_dir():
        return []
    names = []
    for folder in sorted(p for p in ZOO.iterdir() if (p / CONFIG_FILE).is_file()):
        kind = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8")).get("task", "classification")
        if task is None or kind == task:
            names.append(folder.name)
    return names


def prepare_images(spec: list[dict], images: Iterable[Any]) -> np.ndarray:
    """Apply ``spec`` to each image with ``preprocess.apply``; return float32 ``[N, 1, *shape]``.

    Training and inference both call this, so a model never sees pixels prepared differently from
    the ones it was trained on. ``images`` may be a ``[N, H, W]`` (2D) or ``[N, D, H, W]`` (3D)
    array, a list of 2D or 3D arrays of any size, or objects with a ``pixels`` attribute
    (``secondread.image.Image``). The spec's final resize makes them all one shape.
    """
    prepared = [preprocess.apply(spec, getattr(im, "pixels", im)) for im in images]
    if not prepared:
        return np.zeros((0, 1, 1, 1), dtype=np.float32)
    shapes = {p.shape for p in prepared}
    if len(shapes) != 1 or prepared[0].ndim not in (2, 3):
        raise SecondreadError(None, f"preprocessing must yield 2D or 3D images of one shape, got {sorted(shapes)}")
    return np.stack(prepared)[:, None].astype(np.float32)


def batched_logits(model: nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """Logits of ``model`` (in eval mode) for ``x`` ``[N, 1, *shape]``, in fixed-size batches.

    Training's final validation pass and every later inference use this same batching, so the
    figures recorded in a bundle are reproduced bit for bit when it is re-evaluated.
    """
    x = torch.as_tensor(x, dtype=torch.float32)
    model.eval()
    with torch.inference_mode():
        parts = [model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0)


def calibrated(logits: torch.Tensor | np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probabilities ``sigmoid(logit / T)`` as float64 numpy."""
    z = torch.as_tensor(logits, dtype=torch.float64) / float(temperature)
    return torch.sigmoid(z).numpy()


def file_hash(folder: Path) -> str:
    """SHA-256 over bundle.json then weights.pt bytes: names exactly which model spoke."""
    digest = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()


@dataclass
class Bundle:
    """A loaded bundle: the model in eval mode plus its preprocessing, calibration and metadata."""

    path: Path
    config: dict[str, Any]
    model: nn.Module
    sha256: str
    name: str = field(init=False)
    version: str = field(init=False)
    preprocessing: list[dict] = field(init=False)
    labels: dict[str, str] = field(init=False)
    finding: str = field(init=False)
    threshold: float = field(init=False)
    temperature: float = field(init=False)
    operating_points: dict[str, dict] = field(init=False)
    metrics: dict[str, Any] = field(init=False)
    positive_class: int = field(init=False)
    backend: str = "torch"
    onnx: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        c = self.config
        self.name, self.version = str(c["name"]), str(c.get("version", "0"))
        self.preprocessing = preprocess.validate(c["preprocessing"])
        self.labels = dict(c["labels"])
        self.finding = str(c.get("finding", c.get("positive_label", self.labels.get("1", "positive"))))
        self.threshold, self.temperature = float(c["threshold"]), float(c["temperature"])
        self.operating_points = dict(c.get("operating_points", {}))
        self.metrics = dict(c.get("metrics", {}))
        self.positive_class = int(c.get("positive_class", 1))
        explain = dict(c.get("explain") or {})
        # the layer and CAM method whose map a reader is shown: the network's last stage by default,
        # or what the bundle says was chosen on its training split (bundle.json "explain")
        self.explain_layer = str(explain.get("layer") or self.model.gradcam_layer)
        self.explain_method = str(explain.get("method") or "gradcam")
        self.model.eval()

    def prepare(self, pixels: np.ndarray) -> torch.Tensor:
        """One 2D image or 3D volume -> the ``[1, *shape]`` tensor the model expects (the stored
        preprocessing)."""
        return torch.from_numpy(prepare_images(self.preprocessing, [pixels])[0])

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw (uncalibrated) logits for a prepared ``[N, 1, *shape]`` batch, from PyTorch or, when
        the bundle was loaded with ``backend="onnx"``, from ONNX Runtime (same batching)."""
        if self.backend == "onnx":
            x = np.asarray(batch, dtype=np.float32)
            parts = [self.onnx(x[i:i + BATCH_SIZE]) for i in range(0, len(x), BATCH_SIZE)]
            return torch.from_numpy(np.concatenate(parts) if parts else np.zeros(0, np.float32))
        return batched_logits(self.model, batch)

    def finding_labels(self, labels) -> np.ndarray:
        """1 where a data set label means the finding (``positive_class``), else 0.

        For most sets this is the label itself; BreastMNIST's finding, *malignant*, is its label 0.
        """
        return (np.asarray(labels).reshape(-1) == self.positive_class).astype(np.int64)

    def predict_proba(self, images: Iterable[Any]) -> np.ndarray:
        """Calibrated probabilities of the finding, ``sigmoid(logit / temperature)``, one per image."""
        return calibrated(self.logits(torch.from_numpy(prepare_images(self.preprocessing, images))),
                          self.temperature)

    def decide(self, p: float) -> dict[str, Any]:
        """Which operating points probability ``p`` crosses (``p >= threshold``).

        ``operating_point`` is the strictest one crossed (highest threshold), or ``None``;
        ``positive`` says whether the bundle's default (balanced) threshold is crossed.
        """
        crossed = sorted((op for op, v in self.operating_points.items() if p >= float(v["threshold"])),
                         key=lambda op: -float(self.operating_points[op]["threshold"]))
        return {"operating_point": crossed[0] if crossed else None, "crossed": crossed,
                "positive": bool(p >= self.threshold), "threshold": self.threshold}


def resolve_bundle(name_or_path: str | os.PathLike, task: str = "classification") -> Path:
    """A folder path, or a shipped name of a ``task`` bundle -> ``zoo/<name>``; anything else is an
    error naming the zoo (and saying so when the name is a bundle of the other task)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if str(name_or_path) in shipped_names(task):
        return ZOO / str(name_or_path)
    other = "segmentation" if task == "classification" else "classification"
    if str(name_or_path) in shipped_names(other):
        command = "secondread segment" if other == "segmentation" else "secondread analyze/evaluate"
        raise SecondreadError(name_or_path, f"is a {other} bundle: use `{command} --model` for it")
    what = "model" if task == "classification" else task
    names = ", ".join(shipped_names(task)) or "none"
    raise SecondreadError(name_or_path, f"no such {what} bundle folder or shipped bundle name (shipped: {names})")


def load_bundle(name_or_path: str | os.PathLike, backend: str = "torch") -> Bundle:
    """Load a bundle from a folder or by shipped name (``"pneumonia"``).

    ``backend`` runs the network with ``"torch"`` (default; the back end whose figures the bundle
    records, and the one Grad-CAM needs), ``"onnx"`` (ONNX Runtime on ``model.onnx``; an error if
    it is not installed) or ``"auto"`` (ONNX Runtime when installed and exported, else torch).
    Raises ``SecondreadError`` for an unknown name or a broken folder (missing or invalid
    bundle.json, missing keys, weights that do not fit the architecture).
    """
    if backend not in ("torch", "onnx", "auto"):
        raise SecondreadError(None, f"unknown backend {backend!r} (torch, onnx, auto)")
    folder = resolve_bundle(name_or_path)
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SecondreadError(folder, f"not a model bundle: {CONFIG_FILE} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SecondreadError(folder / CONFIG_FILE, f"not valid JSON ({exc})") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(config, dict) or k not in config]
    if missing:
        raise SecondreadError(folder / CONFIG_FILE, f"missing key(s): {', '.join(missing)}")
    model = build(config["architecture"], **config["arch_args"])
    try:
        state = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except FileNotFoundError:
        raise SecondreadError(folder, f"not a model bundle: {WEIGHTS_FILE} is missing") from None
    except (RuntimeError, ValueError, EOFError, OSError, pickle.UnpicklingError) as exc:
        raise SecondreadError(folder / WEIGHTS_FILE, f"weights do not load ({type(exc).__name__}): corrupt, "
                                                     f"or not a {config['architecture']} state_dict") from None
    if backend == "auto":
        backend = "onnx" if onnxruntime_available() and (folder / ONNX_FILE).is_file() else "torch"
    session = OnnxNet(folder / ONNX_FILE) if backend == "onnx" else None
    return Bundle(path=folder, config=config, model=model, sha256=file_hash(folder), backend=backend, onnx=session)


def save_bundle(folder: str | os.PathLike, model: nn.Module, config: dict[str, Any],
                extra_files: dict[str, bytes] | None = None) -> Path:
    """Write ``config``, the weights and the model card to ``folder``, replacing it whole.

    When ``config`` has ``input_shape`` the network is also exported to ``model.onnx`` (and
    ``config["onnx"]`` records it); ``extra_files`` (name -> bytes, e.g. the reliability diagram)
    are written alongside.

    Everything is written to a temporary sibling folder first and renamed into place, so a crash
    leaves either the old bundle or the new one, never half of one.
    """
    folder = Path(folder)
    config = dict(config, preprocessing=preprocess.validate(config["preprocessing"]))
    files = dict(extra_files or {})
    if "input_shape" in config:
        files[ONNX_FILE] = export_bytes(model, config["input_shape"], config["arch_args"].get("in_channels", 1))
        config["onnx"] = {"file": ONNX_FILE, "input": "image", "output": "logit",
                          "input_shape": ["batch", config["arch_args"].get("in_channels", 1), *config["input_shape"]]}
    return install_bundle_folder(folder, config, model, model_card(config), files)


def install_bundle_folder(folder: str | os.PathLike, config: dict[str, Any], model: nn.Module, card: str,
                          files: dict[str, bytes] | None = None) -> Path:
    """Write bundle.json, the weights, the card and ``files`` into a temporary sibling of
    ``folder`` and rename it into place, so a crash leaves the old bundle or the new one, never half
    of one (classifier and segmentation bundles alike)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; an installed bundle must be readable by all
    try:
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        torch.save(state, tmp / WEIGHTS_FILE)
        (tmp / CARD_FILE).write_text(card, encoding="utf-8")
        for name, data in (files or {}).items():
            (tmp / name).write_bytes(data)
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _ci(metrics: dict, key: str) -> str:
    lo, hi = metrics.get(f"{key}_ci95", [None, None])
    value = f"{metrics[key]:.3f}"
    return value if lo is None else f"{value} (95% CI {lo:.3f}-{hi:.3f})"


def model_card(config: dict[str, Any]) -> str:
    """The model card (Markdown) written from the bundle's own config, so the two cannot disagree."""
    card, m, t = config.get("card", {}), config.get("metrics", {}), config.get("training", {})
    ops = config.get("operating_points", {})
    lines = [f"# Model card: {config['name']} {config.get('version', '')}".rstrip(), "",
             f"Created {config.get('created', '?')}. Finding: **{config.get('finding', '?')}**. "
             f"Architecture `{config['architecture']}` {json.dumps(config['arch_args'])}.", "",
             f"The probability is of the finding, data set label {config.get('positive_class', 1)} "
             f"({config['labels'].get(str(config.get('positive_class', 1)), '?')}), calibrated by temperature "
             f"scaling; files: `weights.pt` (PyTorch), `model.onnx` (ONNX Runtime), `reliability.png` "
             f"(reliability diagram before/after calibration).", "",
             "## Intended use", "", card.get("intended_use", "Decision support for research; not a diagnosis."), "",
             "## Data", "", card.get("data", "?"), "",
             f"Training: {t.get('n_train', '?')} images of the training split only; selection, early stopping, "
             f"calibration and thresholds on the validation split ({m.get('n', '?')} images). "
             f"Source file `{config.get('data_source', {}).get('file', '?')}` "
             f"(MD5 `{config.get('data_source', {}).get('md5', '?')}`).", "",
             "## Licence and citation", "", f"Data licence: {card.get('licence', '?')}.", "",
             card.get("citation", ""), "", "## Validation figures", ""]
    if m:
        lines += [f"- AUC: {_ci(m, 'auc')}",
                  f"- Accuracy at 0.5: {m['accuracy']:.3f}; at the balanced threshold "
                  f"{m['threshold']:.3f}: {m['accuracy_at_threshold']:.3f}",
                  f"- Sensitivity {m['sensitivity']:.3f}, specificity {m['specificity']:.3f}, "
                  f"PPV {m['ppv']:.3f}, NPV {m['npv']:.3f}",
                  f"- Expected calibration error: {m.get('ece_before_calibration', float('nan')):.3f} before, "
                  f"{m.get('ece_after_calibration', float('nan')):.3f} after temperature scaling "
                  f"(T = {float(config['temperature']):.3f})"]
    lines += [f"- Operating point `{k}`: threshold {v['threshold']:.3f}, sensitivity {v['sensitivity']:.3f}, "
              f"specificity {v['specificity']:.3f}" for k, v in ops.items()]
    loc = config.get("localisation")
    if loc:  # detectors: how often the map's candidates fall on the experts' lesions
        lines += [f"- Localisation ({loc['split']}, {loc['images_with_located_lesion']} images with a located lesion; "
                  f"{loc['hit_rule']}): " + ", ".join(f"top-{k} {loc[f'top{k}']:.2f} (95% CI {loc[f'top{k}_ci95'][0]:.2f}-"
                                                       f"{loc[f'top{k}_ci95'][1]:.2f})" for k in (1, 3, 5)
                                                       if loc.get(f"top{k}_ci95"))]
    lines += ["", "These are validation figures: the validation split also chose the epoch, the temperature "
              "and the thresholds, so they are optimistic; the test split is withheld.", "",
              "## Limits", ""] + [f"- {item}" for item in card.get("limits", [])]
    return "\n".join(lines) + "\n"

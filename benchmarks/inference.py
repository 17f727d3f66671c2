"""Inference speed of every shipped bundle: PyTorch (eager) against ONNX Runtime, batch 1 and 64.

Both back ends get 2 intra-op threads (the target machine's cores) and the same prepared input
(preprocessing is timed separately, since both share it); each figure is the best of ``--repeats``
timed passes over ``--images`` inputs after one warm-up pass, in images per second.

    .venv/bin/python benchmarks/inference.py [--images 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from secondread.io.medmnist import load_split, locate
from secondread.models import load_bundle
from secondread.models.bundle import prepare_images
from secondread.models.onnx import onnxruntime_available
from secondread.train import DATASETS

TASKS = {info["name"]: name for name, info in DATASETS.items()}


def _rate(run, x: np.ndarray, batch: int, repeats: int) -> float:
    """Images per second of ``run`` over ``x`` in batches of ``batch`` (best of ``repeats``)."""
    chunks = [x[i:i + batch] for i in range(0, len(x), batch)]
    for c in chunks[:2]:
        run(c)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for c in chunks:
            run(c)
        best = min(best, time.perf_counter() - start)
    return len(x) / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(2)
    has_ort = onnxruntime_available()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ONNX Runtime "
          f"{__import__('onnxruntime').__version__ if has_ort else 'not installed'}")
    print(f"{'bundle':<15}{'input':>12}{'prep img/s':>12}{'batch':>7}{'torch img/s':>13}{'onnx img/s':>12}{'speed-up':>10}")
    for name, dataset in TASKS.items():
        images, _ = load_split(locate(dataset), "val")
        images = np.resize(images, (args.images, *images.shape[1:]))  # repeat the split up to N
        bundle = load_bundle(name)
        start = time.perf_counter()
        x = prepare_images(bundle.preprocessing, images)
        prep = len(x) / (time.perf_counter() - start)
        onnx = load_bundle(name, backend="onnx").onnx if has_ort else None

        def torch_run(c):
            with torch.inference_mode():
                bundle.model(torch.from_numpy(c))

        for batch in (1, 64):
            t = _rate(torch_run, x, batch, args.repeats)
            o = _rate(onnx, x, batch, args.repeats) if onnx else float("nan")
            shape = "x".join(map(str, x.shape[2:]))
            print(f"{name:<15}{shape:>12}{prep:>12.0f}{batch:>7}{t:>13.0f}{o:>12.0f}{o / t:>9.2f}x")


if __name__ == "__main__":
    main()

"""ONNX export of a bundle's network, and inference through ONNX Runtime when it is installed.

Why: a second reader runs on plain CPUs next to PACS; ONNX Runtime runs the same graph with less
per-call overhead than eager PyTorch and without PyTorch at all, so every bundle also carries
``model.onnx``. The graph takes the *prepared* batch ``image`` (``[N, 1, *shape]`` float32, any
``N``) and returns the raw ``logit`` ``[N]``; preprocessing and temperature stay in the bundle's
JSON, so both back ends share them and differ only in floating-point rounding (tested < 1e-4).

Export uses PyTorch's TorchScript-based exporter (``dynamo=False``): the torch.export-based one
needs ``onnxscript``, which the project does not install.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import SecondreadError

ONNX_FILE = "model.onnx"
OPSET = 17
INPUT, OUTPUT = "image", "logit"


def onnxruntime_available() -> bool:
    """Whether ``onnxruntime`` can be imported (it is an optional dependency)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def export_bytes(model: nn.Module, input_shape: list[int] | tuple[int, ...], in_channels: int = 1) -> bytes:
    """The ONNX serialisation of ``model`` (eval mode) for inputs ``[N, in_channels, *input_shape]``.

    The batch axis is dynamic. Returns bytes so that ``save_bundle`` can write it with the rest of
    the bundle in one atomic step.
    """
    was_training = model.training
    model.eval()
    example = torch.zeros(2, int(in_channels), *[int(s) for s in input_shape])
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=OPSET,
                              input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    finally:
        model.train(was_training)
    return buffer.getvalue()


class OnnxNet:
    """A bundle's ``model.onnx`` run by ONNX Runtime on the CPU: prepared batch in, logits out.

    ``threads`` fixes intra-op threads (2 by default, the target machine's cores) so timings and
    results do not depend on the host's core count.
    """

    def __init__(self, path: str | os.PathLike, threads: int = 2):
        if not onnxruntime_available():
            raise SecondreadError(path, "onnxruntime is not installed (pip install onnxruntime)")
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise SecondreadError(path, f"{ONNX_FILE} is missing: re-save the bundle to export it")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise SecondreadError(path, f"ONNX Runtime cannot load the model ({type(exc).__name__})") from None
        self.path = path

    def __call__(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        """Raw logits ``[N]`` (float32) for a prepared batch ``[N, 1, *shape]``."""
        x = np.ascontiguousarray(np.asarray(batch, dtype=np.float32))
        return self.session.run([OUTPUT], {INPUT: x})[0].reshape(-1)

"""Network architectures, registered by name so a bundle can rebuild them from JSON.

Why: a bundle stores ``architecture`` and ``arch_args`` as data rather than pickled code, so a
bundle stays loadable with ``torch.load(..., weights_only=True)`` and cannot run arbitrary code.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..errors import SecondreadError


class SeedCNN(nn.Module):
    """The seed's baseline CNN: 3 x [Conv 3x3 + ReLU + MaxPool 2x2] (32/64/128), Dense, one logit.

    Convolutions use padding 1 ("same"), so a 28 px input gives 14, 7 then 3 px feature maps. The
    network returns one *logit* per image (shape ``[N]``); the sigmoid is applied by the bundle
    after temperature scaling, which is why it is not part of the network.

    Parameters
    ----------
    in_channels : int
        Image channels (1 for radiographs).
    input_size : int
        Side of the square input in pixels; fixes the size of the dense layer.
    hidden : int
        Width of the dense layer.

    Attributes
    ----------
    gradcam_layer : str
        Dotted name (``dict(model.named_modules())[name]``) of the last convolution's activation,
        the layer Grad-CAM reads.

    Example
    -------
    >>> SeedCNN()(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2])
    """

    gradcam_layer = "features.relu3"

    def __init__(self, in_channels: int = 1, input_size: int = 28, hidden: int = 512):
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = [int(in_channels), 32, 64, 128]
        side = int(input_size)
        for i in range(1, 4):
            layers[f"conv{i}"] = nn.Conv2d(channels[i - 1], channels[i], kernel_size=3, padding=1)
            layers[f"relu{i}"] = nn.ReLU()  # not in-place: Grad-CAM hooks need the activation
            layers[f"pool{i}"] = nn.MaxPool2d(2)
            side //= 2
        if side < 1:
            raise SecondreadError(None, f"input_size {input_size} is too small for three 2x2 poolings")
        self.features = nn.Sequential(layers)
        self.classifier = nn.Sequential(OrderedDict([
            ("flatten", nn.Flatten()),
            ("dense", nn.Linear(128 * side * side, int(hidden))),
            ("relu", nn.ReLU()),
            ("out", nn.Linear(int(hidden), 1)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[N, C, H, W]`` float; returns ``[N]`` logits."""
        return self.classifier(self.features(x)).squeeze(1)


ARCHITECTURES: dict[str, type[nn.Module]] = {"seed_cnn": SeedCNN}


def build(name: str, **args) -> nn.Module:
    """Instantiate the registered architecture ``name`` with ``args`` (from a bundle's JSON)."""
    if name not in ARCHITECTURES:
        raise SecondreadError(None, f"unknown architecture {name!r} (known: {', '.join(ARCHITECTURES)})")
    try:
        return ARCHITECTURES[name](**args)
    except TypeError as exc:
        raise SecondreadError(None, f"bad arguments for architecture {name!r}: {exc}") from None

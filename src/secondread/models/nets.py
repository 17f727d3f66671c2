"""Network architectures, registered by name so a bundle can rebuild them from JSON.

Why: a bundle stores ``architecture`` and ``arch_args`` as data rather than pickled code, so a
bundle stays loadable with ``torch.load(..., weights_only=True)`` and cannot run arbitrary code.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import torch
from torch import nn
import torch.nn.functional as F

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


@contextlib.contextmanager
def torch_threads(threads: int):
    """Run with ``threads`` intra-op torch threads, then give the caller back its own count.

    Why: a trainer or a batch driver picks the count that suits its networks, but is called from a
    service, a test or another trainer whose own setting must survive it, exception or not.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _ResidualBlock(nn.Module):
    """He et al.'s basic block (two 3x3 convolutions, batch norm, identity or 1x1 shortcut)."""

    def __init__(self, conv, norm, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = conv(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(c_out)
        self.conv2 = conv(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = norm(c_out)
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out else
                         nn.Sequential(conv(c_in, c_out, 1, stride=stride, bias=False), norm(c_out)))
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()  # not in-place: Grad-CAM hooks the output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + self.shortcut(x))


class CompactResNet(nn.Module):
    """A small residual network for 28 px images or 28^3 volumes, returning one logit per input.

    Why: at 28 px a ResNet-18 (11 M parameters) mostly memorises the few hundred images of the
    small MedMNIST sets; three stages of basic blocks (``width``, 2 x ``width``, 4 x ``width``
    channels, strides 1, 2, 2) with global average pooling keep the residual design at a fraction
    of the parameters and CPU-seconds, in 2D or 3D (``spatial_dims``).

    Parameters
    ----------
    in_channels : int
    spatial_dims : int
        2 for images ``[N, C, H, W]``, 3 for volumes ``[N, C, D, H, W]``.
    width : int
        Channels of the first stage.
    blocks : int
        Basic blocks per stage.
    dropout : float
        Dropout before the final linear layer.
    stem_stride : int
        Stride of the first convolution; 2 halves every feature map, which makes a 3D net about
        eight times cheaper (28^3 volumes are then read at 14^3, 7^3 and 4^3).

    Example
    -------
    >>> CompactResNet(spatial_dims=3, width=8)(torch.zeros(2, 1, 28, 28, 28)).shape
    torch.Size([2])
    """

    def __init__(self, in_channels: int = 1, spatial_dims: int = 2, width: int = 16, blocks: int = 1,
                 dropout: float = 0.0, stem_stride: int = 1):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise SecondreadError(None, f"spatial_dims must be 2 or 3, got {spatial_dims}")
        conv, norm = (nn.Conv2d, nn.BatchNorm2d) if spatial_dims == 2 else (nn.Conv3d, nn.BatchNorm3d)
        pool = nn.AdaptiveAvgPool2d(1) if spatial_dims == 2 else nn.AdaptiveAvgPool3d(1)
        w = int(width)
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            stem=nn.Sequential(conv(int(in_channels), w, 3, stride=int(stem_stride), padding=1, bias=False), norm(w), nn.ReLU()))
        c_in = w
        for stage, (c_out, stride) in enumerate([(w, 1), (2 * w, 2), (4 * w, 2)], start=1):
            for b in range(int(blocks)):
                layers[f"stage{stage}_{b}"] = _ResidualBlock(conv, norm, c_in, c_out, stride if b == 0 else 1)
                c_in = c_out
        self.features = nn.Sequential(layers)
        self.gradcam_layer = f"features.stage3_{int(blocks) - 1}.relu2"
        self.classifier = nn.Sequential(OrderedDict([
            ("pool", pool), ("flatten", nn.Flatten()), ("dropout", nn.Dropout(float(dropout))),
            ("out", nn.Linear(c_in, 1))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[N, C, *spatial]`` float; returns ``[N]`` logits."""
        return self.classifier(self.features(x)).squeeze(1)


ARCHITECTURES["compact_resnet"] = CompactResNet


class LesionMapNet(nn.Module):
    """A fully convolutional lesion map whose image logit is the mean of the map's top ``top_k`` logits.

    Why: where experts outlined the lesion on the training images, the outline is far richer
    supervision than one label per image. A MONAI U-Net (``width``, 2x, 4x ... channels over
    ``levels`` resolutions) gives ``map_channels`` features at the input's full size; a 1 x 1
    convolution (``head``) turns them into a per-pixel lesion logit (trained against the masks),
    and the image's logit is the mean of its ``top_k`` highest pixel logits (a soft max: an image
    has the finding where its most lesion-like spot is). Temperature scaling then calibrates it
    like every other bundle.

    The map is also the explanation: Grad-CAM of the image logit at ``features`` (the U-Net's
    output, the layer :attr:`gradcam_layer` names) weights each feature channel by the head's
    weight (the pooled gradient), so the CAM is the lesion logit map itself above the head's bias,
    at the input's resolution instead of an 8 x 8 grid.

    Parameters
    ----------
    in_channels : int
    width : int
        Channels at full resolution (the U-Net's first level).
    levels : int
        Resolutions (each halves the previous); the input side must divide by ``2 ** (levels - 1)``.
    num_res_units : int
        Residual units per U-Net block (MONAI).
    map_channels : int
        Feature channels of the map before the head.
    top_k : int
        Pixels whose logits are averaged into the image logit.
    prior : float
        Initial lesion probability of a pixel (the head's bias): starts the map near "nothing here".

    Example
    -------
    >>> LesionMapNet(width=4, levels=3)(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2])
    """

    def __init__(self, in_channels: int = 1, width: int = 8, levels: int = 5, num_res_units: int = 1,
                 map_channels: int = 8, top_k: int = 8, prior: float = 0.01):
        super().__init__()
        from monai.networks.nets import UNet

        if int(levels) < 2 or int(top_k) < 1:
            raise SecondreadError(None, f"LesionMapNet needs levels >= 2 and top_k >= 1 (got {levels}, {top_k})")
        self.features = UNet(spatial_dims=2, in_channels=int(in_channels), out_channels=int(map_channels),
                             channels=[int(width) * 2 ** i for i in range(int(levels))],
                             strides=[2] * (int(levels) - 1), num_res_units=int(num_res_units))
        self.head = nn.Conv2d(int(map_channels), 1, 1)
        with torch.no_grad():
            self.head.bias.fill_(float(torch.logit(torch.tensor(float(prior)))))
        self.top_k = int(top_k)
        self.gradcam_layer = "features"

    def lesion_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel lesion logits ``[N, 1, H, W]`` (what the masks supervise)."""
        return self.head(self.features(x))

    def pool(self, pixel_logits: torch.Tensor) -> torch.Tensor:
        """Image logits ``[N]``: mean of each map's ``top_k`` highest pixel logits."""
        flat = pixel_logits.flatten(1)
        return torch.topk(flat, min(self.top_k, flat.shape[1]), dim=1).values.mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[N, C, H, W]`` float; returns ``[N]`` logits."""
        return self.pool(self.lesion_logits(x))


ARCHITECTURES["lesion_map"] = LesionMapNet


class LesionHeatmapNet(nn.Module):
    """A small fully convolutional lesion detector: a per-location lesion logit map, and the image's
    logit as the map's maximum (the "top heat").

    Why: a whole-image classifier trained on ~140 mammograms learns where abnormal *images* differ,
    not where the lesion is (its Grad-CAM pointed at no mini-MIAS lesion). Trained on the experts'
    circles as heat-map targets, the same network says *where* (the map, whose peaks are ranked
    candidates) and *whether* (its strongest location), so the explanation shown to a reader is the
    detector's own evidence. A strided stem (``stem_stride`` 2 or 4), four residual stages (strides
    1, 2, 2, 2) and a top-down merge of the last stage's context into the features at 1/8 of the
    input give a map at 1/8 of the input (32 x 32 cells for a 256 px input) whose receptive field
    covers the largest masses.

    ``forward`` returns one logit per image (``[N]``, the max of :meth:`heatmap`), like every
    classifier bundle, so the bundle's calibration, operating points, ONNX export and Grad-CAM all
    apply unchanged. :meth:`probability_map` is the per-cell lesion probability the map was
    trained to give (against the experts' circles), deliberately *not* temperature-scaled: with a
    weak detector the fitted temperature flattens the image probability towards the prevalence
    (mini-MIAS: T ~ 1e5), which is right for the image's probability but would flatten the map a
    reader looks at and the candidates' extent with it.

    Example
    -------
    >>> net = LesionHeatmapNet(width=8)
    >>> net(torch.zeros(2, 1, 64, 64)).shape, net.heatmap(torch.zeros(2, 1, 64, 64)).shape
    (torch.Size([2]), torch.Size([2, 1, 8, 8]))
    """

    def __init__(self, in_channels: int = 1, width: int = 16, blocks: int = 1, dropout: float = 0.0,
                 prior: float = 0.01, stem_stride: int = 2):
        super().__init__()
        if int(stem_stride) not in (2, 4):
            raise SecondreadError(None, f"stem_stride must be 2 or 4, got {stem_stride}")
        w = int(width)
        conv, norm = nn.Conv2d, nn.BatchNorm2d
        stem: list[nn.Module] = [conv(int(in_channels), w, 3, stride=2, padding=1, bias=False), norm(w), nn.ReLU()]
        if int(stem_stride) == 4:  # a second strided convolution: 4x cheaper stages, same map stride
            stem += [conv(w, w, 3, stride=2, padding=1, bias=False), norm(w), nn.ReLU()]
        layers: OrderedDict[str, nn.Module] = OrderedDict(stem=nn.Sequential(*stem))
        c_in, stride, mid_channels = w, int(stem_stride), 0
        for stage, (c_out, step) in enumerate([(w, 1), (2 * w, 2), (4 * w, 2), (4 * w, 2)], start=1):
            for b in range(int(blocks)):
                layers[f"stage{stage}_{b}"] = _ResidualBlock(conv, norm, c_in, c_out, step if b == 0 else 1)
                c_in = c_out
            stride *= step
            if stride == 8:  # the map's stage: the last block at 1/8 of the input
                self._mid, mid_channels = f"stage{stage}_{int(blocks) - 1}", c_out
        self._up = float(stride // 8)
        self.features = nn.Sequential(layers)
        self.lateral = conv(mid_channels, 2 * w, 1, bias=False)
        self.top_down = conv(c_in, 2 * w, 1, bias=False)
        self.merge = nn.Sequential(OrderedDict(
            norm=norm(2 * w), relu=nn.ReLU(), conv=conv(2 * w, 2 * w, 3, padding=1, bias=False),
            norm2=norm(2 * w), relu2=nn.ReLU()))
        self.gradcam_layer = "merge.relu2"
        self.dropout = nn.Dropout2d(float(dropout))
        self.head = conv(2 * w, 1, 1)
        nn.init.constant_(self.head.bias, float(torch.log(torch.tensor(prior / (1 - prior)))))

    def heatmap(self, x: torch.Tensor) -> torch.Tensor:
        """Lesion logits ``[N, 1, H/8, W/8]`` (uncalibrated); the input side must be a multiple of 16
        (32 with ``stem_stride=4``)."""
        return self.head_logits(self.merged_features(x))

    def merged_features(self, x: torch.Tensor) -> torch.Tensor:
        """The features the head reads (``merge.relu2``, ``[N, 2 w, H/8, W/8]``)."""
        y, mid = x, None
        for name, module in self.features.named_children():
            y = module(y)
            if name == self._mid:
                mid = y
        up = F.interpolate(self.top_down(y), scale_factor=self._up, mode="nearest")
        return self.merge(self.lateral(mid) + up)

    def head_logits(self, features: torch.Tensor) -> torch.Tensor:
        """The map's logits from :meth:`merged_features` (the 1 x 1 head after dropout)."""
        return self.head(self.dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[N, C, H, W]``; returns ``[N]`` logits, the maximum of the lesion map."""
        return self.heatmap(x).flatten(1).amax(dim=1)

    def probability_map(self, x: torch.Tensor) -> torch.Tensor:
        """Lesion probability per map cell as trained, ``sigmoid(logit)`` (see the class docstring)."""
        return torch.sigmoid(self.heatmap(x))


ARCHITECTURES["lesion_heatmap"] = LesionHeatmapNet


class LesionHeatmapEnsemble(nn.Module):
    """``members`` :class:`LesionHeatmapNet` trained alone with different seeds, their logit maps
    averaged: the map, the image's logit (its maximum) and the candidates are the ensemble's.

    Why: ~150 training mammograms leave one detector's map at the mercy of its seed (the same recipe
    scored 0.48-0.55 top-3 by CV across seeds and thread counts); averaging members keeps what they agree on. The members'
    head features are concatenated into one layer (``features_all``), so Grad-CAM there weighs every
    member's channels by their gradient on the averaged map, as for a single network.

    >>> net = LesionHeatmapEnsemble(members=3, width=8)
    >>> net(torch.zeros(2, 1, 64, 64)).shape, net.heatmap(torch.zeros(2, 1, 64, 64)).shape
    (torch.Size([2]), torch.Size([2, 1, 8, 8]))
    """

    def __init__(self, members: int = 5, **member_args):
        super().__init__()
        if int(members) < 1:
            raise SecondreadError(None, f"an ensemble needs at least one member, got {members}")
        self.members = nn.ModuleList(LesionHeatmapNet(**member_args) for _ in range(int(members)))
        self.features_all = nn.Identity()
        self.gradcam_layer = "features_all"

    def heatmap(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of the members' lesion logits, ``[N, 1, H/8, W/8]``."""
        features = self.features_all(torch.cat([m.merged_features(x) for m in self.members], dim=1))
        parts = features.chunk(len(self.members), dim=1)
        return torch.stack([m.head_logits(f) for m, f in zip(self.members, parts)]).mean(dim=0)

    forward = LesionHeatmapNet.forward
    probability_map = LesionHeatmapNet.probability_map


ARCHITECTURES["lesion_heatmap_ensemble"] = LesionHeatmapEnsemble

"""Grad-CAM, regions and overlays: checked on a network whose answer is known by construction."""

import numpy as np
import pytest
import torch

from secondread import explain


class BlobNet(torch.nn.Module):
    """logit = global max of a ReLU'd identity convolution: Grad-CAM must point at the brightest blob."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0, 1, 1] = 1.0
        self.act = torch.nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x)).amax(dim=(1, 2, 3))


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_gradcam_points_at_the_evidence_and_is_not_inverted(method):
    img = np.zeros((32, 32), np.float32)
    img[20:26, 5:11] = 1.0  # the blob
    img[20:26, 5:11] += np.linspace(0, 0.1, 6, dtype=np.float32)[:, None]
    heat = explain.gradcam(BlobNet(), "act", torch.from_numpy(img)[None, None], (64, 64), method=method)
    assert heat.shape == (64, 64) and heat.dtype == np.float32
    assert heat.max() == 1.0 and heat.min() >= 0.0
    region = explain.hottest_region(heat, spacing=(0.5, 0.5))
    # the blob, upsampled x2, lies in rows 40-52 and columns 10-22; the box must sit on it
    assert 36 <= region["y_min"] and region["y_max"] <= 56 and 6 <= region["x_min"] and region["x_max"] <= 26
    assert 40 <= region["peak"]["y"] < 52 and 10 <= region["peak"]["x"] < 22
    assert heat[0, 0] == 0.0  # background is cold (a flipped map would make it hot)
    assert region["area_mm2"] == region["area_px"] * 0.25


def test_hottest_region_on_a_hand_made_map():
    heat = np.zeros((10, 12), np.float32)
    heat[2:5, 3:7] = 0.6
    heat[3, 4] = 1.0
    heat[8, 10] = 0.9  # a second, separate hot spot is not part of the peak's region
    region = explain.hottest_region(heat)
    assert (region["x_min"], region["y_min"], region["x_max"], region["y_max"]) == (3, 2, 7, 5)
    assert region["area_px"] == 12 and "area_mm2" not in region
    assert explain.hottest_region(np.zeros((4, 4), np.float32)) is None


def test_overlay_draws_the_box_and_keeps_the_size():
    pixels = np.tile(np.linspace(0, 1000, 40, dtype=np.float32), (30, 1))
    heat = np.zeros((30, 40), np.float32)
    heat[10:20, 10:20] = 1.0
    region = explain.hottest_region(heat)
    out = explain.overlay(pixels, heat, region)
    assert out.shape == (30, 40, 3) and out.dtype == np.uint8
    assert tuple(out[10, 15]) == (0, 255, 0)  # top edge of the box
    assert out[0, 39, 0] == out[0, 39, 1] == out[0, 39, 2] == 255  # untouched grey where the map is cold


def test_hottest_region_in_3d_reports_slices_and_volume():
    heat = np.zeros((6, 8, 10), np.float32)
    heat[2:4, 1:5, 3:9] = 0.7
    heat[3, 2, 4] = 1.0
    region = explain.hottest_region(heat, spacing=(2.0, 0.5, 0.5))
    assert (region["z_min"], region["z_max"], region["y_min"], region["y_max"], region["x_min"], region["x_max"]) \
        == (2, 4, 1, 5, 3, 9)
    assert region["peak"] == {"x": 4, "y": 2, "z": 3}
    assert region["area_px"] == 48 and region["volume_mm3"] == 48 * 0.5


def test_an_unknown_explanation_method_is_refused():
    from secondread.errors import SecondreadError
    with pytest.raises(SecondreadError, match="unknown explanation method"):
        explain.gradcam(BlobNet(), "act", torch.zeros(1, 1, 8, 8), (8, 8), method="lime")


def test_repeated_maps_leave_no_hooks_behind():
    """MONAI's CAM registers hooks it never removes; a service explaining with one model must not
    accumulate them (each would run on every later forward pass), and the maps stay the same."""
    net = BlobNet()
    img = np.zeros((16, 16), np.float32)
    img[4:8, 4:8] = 1.0
    batch = torch.from_numpy(img)[None, None]
    maps = [explain.gradcam(net, "act", batch, (16, 16)) for _ in range(3)]
    assert len(net.act._forward_hooks) == 0 and len(net.act._backward_hooks) == 0
    assert all(np.array_equal(maps[0], m) for m in maps[1:])

"""The mask-supervised classifier (``LesionMapNet``, the ``brain-mri-tumour`` recipe): its image logit
is its map's top, its Grad-CAM is its own lesion map, it exports to ONNX, and the training
augmentation moves masks with the images.

References are independent of the code under test: the pooled logit is recomputed with numpy from
the map, the CAM is compared with the map computed by hand (head weights over the features), ONNX
Runtime runs the exported graph, and the warped mask is checked against the warped image.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from secondread.explain import gradcam
from secondread.models.nets import LesionMapNet, build
from secondread.models.onnx import OnnxNet, export_bytes, onnxruntime_available
from secondread.train import _augment_mri


@pytest.fixture()
def net():
    torch.manual_seed(0)
    return build("lesion_map", width=4, levels=3, map_channels=4, top_k=5).eval()


def test_image_logit_is_the_mean_of_the_maps_top_k(net):
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        pixels = net.lesion_logits(x).numpy().reshape(3, -1)
        logits = net(x).numpy()
    expected = np.sort(pixels, axis=1)[:, -5:].mean(1)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def test_gradcam_at_the_features_is_the_lesion_map_above_the_heads_bias(net):
    torch.manual_seed(1)
    x = torch.randn(1, 1, 32, 32)
    cam = gradcam(net, net.gradcam_layer, x, (32, 32), method="gradcam")
    with torch.no_grad():
        features = net.features(x)[0].numpy()
        weights = net.head.weight.detach().numpy().reshape(-1)
    above_bias = np.clip(np.tensordot(weights, features, axes=1), 0, None)  # pooled gradient = weight / (H W)
    np.testing.assert_allclose(cam, above_bias / above_bias.max(), atol=1e-4)
    assert np.unravel_index(np.argmax(cam), cam.shape) == np.unravel_index(np.argmax(above_bias), cam.shape)
    plus = gradcam(net, net.gradcam_layer, x, (32, 32), method="gradcam++")  # runs too (a different weighting)
    assert plus.shape == (32, 32) and np.isfinite(plus).all() and 0 <= plus.min() and plus.max() <= 1


@pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime is not installed")
def test_onnx_export_matches_torch(net, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(export_bytes(net, [32, 32]))
    x = np.random.default_rng(0).standard_normal((4, 1, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(OnnxNet(path)(x), expected, atol=1e-4)


def test_augmentation_moves_the_mask_with_the_image_and_keeps_unmasked_draws():
    x = torch.zeros(4, 1, 32, 32)
    x[:, :, 8:14, 20:26] = 1.0  # a bright square, its own mask
    masks = x.clone()
    images, warped = _augment_mri(x, torch.Generator().manual_seed(3), masks=masks)
    alone = _augment_mri(x, torch.Generator().manual_seed(3))
    assert torch.equal(images, alone)  # the masks change no random draw
    for image, mask in zip(images, warped):
        bright = image[0] > image[0].mean()
        assert mask[0][bright].mean() > 0.5 > mask[0][~bright].mean()


def test_bad_arguments_are_one_line_errors():
    from secondread.errors import SecondreadError

    with pytest.raises(SecondreadError, match="levels"):
        LesionMapNet(levels=1)


@pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime is not installed")
def test_shipped_brain_bundle_onnx_matches_torch_on_real_val_slices(data_root):
    from secondread.datasets import lgg
    from secondread.models.bundle import load_bundle

    samples = lgg.samples(data_root, "val")[::8]
    images = [s.image.pixels for s in samples]
    torch_bundle, onnx_bundle = load_bundle("brain-mri-tumour"), load_bundle("brain-mri-tumour", backend="onnx")
    assert torch_bundle.config["architecture"] == "lesion_map" and onnx_bundle.backend == "onnx"
    assert np.abs(onnx_bundle.predict_proba(images) - torch_bundle.predict_proba(images)).max() < 1e-4

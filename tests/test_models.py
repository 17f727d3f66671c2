"""secondread.models: the seed CNN and the model bundle (save, load, shipped zoo)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from secondread import preprocess
from secondread.errors import SecondreadError
from secondread.models import SeedCNN, build, load_bundle, save_bundle, shipped_names
from secondread.models.bundle import batched_logits, calibrated, prepare_images

SPEC = [{"op": "normalise", "method": "minmax"},
        {"op": "resize", "shape": [28, 28], "interpolation": "area"},
        {"op": "normalise", "method": "fixed", "mean": 0.5, "std": 0.25}]


def _config(**extra):
    config = {"name": "toy", "version": "0", "architecture": "seed_cnn",
              "arch_args": {"in_channels": 1, "input_size": 28, "hidden": 512},
              "preprocessing": SPEC, "labels": {"0": "normal", "1": "pneumonia"}, "finding": "pneumonia",
              "threshold": 0.6, "temperature": 1.5,
              "operating_points": {"balanced": {"threshold": 0.6, "sensitivity": 0.9, "specificity": 0.9},
                                   "screening": {"threshold": 0.3, "sensitivity": 0.95, "specificity": 0.7}}}
    config.update(extra)
    return config


@pytest.fixture(scope="module")
def val_images(data_root):
    with np.load(data_root / "medmnist" / "pneumoniamnist.npz") as npz:
        return npz["val_images"]


def test_seed_cnn_returns_one_logit_per_image():
    assert SeedCNN()(torch.zeros(5, 1, 28, 28)).shape == (5,)


def test_seed_cnn_parameter_count_matches_hand_calculation():
    conv = (1 * 9 * 32 + 32) + (32 * 9 * 64 + 64) + (64 * 9 * 128 + 128)
    dense = 128 * 3 * 3 * 512 + 512  # 28 -> 14 -> 7 -> 3 after three 2x2 poolings
    assert sum(p.numel() for p in SeedCNN().parameters()) == conv + dense + (512 + 1) == 683521


def test_gradcam_layer_is_the_last_conv_activation():
    model = SeedCNN()
    layer = dict(model.named_modules())[model.gradcam_layer]
    assert isinstance(layer, nn.ReLU)
    seen = {}
    layer.register_forward_hook(lambda m, i, o: seen.update(shape=tuple(o.shape)))
    model(torch.zeros(2, 1, 28, 28))
    assert seen["shape"] == (2, 128, 7, 7)


def test_build_rejects_unknown_architecture():
    assert isinstance(build("seed_cnn", hidden=16), SeedCNN)
    with pytest.raises(SecondreadError, match="unknown architecture"):
        build("resnet999")


def test_prepare_images_equals_apply_per_image(val_images):
    images = val_images[:20]
    batch = prepare_images(SPEC, images)
    assert batch.shape == (20, 1, 28, 28) and batch.dtype == np.float32
    for i, img in enumerate(images):
        assert np.array_equal(batch[i, 0], preprocess.apply(SPEC, img))


def test_saved_bundle_reloads_to_identical_predictions(tmp_path, val_images):
    torch.manual_seed(1)
    model = SeedCNN()
    save_bundle(tmp_path / "b", model, _config())
    bundle = load_bundle(tmp_path / "b")
    images = val_images[:50]
    expected = calibrated(batched_logits(model, prepare_images(SPEC, images)), 1.5)
    assert np.array_equal(bundle.predict_proba(images), expected)
    assert np.array_equal(bundle.predict_proba(list(images)), expected)
    assert bundle.preprocessing == preprocess.from_json(preprocess.to_json(SPEC)) == SPEC
    assert json.loads((tmp_path / "b" / "bundle.json").read_text())["preprocessing"] == SPEC
    assert bundle.prepare(images[0]).shape == (1, 28, 28)
    assert len(bundle.sha256) == 64 and not bundle.model.training


def test_save_bundle_replaces_whole_folder_and_leaves_no_temporaries(tmp_path):
    save_bundle(tmp_path / "b", SeedCNN(), _config(version="1"))
    (tmp_path / "b" / "stale.txt").write_text("old")
    save_bundle(tmp_path / "b", SeedCNN(), _config(version="2"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["bundle.json", "model_card.md", "weights.pt"]
    assert load_bundle(tmp_path / "b").version == "2"


def test_decide_names_the_strictest_operating_point_crossed(tmp_path):
    save_bundle(tmp_path / "b", SeedCNN(), _config())
    bundle = load_bundle(tmp_path / "b")
    assert bundle.decide(0.7)["operating_point"] == "balanced" and bundle.decide(0.7)["positive"]
    assert bundle.decide(0.4)["operating_point"] == "screening" and not bundle.decide(0.4)["positive"]
    assert bundle.decide(0.1)["operating_point"] is None


def test_unknown_name_lists_shipped_bundles():
    with pytest.raises(SecondreadError, match="pneumonia") as info:
        load_bundle("nope")
    assert info.value.path == "nope" and "shipped" in info.value.problem


def test_broken_bundle_folders_are_reported(tmp_path):
    with pytest.raises(SecondreadError, match="bundle.json is missing"):
        load_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text("{not json")
    with pytest.raises(SecondreadError, match="not valid JSON"):
        load_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text(json.dumps(_config()))
    with pytest.raises(SecondreadError, match="weights.pt is missing"):
        load_bundle(tmp_path)
    torch.save(SeedCNN(hidden=8).state_dict(), tmp_path / "weights.pt")
    with pytest.raises(SecondreadError, match="weights do not load"):
        load_bundle(tmp_path)


def test_shipped_pneumonia_bundle_loads_by_name():
    assert "pneumonia" in shipped_names()
    bundle = load_bundle("pneumonia")
    assert bundle.name == "pneumonia" and bundle.finding == "pneumonia"
    assert bundle.labels == {"0": "normal", "1": "pneumonia"}
    assert bundle.metrics["auc"] >= 0.95 and bundle.metrics["n"] == 524
    assert bundle.config["training"]["split_used"] == "train" and bundle.config["training"]["n_train"] == 4708
    assert set(bundle.operating_points) == {"balanced", "screening"}
    assert bundle.operating_points["screening"]["sensitivity"] >= 0.95
    assert bundle.threshold == bundle.operating_points["balanced"]["threshold"]
    assert (bundle.path / "weights.pt").stat().st_size < 5_000_000


def test_shipped_bundle_accepts_a_full_size_radiograph(val_images):
    """The spec starts with min-max and an area resize, so a large image in another range works."""
    bundle = load_bundle("pneumonia")
    images = val_images[:8]
    small = bundle.predict_proba(images)
    big = [cv2.resize(im.astype(np.float32), (1024, 1024), interpolation=cv2.INTER_LINEAR) * 16.0 + 100.0
           for im in images]
    assert np.allclose(bundle.predict_proba(big), small, atol=0.1)


# --- the compact residual network (2D and 3D) ---------------------------------------------------------

@pytest.mark.parametrize("dims,shape", [(2, (3, 1, 28, 28)), (3, (2, 1, 28, 28, 28))])
def test_compact_resnet_gives_one_logit_and_a_gradcam_layer(dims, shape):
    from secondread.models import CompactResNet

    model = build("compact_resnet", spatial_dims=dims, width=4, stem_stride=2 if dims == 3 else 1)
    assert isinstance(model, CompactResNet)
    layer = dict(model.named_modules())[model.gradcam_layer]
    assert isinstance(layer, nn.ReLU)
    seen = {}
    layer.register_forward_hook(lambda m, i, o: seen.update(shape=tuple(o.shape)))
    model.eval()
    assert model(torch.zeros(*shape)).shape == (shape[0],)
    assert seen["shape"][:2] == (shape[0], 16) and len(seen["shape"]) == dims + 2
    with pytest.raises(SecondreadError, match="spatial_dims"):
        build("compact_resnet", spatial_dims=4)


def test_prepare_images_handles_volumes():
    spec = [{"op": "normalise", "method": "minmax"}, {"op": "resize", "shape": [8, 8, 8]}]
    vols = np.random.default_rng(0).random((3, 10, 12, 12)).astype(np.float32)
    batch = prepare_images(spec, vols)
    assert batch.shape == (3, 1, 8, 8, 8)
    assert np.array_equal(batch[1, 0], preprocess.apply(spec, vols[1]))

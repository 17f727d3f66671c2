"""Segmentation (issue 5): a tiny U-Net trained on real LGG patients, the ``secondread segment``
command end to end, the shipped ``brain-mri-seg`` bundle on real validation slices, bad input.

Independent references: masks are re-read from the written PNGs with Pillow and Dice is recomputed
with numpy; region areas are checked against pixel counts times the spacing; synthetic masks with
hand-computable regions.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from secondread import segment, segment_train
from secondread.cli import main
from secondread.datasets import lgg
from secondread.errors import SecondreadError
from secondread.image import Image
from secondread.models.nets import torch_threads

TINY_ARCH = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "channels": [4, 8, 16],
             "strides": [2, 2], "num_res_units": 0}
TINY_RECIPE = dict(segment_train.RECIPE, arch_args=TINY_ARCH, epochs=2)
VAL_PATIENT = "TCGA_CS_4944_20010208"  # a val patient folder (lgg.json), 20 slices


@pytest.fixture(scope="module")
def lgg_dir(data_root) -> Path:
    folder = data_root / "mri" / "lgg"
    if not (folder / "index.csv").is_file():
        pytest.skip("mri/lgg is not in the data folder")
    return folder


@pytest.fixture(scope="module")
def tiny_bundle(lgg_dir, tmp_path_factory) -> Path:
    """A tiny U-Net cross-validated over 3 real patients (one per fold), then trained on all 3."""
    out = tmp_path_factory.mktemp("seg") / "tiny-seg"
    segment_train.train_seg(out, lgg_dir.parents[1], recipe=TINY_RECIPE, patients=3, max_steps=8,
                            oof_out=out.parent / "oof.npz")
    return out


@pytest.fixture(scope="module")
def small_data(lgg_dir, tmp_path_factory) -> Path:
    """One val patient's slices and masks in an LGG-like layout (patient folder inside a subfolder)."""
    root = tmp_path_factory.mktemp("lggsmall")
    dst = root / "site" / VAL_PATIENT
    dst.mkdir(parents=True)
    for f in sorted((lgg_dir / VAL_PATIENT).iterdir()):
        shutil.copy(f, dst / f.name)
    return root


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["segment", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _png(path: Path) -> np.ndarray:
    with PILImage.open(path) as im:
        assert im.mode == "L"
        return np.asarray(im)


def test_tiny_bundle_is_a_complete_segmentation_bundle(tiny_bundle):
    import torch

    b = segment.load_seg_bundle(tiny_bundle)
    assert b.config["task"] == "segmentation" and b.config["training"]["split_used"] == "all"
    assert b.threshold in segment_train.THRESHOLDS and b.low_threshold in segment_train.LOW_THRESHOLDS
    assert b.config["min_region_px"] in segment_train.CUTS[b.config["cut"]]
    assert {"dice_tumour", "fp_rate_empty", "dice_patient_3d", "hd95_tumour"} <= set(b.config["metrics"])
    assert b.config["metrics"]["split"] == "3-fold cross-validation, out of fold"
    assert b.config["metrics"]["patients"] == 3 and b.config["recipe"]["epochs"] == 2
    assert b.config["training"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()  # which kernels
    assert (tiny_bundle / "model_card.md").read_text().startswith("# Model card: brain-mri-seg")


def test_saved_out_of_fold_maps_reproduce_the_bundle_figures(tiny_bundle, lgg_dir):
    """The saved out-of-fold logits cover every slice of the 3 patients, in order, and every cut of
    the bundle's selection grid (either view, slice by slice or each patient's slices stacked as
    one volume), applied to them, gives the Dice (scikit-learn's F1) and the false-positive rate on
    empty slices that the bundle recorded."""
    from sklearn.metrics import f1_score

    from secondread.datasets import lgg

    saved = np.load(tiny_bundle.parent / "oof.npz")
    b = segment.load_seg_bundle(tiny_bundle)
    items = [s for s in lgg.samples(lgg_dir.parents[1]) if s.patient in set(saved["patients"])]
    assert len(set(saved["patients"])) == 3 and list(saved["ids"]) == [s.id for s in items]
    assert saved["logits"].shape == saved["logits_flip"].shape == (len(items), *b.input_shape)
    truths = [s.lesions[0].mask if s.lesions else np.zeros(s.image.shape, bool) for s in items]
    volumes = {}  # patient -> its slice indices in slice order (mri/lgg holds every slice of a patient)
    for i, s in sorted(enumerate(items), key=lambda e: (e[1].patient, e[1].attributes["slice"])):
        volumes.setdefault(s.patient, []).append(i)
    for idx in volumes.values():
        numbers = [items[i].attributes["slice"] for i in idx]
        assert numbers == list(range(numbers[0], numbers[0] + len(idx)))
    probs = {flip: [segment._upsampled_probability(lg, t.shape) for lg, t in zip(saved[key].astype(np.float32), truths)]
             for flip, key in ((False, "logits"), (True, "logits_flip"))}
    grid = b.config["selection"]["grid"]
    assert {(g["test_time_flip"], g["cut"]) for g in grid} == {(f, c) for f in (False, True) for c in ("slice", "volume")}
    for g in grid[::7]:
        px = segment._scaled_px(g["min_region_px"], truths[0].shape, b.input_shape)
        p = probs[g["test_time_flip"]]
        if g["cut"] == "slice":
            masks = [segment.postprocess(x, g["threshold"], g["low_threshold"], px) for x in p]
        else:
            masks = [None] * len(p)
            for idx in volumes.values():
                cut = segment.postprocess(np.stack([p[i] for i in idx]), g["threshold"], g["low_threshold"], px)
                for k, i in enumerate(idx):
                    masks[i] = cut[k]
        dice = [f1_score(t.ravel(), m.ravel(), zero_division=0.0) for t, m in zip(truths, masks) if t.any()]
        fp = [m.any() for t, m in zip(truths, masks) if not t.any()]
        assert np.mean(dice) == pytest.approx(g["dice_tumour"], abs=0.01), g
        assert np.mean(fp) == pytest.approx(g["fp_rate_empty"], abs=0.03), g


def test_segment_command_writes_masks_where_the_images_are_and_scores_them(tiny_bundle, small_data, tmp_path, capsys):
    masks, csv_path = tmp_path / "masks", tmp_path / "pred.csv"
    code, out, err = _run(capsys, "--model", str(tiny_bundle), "--data", str(small_data), "--split", "all",
                          "--masks-out", str(masks), "--predictions", str(csv_path), "--json")
    assert code == 0, err
    result = json.loads(out)
    images = sorted(p for p in small_data.rglob("*_flair.png"))
    assert result["summary"]["images"] == len(images) == 20
    rows = {r["id"]: r for r in csv.DictReader(csv_path.open())}
    per_image = {r["id"]: r for r in result["per_image"]}
    for img in images:
        rel = img.relative_to(small_data).as_posix()
        written = _png(masks / rel)  # same relative path and name as the input image
        expert = _png(img.with_name(img.name.replace("_flair", "_mask"))) > 127
        assert written.shape == _png(img).shape == (256, 256)
        assert set(np.unique(written)) <= {0, 255}
        pred = written == 255
        both = pred.sum() + expert.sum()
        dice = 1.0 if both == 0 else 2 * (pred & expert).sum() / both  # numpy, on the written files
        assert float(rows[rel]["dice"]) == pytest.approx(dice, abs=1e-4)
        assert int(rows[rel]["pred_pixels"]) == pred.sum() and int(rows[rel]["truth_pixels"]) == expert.sum()
        assert rows[rel]["hd95"] == "" or (pred.any() and expert.any())
        regions = per_image[rel]["regions"]
        assert sum(r["area_px"] for r in regions) == pred.sum()
    # per-patient 3D Dice, recomputed from the files
    stack = lambda pat: np.stack([_png(masks / i.relative_to(small_data)) == 255 if pat == "p" else
                                  _png(i.with_name(i.name.replace("_flair", "_mask"))) > 127 for i in images])
    p, t = stack("p"), stack("t")
    dice3d = 2 * (p & t).sum() / (p.sum() + t.sum())
    assert result["per_patient_dice"]["TCGA_CS_4944"] == pytest.approx(dice3d, abs=1e-4)
    tumour = [float(r["dice"]) for r in rows.values() if r["tumour"] == "1"]
    assert result["summary"]["dice_tumour"] == pytest.approx(np.mean(tumour), abs=1e-4)


def test_single_file_and_the_rgb_tif_layout(tiny_bundle, lgg_dir, tmp_path, capsys):
    flair = lgg_dir / VAL_PATIENT / f"{VAL_PATIENT}_12_flair.png"
    grey = _png(flair)
    rgb = np.stack([np.zeros_like(grey), grey, np.full_like(grey, 200)], axis=-1)  # Kaggle order: FLAIR = 1
    tif = tmp_path / "data" / f"{VAL_PATIENT}_12.tif"
    tif.parent.mkdir()
    PILImage.fromarray(rgb, mode="RGB").save(tif)
    assert np.array_equal(segment.read_slice(tif).pixels, grey)  # the FLAIR channel, not the luminance
    code, _, err = _run(capsys, "--model", str(tiny_bundle), "--data", str(tif), "--masks-out", str(tmp_path / "m"))
    assert code == 0, err
    assert _png(tmp_path / "m" / f"{VAL_PATIENT}_12.png").shape == grey.shape


def test_regions_measure_areas_diameters_and_boxes():
    mask = np.zeros((40, 50), bool)
    mask[2:12, 3:23] = True  # 10 x 20 = 200 px
    mask[30:33, 40:43] = True  # 3 x 3 = 9 px
    regions = segment.regions_of(mask, spacing=(0.5, 0.8))
    big, small = regions
    assert (big["area_px"], small["area_px"]) == (200, 9)
    assert big["area_mm2"] == pytest.approx(200 * 0.5 * 0.8) and small["area_mm2"] == pytest.approx(9 * 0.4)
    assert big["bbox"] == {"x0": 3, "y0": 2, "x1": 23, "y1": 12}
    assert big["centroid"] == {"x": 12.5, "y": 6.5}
    # Feret diameter of the rectangle's outline: between its pixel centres' hull and its outer corners
    assert np.hypot(19, 9) <= big["longest_diameter_px"] <= np.hypot(20, 10)
    assert np.hypot(19 * 0.8, 9 * 0.5) <= big["longest_diameter_mm"] <= np.hypot(20 * 0.8, 10 * 0.5)
    assert segment.regions_of(mask)[0]["area_mm2"] is None
    assert segment.regions_of(np.zeros((5, 5), bool)) == []
    assert segment.remove_specks(mask, 10).sum() == 200


def test_scoring_patients_the_model_trained_on_is_flagged_as_in_sample(tiny_bundle, lgg_dir, small_data, tmp_path, capsys):
    """The tiny bundle trained on the first 3 patients: scoring one of them says the figures are
    in-sample and quotes the out-of-fold Dice; a patient it never saw gets no such note."""
    trained = segment.load_seg_bundle(tiny_bundle).config["training"]["patient_ids"]
    assert len(trained) == 3 and "TCGA_CS_4944" not in trained
    seen_dir = tmp_path / "seen" / trained[0]
    seen_dir.mkdir(parents=True)
    for f in sorted(next(lgg_dir.glob(trained[0] + "_*")).iterdir())[:6]:
        shutil.copy(f, seen_dir / f.name)
    code, out, _ = _run(capsys, "--model", str(tiny_bundle), "--data", str(tmp_path / "seen"))
    assert code == 0 and "1 of these patients trained this model" in out and "out of fold" in out
    code, out, _ = _run(capsys, "--model", str(tiny_bundle), "--data", str(small_data))
    assert code == 0 and "trained this model" not in out


def test_shipped_bundle_on_real_slices():
    """The shipped weights saw every patient here (their figures are the out-of-fold ones in
    bundle.json); this checks that they load and outline real tumours, not how well they generalise."""
    bundle = segment.load_seg_bundle("brain-mri-seg")
    assert bundle.config["training"]["split_used"] == "all" and bundle.config["training"]["patients"] == 36
    assert bundle.config["metrics"]["split"] == "5-fold cross-validation, out of fold"
    assert bundle.config["metrics"]["patients"] == 36 and bundle.config["metrics"]["tumour_images"] == 435
    assert sum(p.stat().st_size for p in bundle.path.iterdir()) < 5_000_000
    items = lgg.samples(split="val")
    tumour = sorted((s for s in items if s.label), key=lambda s: -s.attributes["tumour_pixels"])[:6]
    empty = [s for s in items if not s.label][::20][:6]
    dices = []
    for s in tumour:
        mask, regions = segment.segment_image(s.image, bundle)
        assert mask.shape == s.image.shape and sum(r["area_px"] for r in regions) == mask.sum()
        truth = s.lesions[0].mask
        dices.append(2 * (mask & truth).sum() / (mask.sum() + truth.sum()))
    assert np.mean(dices) > 0.6, dices
    pixels = [segment.segment_image(s.image, bundle)[0].sum() for s in empty]
    assert sum(p < 50 for p in pixels) >= len(empty) - 1, pixels


def test_seed_ensemble_is_one_bundle_whose_output_is_its_members_mean_probability(lgg_dir, tmp_path, monkeypatch):
    """Two seeds, each with its own loss: one bundle (one state dict) that loads and segments like
    any other; its probability equals the mean of two U-Nets rebuilt independently from the weights."""
    import torch
    from monai.networks.nets import UNet

    used, real_loss = [], segment_train.segmentation_loss
    monkeypatch.setattr(segment_train, "segmentation_loss", lambda name: used.append(name) or real_loss(name))
    out = tmp_path / "ens"
    recipe = dict(TINY_RECIPE, seeds=[0, 1], loss=["batch_dice", "slice_dice"])
    segment_train.train_seg(out, lgg_dir.parents[1], recipe=recipe, patients=2, cv=False, max_steps=4,
                            parallel_members=False)  # in this process, where the spy sees the losses
    assert used == ["batch_dice", "slice_dice"]
    b = segment.load_seg_bundle(out)
    assert b.config["members"] == 2 and b.config["training"]["seeds"] == [0, 1] and "metrics" not in b.config
    assert b.config["training"]["loss"] == " | ".join(segment_train.LOSS_NAMES[n] for n in recipe["loss"])
    state = torch.load(out / segment.WEIGHTS_FILE, weights_only=True)
    members = []
    for k in range(2):
        net = UNet(**TINY_ARCH)
        net.load_state_dict({n.removeprefix(f"members.{k}."): v for n, v in state.items() if n.startswith(f"members.{k}.")})
        members.append(net.eval())
    px = _png(lgg_dir / VAL_PATIENT / f"{VAL_PATIENT}_12_flair.png")
    x = torch.from_numpy(segment._prepare(b.preprocessing, [px]))
    with torch.no_grad():
        expected = np.mean([torch.sigmoid(m(x)).numpy() for m in members], axis=0)
        got = torch.sigmoid(b.model(x)).numpy()
    assert np.allclose(got, np.clip(expected, 1e-6, 1 - 1e-6), atol=1e-5)
    mask, _ = segment.segment_image(Image(px, modality="MR"), b)
    assert mask.shape == px.shape


@pytest.mark.parametrize("steps", [1, 2, 20, 21])
def test_any_number_of_steps_trains(lgg_dir, steps):
    """Short runs train whatever their length (20 steps once made torch's one-cycle schedule divide
    by zero), and take exactly the steps asked for."""
    data = segment_train.load_patients(lgg_dir.parents[1], patients=1)
    recipe = dict(TINY_RECIPE, epochs=30, seeds=[0], loss=["batch_dice"])
    _, _, history = segment_train.train_model(data["slices"], data["masks"], recipe, max_steps=steps)
    per_epoch = int(np.ceil(2 * sum(m.any() for m in data["masks"]) / recipe["batch"]))
    assert len(history) == int(np.ceil(steps / per_epoch))
    assert all(np.isfinite(h["loss"]) for h in history)


def test_members_trained_side_by_side_equal_members_trained_in_turn(lgg_dir):
    """Two members trained in two 1-thread processes have exactly the weights, histories aside from
    time, of the same members trained one after the other in this process with 1 thread."""
    import torch

    data = segment_train.load_patients(lgg_dir.parents[1], patients=2)
    recipe = dict(TINY_RECIPE, seeds=[3, 3], loss=["batch_dice", "slice_dice"])
    with torch_threads(1):
        in_turn, _, hist_turn = segment_train.train_model(data["slices"], data["masks"], recipe, max_steps=4)
    lines: list[str] = []
    with torch_threads(2):
        side, _, hist_side = segment_train.train_model(data["slices"], data["masks"], recipe, max_steps=4,
                                                       log=lines.append, workers=2)
    a, b = in_turn.state_dict(), side.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], a[k.replace("members.0.", "members.1.")]) for k in a if k.startswith("members.0."))
    assert [[h["loss"] for h in m] for m in hist_turn] == [[h["loss"] for h in m] for m in hist_side]
    assert [json.loads(line)["member"] for line in lines] == [0] * len(hist_side[0]) + [1] * len(hist_side[1])


def test_cross_validation_never_predicts_a_patient_with_a_model_that_saw_it(lgg_dir, monkeypatch):
    """Each fold's model is trained on slices of the other folds' patients only, and every slice
    gets its logits from exactly one fold (checked by the identity of the slice arrays passed)."""
    data = segment_train.load_patients(lgg_dir.parents[1], patients=4)
    owner = {id(px): p for px, p in zip(data["slices"], data["patients"])}
    seen: list[set] = []

    def fake_train(slices, masks, recipe, seed_offset=0, max_steps=None, log=None, workers=1):
        seen.append({owner[id(px)] for px in slices})
        return segment.build_net(TINY_ARCH).eval(), segment_train._unit_spec(recipe), []

    monkeypatch.setattr(segment_train, "train_model", fake_train)
    logits, facts = segment_train.cross_validate(data, TINY_RECIPE)
    assert len(seen) == len(data["folds"]) >= 2
    assert sorted(p for f in data["folds"] for p in f) == sorted(set(data["patients"]))
    for trained_on, held in zip(seen, data["folds"]):
        assert trained_on.isdisjoint(held) and trained_on | set(held) == set(data["patients"])
    assert set(logits) == {"plain", "flip"}
    for view in logits.values():
        assert view.shape == (len(data["slices"]), 128, 128) and np.isfinite(view).all()
    assert not np.allclose(logits["plain"], logits["flip"])
    assert [f["patients"] for f in facts] == data["folds"]


def test_slice_dice_loss_is_the_mean_soft_dice_of_tumour_slices_plus_bce():
    """Reference by hand in numpy: soft Dice per slice (sigmoid probabilities), empty slices left
    out of the Dice term, and the BCE of every pixel."""
    import torch

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (3, 1, 8, 8)).astype(np.float32)
    masks = np.zeros((3, 1, 8, 8), np.float32)
    masks[0, 0, 2:5, 2:5] = 1  # a 9 px lesion
    masks[2, 0, :, 4:] = 1     # a 32 px lesion; slice 1 is empty
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    bce = -np.mean(masks * np.log(p) + (1 - masks) * np.log(1 - p))
    dice = [1 - (2 * (p[i] * masks[i]).sum() + 1e-5) / (p[i].sum() + masks[i].sum() + 1e-5) for i in (0, 2)]
    loss = segment_train.segmentation_loss("slice_dice")(torch.from_numpy(logits), torch.from_numpy(masks))
    assert float(loss) == pytest.approx(bce + np.mean(dice), rel=1e-5)
    empty = torch.zeros((2, 1, 8, 8))
    assert float(segment_train.segmentation_loss("slice_dice")(torch.from_numpy(logits[:2]), empty)) == pytest.approx(
        -np.mean(np.log(1 - p[:2])), rel=1e-5)  # no tumour slice: BCE alone
    with pytest.raises(ValueError, match="unknown loss"):
        segment_train.segmentation_loss("focal")


def test_a_recipe_names_one_loss_for_every_member_or_one_per_seed(capsys):
    assert segment_train.member_losses({"seeds": [1, 2]}) == ["batch_dice", "batch_dice"]
    assert segment_train.member_losses({"seeds": [1, 2], "loss": "slice_dice"}) == ["slice_dice"] * 2
    assert segment_train.member_losses({"seeds": [1, 1], "loss": ["batch_dice", "slice_dice"]}) == [
        "batch_dice", "slice_dice"]
    with pytest.raises(ValueError, match="1 losses for 2 seeds"):
        segment_train.member_losses({"seeds": [1, 2], "loss": ["slice_dice"]})
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        segment_train.member_losses({"seeds": [1], "loss": "focal"})
    with pytest.raises(SystemExit) as exc:
        segment_train.main(["--seeds", "1,2", "--loss", "batch_dice,slice_dice,focal", "--no-cv"])
    assert exc.value.code == 2 and "3 losses for 2 seeds" in capsys.readouterr().err


def test_hysteresis_keeps_a_certain_lesion_s_faint_rim_but_not_a_faint_blob_alone():
    prob = np.zeros((40, 40), np.float32)
    prob[10:20, 10:20] = 0.3   # faint rim...
    prob[13:17, 13:17] = 0.9   # ...around a certain core
    prob[30:34, 30:34] = 0.3   # a faint blob on its own
    plain = segment.postprocess(prob, 0.5)
    assert plain.sum() == 16 and plain[13:17, 13:17].all()
    hyst = segment.postprocess(prob, 0.5, low=0.2)
    expected = np.zeros_like(plain)
    expected[10:20, 10:20] = True
    assert np.array_equal(hyst, expected)
    assert segment.postprocess(prob, 0.5, low=0.2, min_px=101).sum() == 0  # the 100 px region is a speck now


def test_image_with_spacing_gives_mm(tiny_bundle, lgg_dir):
    bundle = segment.load_seg_bundle(tiny_bundle)
    px = _png(lgg_dir / VAL_PATIENT / f"{VAL_PATIENT}_12_flair.png")
    bundle.config["threshold"] = 0.0  # everything is lesion: one region, the whole slice
    bundle.config["min_region_px"] = 0
    mask, regions = segment.segment_image(Image(px, modality="MR", spacing=(0.9, 0.7)), bundle)
    assert mask.all() and len(regions) == 1
    assert regions[0]["area_mm2"] == pytest.approx(mask.sum() * 0.9 * 0.7)
    volume = Image(np.stack([px, px]), modality="MR", spacing=(3.0, 0.9, 0.7))
    mask3, regions3 = segment.segment_image(volume, bundle)
    assert mask3.shape == (2, 256, 256) and regions3[0]["volume_mm3"] == pytest.approx(mask3.sum() * 3 * 0.9 * 0.7)


@pytest.mark.parametrize("case", ["missing", "empty_folder", "not_image", "classifier", "unknown", "bad_split",
                                  "withheld_test", "masks_into_data"])
def test_bad_input_is_one_line(case, tiny_bundle, small_data, tmp_path, capsys):
    model, data, extra = str(tiny_bundle), str(small_data), []
    if case == "missing":
        data = str(tmp_path / "nowhere")
    elif case == "empty_folder":
        (tmp_path / "e").mkdir()
        (tmp_path / "e" / "notes.csv").write_text("a,b\n")
        data = str(tmp_path / "e")
    elif case == "not_image":
        (tmp_path / "x.png").write_text("not a png")
        data = str(tmp_path / "x.png")
    elif case == "classifier":
        model = "brain-mri-tumour"
    elif case == "unknown":
        model = "no-such-model"
    elif case == "bad_split":
        (tmp_path / "flat").mkdir()
        shutil.copy(next(small_data.rglob("*_1_flair.png")), tmp_path / "flat" / "a.png")
        data, extra = str(tmp_path / "flat"), ["--split", "val"]
    elif case == "withheld_test":
        extra = ["--split", "test"]  # a val patient only: nothing of the withheld test split here
    masks_out = str(small_data if case == "masks_into_data" else tmp_path / "m")
    code, _, err = _run(capsys, "--model", model, "--data", data, "--masks-out", masks_out, *extra)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("secondread: error: ") and "Traceback" not in err
    assert not (tmp_path / "m").exists() or case == "not_image"


def test_errors_are_secondread_errors():
    with pytest.raises(SecondreadError, match="too small"):
        segment.segment_image(Image(np.ones((4, 4))), segment.SegBundle(Path("."), {}, None, ""))
    assert "brain-mri-seg" in segment.shipped_names() and "pneumonia" not in segment.shipped_names()


def test_series_runs_join_only_consecutive_slices_of_one_patient():
    keys = [("A", 3), ("A", 1), ("B", 1), (None, 5), ("A", 2), ("B", 3), ("A", 5), ("C", None), ("B", 2)]
    assert segment.series_runs(keys) == [[1, 4, 0], [2, 8, 5], [3], [6], [7]]
    assert segment.series_runs([("A", 1), ("A", 1)]) == [[0], [1]]  # a repeated slice is not its own neighbour
    names = ["TCGA_CS_4941_19960909_12_flair.png", "TCGA_HT_7692_19960724_3.tif", "a.png", "scan.nii.gz"]
    assert [segment.slice_number(Path(n)) for n in names] == [12, 3, None, None]


def _volume_bundle(cut: str) -> segment.SegBundle:
    config = {"threshold": 0.5, "low_threshold": 0.2, "min_region_px": 40, "input_shape": [40, 40], "cut": cut,
              "slice_cut": {"threshold": 0.5, "low_threshold": None, "min_region_px": 10}}
    return segment.SegBundle(Path("."), config, None, "")


def test_volume_cut_joins_a_faint_slice_to_the_core_next_to_it_and_drops_lone_specks():
    """Hand-built maps: a certain core on slice 1, the same lesion faint on slices 0 and 2, and a
    certain 30-pixel blob alone on slice 2; smallest region 40 pixels (voxels). Slice by slice, the
    faint slices are lost; cut as a volume, hysteresis reaches them through the core. The blob is
    dropped either way: 30 pixels on its slice, 30 voxels in the volume."""
    probs = [np.zeros((40, 40), np.float32) for _ in range(3)]
    for z, p in enumerate((0.3, 0.9, 0.3)):
        probs[z][10:20, 10:20] = p
    probs[2][30:35, 30:36] = 0.9  # 30 px, certain, alone
    by_slice = segment.cut_series(_volume_bundle("slice"), probs)
    assert [m.sum() for m in by_slice] == [0, 100, 0]
    by_volume = segment.cut_series(_volume_bundle("volume"), probs)
    assert [m[10:20, 10:20].all() for m in by_volume] == [True, True, True]
    assert [m.sum() for m in by_volume] == [100, 100, 100]
    # slices of different sizes cannot be stacked: they are cut one by one
    # a slice without neighbours (alone, or among slices of other sizes) gets the slice setting:
    # no hysteresis, 10 px floor, so the 30-pixel blob stays
    odd = [probs[0], probs[1], np.pad(probs[2], 4)]
    assert [m.sum() for m in segment.cut_series(_volume_bundle("volume"), odd)] == [0, 100, 30]
    assert segment.cut_series(_volume_bundle("volume"), [probs[2]])[0].sum() == 30


def test_segment_command_with_a_volume_cut_bundle_cuts_each_patient_as_one_volume(tiny_bundle, small_data,
                                                                                    tmp_path, capsys):
    """A bundle that cuts volumes gives, for each slice, the slice of the stacked cut of its
    patient's probability maps; an unreadable slice is reported and splits the series there."""
    bundle_dir = tmp_path / "vol-seg"
    shutil.copytree(tiny_bundle, bundle_dir)
    config = json.loads((bundle_dir / "bundle.json").read_text())
    config.update(cut="volume", threshold=0.5, low_threshold=0.1, min_region_px=64)
    (bundle_dir / "bundle.json").write_text(json.dumps(config))
    with pytest.raises(SecondreadError, match="slice_cut"):  # a volume cut must say how to cut a lone slice
        segment.load_seg_bundle(bundle_dir)
    config["slice_cut"] = {"threshold": 0.5, "low_threshold": None, "min_region_px": 16}
    (bundle_dir / "bundle.json").write_text(json.dumps(config))
    bundle = segment.load_seg_bundle(bundle_dir)
    slices = sorted(small_data.rglob("*_flair.png"), key=segment.slice_number)
    probs = segment.probability_maps(bundle, [_png(p) for p in slices])
    expected = segment.postprocess(np.stack(probs), 0.5, 0.1, segment._scaled_px(64, probs[0].shape, bundle.input_shape))
    code, _, err = _run(capsys, "--model", str(bundle_dir), "--data", str(small_data), "--masks-out",
                        str(tmp_path / "m"), "--json")
    assert code == 0, err
    for z, path in enumerate(slices):
        written = _png(tmp_path / "m" / path.relative_to(small_data))
        assert np.array_equal(written > 0, expected[z]), path.name
    broken = tmp_path / "broken"
    shutil.copytree(small_data, broken)
    bad = next(broken.rglob(slices[len(slices) // 2].name))
    bad.write_bytes(b"not a png")
    code, out, err = _run(capsys, "--model", str(bundle_dir), "--data", str(broken), "--json")
    result = json.loads(out)
    assert code == 1 and len(result["failed"]) == 1 and bad.name in result["failed"][0]  # the rest is done
    assert err.strip().count("\n") == 0 and bad.name in err
    assert len(result["per_image"]) == len(slices) - 1

"""The mini-MIAS lesion detector (secondread.mammo) and the benign/malignant measurement
(secondread.mammo_severity), on real mini-MIAS images.

Ground truth is read here from info.csv (``x_img``/``y_img``/``radius``, top-left origin), not from
the loader under test; figures are recounted from the written CSVs and from the network itself.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from secondread.datasets import minimias
from secondread.explain import gradcam
from secondread.mammo import augment_with_targets, lesion_target, map_candidates
from secondread.models import load_bundle
from secondread.models.bundle import calibrated
from secondread.train import DATASETS, train_bundle


@pytest.fixture(scope="module")
def folder(minimias_folder):
    return minimias_folder


@pytest.fixture(scope="module")
def info(folder):
    with open(folder / "info.csv", newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["file_included"] == "yes" and (folder / f"{r['refnum']}.png").is_file()]


def _circles(info, refnum):
    return [(float(r["x_img"]), float(r["y_img"]), float(r["radius"])) for r in info
            if r["refnum"] == refnum and r["x_img"] and r["radius"]]


# ----------------------------------------------------------------------------- targets, augmentation
def test_target_peaks_on_the_cell_holding_the_expert_centre(folder, info):
    sample = next(s for s in minimias.samples(folder.parents[1]) if s.id == "mdb270")
    (x, y, _), = _circles(info, "mdb270")
    target, located = lesion_target(sample.lesions, (1024, 1024), 32, 0.5)
    row, col = np.unravel_index(np.argmax(target), target.shape)
    assert located and target.max() == pytest.approx(1.0)
    assert (row, col) == (int(y // 32), int(x // 32))  # 32 px cells of the 1024 px image
    normal = next(s for s in minimias.samples(folder.parents[1]) if not s.label)
    assert lesion_target(normal.lesions, (1024, 1024), 32, 0.5)[0].max() == 0
    diffuse = next(s for s in minimias.samples(folder.parents[1]) if s.id == "mdb216")  # calcifications, no centre
    assert lesion_target(diffuse.lesions, (1024, 1024), 32, 0.5)[1] is False


def test_augmentation_moves_the_target_with_the_image():
    x = torch.zeros(6, 1, 256, 256)
    x[:, :, 40:72, 168:200] = 5.0  # a bright square on cells (5..8, 21..24) of the 32 x 32 map
    t = torch.zeros(6, 1, 32, 32)
    t[:, :, 5:9, 21:25] = 1.0
    xs, ts = augment_with_targets(x, t, torch.Generator().manual_seed(3))
    for k in range(6):
        bright = (xs[k, 0] > xs[k, 0].median() + 1.0).float()
        rows, cols = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
        image_centre = torch.stack([(rows * bright).sum(), (cols * bright).sum()]) / bright.sum()
        trows, tcols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
        w = ts[k, 0]
        target_centre = (torch.stack([(trows * w).sum(), (tcols * w).sum()]) / w.sum() + 0.5) * 8 - 0.5
        assert torch.dist(image_centre, target_centre) < 4.0  # half a map cell: the target moved with the square


def test_candidates_of_two_blobs_are_ranked_with_their_half_height_radius():
    yy, xx = np.mgrid[:512, :512]
    heat = 0.9 * np.exp(-((xx - 100) ** 2 + (yy - 300) ** 2) / (2 * 20.0 ** 2))
    heat += 0.5 * np.exp(-((xx - 400) ** 2 + (yy - 100) ** 2) / (2 * 10.0 ** 2))
    regions = map_candidates(heat, top=5)
    assert [(r.x, r.y) for r in regions[:2]] == [(100.0, 300.0), (400.0, 100.0)]
    assert [r.score for r in regions[:2]] == pytest.approx([0.9, 0.5], abs=1e-4)
    # a Gaussian's half-height radius is sigma * sqrt(2 ln 2)
    assert regions[0].radius == pytest.approx(20 * np.sqrt(2 * np.log(2)), rel=0.1)
    assert regions[1].radius == pytest.approx(10 * np.sqrt(2 * np.log(2)), rel=0.15)
    assert map_candidates(np.zeros((64, 64)), top=3) == []


# ----------------------------------------------------------------------------- tiny training
TINY = dict(limit=12, epochs=4, arch_args={"width": 4, "members": 2})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, data_root, folder):
    root = tmp_path_factory.mktemp("mammo")
    return root, [train_bundle("mini-mias", root / name, data_dir=data_root, progress=False, **TINY) for name in "ab"]


def test_tiny_detector_training_is_deterministic_and_a_complete_bundle(tiny, folder):
    root, (a, b) = tiny
    wa, wb = (torch.load(root / n / "weights.pt", weights_only=True) for n in "ab")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["metrics"] == b["metrics"] and a["localisation"] == b["localisation"]
    losses = [h["loss"] for h in a["training"]["history"]]
    assert losses[-1] < losses[0]  # it learns (the seeded run is the same every time)
    for name in ("bundle.json", "weights.pt", "model.onnx", "model_card.md", "reliability.png"):
        assert (root / "a" / name).is_file()
    assert len(a["data_source"]["train_patients"]) == 12 and not set(a["data_source"]["train_patients"]) & set(
        a["data_source"]["val_patients"])
    assert a["explain"]["method"] == "heatmap" and a["operating_points"]
    # the map is the per-cell probability as trained (not temperature-scaled): its peak is the
    # sigmoid of the image's raw logit, and the calibrated probability is that logit over T
    bundle = load_bundle(root / "a")
    pixels = minimias.samples(folder.parents[1], "val")[0].image.pixels
    batch = bundle.prepare(pixels)[None]
    logit = bundle.logits(batch)
    with torch.inference_mode():
        assert float(bundle.model.probability_map(batch).max()) == pytest.approx(float(calibrated(logit, 1.0)[0]), abs=1e-6)


def test_an_ensemble_member_is_the_single_detector_of_its_seed(tiny, data_root):
    """Member j of an ensemble trained with seed s has the weights of the single detector trained
    on the same images with seed s + 100 j (what lets benchmarks/mammo_ensemble.py score ensembles
    from single runs), and the ensemble's map is the sigmoid of the members' mean logit map."""
    from secondread import mammo
    from secondread.train import folder_samples, seeded_training

    root, (a, _) = tiny
    assert a["architecture"] == "lesion_heatmap_ensemble" and a["training"]["member_seeds"] == [0, 100]
    info = DATASETS["mini-mias"]
    samples = folder_samples("mini-mias", data_root, "train")[:8]
    pixels, labels = [np.asarray(s.image.pixels) for s in samples], np.array([s.label for s in samples])
    opt, args = mammo._recipe(info, epochs=2, input_size=64), dict(info["arch_args"], width=4)
    with seeded_training(0):
        pair = mammo._fit_on(info, opt, dict(args, members=2), samples, pixels, labels, 0, False)[0]
        alone = mammo._fit_on(info, opt, dict(args, members=1), samples, pixels, labels, mammo.member_seed(0, 1), False)[0]
    mine, theirs = pair.members[1].state_dict(), alone.members[0].state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert not torch.equal(pair.members[0].head.weight, pair.members[1].head.weight)
    ensemble = load_bundle(root / "a").model
    x = torch.randn(3, 1, 64, 64)
    with torch.inference_mode():
        mean = torch.stack([m.heatmap(x) for m in ensemble.members]).mean(dim=0)
        assert torch.allclose(ensemble.probability_map(x), torch.sigmoid(mean), atol=1e-6)
        assert torch.allclose(ensemble(x), mean.flatten(1).amax(dim=1), atol=1e-6)


def test_detector_cv_over_all_women_never_scores_a_woman_it_trained_on(data_root, folder, monkeypatch):
    """``women="all"`` adds the validation women to the folds (test women stay withheld); each
    fold's detector is trained without the women it is scored on."""
    from secondread import mammo
    from secondread.train import folder_samples

    trained, real = [], mammo._fit_on
    monkeypatch.setattr(mammo, "_fit_on", lambda info, opt, args, samples, *rest: trained.append(
        {s.patient for s in samples}) or real(info, opt, args, samples, *rest))
    result = mammo.cross_validate_detector(data_dir=data_root, folds=[0, 1], women="all", epochs=1, input_size=64)
    held = {p["patient"] for p in result["per_image"]}
    val = {s.patient for s in folder_samples("mini-mias", data_root, "val")}
    assert held & val and result["women"] == "all" and len(trained) == 2
    for k, women in enumerate(trained):
        assert not women & {p["patient"] for p in result["per_image"] if p["fold"] == k}
    with pytest.raises(ValueError):
        mammo.cross_validate_detector(data_dir=data_root, women="val")


def test_tiny_detector_onnx_matches_torch(tiny, folder):
    pytest.importorskip("onnxruntime")
    root, _ = tiny
    images = [s.image.pixels for s in minimias.samples(folder.parents[1], "val")[:4]]
    torch_p = load_bundle(root / "a").predict_proba(images)
    onnx_p = load_bundle(root / "a", backend="onnx").predict_proba(images)
    assert np.abs(torch_p - onnx_p).max() < 1e-4


# ----------------------------------------------------------------------------- the shipped bundle
def test_shipped_detector_records_its_recipe_and_val_localisation(info, folder):
    bundle = load_bundle("mammo-abnormal")
    assert bundle.config["architecture"] == DATASETS["mini-mias"]["architecture"] == "lesion_heatmap_ensemble"
    assert len(bundle.model.members) == DATASETS["mini-mias"]["arch_args"]["members"] == 5
    assert bundle.config["training"]["member_seeds"] == [0, 100, 200, 300, 400]
    assert bundle.explain_method == "heatmap"
    # a weak detector's temperature flattens its image probability, never its map (what a reader sees)
    pixels = minimias.samples(folder.parents[1], "val")[0].image.pixels
    with torch.inference_mode():
        heat = bundle.model.probability_map(bundle.prepare(pixels)[None])
    assert float(heat.max() - heat.min()) > 0.05
    loc = bundle.config["localisation"]
    val = set(bundle.config["data_source"]["val_patients"])
    located = {r["refnum"] for r in info if r["x_img"] and minimias.woman_of(r["refnum"]) in val}
    assert loc["images_with_located_lesion"] == len(located)
    assert loc["top3_ci95"][0] <= loc["top3"] <= loc["top3_ci95"][1]


def test_shipped_detector_val_hits_recounted_from_the_localise_csv(folder, info, tmp_path):
    from secondread.maps import localise_with_map

    out = tmp_path / "val.csv"
    result = localise_with_map("mammo-abnormal", folder, split="val", predictions=out, top_k=5)
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    recount = []
    for image_id in sorted({r["id"] for r in rows} | {p["id"] for p in result["per_image"]}):
        mine = sorted((r for r in rows if r["id"] == image_id), key=lambda r: int(r["rank"]))[:3]
        circles = _circles(info, Path(image_id).stem)
        recount.append(any((float(r["x"]) - x) ** 2 + (float(r["y"]) - y) ** 2 <= rad ** 2
                           for r in mine for x, y, rad in circles))
    assert result["summary"]["top3"] == pytest.approx(round(float(np.mean(recount)), 3), abs=1e-3)
    # a report's candidates are these rows: mdb069's lesion candidates and cluster are its top 3
    from secondread.analyze import analyze_image

    report = analyze_image(folder / "mdb069.png", tmp_path / "r", load_bundle("mammo-abnormal"))
    listed = sorted(((f["rank"] if f["kind"] == "lesion candidate" else 3, f["centroid"]["x"], f["centroid"]["y"])
                     for f in report["findings"] if f.get("kind") in ("lesion candidate", "calcification cluster candidate")))
    assert listed == [(int(r["rank"]), float(r["x"]), float(r["y"])) for r in rows
                      if r["id"] == "mdb069.png" and int(r["rank"]) <= 3]
    bundle = load_bundle("mammo-abnormal")
    assert result["summary"]["top3"] == pytest.approx(bundle.config["localisation"]["top3"], abs=1e-3)


def test_gradcam_still_explains_the_detector(folder):
    bundle = load_bundle("mammo-abnormal")
    pixels = minimias.samples(folder.parents[1], "val")[0].image.pixels
    batch = bundle.prepare(pixels)[None]
    for method in ("gradcam", "gradcam++"):
        heat = gradcam(bundle.model, bundle.model.gradcam_layer, batch, pixels.shape, method=method)
        assert heat.shape == pixels.shape and 0 <= heat.min() and heat.max() <= 1


def test_analyze_reports_the_detectors_region_on_a_mammogram(folder, tmp_path, info):
    from secondread.analyze import analyze_image

    bundle = load_bundle("mammo-abnormal")
    report = analyze_image(str(folder / "mdb270.png"), tmp_path, bundle)
    finding = report["findings"][0]
    assert finding["label"] == "abnormal mammogram" and 0 <= finding["probability"] <= 1
    if finding.get("region"):
        assert finding["region"]["source"] == "heatmap"
        assert finding["region"]["x_max"] <= 1024 and finding["region"]["y_max"] <= 1024
    assert any(p.suffix == ".png" for p in tmp_path.iterdir())


# ----------------------------------------------------------------------------- benign vs malignant
def test_severity_features_see_a_bright_disc_and_the_bootstrap_brackets_the_auc():
    from sklearn.metrics import roc_auc_score

    from secondread.mammo_severity import FEATURES, lesion_features, women_auc_ci

    yy, xx = np.mgrid[:400, :400]
    image = np.where((xx - 200) ** 2 + (yy - 200) ** 2 <= 40 ** 2, 200.0, 60.0)
    f = dict(zip(FEATURES, lesion_features(image, 200, 200, 40)))
    assert f["contrast"] > 0.5 and f["inner_mean"] > f["ring_mean"]
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 20)
    p = y * 0.5 + rng.random(40)
    women = [f"w{i // 2}" for i in range(40)]
    lo, hi = women_auc_ci(y, p, women)
    assert lo <= roc_auc_score(y, p) <= hi


def test_shipped_detector_onnx_matches_torch(folder):
    pytest.importorskip("onnxruntime")
    images = [s.image.pixels for s in minimias.samples(folder.parents[1], "val")[:6]]
    torch_p = load_bundle("mammo-abnormal").predict_proba(images)
    assert np.abs(load_bundle("mammo-abnormal", backend="onnx").predict_proba(images) - torch_p).max() < 1e-4


def test_refreshing_a_bundle_gives_it_the_rows_candidate_rule_and_rescores_val(folder, tmp_path):
    """``refresh_localisation`` (how the shipped bundle got its candidate rules without new
    weights): a copy stripped of the rules gets them back from the DATASETS row, with the shipped
    bundle's validation figures (which the recount test above ties to the localise CSV)."""
    import json
    import shutil

    from secondread.mammo import RULES, candidate_rules, refresh_localisation
    from secondread.models.bundle import ZOO

    copy = tmp_path / "mammo-abnormal"
    shutil.copytree(ZOO / "mammo-abnormal", copy)
    config = json.loads((copy / "bundle.json").read_text())
    shipped = dict(config["localisation"])
    for key in RULES:
        config.pop(key, None)
    config["localisation"] = {}
    (copy / "bundle.json").write_text(json.dumps(config))
    assert refresh_localisation(copy, data_dir=folder.parents[1]) == shipped
    again = json.loads((copy / "bundle.json").read_text())
    assert candidate_rules(again) == candidate_rules(DATASETS["mini-mias"]) and "calcifications" in again
    assert torch.equal(load_bundle(copy).model.state_dict()["members.4.head.weight"],
                       load_bundle("mammo-abnormal").model.state_dict()["members.4.head.weight"])

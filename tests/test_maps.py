"""Classifier maps scored against the experts (secondread.maps, issue 5 items 1 and 5).

The references are independent of the code under test: the pointing game is recomputed here with
numpy (argmax of the Grad-CAM map, looked up in the expert's mask PNG or tested against the
expert's circle from info.csv), the CSV is read back with the csv module and checked against the
image files, and the number of scored LGG slices is recounted from index.csv and the saved split.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from secondread.errors import SecondreadError
from secondread.explain import gradcam
from secondread.maps import localise_with_map, map_regions
from secondread.models.bundle import load_bundle
from secondread.models.nets import torch_threads

REPO = Path(__file__).resolve().parents[1]
LIMIT = 6


@pytest.fixture(autouse=True)
def _two_threads():
    with torch_threads(min(torch.get_num_threads(), 2)):
        yield


def _heat(bundle, pixels, layer=None, method=None):
    return gradcam(bundle.model, layer or bundle.explain_layer, bundle.prepare(pixels)[None], pixels.shape,
                   method=method or bundle.explain_method)


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_regions_of_a_known_map_are_ranked_by_peak_with_equivalent_radius():
    rows, cols = np.ogrid[:100, :120]
    heat = np.zeros((100, 120), np.float32)
    heat[(cols - 30) ** 2 + (rows - 40) ** 2 <= 10 ** 2] = 0.7   # weaker disc, radius 10
    heat[(cols - 90) ** 2 + (rows - 70) ** 2 <= 5 ** 2] = 1.0    # stronger disc, radius 5
    regions = map_regions(heat, top=10)
    assert [r.rank for r in regions] == [1, 2]
    assert (round(regions[0].x), round(regions[0].y), regions[0].score) == (90, 70, 1.0)
    assert (round(regions[1].x), round(regions[1].y)) == (30, 40)
    for r, disc in zip(regions, (5, 10)):
        area = ((cols - (90 if disc == 5 else 30)) ** 2 + (rows - (70 if disc == 5 else 40)) ** 2 <= disc ** 2).sum()
        assert r.radius == pytest.approx(np.sqrt(area / np.pi))
    assert map_regions(np.zeros((4, 4)), top=3) == []


@pytest.mark.parametrize("layer, method", [(None, None), ("last", "gradcam")])
def test_lgg_pointing_game_matches_numpy_on_the_expert_masks(data_root, tmp_path, layer, method):
    """The bundle's own map (bundle.json "explain": what analyze shows) and the network's last stage."""
    from secondread.io.raster import read_raster

    if layer == "last":
        layer = load_bundle("brain-mri-tumour").model.gradcam_layer
    out = tmp_path / "lgg.csv"
    result = localise_with_map("brain-mri-tumour", data_root / "mri" / "lgg", split="val", predictions=out,
                               top_k=3, limit=LIMIT, layer=layer, method=method)
    folder = data_root / "mri" / "lgg"
    bundle = load_bundle("brain-mri-tumour")
    assert len(result["per_image"]) == LIMIT
    for item in result["per_image"]:
        image = read_raster(folder / item["id"]).pixels
        mask = read_raster(folder / item["id"].replace("_flair.png", "_mask.png")).pixels > 127
        assert mask.any()
        heat = _heat(bundle, image, layer, method)
        row, col = np.unravel_index(np.argmax(heat), heat.shape)
        assert item["pointing"] == bool(mask[row, col])
        assert tuple(item["peak"]) == (col, row)
        h, w = mask.shape
        assert item["baseline_image_centre"] == bool(mask[round((h - 1) / 2), round((w - 1) / 2)])
    s = result["summary"]
    assert s["images"] == LIMIT and s["pointing"] == pytest.approx(
        np.mean([r["pointing"] for r in result["per_image"]]), abs=1e-3)
    assert result["seconds"] >= 0 and "summary" in result
    _check_csv(out, folder, {r["id"] for r in result["per_image"]}, k=3)


def test_minimias_pointing_game_matches_numpy_on_the_expert_circles(data_root, tmp_path):
    out = tmp_path / "mias.csv"
    folder = data_root / "mammography" / "mini-mias"
    result = localise_with_map("mammo-abnormal", folder, split="val", predictions=out, top_k=3, limit=3)
    with open(folder / "info.csv", newline="") as fh:
        info = [r for r in csv.DictReader(fh) if r["x_img"] and r["radius"]]
    from secondread.io.raster import read_raster

    bundle = load_bundle("mammo-abnormal")
    for item in result["per_image"]:
        circles = [(float(r["x_img"]), float(r["y_img"]), float(r["radius"])) for r in info
                   if f"{r['refnum']}.png" == item["id"]]
        assert circles, item["id"]
        heat = _heat(bundle, read_raster(folder / item["id"]).pixels)
        row, col = np.unravel_index(np.argmax(heat), heat.shape)
        assert item["pointing"] == any((col - x) ** 2 + (row - y) ** 2 <= r ** 2 for x, y, r in circles)
    assert result["summary"]["images"] == 3
    _check_csv(out, folder, {r["id"] for r in result["per_image"]}, k=3)


def _check_csv(path: Path, folder: Path, ids: set[str], k: int):
    from secondread.io.raster import read_raster

    rows = _csv(path)
    assert list(rows[0]) == ["id", "rank", "score", "x", "y", "radius"]
    assert {r["id"] for r in rows} <= ids and rows
    for image_id in {r["id"] for r in rows}:
        mine = [r for r in rows if r["id"] == image_id]
        assert [int(r["rank"]) for r in mine] == list(range(1, len(mine) + 1)) and len(mine) <= k
        scores = [float(r["score"]) for r in mine]
        assert scores == sorted(scores, reverse=True) and 0 < scores[-1] and scores[0] <= 1
        h, w = read_raster(folder / image_id).pixels.shape
        for r in mine:
            assert 0 <= float(r["x"]) <= w - 1 and 0 <= float(r["y"]) <= h - 1 and float(r["radius"]) > 0


def _cli(*args: str, timeout: float = 240):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "secondread", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)


def test_cli_scores_the_whole_lgg_val_split(data_root, tmp_path):
    from secondread.datasets.splits import patients_in

    out = tmp_path / "val.csv"
    proc = _cli("localise", "--model", "brain-mri-tumour", "--data", str(data_root / "mri" / "lgg"),
                "--split", "val", "--predictions", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    with open(data_root / "mri" / "lgg" / "index.csv", newline="") as fh:
        val = patients_in("lgg", "val")
        expected = [r for r in csv.DictReader(fh)
                    if int(r["tumour_pixels"]) > 0 and "_".join(r["patient"].split("_")[:3]) in val]
    s = result["summary"]
    assert s["images"] == len(expected)
    assert s["patients"] == len({"_".join(r["patient"].split("_")[:3]) for r in expected})
    for key in ("pointing", "top1", "top3", "baseline_image_centre", "baseline_body_centroid"):
        lo, hi = s[f"{key}_ci95"]
        assert 0 <= lo <= s[key] <= hi <= 1
    ids = {r["id"] for r in _csv(out)}  # paths relative to the data set folder, as evaluate writes them
    assert ids and ids <= {r["flair"] for r in expected}


def test_a_copy_under_another_name_gives_the_same_regions(data_root, renamed_copy, tmp_path):
    """``localise --model mammo-abnormal`` on a user's copy of mini-MIAS in a folder of another name:
    the same val women, the same candidates, the same ids as on the data root."""
    copy, ours = renamed_copy("mammography/mini-mias"), tmp_path / "copy.csv"
    theirs = tmp_path / "root.csv"
    a = localise_with_map("mammo-abnormal", copy, split="val", limit=3, predictions=ours)
    b = localise_with_map("mammo-abnormal", data_root, split="val", limit=3, predictions=theirs)
    assert [p["id"] for p in a["per_image"]] == [p["id"] for p in b["per_image"]]
    assert ours.read_text() == theirs.read_text() and len(ours.read_text().splitlines()) > 3


@pytest.mark.parametrize("model, data, split, words", [
    ("no-such-model", "mri/lgg", "val", "no such model bundle"),
    ("pneumonia", "mri/lgg", "val", "no expert outlines"),
    ("breast-us-28", "mri/lgg", "val", "BUSI"),
    ("brain-mri-tumour", "mri/nowhere", "val", "not found"),
    ("brain-mri-tumour", "mammography/mini-mias", "val", "not the lgg data set folder"),
    ("brain-mri-tumour", "mri/lgg", "test", "withheld"),
])
def test_errors_are_one_line(data_root, model, data, split, words):
    with pytest.raises(SecondreadError) as info:
        localise_with_map(model, data_root / data, split=split)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_cli_error_is_one_line_without_traceback(data_root):
    proc = _cli("localise", "--model", "pneumonia", "--data", str(data_root), "--predictions", "x.csv")
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr

"""Mammography mass localisation on real mini-MIAS images, scored against info.csv read here
independently (``x_img``, ``y_img``: top-left origin, as SOURCE.md states)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from secondread import localise
from secondread.errors import SecondreadError
from secondread.image import Image
from secondread.io.raster import read_raster


@pytest.fixture(scope="module")
def folder(minimias_folder):
    return minimias_folder


@pytest.fixture(scope="module")
def circles(folder) -> dict[str, list[tuple[float, float, float]]]:
    """Expert circles per PNG name, straight from info.csv."""
    out: dict[str, list] = {}
    with open(folder / "info.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["file_included"] == "yes" and row["radius"]:
                out.setdefault(f"{row['refnum']}.png", []).append(
                    (float(row["x_img"]), float(row["y_img"]), float(row["radius"])))
    return out


@pytest.mark.parametrize("name", ["mdb001.png", "mdb002.png", "mdb005.png"])
def test_candidates_lie_in_the_image_and_the_breast(folder, name):
    image = read_raster(folder / name, modality="MG")
    regions = localise.localise_image(image, top=10)
    assert regions, "no candidate at all"
    assert [r.rank for r in regions] == list(range(1, len(regions) + 1))
    assert all(a.score >= b.score for a, b in zip(regions, regions[1:]))
    breast = localise.breast_region(image)
    # the breast mask is breast: brighter than the background and a plausible share of the image
    assert 0.1 < breast.mean() < 0.8
    assert image.pixels[breast].mean() > 3 * image.pixels[~breast].mean()
    for r in regions:
        assert 0 <= r.x < image.shape[1] and 0 <= r.y < image.shape[0] and r.radius > 0
        assert breast[int(r.y), int(r.x)]


def test_hit_rule_agrees_with_a_hand_check(circles):
    # mdb001: one circle at (535, 599), radius 197; mdb005: two circles (477, 891, 30) and (500, 856, 26)
    assert circles["mdb001.png"] == [(535.0, 599.0, 197.0)]
    R = localise.Region
    inside, outside = R(1, 1.0, 535 + 196, 599, 5), R(1, 1.0, 535 + 140, 599 + 140, 5)  # 198 px away
    assert localise.hits([inside, outside], circles["mdb001.png"]) == [True, False]
    # a miss first and a hit third: no pointing, top-3 yes, top-1 no
    result = localise.image_result([outside, outside, inside], circles["mdb001.png"])
    assert result == {"pointing": False, "top1": False, "top3": True, "top5": True}
    second = R(1, 1.0, 500, 856 + 25, 5)  # inside mdb005's second circle only
    assert localise.hits([second], circles["mdb005.png"]) == [True]
    assert localise.hits([R(1, 1.0, 500, 856 + 27 + 30, 5)], circles["mdb005.png"]) == [False]


def test_pointing_game_recounted_from_the_csv(folder, circles, tmp_path):
    out = tmp_path / "val.csv"
    result = localise.localise_dataset(folder.parents[1], split="val", predictions=out, top_k=5)
    lines = out.read_text().splitlines()
    assert lines[0] == "id,rank,score,x,y,radius"
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert all(r["id"].startswith("mdb") and r["id"].endswith(".png") for r in rows)
    assert all(1 <= int(r["rank"]) <= 5 for r in rows)
    # independent recount: top candidate of each image with an expert circle, inside one of them?
    top = {r["id"]: (float(r["x"]), float(r["y"])) for r in rows if r["rank"] == "1"}
    ids = {r["id"] for r in result["per_image"] if r["circles"]}
    assert ids <= set(circles)
    inside = [any((top[i][0] - x) ** 2 + (top[i][1] - y) ** 2 <= rad ** 2 for x, y, rad in circles[i])
              if i in top else False for i in sorted(ids)]
    summary = result["summary"]
    assert summary["scored_images"] == len(ids)
    assert summary["pointing"] == pytest.approx(np.mean(inside), abs=1e-3)
    # top-3 recount too
    by_id: dict[str, list] = {}
    for r in rows:
        by_id.setdefault(r["id"], []).append((int(r["rank"]), float(r["x"]), float(r["y"])))
    top3 = [any((x - cx) ** 2 + (y - cy) ** 2 <= rad ** 2 for rk, x, y in by_id.get(i, []) if rk <= 3
                for cx, cy, rad in circles[i]) for i in sorted(ids)]
    assert summary["top3"] == pytest.approx(np.mean(top3), abs=1e-3)
    low, high = summary["top3_ci95"]
    assert low <= summary["top3"] <= high


def test_a_plugged_in_source_is_scored(folder, circles):
    """A source that points at the expert's centre scores 1.0: the evaluation takes any candidates."""
    truth = {}

    def oracle(image):
        name = image.source.rsplit("/", 1)[-1]
        x, y, r = truth.setdefault(name, circles.get(name, [(10.0, 10.0, 1.0)])[0])
        return [localise.Region(1, 1.0, x, y, r)]

    result = localise.localise_dataset(folder.parents[1], split="val", source=oracle, abnormal_only=True)
    assert result["summary"]["pointing"] == 1.0 and result["summary"]["top3"] == 1.0


def test_bad_images_are_refused_in_one_line():
    with pytest.raises(SecondreadError) as err:
        localise.localise_image(Image(np.zeros((4, 64, 64)), source="vol.nii"))
    assert "\n" not in str(err.value) and "2D" in str(err.value)
    with pytest.raises(SecondreadError, match="constant"):
        localise.localise_image(Image(np.ones((256, 256)), source="flat.png"))

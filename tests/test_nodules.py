"""CT nodule candidates on the real LIDC-IDRI-0001 series, checked against the data set's own
``nodules.csv`` (consensus of the four readers), read here independently of the code under test."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from secondread.errors import SecondreadError
from secondread.image import Image
from secondread import nodules


@pytest.fixture(scope="module")
def case(data_root):
    folder = data_root / "ct" / "LIDC-IDRI-0001"
    if not folder.is_dir():
        pytest.skip("LIDC-IDRI-0001 not available")
    return folder


@pytest.fixture(scope="module")
def truth(case) -> dict:
    """The consensus nodule straight from nodules.csv."""
    with open(case / "nodules.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1
    return {k: float(v) for k, v in rows[0].items()}


@pytest.fixture(scope="module")
def volume(case):
    from secondread.io.series import read_series

    return read_series(case / "series")


@pytest.fixture(scope="module")
def lungs(volume):
    return nodules.lung_mask(volume.pixels, volume.spacing)


@pytest.fixture(scope="module")
def found(volume, lungs):
    return nodules.find_nodules(volume, lungs=lungs)


def _voxel_of(truth: dict) -> tuple[int, int, int]:
    """Slice, row, col of the nodule centre from SOURCE.md's geometry: IPP x,y = -166.0, -171.7,
    0.703125 mm pixels, slices every 2.5 mm from z = -340 (the lowest slice is index 0)."""
    col = (truth["x_mm"] + 166.0) / 0.703125
    row = (truth["y_mm"] + 171.699997) / 0.703125
    sl = (truth["z_mm"] + 340.0) / 2.5
    return int(round(sl)), int(round(row)), int(round(col))


def _near(found, truth):
    centre = np.array([truth["x_mm"], truth["y_mm"], truth["z_mm"]])
    return [c for c in found if np.linalg.norm(np.array(c.center_mm) - centre) <= truth["diameter_mm"] / 2]


def test_lung_mask_holds_the_juxtapleural_nodule(case, volume, lungs, truth):
    assert lungs[_voxel_of(truth)]
    # the nodule touches the posterior chest wall: nearly all of the readers' outline must be inside
    from secondread.datasets import lidc

    geometry = lidc.read_geometry(case / "series")
    [nodule] = lidc.nodules(lidc.read_annotations(case / "annotations.xml", geometry), geometry)
    inside = nodule.full_mask(volume.shape) & lungs
    assert inside.sum() / nodule.mask.sum() > 0.95
    # and the mask is lungs, not the body: 2-8 litres of it, mostly air
    litres = lungs.sum() * np.prod(volume.spacing) / 1e6
    assert 2 < litres < 8
    assert np.median(volume.pixels[lungs]) < -600


def test_nodule_found_with_centre_and_lung_rads_diameter(found, truth):
    near = _near(found, truth)
    assert near, "the consensus nodule is not among the candidates"
    best = near[0]
    assert best.rank <= 11  # at most 10 false positives before it
    assert np.linalg.norm(np.array(best.center_mm) - [truth["x_mm"], truth["y_mm"], truth["z_mm"]]) < 3.0
    tolerance = max(2.0, 0.15 * truth["diameter_mm"])
    assert abs(best.diameter_mm - truth["diameter_mm"]) <= tolerance
    assert best.diameter_mm == pytest.approx((best.long_axis_mm + best.short_axis_mm) / 2, abs=0.051)
    assert best.short_axis_mm <= best.long_axis_mm
    # volume: the readers' mean mask volume is 7519 mm^3 (SOURCE.md); a threshold at -400 HU is tighter
    assert 0.5 * 7519 < best.volume_mm3 < 1.5 * 7519


def test_candidates_are_ranked_inside_the_lungs(found, lungs, volume):
    assert [c.rank for c in found] == list(range(1, len(found) + 1))
    assert all(a.score >= b.score for a, b in zip(found, found[1:]))
    affine = np.array(volume.metadata["affine"])
    for c in found:
        assert lungs[tuple(np.round(c.center_voxel).astype(int))] or c.diameter_mm > 10
        assert c.diameter_mm >= 3.0
        s0, r0, c0, s1, r1, c1 = c.bbox
        assert s0 <= c.center_voxel[0] < s1 and r0 <= c.center_voxel[1] < r1 and c0 <= c.center_voxel[2] < c1
        assert np.allclose(affine @ [*c.center_voxel, 1], [*c.center_mm, 1], atol=0.02)


def test_axes_of_a_drawn_ellipse():
    # ellipse with semi-axes 20 and 10 pixels at 0.5 mm: long 2*19.5..20 mm, short ~10 mm
    rr, cc = np.mgrid[:64, :64]
    plane = ((rr - 32) / 10) ** 2 + ((cc - 32) / 20) ** 2 <= 1
    long_axis, short_axis = nodules.axial_axes_mm(plane, 0.5, 0.5)
    assert long_axis == pytest.approx(20.0, abs=0.6)
    assert short_axis == pytest.approx(10.0, abs=0.6)


def test_predictions_csv_exact(tmp_path, found):
    out = nodules.write_predictions(tmp_path / "pred.csv", found)
    lines = out.read_text().splitlines()
    assert lines[0] == "rank,score,x_mm,y_mm,z_mm,diameter_mm"
    assert len(lines) == len(found) + 1
    for line, c in zip(lines[1:], found):
        fields = line.split(",")
        assert len(fields) == 6
        assert int(fields[0]) == c.rank
        assert [float(v) for v in fields[1:]] == pytest.approx([c.score, *c.center_mm, c.diameter_mm], abs=1e-4)
    assert [p.name for p in tmp_path.iterdir()] == ["pred.csv"]  # no temporary file left behind


def test_evaluation_reports_sensitivity_and_diameter_error(case, truth, tmp_path):
    result = nodules.evaluate_nodules(case / "series", predictions=tmp_path / "p.csv")
    assert result["nodules"] == 1
    assert result["sensitivity_at_fp_per_scan"]["10"] == 1.0
    [row] = result["diameters"]
    assert row["readers_mean_diameter_mm"] == pytest.approx(truth["diameter_mm"], abs=0.01)
    assert row["diameter_error_mm"] == pytest.approx(row["diameter_mm"] - truth["diameter_mm"], abs=0.01)
    assert row["within_tolerance"]
    # the FROC points are consistent with the CSV: FPs before the hit = rank - 1
    froc = result["froc"]
    assert froc[row["rank"]]["sensitivity"] == 1.0 and froc[row["rank"] - 1]["sensitivity"] == 0.0
    assert froc[row["rank"]]["fp_per_scan"] == row["rank"] - 1
    assert (tmp_path / "p.csv").is_file()


def test_a_2d_image_is_refused_in_one_line():
    with pytest.raises(SecondreadError) as err:
        nodules.find_nodules(Image(np.zeros((64, 64)), modality="CT", spacing=(1, 1), source="x.png"))
    assert "\n" not in str(err.value) and "3D" in str(err.value)


def test_a_volume_without_lungs_is_refused():
    water = Image(np.zeros((8, 64, 64)), modality="CT", spacing=(2.5, 0.7, 0.7), source="phantom")
    with pytest.raises(SecondreadError, match="no aerated lung"):
        nodules.find_nodules(water)


def test_a_folder_that_is_not_a_series_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not DICOM")
    with pytest.raises(SecondreadError) as err:
        nodules.nodules_report(tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(SecondreadError):
        nodules.nodules_report(tmp_path / "missing")

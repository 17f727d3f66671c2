"""Data set loaders and saved splits, against the real data and independent recounts.

References: the data sets' SOURCE.md tables, recounts from the files themselves (LGG masks decoded
with Pillow, mini-MIAS centres checked against the pixels and the CSV's own top-left columns),
LIDC's ``nodules.csv`` and the DICOM headers read here with pydicom, and hand-built folders of real
pixels for the two sets that are not available here (BUSI, brain-tumour yes/no).
"""

from __future__ import annotations

import csv
from collections import Counter

import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage
from scipy.ndimage import uniform_filter

from secondread.datasets import brain_tumor_yes_no, busi, lgg, lidc, medmnist, minimias, splits
from secondread.datasets.lesions import Lesion
from secondread.errors import SecondreadError


# ----------------------------------------------------------------------------------- mini-MIAS
@pytest.fixture(scope="module")
def mias(data_root):
    return minimias.samples(data_root)


def test_minimias_counts_match_the_folder_and_the_readme(mias, data_root):
    folder = data_root / "mammography" / "mini-mias"
    assert sorted(s.id for s in mias) == sorted(p.stem for p in folder.glob("mdb*.png"))
    assert len(mias) == 177
    assert Counter(s.label_name for s in mias) == {"abnormal": 96, "normal": 81}
    both = [s for s in mias if s.attributes["severity"] == "BM"]
    assert [s.id for s in both] == ["mdb144"]
    assert sorted(les.attributes["severity"] for les in both[0].lesions) == ["B", "M"]
    assert all(s.label == int(bool(s.lesions)) for s in mias)


def test_minimias_centres_equal_the_csv_top_left_columns(mias, data_root):
    with open(data_root / "mammography" / "mini-mias" / "info.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["x_img"]]
    expected = Counter((r["refnum"], float(r["x_img"]), float(r["y_img"]), float(r["radius"])) for r in rows)
    got = Counter((s.id, *les.center, les.radius) for s in mias for les in s.lesions if les.kind == "circle")
    assert got == expected - Counter({k: v for k, v in expected.items() if k[0] not in {s.id for s in mias}})
    assert minimias.mias_to_image(535, 425) == (535, 1024 - 425)  # MIAS note 3: origin bottom-left


def _contrast(pixels: np.ndarray, x: float, y: float, r: float) -> float:
    rows, cols = np.ogrid[: pixels.shape[0], : pixels.shape[1]]
    d2 = (cols - x) ** 2 + (rows - y) ** 2
    return float(pixels[d2 <= r * r].mean() - pixels[(d2 > r * r) & (d2 <= 4 * r * r)].mean())


def test_minimias_masses_are_brighter_than_their_surroundings_only_with_the_flip(mias):
    """Masses are denser (brighter) than the tissue around them: true at the converted centres,
    much less often at the unconverted (bottom-left) ones."""
    masses = [(s, les) for s in mias for les in s.lesions if les.label in ("CIRC", "SPIC", "MISC") and les.center]
    right = sum(_contrast(s.image.pixels, les.center[0], les.center[1], les.radius) > 0 for s, les in masses)
    wrong = sum(_contrast(s.image.pixels, les.center[0], 1024 - les.center[1], les.radius) > 0 for s, les in masses)
    assert len(masses) >= 40 and right >= 0.95 * len(masses) and wrong <= 0.8 * len(masses)


def test_minimias_mdb270_mass_where_seen_by_eye(mias):
    """mdb270 (CIRC, malignant): by eye the round mass sits near the top edge, centred about
    column 355, row 80 (MIAS y = 945). The brightest 15 x 15 area inside the circle is there."""
    sample = next(s for s in mias if s.id == "mdb270")
    (lesion,) = sample.lesions
    assert lesion.center == (356.0, 79.0) and lesion.radius == 72.0
    smooth = uniform_filter(sample.image.pixels, 15)
    inside = lesion.full_mask(smooth.shape)
    row, col = np.unravel_index(np.argmax(np.where(inside, smooth, -1)), smooth.shape)
    assert abs(col - 355) <= 20 and abs(row - 80) <= 20


def test_minimias_women_pair_odd_and_even_images(mias):
    assert minimias.woman_of("mdb001") == minimias.woman_of("mdb002") != minimias.woman_of("mdb003")
    by_woman = Counter(s.patient for s in mias)
    assert max(by_woman.values()) == 2 and len(by_woman) == 109
    unlocated = sorted(s.id for s in mias for les in s.lesions if les.kind == "unlocated")
    assert set(unlocated) <= {"mdb059", "mdb216", "mdb233", "mdb245"} and unlocated


# ----------------------------------------------------------------------------------- LGG
def test_lgg_counts_and_labels_recounted_from_the_masks(data_root):
    items = lgg.samples(data_root)
    assert len(items) == 1261 and len({s.patient for s in items}) == 36
    folder = data_root / "mri" / "lgg"
    recount = {}
    for path in folder.glob("*/*_mask.png"):
        recount[path.name[: -len("_mask.png")]] = int((np.asarray(PILImage.open(path)) == 255).sum())
    assert len(recount) == 1261
    assert {s.id: s.attributes["tumour_pixels"] for s in items} == recount
    assert {s.id: s.label for s in items} == {k: int(v > 0) for k, v in recount.items()}
    assert sum(v > 0 for v in recount.values()) == 435
    assert all(s.attributes["clinical"]["Patient"] == s.patient for s in items)


def test_lgg_lesion_is_the_mask_and_the_image_the_flair(data_root):
    items = {s.id: s for s in lgg.samples(data_root)}
    sample = max(items.values(), key=lambda s: s.attributes["tumour_pixels"])
    stem = f"{sample.attributes['folder']}/{sample.id}"
    mask = np.asarray(PILImage.open(data_root / "mri" / "lgg" / f"{stem}_mask.png")) > 0
    (lesion,) = sample.lesions
    assert lesion.kind == "mask" and np.array_equal(lesion.mask, mask)
    flair = np.asarray(PILImage.open(data_root / "mri" / "lgg" / f"{stem}_flair.png"))
    assert np.array_equal(sample.image.pixels, flair) and sample.image.modality == "MR"
    # FLAIR abnormality is bright (SOURCE.md: ~3.5x the rest of the head on average)
    assert flair[mask].mean() > 1.5 * flair[~mask & (flair > 0)].mean()
    negative = next(s for s in items.values() if s.label == 0)
    assert negative.lesions == []


# ----------------------------------------------------------------------------------- LIDC
@pytest.fixture(scope="module")
def lidc_case(data_root):
    (sample,) = lidc.samples(data_root)
    return sample, data_root / "ct" / "LIDC-IDRI-0001"


def test_lidc_consensus_nodule_equals_nodules_csv(lidc_case):
    """Tolerance: nodules.csv rounds to 0.01, so |difference| <= 0.005 (+ float noise)."""
    sample, case = lidc_case
    with open(case / "nodules.csv", newline="") as fh:
        (truth,) = list(csv.DictReader(fh))
    assert sample.label == 1
    (nodule,) = sample.lesions
    a = nodule.attributes
    assert len(set(nodule.readers)) == int(truth["readers"]) == 4
    assert a["center_mm"] == pytest.approx([float(truth[k]) for k in ("x_mm", "y_mm", "z_mm")], abs=0.0051)
    assert a["diameter_mm"] == pytest.approx(float(truth["diameter_mm"]), abs=0.0051)
    assert a["malignancy_mean"] == pytest.approx(float(truth["malignancy_mean"]), abs=1e-9)
    # SOURCE.md details: per-reader diameters and ratings
    assert sorted(a["diameters_mm"]) == pytest.approx(sorted([32.21, 33.19, 31.96, 33.67]), abs=0.0051)
    assert sorted(a["malignancy"]) == [4, 5, 5, 5]


def test_lidc_geometry_from_pydicom_headers(lidc_case):
    """Every contour's slice index and z agree with this test's own SOP UID -> z map."""
    sample, case = lidc_case
    z_of = {}
    for path in (case / "series").glob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        z_of[ds.SOPInstanceUID] = float(ds.ImagePositionPatient[2])
    ascending = sorted(z_of.values())
    (nodule,) = sample.lesions
    for contour in nodule.contours:
        assert z_of[contour.sop_uid] == pytest.approx(contour.z_mm)
        assert ascending[contour.slice_index] == pytest.approx(contour.z_mm)
    zs = sorted({c.z_mm for c in nodule.contours})
    assert zs[0] == -125.0 and zs[-1] == -105.0  # SOURCE.md: contours span -125 .. -105 mm
    # the consensus centre lies on the nodule: soft tissue (SOURCE.md: ~97 HU) on slice z = -115 mm
    x, y, _ = nodule.center
    ds = pydicom.dcmread(case / "series" / "000043.dcm")
    assert float(ds.ImagePositionPatient[2]) == -115.0
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert abs(x - 316.3) < 0.1 and abs(y - 367.0) < 0.1
    assert hu[int(round(y)) - 2: int(round(y)) + 3, int(round(x)) - 2: int(round(x)) + 3].mean() == pytest.approx(97, abs=5)


def test_lidc_masks_readers_and_small_nodules(lidc_case):
    sample, case = lidc_case
    geometry = lidc.read_geometry(case / "series")
    annotations = lidc.read_annotations(case / "annotations.xml", geometry)
    kinds = Counter((a.reader, a.kind) for a in annotations)
    # SOURCE.md reader table: (>= 3 mm, < 3 mm, non-nodule) per reader
    assert [(kinds[(r, "nodule")], kinds[(r, "small")], kinds[(r, "non-nodule")])
            for r in ("reader1", "reader2", "reader3", "reader4")] == [(1, 3, 4), (1, 0, 1), (1, 3, 8), (1, 3, 0)]
    volumes = [a.mask.sum() * 0.703125 ** 2 * 2.5 for a in annotations if a.kind == "nodule"]
    assert np.mean(volumes) == pytest.approx(7519, abs=1)  # SOURCE.md: mean mask volume 7519 mm^3
    (nodule,) = sample.lesions
    full = nodule.full_mask(geometry.shape)
    assert full.sum() == nodule.mask.sum() > 0
    small = lidc.small_nodules(annotations)
    assert len(small) == 3 and all(sorted(s.readers) == ["reader1", "reader3", "reader4"] for s in small)
    centres = np.array(sorted(s.attributes["center_mm"] for s in small))
    expected = np.array(sorted([(-33.8, -54.7, -150.0), (117.6, 19.8, -175.0), (109.6, 51.0, -175.0)]))
    assert np.abs(centres - expected).max() < 0.1  # SOURCE.md gives them to 0.1 mm


def test_lidc_volume_in_the_annotations_voxel_order(lidc_case):
    pytest.importorskip("secondread.io.series")
    sample, case = lidc_case
    image = sample.image
    (nodule,) = sample.lesions
    inside = image.pixels[nodule.full_mask(image.shape)]
    assert image.shape == (133, 512, 512) and inside.mean() > -300  # a solid nodule, not aerated lung


def test_lidc_bad_xml_is_one_line(tmp_path, lidc_case):
    _, case = lidc_case
    bad = tmp_path / "annotations.xml"
    bad.write_text("<LidcReadMessage><readingSession>")
    with pytest.raises(SecondreadError) as err:
        lidc.read_annotations(bad, lidc.read_geometry(case / "series"))
    assert "annotations.xml" in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------------- MedMNIST
@pytest.mark.parametrize("name,counts,shape", [
    ("pneumoniamnist", {"train": (1214, 3494), "val": (135, 389)}, (28, 28)),
    ("breastmnist", {"train": (147, 399), "val": (21, 57)}, (28, 28)),
    ("adrenalmnist3d", {"train": (929, 259), "val": (76, 22)}, (28, 28, 28)),
])
def test_medmnist_official_splits(data_root, name, counts, shape):
    for split, (zeros, ones) in counts.items():
        items = medmnist.samples(name, split, data_root)
        assert Counter(s.label for s in items) == {0: zeros, 1: ones}
        assert items[3].image.shape == shape and items[3].id == f"{split}/3"
    with pytest.raises(SecondreadError, match="withheld"):
        medmnist.samples(name, "test", data_root)


# ----------------------------------------------------------------------------------- BUSI, yes/no
def _real_png(data_root, path, crop):
    """Write a crop of a real LGG FLAIR slice as a PNG (real pixels for the synthetic layouts)."""
    src = data_root / "mri" / "lgg" / "TCGA_CS_4941_19960909" / "TCGA_CS_4941_19960909_12_flair.png"
    PILImage.fromarray(np.asarray(PILImage.open(src))[crop]).save(path)


def test_busi_layout_on_a_tiny_folder(data_root, tmp_path):
    root = tmp_path / "ultrasound" / "busi" / "Dataset_BUSI_with_GT"
    for name in busi.CLASSES:
        (root / name).mkdir(parents=True)
    _real_png(data_root, root / "benign" / "benign (1).png", np.s_[:100, :120])
    _real_png(data_root, root / "benign" / "benign (10).png", np.s_[:100, :120])
    _real_png(data_root, root / "malignant" / "malignant (2).png", np.s_[50:150, :120])
    _real_png(data_root, root / "normal" / "normal (1).png", np.s_[100:200, :120])
    masks = {"benign/benign (1)_mask.png": (10, 30), "benign/benign (1)_mask_1.png": (60, 80),
             "benign/benign (10)_mask.png": (40, 50), "malignant/malignant (2)_mask.png": (20, 70),
             "normal/normal (1)_mask.png": None}
    for rel, rows in masks.items():
        mask = np.zeros((100, 120), np.uint8)
        if rows:
            mask[rows[0]:rows[1], 20:40] = 255
        PILImage.fromarray(mask).save(root / rel)
    items = busi.samples(tmp_path)
    assert [(s.id, s.label_name) for s in items] == [("normal (1)", "normal"), ("benign (1)", "benign"),
                                                     ("benign (10)", "benign"), ("malignant (2)", "malignant")]
    by_id = {s.id: s for s in items}
    assert [les.attributes["pixels"] for les in by_id["benign (1)"].lesions] == [400, 400]
    assert by_id["normal (1)"].lesions == [] and by_id["malignant (2)"].image.shape == (100, 120)
    assert busi.describe(tmp_path)["with_several_masks"] == 1


def test_yes_no_layout_on_a_tiny_folder(data_root, tmp_path):
    root = tmp_path / "mri" / "brain-tumor-yes-no"
    for name in ("yes", "no"):
        (root / name).mkdir(parents=True)
    _real_png(data_root, root / "yes" / "Y1.png", np.s_[:64, :64])
    _real_png(data_root, root / "yes" / "Y2.jpg", np.s_[64:128, :64])
    _real_png(data_root, root / "no" / "1 no.png", np.s_[:64, 64:128])
    items = brain_tumor_yes_no.samples(tmp_path)
    assert [(s.id, s.label) for s in items] == [("no/1 no.png", 0), ("yes/Y1.png", 1), ("yes/Y2.jpg", 1)]
    assert items[1].image.shape == (64, 64)


@pytest.mark.parametrize("module", [busi, brain_tumor_yes_no])
def test_unavailable_sets_say_so(tmp_path, module):
    with pytest.raises(SecondreadError, match="not available here") as err:
        module.samples(tmp_path)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------------- splits
@pytest.mark.parametrize("dataset,loader", [("mini-mias", minimias), ("lgg", lgg)])
def test_saved_split_is_reproducible_and_per_patient(data_root, dataset, loader):
    saved = splits.load(dataset)
    assert saved == splits.generate(dataset, data_root)  # the file is what the code makes for its seed
    assert saved["seed"] == splits.SEED
    train, val = set(saved["splits"]["train"]), set(saved["splits"]["val"])
    assert not train & val
    items = loader.samples(data_root)
    patients = {s.patient for s in items}
    assert train | val == patients
    folds = [set(f) for f in saved["folds"]]
    assert sum(len(f) for f in folds) == len(patients) and set().union(*folds) == patients
    # every sample is in exactly one of train/val, and in exactly one fold
    by_split = [loader.samples(data_root, split=name) for name in ("train", "val")]
    assert sorted(s.id for part in by_split for s in part) == sorted(s.id for s in items)
    assert sum(len(loader.samples(data_root, split=f"fold{k}")) for k in range(len(folds))) == len(items)
    assert len(loader.samples(data_root, split="notfold0")) + len(loader.samples(data_root, split="fold0")) == len(items)
    # stratified: each stratum with >= 5 patients is in both train and val
    strata, _ = splits.groups(dataset, data_root)
    for stratum in set(strata.values()):
        members = {p for p, s in strata.items() if s == stratum}
        if len(members) >= 5:
            assert members & train and members & val


def test_split_depends_on_seed_and_rejects_unknown_names():
    strata = {f"p{i:02d}": "a" if i % 3 else "b" for i in range(30)}
    one, again, other = splits.make_split(strata, 1), splits.make_split(strata, 1), splits.make_split(strata, 2)
    assert one == again and one != other
    assert len(one["val"]) == 6
    with pytest.raises(SecondreadError, match="unknown split"):
        splits.patients_in("lgg", "test")
    with pytest.raises(SecondreadError, match="no per-patient split"):
        splits.groups("pneumoniamnist")


def test_lesion_kinds_are_checked():
    with pytest.raises(ValueError):
        Lesion(kind="blob")
    circle = Lesion(kind="circle", center=(5.0, 3.0), radius=2.0)
    assert circle.full_mask((10, 10))[3, 5] and circle.full_mask((10, 10)).sum() == 13


# ------------------------------------------------------------------- a copy under another name
@pytest.mark.parametrize("loader, folder", [(minimias, "mammography/mini-mias"), (lgg, "mri/lgg")])
def test_a_copy_under_another_name_keeps_its_splits(data_root, renamed_copy, tmp_path, loader, folder):
    from secondread.datasets.lesions import locate_dataset

    copy = renamed_copy(folder)
    for split in ("train", "val", "fold2"):
        assert [s.id for s in loader.samples(copy, split)] == [s.id for s in loader.samples(data_root, split)]
    assert locate_dataset(loader, copy) == (copy, copy)
    assert locate_dataset(loader, data_root) == (data_root.absolute(), data_root.absolute() / folder)
    with pytest.raises(SecondreadError, match=f"not the {loader.NAME} data set folder .* nor a copy of it"):
        locate_dataset(loader, tmp_path)

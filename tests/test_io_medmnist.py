"""secondread.io.medmnist on the shared copies, and the download path run offline (file:// URL)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from secondread.errors import SecondreadError
from secondread.io import medmnist


@pytest.fixture(scope="module")
def pneumonia(data_root):
    return medmnist.locate("pneumoniamnist", data_root)


def test_info_has_the_official_facts():
    assert set(medmnist.INFO) == {"pneumoniamnist", "breastmnist", "adrenalmnist3d"}
    for name, info in medmnist.INFO.items():
        assert info["url"] == f"https://zenodo.org/records/10519652/files/{name}.npz?download=1"
        assert len(info["md5"]) == 32 and info["license"] == "CC BY 4.0"
    assert medmnist.INFO["pneumoniamnist"]["labels"] == {0: "normal", 1: "pneumonia"}


def test_pneumonia_val_counts(pneumonia):
    images, labels = medmnist.load_split(pneumonia, "val")
    assert images.shape == (524, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (524,) and labels.dtype == np.int64
    assert (labels == 0).sum() == 135 and (labels == 1).sum() == 389
    # the README's counts are the official ones
    assert len(labels) == medmnist.INFO["pneumoniamnist"]["n_samples"]["val"]


def test_pneumonia_train_matches_npz(pneumonia):
    images, labels = medmnist.load_split(pneumonia, "train")
    assert images.shape == (4708, 28, 28)
    assert np.bincount(labels).tolist() == [1214, 3494]
    with np.load(pneumonia) as raw:  # independent read of the same arrays
        np.testing.assert_array_equal(images, raw["train_images"])
        np.testing.assert_array_equal(labels, raw["train_labels"][:, 0])


def test_3d_split_shape(data_root):
    images, labels = medmnist.load_split(medmnist.locate("adrenalmnist3d", data_root), "val")
    assert images.shape == (98, 28, 28, 28) and np.bincount(labels).tolist() == [76, 22]


def test_missing_test_split_message(pneumonia):
    with pytest.raises(SecondreadError) as info:
        medmnist.load_split(pneumonia, "test")
    assert "split 'test' is not in pneumoniamnist.npz (available: train, val)" in str(info.value)


def test_image_from_npz(pneumonia):
    img = medmnist.image_from_npz(pneumonia, "val", 12)
    with np.load(pneumonia) as raw:
        np.testing.assert_array_equal(img.pixels, raw["val_images"][12])
        assert img.metadata["label"] == int(raw["val_labels"][12, 0])
    assert img.source == f"{pneumonia}#val[12]"
    assert img.modality == "CR" and img.shape == (28, 28)
    with pytest.raises(SecondreadError, match="out of range"):
        medmnist.image_from_npz(pneumonia, "val", 524)


def test_modalities_per_dataset(data_root):
    for name, modality, shape in [("breastmnist", "US", (28, 28)), ("adrenalmnist3d", "CT", (28, 28, 28))]:
        img = medmnist.image_from_npz(medmnist.locate(name, data_root), "train", 0)
        assert img.modality == modality and img.shape == shape


def test_locate_says_where_it_looked_and_how_to_download(tmp_path):
    with pytest.raises(SecondreadError) as info:
        medmnist.locate("breastmnist", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "medmnist") in message and "download" in message
    assert medmnist.INFO["breastmnist"]["url"] in message and "\n" not in message
    with pytest.raises(SecondreadError, match="unknown MedMNIST"):
        medmnist.locate("nosuchmnist", tmp_path)


def test_corrupt_and_missing_npz(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 this is not really a zip")
    for path in (bad, tmp_path / "missing.npz"):
        with pytest.raises(SecondreadError) as info:
            medmnist.load_split(path, "train")
        assert str(path) in str(info.value)


@pytest.fixture
def small_npz(tmp_path):
    src = tmp_path / "src" / "small.npz"
    src.parent.mkdir()
    rng = np.random.default_rng(0)
    np.savez(src, train_images=rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
             train_labels=np.array([[0], [1], [1], [0], [1]], dtype=np.uint8))
    return src, hashlib.md5(src.read_bytes()).hexdigest()


def test_download_verifies_md5_and_writes_atomically(small_npz, tmp_path):
    src, md5 = small_npz
    cache = tmp_path / "cache"
    got = medmnist.download("pneumoniamnist", cache_dir=cache, url=src.as_uri(), md5=md5)
    assert got == cache / "pneumoniamnist.npz"
    assert hashlib.md5(got.read_bytes()).hexdigest() == md5
    assert sorted(p.name for p in cache.iterdir()) == ["pneumoniamnist.npz"]  # no temp file left
    images, labels = medmnist.load_split(got, "train")
    assert images.shape == (5, 28, 28) and labels.tolist() == [0, 1, 1, 0, 1]


def test_download_with_wrong_md5_leaves_nothing(small_npz, tmp_path):
    src, _ = small_npz
    cache = tmp_path / "cache"
    with pytest.raises(SecondreadError, match="checksum"):
        # the official MD5 cannot match our small file
        medmnist.download("pneumoniamnist", cache_dir=cache, url=src.as_uri())
    assert list(cache.iterdir()) == []


def test_download_failure_is_a_secondread_error(tmp_path):
    with pytest.raises(SecondreadError, match="download of pneumoniamnist.npz failed"):
        medmnist.download("pneumoniamnist", cache_dir=tmp_path, url=(tmp_path / "nothing.npz").as_uri())
    assert list(tmp_path.iterdir()) == []


def test_find_or_download(small_npz, tmp_path, monkeypatch, pneumonia, data_root):
    assert medmnist.find_or_download("pneumoniamnist", data_root) == pneumonia
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert medmnist.default_cache_dir() == tmp_path / "xdg" / "secondread" / "medmnist"
    with pytest.raises(SecondreadError, match="download"):
        medmnist.find_or_download("breastmnist", tmp_path / "empty", allow_download=False)

"""Preprocessing: each step checked against an independent reference or a hand-computed value."""

import json

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_windowing
from skimage.metrics import peak_signal_noise_ratio

from secondread import preprocess
from secondread.errors import SecondreadError


@pytest.fixture(scope="module")
def xray(data_root):
    """A real 28 px chest X-ray from the PneumoniaMNIST validation split, as float in [0, 1]."""
    with np.load(data_root / "medmnist" / "pneumoniamnist.npz") as npz:
        return npz["val_images"][0].astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def ct(data_root):
    ds = pydicom.dcmread(data_root / "dicom" / "CT_small.dcm")
    return ds


def test_description_round_trips_through_json(xray):
    spec = [{"op": "median", "size": 3}, {"op": "clahe", "clip_limit": 2.0, "tile_grid_size": [4, 4]},
            {"op": "resize", "shape": [16, 16], "interpolation": "area"},
            {"op": "normalise", "method": "fixed", "mean": 0.5, "std": 0.25}]
    again = preprocess.from_json(preprocess.to_json(spec))
    assert again == json.loads(json.dumps(spec))
    np.testing.assert_array_equal(preprocess.apply(spec, xray), preprocess.apply(again, xray))
    assert preprocess.apply(spec, xray).dtype == np.float32


def test_window_matches_pydicom_windowing(ct):
    """Our linear window equals pydicom's (PS3.3 C.11.2.1.2.1), once both are scaled to [0, 1]."""
    hu = ct.pixel_array * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
    center, width = 40.0, 400.0
    ds = pydicom.Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsStored, ds.PixelRepresentation = 16, 1
    ds.WindowCenter, ds.WindowWidth = center, width
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    theirs = apply_windowing(hu.astype(np.float64), ds)
    lo, hi = theirs.min(), theirs.max()
    y_min, y_max = -(2**15), 2**15 - 1  # pydicom's output range for signed 16 bits
    ours = preprocess.window(hu, center=center, width=width)
    np.testing.assert_allclose(ours, (theirs - y_min) / (y_max - y_min), atol=1e-5)
    assert lo >= y_min and hi <= y_max


def test_window_hand_values():
    px = np.array([[-161.0, -160.0, 40.0, 239.0, 500.0]])
    out = preprocess.window(px, center=40, width=400)
    np.testing.assert_allclose(out, [[0.0, 0.0, 200 / 399, 1.0, 1.0]], atol=1e-6)


def test_median_removes_salt_and_pepper(xray):
    rng = np.random.default_rng(0)
    noisy = xray.copy()
    hit = rng.random(xray.shape) < 0.05
    noisy[hit] = rng.choice([0.0, 1.0], size=hit.sum())
    cleaned = preprocess.apply([{"op": "median", "size": 3}], noisy)
    assert np.abs(cleaned - xray).mean() < 0.5 * np.abs(noisy - xray).mean()


@pytest.mark.parametrize("step", [{"op": "gaussian", "sigma": 0.8}, {"op": "nlmeans", "patch_size": 3, "patch_distance": 4}])
def test_denoisers_raise_psnr_on_a_real_image(data_root, step):
    with np.load(data_root / "medmnist" / "pneumoniamnist.npz") as npz:
        clean = npz["val_images"][:8].astype(np.float32) / 255.0
    rng = np.random.default_rng(1)
    gains = []
    for img in clean:
        noisy = np.clip(img + rng.normal(0, 0.08, img.shape), 0, 1).astype(np.float32)
        out = preprocess.apply([step], noisy)
        gains.append(peak_signal_noise_ratio(img, out, data_range=1) - peak_signal_noise_ratio(img, noisy, data_range=1))
    assert np.mean(gains) > 1.0, gains


def test_clahe_stays_in_unit_range_and_raises_local_contrast(data_root):
    import cv2
    from skimage import io as skio
    mammo = skio.imread(data_root / "mammography" / "mini-mias" / "mdb001.png").astype(np.float32)
    small = cv2.resize(mammo, (256, 256), interpolation=cv2.INTER_AREA)
    out = preprocess.clahe(small, clip_limit=2.0)
    assert 0.0 <= out.min() and out.max() <= 1.0
    base = preprocess.normalise(small, method="minmax")
    # local contrast: mean absolute Laplacian over the breast region (non-background)
    tissue = base > 0.1
    lap = lambda a: np.abs(cv2.Laplacian(a.astype(np.float32), cv2.CV_32F))[tissue].mean()
    assert lap(out) > lap(base)


def test_resize_area_averages_blocks():
    img = np.array([[0, 2, 10, 10], [2, 0, 10, 10], [4, 4, 6, 6], [4, 4, 6, 6]], dtype=np.float32)
    np.testing.assert_allclose(preprocess.resize(img, [2, 2], "area"), [[1, 10], [4, 6]])
    vol = np.zeros((4, 8, 8), np.float32)
    assert preprocess.resize(vol, [2, 4, 4]).shape == (2, 4, 4)


def test_normalise_methods(xray):
    mm = preprocess.normalise(xray * 7 + 3, "minmax")
    assert mm.min() == pytest.approx(0) and mm.max() == pytest.approx(1)
    z = preprocess.normalise(xray, "zscore")
    assert z.mean() == pytest.approx(0, abs=1e-5) and z.std() == pytest.approx(1, abs=1e-4)
    np.testing.assert_allclose(preprocess.normalise(xray, "fixed", mean=0.5, std=0.25), (xray - 0.5) / 0.25, rtol=1e-6)
    assert not preprocess.normalise(np.full((4, 4), 3.0), "minmax").any()


def test_foreground_scale_ignores_the_signal_s_arbitrary_scale_and_the_brightest_outlier():
    """An MR slice: air at 0, tissue 100..200, a lesion at 260 and one hot pixel at 5000."""
    rng = np.random.default_rng(0)
    px = np.zeros((64, 64))
    px[8:56, 8:56] = rng.uniform(100, 200, (48, 48))
    px[20:24, 20:24] = 260.0
    px[40, 40] = 5000.0
    out = preprocess.normalise(px, "foreground", high=99.0, ceiling=1.5)
    tissue = px[(px > 0) & (px < 5000)]
    reference = np.percentile(px[px > 0], 99.0)  # numpy's percentile of the non-air pixels
    assert out[0, 0] == 0 and out[40, 40] == pytest.approx(1.5)  # air at 0, the hot pixel clipped
    np.testing.assert_allclose(out[(px > 0) & (px < 5000)], np.minimum(tissue / reference, 1.5), rtol=1e-5)
    np.testing.assert_allclose(preprocess.normalise(px * 37 + 5, "foreground", high=99.0), out, atol=1e-6)
    assert out[22, 22] > 1.0  # the lesion stays brighter than the reference instead of being clipped
    assert not preprocess.normalise(np.full((4, 4), 3.0), "foreground").any()


@pytest.mark.parametrize("spec, words", [
    ([{"op": "sharpen"}], "unknown op"),
    ([{"op": "gaussian", "sigmaa": 1}], "unknown parameter"),
    ([{"sigma": 1}], "must be a dict with an 'op'"),
    ({"op": "gaussian"}, "must be a list"),
])
def test_bad_descriptions_fail_clearly(spec, words):
    with pytest.raises(SecondreadError, match=words):
        preprocess.validate(spec)

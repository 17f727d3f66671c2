"""How fast secondread reads DICOM, beside plain pydicom doing the same work.

Run:  .venv/bin/python benchmarks/io.py [--repeats N] [--data PATH]

(a) The LIDC-IDRI-0001 CT series (133 slices) into a Hounsfield-unit volume:
    secondread ``read_series`` against plain pydicom: dcmread every file, sort by the position along
    the slice normal, ``apply_modality_lut`` per slice, ``np.stack``.
(b) Every compressed (or deflated) sample of ``dicom/`` decoded to displayed values:
    secondread ``read_dicom`` against pydicom's ``dcmread`` + ``pixel_array`` + ``apply_modality_lut``
    + ``apply_voi_lut`` (grey) or the BT.601 luminance of ``pixel_array`` (colour).

Each figure is the median of N runs (files are read once before timing, so the page cache is warm
for both). The ratio is secondread / pydicom: below 1 means secondread is faster; "extra ms" is the
absolute difference. secondread does a little more than the plain code on every file (the size
limit checked before decoding, the value range and the identifier-free metadata, float32 output),
a fixed ~0.1-0.2 ms that shows as a ratio above 1 only on tiny images (64 x 64) that decode in
well under a millisecond.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from secondread.io import read_dicom, read_series

UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: imports, decoder plugins, page cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pydicom_volume(folder: Path) -> np.ndarray:
    """What a user writes with plain pydicom: read all, sort along the normal, rescale, stack."""
    slices = [pydicom.dcmread(f) for f in sorted(folder.iterdir())]
    iop = np.array(slices[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    slices.sort(key=lambda ds: float(np.dot(np.array(ds.ImagePositionPatient, dtype=float), normal)))
    return np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in slices])


def pydicom_display(path: Path) -> np.ndarray:
    """Plain pydicom's displayed values for one file (the work read_dicom does)."""
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim >= 3 and arr.shape[-1] == 3:
        return arr @ np.array([0.299, 0.587, 0.114])
    values = apply_voi_lut(apply_modality_lut(arr, ds), ds)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        values = values.max() + values.min() - values
    return values


def rows_for_samples(data: Path, repeats: int) -> list[tuple[str, float, float]]:
    with open(data / "dicom" / "index.csv", newline="") as fh:
        index = [r for r in csv.DictReader(fh) if r["transfer_syntax_uid"] not in UNCOMPRESSED]
    rows = []
    for r in sorted(index, key=lambda r: r["transfer_syntax_name"]):
        path = data / "dicom" / r["file"]
        ours = median_seconds(lambda: read_dicom(path), repeats)
        theirs = median_seconds(lambda: pydicom_display(path), repeats)
        rows.append((f"{r['transfer_syntax_name'][:44]} ({r['file']})", ours, theirs))
    return rows


def print_table(rows: list[tuple[str, float, float]]) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"{'case':<{width}}  {'secondread ms':>13}  {'pydicom ms':>10}  {'ratio':>5}  {'extra ms':>8}")
    for name, ours, theirs in rows:
        print(f"{name:<{width}}  {ours * 1e3:>13.2f}  {theirs * 1e3:>10.2f}  {ours / theirs:>5.2f}"
              f"  {(ours - theirs) * 1e3:>8.2f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--data", default=os.environ.get("SECONDREAD_DATA") or
                   str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    args = p.parse_args(argv)
    data = Path(args.data)
    warnings.simplefilter("ignore")
    folder = data / "ct" / "LIDC-IDRI-0001" / "series"
    assert np.array_equal(read_series(folder).pixels, pydicom_volume(folder))  # the same work, the same result
    series = [("LIDC-IDRI-0001 series -> HU volume (133 x 512 x 512)",
               median_seconds(lambda: read_series(folder), max(3, args.repeats // 2)),
               median_seconds(lambda: pydicom_volume(folder), max(3, args.repeats // 2)))]
    print(f"secondread I/O benchmark: median of {args.repeats} runs, {os.cpu_count()} CPU(s), "
          f"pydicom {pydicom.__version__}, numpy {np.__version__}\n")
    print_table(series + rows_for_samples(data, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fuzzing the readers with a seeded mutation loop over the real samples.

Every mutated file (truncated at many offsets, flipped bytes, corrupted element lengths, Pixel
Data deleted, absurd Rows/Columns/Number of Frames) and every series folder holding one mutated
slice must end in either an :class:`Image` or a ``SecondreadError`` whose message is one line,
names the file and holds no identifier of the source, never in another exception, a hang or a
crash. The cases run in a separate worker process (with a memory cap), so a crash or a hang is
seen and reported for its case instead of taking the test run down; a hung worker is killed after
``CASE_TIMEOUT`` seconds and the loop goes on with the next case.
"""

from __future__ import annotations

import os
import resource
import selectors
import subprocess
import sys
import warnings

import numpy as np
import pydicom
import pytest

SEED = int(os.environ.get("SECONDREAD_FUZZ_SEED", "20240603"))
CASE_TIMEOUT = 20.0
FLIPS = int(os.environ.get("SECONDREAD_FUZZ_FLIPS", "60"))  # per sample; raise it for a longer hunt
MEMORY_CAP = 6 * 2**30  # a header that makes a decoder allocate more than this fails the case

SAMPLES = ["MR_small.dcm", "CT_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
           "MR_small_jpeg_ls_lossless.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
           "JPEG2000.dcm", "JPGExtended.dcm", "JPEG-LL.dcm", "SC_rgb_jpeg_dcmtk.dcm", "emri_small_RLE.dcm",
           "image_dfl.dcm", "6154", "examples_palette.dcm", "rtdose.dcm"]

WORKER = r"""
import sys, warnings
warnings.simplefilter("ignore")
from secondread.errors import SecondreadError
from secondread.io import load_image
for line in open(sys.argv[1], encoding="utf-8"):
    case, path = line.rstrip("\n").split("\t", 1)
    print("BEGIN", case, flush=True)
    try:
        load_image(path)
        outcome = "image"
    except SecondreadError as exc:
        outcome = "error " + str(exc).replace("\n", "\\n")
    except BaseException as exc:
        outcome = "exception " + type(exc).__name__ + ": " + str(exc).replace("\n", " ")[:300]
    print("END", case, outcome, flush=True)
"""

# Tags whose element length is corrupted (PS3.5 7.1: tag, [VR], length).
_LENGTH_TAGS = [(0x0008, 0x0060), (0x0028, 0x0010), (0x0028, 0x0011), (0x0028, 0x0030),
                (0x0028, 0x0100), (0x0002, 0x0010), (0x7FE0, 0x0010)]
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UR", b"UT", b"UN", b"SV", b"UV"}


def _dcm(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, **kw)


# --- mutations -------------------------------------------------------------------------------

def _truncations(raw, rng):
    n = len(raw)
    offsets = {0, 1, 127, 132, 140, 200, 300, n // 4, n // 2, n - 2000, n - 10, n - 1}
    offsets |= {int(v) for v in rng.integers(0, n, 12)}
    return {f"cut{o}": raw[:o] for o in sorted(offsets) if 0 <= o < n}


def _flips(raw, rng):
    out = {}
    for k in range(FLIPS):
        data = bytearray(raw)
        span = min(len(raw), 2048) if k < FLIPS * 2 // 3 else len(raw)  # mostly the header, where it hurts
        for pos in rng.integers(0, span, int(rng.integers(1, 9))):
            data[pos] ^= int(rng.integers(1, 256))
        out[f"flip{k}"] = bytes(data)
    return out


def _length_offsets(raw, group, element, big_endian):
    """Offsets of the length field of every occurrence of a tag (explicit or implicit VR)."""
    order = ">" if big_endian and group != 0x0002 else "<"
    tag = np.array([group, element], dtype=order + "u2").tobytes()
    found, start = [], 0
    while (pos := raw.find(tag, start)) >= 0:
        vr = raw[pos + 4:pos + 6]
        if vr.isalpha() and vr.isupper():
            found.append((pos + 8, 4) if vr in _LONG_VRS else (pos + 6, 2))
        else:
            found.append((pos + 4, 4))  # implicit VR: a 4-byte length
        start = pos + 1
    return found


def _bad_lengths(raw, rng, big_endian):
    out = {}
    for group, element in _LENGTH_TAGS:
        for i, (pos, size) in enumerate(_length_offsets(raw, group, element, big_endian)[:2]):
            for value in (0, 1, 2**(8 * size) - 1, int(rng.integers(0, 2**(8 * size)))):
                data = bytearray(raw)
                data[pos:pos + size] = int(value).to_bytes(size, "big" if big_endian and group != 2 else "little")
                out[f"len{group:04x}{element:04x}_{i}_{value}"] = bytes(data)
    return out


def _header_edits(src, tmp):
    """Files rewritten by pydicom: Pixel Data removed, absurd dimensions."""
    edits = {"nopixels": {"PixelData": None}, "huge": {"Rows": 65535, "Columns": 65535, "NumberOfFrames": 1000},
             "rows": {"Rows": 65535}, "zero": {"Rows": 0}, "frames": {"NumberOfFrames": 100000},
             "bits": {"BitsAllocated": 64, "BitsStored": 64}, "spp": {"SamplesPerPixel": 3}}
    out = {}
    for name, changes in edits.items():
        ds = _dcm(src)
        for keyword, value in changes.items():
            if value is None:
                del ds[keyword]
            else:
                setattr(ds, keyword, value)
        path = tmp / f"{src.name}.{name}"
        try:
            ds.save_as(path)
        except Exception:  # pydicom refuses to write this combination: nothing to test
            continue
        out[name] = path
    return out


def _cases(data_root, tmp):
    rng = np.random.default_rng(SEED)
    cases, forbidden = {}, {}
    for name in SAMPLES:
        src = data_root / "dicom" / name
        raw = src.read_bytes()
        big = "bigendian" in name
        header = _dcm(src, stop_before_pixels=True)
        forbidden[name] = {str(header.get(k, "") or "") for k in ("PatientName", "PatientID", "PatientBirthDate")}
        mutated = {**_truncations(raw, rng), **_flips(raw, rng), **_bad_lengths(raw, rng, big)}
        for label, data in mutated.items():
            path = tmp / f"{name}.{label}"
            path.write_bytes(data)
            cases[str(path)] = name
        for path in _header_edits(src, tmp).values():
            cases[str(path)] = name
    return cases, forbidden


def _series_cases(data_root, tmp):
    """Folders of three LIDC slices, one of them mutated."""
    rng = np.random.default_rng(SEED + 1)
    series = data_root / "ct" / "LIDC-IDRI-0001" / "series"
    raw = (series / "000042.dcm").read_bytes()
    mutations = {**dict(list(_truncations(raw, rng).items())[::3]), **dict(list(_flips(raw, rng).items())[:4])}
    cases = {}
    for label, data in mutations.items():
        folder = tmp / f"series.{label}"
        folder.mkdir()
        for n in (41, 43):
            os.symlink(series / f"{n:06d}.dcm", folder / f"{n}.dcm")
        (folder / "42.dcm").write_bytes(data)
        cases[str(folder)] = "LIDC"
    return cases


# --- running them ----------------------------------------------------------------------------

def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def _run_worker(paths, listing):
    """Run ``paths`` through a worker; returns {path: outcome}, restarting after a hang or crash.
    The cases go through a file (``listing``), not stdin, so no pipe can fill up both ways."""
    results, todo = {}, list(paths)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    while todo:
        listing.write_text("".join(f"{i}\t{p}\n" for i, p in enumerate(todo)), encoding="utf-8")
        proc = subprocess.Popen([sys.executable, "-c", WORKER, str(listing)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                                preexec_fn=_limit_memory)
        done = _collect(proc, todo, results)
        todo = todo[done:]
    return results


def _collect(proc, todo, results):
    """Read outcomes until the worker ends; returns how many cases of ``todo`` are settled."""
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    current, done = None, 0
    while True:
        if not selector.select(timeout=CASE_TIMEOUT):
            proc.kill()
            proc.wait()
            results[todo[done]] = f"hang (no answer within {CASE_TIMEOUT:g} s)"
            return done + 1
        line = proc.stdout.readline()
        if not line:
            code = proc.wait()
            if current is not None:
                results[todo[done]] = f"crash (worker exit code {code})"
                return done + 1
            return done
        word, case, *rest = line.rstrip("\n").split(" ", 2)
        if word == "BEGIN":
            current = int(case)
        else:
            results[todo[int(case)]] = rest[0] if rest else ""
            current, done = None, int(case) + 1


def _problems(results, cases, forbidden):
    bad = []
    for path, outcome in sorted(results.items()):
        if outcome == "image":
            continue
        if not outcome.startswith("error "):
            bad.append(f"{path}: {outcome}")
            continue
        message = outcome[len("error "):]
        if "\\n" in message or path not in message:
            bad.append(f"{path}: message is not one line naming the file: {message}")
        leaks = [v for v in forbidden.get(cases[path], ()) if len(v) >= 4 and v in message]
        if leaks:
            bad.append(f"{path}: message leaks an identifier")
    return bad


def test_mutated_files_end_in_an_image_or_a_one_line_error(data_root, tmp_path):
    cases, forbidden = _cases(data_root, tmp_path)
    cases.update(_series_cases(data_root, tmp_path))
    paths = list(cases)
    assert len(paths) > 400
    halves = [paths[0::2], paths[1::2]]  # two workers: two cores
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(2) as pool:
        results = {}
        for part in pool.map(_run_worker, halves, [tmp_path / "cases0.txt", tmp_path / "cases1.txt"]):
            results.update(part)
    assert set(results) == set(paths)
    problems = _problems(results, cases, forbidden)
    assert not problems, f"{len(problems)} of {len(paths)} cases failed:\n" + "\n".join(problems[:30])
    outcomes = [o.split(" ", 1)[0] for o in results.values()]
    assert outcomes.count("error") > 200 and outcomes.count("image") > 20  # both kinds were exercised


def test_absurd_header_is_refused_before_decoding(data_root, tmp_path):
    from secondread.errors import SecondreadError
    from secondread.io import read_dicom

    for name in ("MR_small.dcm", "MR_small_jp2klossless.dcm"):
        ds = _dcm(data_root / "dicom" / name)
        ds.Rows, ds.Columns, ds.NumberOfFrames = 65535, 65535, 1000
        ds.save_as(tmp_path / name)
        with pytest.raises(SecondreadError, match="refused: the header describes"):
            read_dicom(tmp_path / name)
    # the limit is configurable: MR_small (64 x 64 x 2 bytes = 8 KiB) passes 8192 bytes, not 8191
    assert read_dicom(data_root / "dicom" / "MR_small.dcm", max_bytes=8192).shape == (64, 64)
    with pytest.raises(SecondreadError, match="more than the limit"):
        read_dicom(data_root / "dicom" / "MR_small.dcm", max_bytes=8191)


def test_limit_from_the_environment(data_root, monkeypatch):
    from secondread.errors import SecondreadError
    from secondread.io import read_dicom

    monkeypatch.setenv("SECONDREAD_MAX_IMAGE_BYTES", "1000")
    with pytest.raises(SecondreadError, match="SECONDREAD_MAX_IMAGE_BYTES"):
        read_dicom(data_root / "dicom" / "CT_small.dcm")
    monkeypatch.setenv("SECONDREAD_MAX_IMAGE_BYTES", "lots")
    with pytest.raises(SecondreadError, match="must be a number"):
        read_dicom(data_root / "dicom" / "CT_small.dcm")

"""How fast a batch runs: one process vs a pool of workers vs Ray, on real data.

Run:  .venv/bin/python benchmarks/batch.py [--data PATH] [--repeats 3] [--skip-ray] [--sets png,dicom]

Inputs (written to a temporary folder, never into the repository):
  png    the PneumoniaMNIST validation split as 524 PNG files (the pneumonia bundle's own data type);
  dicom  the LIDC-IDRI-0001 CT series (133 slices: one study, read as a volume, then skipped: the
         pneumonia model reads 2D images; ``--model auto`` would give it the nodule search) plus the 23 DICOM samples (2D ones analysed, volumes skipped, the RT dose
         and odd encodings as they come).

Configurations, each in a fresh Python process (so start-up and memory are its own):
  in-process   ``workers=0``: everything in the driver (the single-process baseline);
  1 worker     ``workers=1``: one analysis process fed by the driver;
  2 workers    ``workers=2``;
  Ray 2        ``ray_address="local", workers=2``: a local Ray instance, 2 actors. ``ray.init()`` is
               timed apart (start-up column) and not counted in studies/s.

studies/s is over the batch itself (discovery, loading the models, analysis, report folders,
journal, results.parquet). Peak RSS sums the resident memory of the process and every descendant
(workers, and for Ray its GCS, raylet and worker processes), sampled every 20 ms. Per-stage time is
summed over workers. A last run (2 workers on the first quarter of the PNGs) shows that memory does
not grow with the number of studies. The machine's load average is printed: on a shared machine
the figures move with the neighbours' work, so each configuration runs ``--repeats`` times,
interleaved (round-robin over the configurations, so a busy spell hits them all alike), and the
table shows the median run (by studies/s) with the min-max range of studies/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"in-process": (0, None), "1 worker": (1, None), "2 workers": (2, None), "Ray 2": (2, "local")}


def write_inputs(data: Path, tmp: Path, sets: list[str]) -> dict[str, Path]:
    import numpy as np
    from PIL import Image

    inputs = {}
    if "png" in sets:
        images = np.load(data / "medmnist" / "pneumoniamnist.npz")["val_images"]
        folder = tmp / "png"
        folder.mkdir()
        for i, im in enumerate(images):
            Image.fromarray(im).save(folder / f"val_{i:04d}.png")
        inputs["png"] = folder
        quarter = tmp / "png-quarter"
        quarter.mkdir()
        for i in range(len(images) // 4):
            os.link(folder / f"val_{i:04d}.png", quarter / f"val_{i:04d}.png")
        inputs["png-quarter"] = quarter
    if "dicom" in sets:
        folder = tmp / "dicom"
        folder.mkdir()
        os.symlink(data / "ct" / "LIDC-IDRI-0001" / "series", folder / "LIDC-IDRI-0001")
        os.symlink(data / "dicom", folder / "samples")
        inputs["dicom"] = folder
    return inputs


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack.extend(children.get(p, []))
    return total


def run_config(input_path: Path, workers: int, ray: str | None) -> dict:
    """One configuration in a fresh process; returns its figures and the peak tree RSS."""
    out = Path(tempfile.mkdtemp(prefix="bench-out-"))
    cmd = [sys.executable, __file__, "--one", json.dumps([str(input_path), str(out), workers, ray])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = proc.communicate()
    sampler.join()
    if proc.returncode not in (0, 1):
        raise SystemExit(f"benchmark run failed ({proc.returncode}): {cmd}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_rss_mb"] = peak[0] / 2**20
    subprocess.run(["rm", "-rf", str(out)], check=False)
    return result


def one(args_json: str) -> None:
    """The child: run one batch and print its figures as JSON."""
    input_path, out, workers, ray = json.loads(args_json)
    startup = 0.0
    if ray:
        import ray as ray_mod

        t = time.perf_counter()
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray_mod.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        startup = time.perf_counter() - t
    from secondread.batch import run_batch

    t = time.perf_counter()
    s = run_batch(input_path, out, workers=workers, ray_address=ray, progress=False)
    seconds = time.perf_counter() - t
    print(json.dumps({"studies": s.studies, "analysed": s.analysed, "rows": dict(s.rows), "seconds": seconds,
                      "startup": startup, "stages": s.stage_seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("SECONDREAD_DATA") or REPO.parent / "shared" / "data")
    parser.add_argument("--sets", default="png,dicom")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one(args.one)
    sets = args.sets.split(",")
    print(f"secondread batch benchmark: {os.cpu_count()} CPUs, load average before "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        inputs = write_inputs(Path(args.data), Path(tmp), sets)
        header = (f"{'input':<8}{'configuration':<14}{'studies':>8}{'done/skip/fail':>16}{'seconds':>9}"
                  f"{'studies/s':>11}{'range':>11}{'speed-up':>10}{'start-up s':>12}{'peak RSS MB':>13}   time per stage")
        print(header)
        print("-" * len(header))
        for name in [s for s in sets if s in inputs]:
            configs = {k: v for k, v in CONFIGS.items() if not (v[1] and args.skip_ray)}
            runs: dict[str, list[dict]] = {k: [] for k in configs}
            for _ in range(args.repeats):
                for label, (workers, ray) in configs.items():
                    r = run_config(inputs[name], workers, ray)
                    r["rate"] = r["analysed"] / r["seconds"]
                    runs[label].append(r)
            medians = {k: sorted(v, key=lambda r: r["rate"])[len(v) // 2] for k, v in runs.items()}
            base = medians["1 worker"]["rate"]
            for label, r in medians.items():
                rates = [x["rate"] for x in runs[label]]
                total = sum(r["stages"].values()) or 1.0
                stages = ", ".join(f"{k} {v / total:.0%}" for k, v in r["stages"].items() if v / total >= 0.005)
                counts = f"{r['rows'].get('done', 0)}/{r['rows'].get('skipped', 0)}/{r['rows'].get('failed', 0)}"
                spread = f"{min(rates):.0f}-{max(rates):.0f}"
                print(f"{name:<8}{label:<14}{r['studies']:>8}{counts:>16}{r['seconds']:>9.1f}{r['rate']:>11.1f}"
                      f"{spread:>11}{r['rate'] / base:>9.2f}x{r['startup']:>12.1f}"
                      f"{max(x['peak_rss_mb'] for x in runs[label]):>13.0f}   {stages}", flush=True)
        if "png-quarter" in inputs:
            r = run_config(inputs["png-quarter"], 2, None)
            print(f"memory vs number of studies (2 workers): {r['studies']} studies -> peak RSS "
                  f"{r['peak_rss_mb']:.0f} MB (the full set's figure is in the table above)")
    print("median of --repeats runs; speed-up: median studies/s over the '1 worker' row of the same input; "
          "range: min-max studies/s; start-up: ray.init() only; peak RSS: the largest of the runs")
    print(f"load average after {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

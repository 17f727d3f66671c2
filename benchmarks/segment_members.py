"""The brain-mri-seg pair: training its members side by side against in turn, on this machine.

Run:  .venv/bin/python benchmarks/segment_members.py [--data PATH] [--steps 300] [--patients 12] [--repeats 3]

Why: the trainer (``secondread.segment_train``) trains the two U-Nets of the shipped pair in two
1-thread processes instead of one after the other with 2 threads. This measures what that buys:

- **1 member, 2 threads** / **1 member, 1 thread**: does the U-Net keep two threads busy?
- **2 members in turn, 2 threads**: the obvious alternative (``train_model(..., workers=1)``).
- **2 members side by side, 1 thread each**: what ships (``workers=2``; includes starting the two
  spawned processes, a few seconds).
- **plain Python loop, alone / two together**: no torch and almost no memory, so it tells whether
  the machine's two cores give two cores' work at all right now (on a shared host they may not).

Each row is timed ``--repeats`` times on the first ``--patients`` LGG patients for ``--steps``
steps of batch 8 (the full training is 60 epochs of ~109 steps); the table gives the median and the
range. Run it on an otherwise idle machine; the other rows of the same run are the comparison.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from secondread import segment_train
from secondread.models.nets import torch_threads

LOOP = "x = 0\nfor i in range(30_000_000):\n    x += i\n"


def time_training(data: dict, members: int, threads: int, workers: int, steps: int) -> float:
    """Seconds to train ``members`` U-Nets of the shipped recipe for ``steps`` steps each."""
    recipe = dict(segment_train.RECIPE, seeds=[2024] * members, loss=segment_train.RECIPE["loss"][:members])
    with torch_threads(threads):
        t = time.perf_counter()
        segment_train.train_model(data["slices"], data["masks"], recipe, max_steps=steps, workers=workers)
        return time.perf_counter() - t


def time_loops(copies: int) -> float:
    """Seconds until ``copies`` plain Python loops, started together, have all finished."""
    t = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", LOOP]) for _ in range(copies)]
    for p in procs:
        p.wait()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="the data folder (default $SECONDREAD_DATA)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--patients", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    data = segment_train.load_patients(args.data, args.patients)
    time_training(data, 1, 2, 1, 20)  # warm-up: first calls pay for lazy imports and allocator growth
    rows = {
        "plain Python loop, alone": lambda: time_loops(1),
        "plain Python loops, two together": lambda: time_loops(2),
        "1 member, 2 threads": lambda: time_training(data, 1, 2, 1, args.steps),
        "1 member, 1 thread": lambda: time_training(data, 1, 1, 1, args.steps),
        "2 members in turn, 2 threads": lambda: time_training(data, 2, 2, 1, args.steps),
        "2 members side by side, 1 thread each (shipped)": lambda: time_training(data, 2, 2, 2, args.steps),
    }
    seconds: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.repeats):  # interleaved, so a busy spell on the host touches every row
        for name, run in rows.items():
            seconds[name].append(run())
    print(f"{args.steps} steps of batch 8 per member, {len(data['slices'])} slices of {args.patients} LGG "
          f"patients, {args.repeats} repeats (median, range):\n")
    print("| run | seconds | range |\n|---|---|---|")
    for name, values in seconds.items():
        print(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f}-{max(values):.1f} |")
    turn = statistics.median(seconds["2 members in turn, 2 threads"])
    side = statistics.median(seconds["2 members side by side, 1 thread each (shipped)"])
    loops = statistics.median(seconds["plain Python loops, two together"]) / statistics.median(
        seconds["plain Python loop, alone"])
    print(f"\nside by side is {turn / side:.2f}x in turn; two loops together took {loops:.2f}x one alone "
          f"(1.00 = two full cores)")


if __name__ == "__main__":
    main()

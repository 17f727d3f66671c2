"""The service under load: 50 concurrent clients sending chest X-rays to ``POST /v1/analyze``.

Starts ``secondread serve`` on a free loopback port (its own process, as an operator would), lets
``--clients`` clients each send real PneumoniaMNIST validation images (PNG) one after another for
``--seconds``, and prints throughput, latency percentiles and errors; /healthz is polled meanwhile
to show the event loop stays free. In the same run, the obvious alternatives: ``analyze_image``
called in-process one image after another (no HTTP, bundle loaded once), and the command line
started once per image (``secondread analyze``), as a script without the service would do.

    .venv/bin/python benchmarks/service.py [--clients 50] [--seconds 30] [--workers 2] [--ct 3]

``--ct N`` adds a second table: the LIDC-IDRI-0001 CT series (133 slices) sent N times as a zip, one
after another, against ``analyze_image`` on the series folder in-process.

Target (issue 8): zero errors and p95 under 5 s for a chest X-ray on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image as PILImage

from secondread.analyze import analyze_image
from secondread.models.bundle import load_bundle


def data_root() -> Path:
    return Path(os.environ.get("SECONDREAD_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")


def write_pngs(folder: Path, n: int) -> list[Path]:
    """``n`` real chest X-rays (PneumoniaMNIST validation split) as 8-bit PNG files."""
    with np.load(data_root() / "medmnist" / "pneumoniamnist.npz") as npz:
        images = npz["val_images"][:n]
    paths = []
    for i, image in enumerate(images):
        path = folder / f"cxr-{i:03d}.png"
        PILImage.fromarray(image.astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(token: str, workers: int, tmp: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "SECONDREAD_API_TOKEN": token, "TMPDIR": str(tmp), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "secondread", "serve", "--port", str(port),
                             "--workers", str(workers)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit("the service did not start")
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("the service did not start in 120 s")


async def load(url: str, token: str, pngs: list[Path], clients: int, seconds: float) -> dict:
    bodies = [p.read_bytes() for p in pngs]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    health: list[float] = []
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits,
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        deadline = time.perf_counter() + seconds

        async def one_client(k: int) -> None:
            i = k
            while time.perf_counter() < deadline:
                body = bodies[i % len(bodies)]
                i += clients
                start = time.perf_counter()
                try:
                    r = await client.post("/v1/analyze", files=[("files", ("cxr.png", body, "image/png"))])
                    ok = r.status_code == 200 and "findings" in r.json()
                    key = None if ok else f"HTTP {r.status_code}"
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                if key:
                    errors[key] = errors.get(key, 0) + 1
                else:
                    latencies.append(time.perf_counter() - start)

        async def poll_health() -> None:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                await client.get("/healthz")
                health.append(time.perf_counter() - start)
                await asyncio.sleep(0.25)

        began = time.perf_counter()
        await asyncio.gather(poll_health(), *(one_client(k) for k in range(clients)))
        elapsed = time.perf_counter() - began
    return {"latencies": latencies, "errors": errors, "elapsed": elapsed, "health": health}


def in_process(pngs: list[Path], out: Path, seconds: float, threads: int | None = None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    bundle = load_bundle("pneumonia")
    analyze_image(pngs[0], out / "warm", bundle)
    latencies = []
    began = time.perf_counter()
    i = 0
    while time.perf_counter() - began < seconds:
        start = time.perf_counter()
        analyze_image(pngs[i % len(pngs)], out / f"r{i}", bundle)
        latencies.append(time.perf_counter() - start)
        i += 1
    return {"latencies": latencies, "errors": {}, "elapsed": time.perf_counter() - began}


def cli_per_image(pngs: list[Path], out: Path, n: int) -> dict:
    latencies, errors = [], {}
    began = time.perf_counter()
    for i, png in enumerate(pngs[:n]):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "secondread", "analyze", str(png), "--out", str(out / f"c{i}")],
                              capture_output=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}, check=False)
        if proc.returncode:
            errors["exit code"] = errors.get("exit code", 0) + 1
        else:
            latencies.append(time.perf_counter() - start)
    return {"latencies": latencies, "errors": errors, "elapsed": time.perf_counter() - began}


def zip_series(folder: Path, dest: Path) -> Path:
    import zipfile
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, "series/" + f.name)
    return dest


def ct_series(url: str, token: str, archive: Path, n: int) -> dict:
    body, latencies, errors = archive.read_bytes(), [], {}
    began = time.perf_counter()
    for _ in range(n):
        start = time.perf_counter()
        r = httpx.post(url + "/v1/analyze", files=[("files", ("series.zip", body, "application/zip"))],
                       headers={"Authorization": f"Bearer {token}"}, timeout=600)
        if r.status_code == 200:
            latencies.append(time.perf_counter() - start)
        else:
            errors[f"HTTP {r.status_code}"] = errors.get(f"HTTP {r.status_code}", 0) + 1
    return {"latencies": latencies, "errors": errors, "elapsed": time.perf_counter() - began}


def ct_in_process(folder: Path, out: Path, n: int) -> dict:
    latencies = []
    began = time.perf_counter()
    for i in range(n):
        start = time.perf_counter()
        analyze_image(folder, out / f"ct{i}")  # the model chosen as the service chooses it
        latencies.append(time.perf_counter() - start)
    return {"latencies": latencies, "errors": {}, "elapsed": time.perf_counter() - began}


def row(name: str, r: dict) -> str:
    lat = np.asarray(r["latencies"]) if r["latencies"] else np.asarray([np.nan])
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    n_err = sum(r["errors"].values())
    detail = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
    return (f"| {name} | {len(r['latencies'])} | {n_err and detail or 0} | {len(r['latencies']) / r['elapsed']:.1f} | "
            f"{p50:.2f} | {p95:.2f} | {p99:.2f} |")


def main() -> None:
    load_before = os.getloadavg()[0]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--seconds", type=float, default=30.0, help="length of the load phase (default 30)")
    p.add_argument("--workers", type=int, default=2, help="the service's --workers (default 2)")
    p.add_argument("--cli-images", type=int, default=5, help="images for the one-process-per-image row")
    p.add_argument("--ct", type=int, default=0, metavar="N", help="also time the LIDC CT series N times")
    args = p.parse_args()
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "server-tmp").mkdir()
        pngs = write_pngs(tmp, 50)
        proc, url = start_service(token, args.workers, tmp / "server-tmp")
        try:
            served = asyncio.run(load(url, token, pngs, args.clients, args.seconds))
            series = data_root() / "ct" / "LIDC-IDRI-0001" / "series"
            ct = ct_series(url, token, zip_series(series, tmp / "series.zip"), args.ct) if args.ct else None
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        leftovers = list((tmp / "server-tmp").iterdir())
        local = in_process(pngs, tmp / "local", min(args.seconds, 15))
        local1 = in_process(pngs, tmp / "local1", min(args.seconds, 15), threads=1)
        cli = cli_per_image(pngs, tmp / "cli", args.cli_images)
        ct_local = ct_in_process(series, tmp / "ct", args.ct) if args.ct else None
    health = np.asarray(served["health"])
    print(f"chest X-ray PNG (PneumoniaMNIST val, 28 x 28), {os.cpu_count()} cores, "
          f"load average at start: {load_before:.1f}")
    print("| mode | analyses | errors | analyses/s | p50 s | p95 s | p99 s |")
    print("|---|---|---|---|---|---|---|")
    print(row(f"service, {args.clients} concurrent clients, {args.seconds:g} s, --workers {args.workers}", served))
    print(row(f"analyze_image in-process, sequential, torch default threads ({os.cpu_count()})", local))
    print(row("analyze_image in-process, sequential, 1 torch thread", local1))
    print(row("`secondread analyze` CLI, one process per image", cli))
    if ct:
        print("\nCT series LIDC-IDRI-0001 (133 x 512 x 512), one request at a time")
        print("| mode | analyses | errors | analyses/s | p50 s | p95 s | p99 s |")
        print("|---|---|---|---|---|---|---|")
        print(row("service, zip upload (34 MB)", ct))
        print(row("analyze_image in-process on the folder", ct_local))
    print(f"/healthz during the load: {len(health)} polls, p50 {np.median(health) * 1000:.0f} ms, "
          f"max {health.max() * 1000:.0f} ms; files left in the service's TMPDIR: {len(leftovers)}")


if __name__ == "__main__":
    main()

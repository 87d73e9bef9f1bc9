"""Throughput of one dataset run on 1 and on 2 Dask worker processes (issue #24).

``segstyle run --workers N`` (a local Dask cluster of N one-thread worker processes, BLAS,
OpenMP and torch at one thread each: a worker is one core) over the same generated dataset,
each into a fresh ``--out`` (nothing cached), offline backends (GrabCut, feed-forward). Each
run is timed whole (start to exit) and by its flow body (first row's start to last row's
finish, from the Parquet file: no temporary Prefect server or cluster start). On 2 cores the
flow body's scaling efficiency ``(seconds on 1 / seconds on 2) / 2`` is the figure to carry to
more workers. Last line:
``images_per_min_1=<..> images_per_min_2=<..> speedup=<..> efficiency=<..>``.

    python benchmarks/bench_dask.py                 # 8 frames at 2048x1024, about 3 minutes
    python benchmarks/bench_dask.py --smoke         # 2 frames at 256x128, the same path
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from segstyle_core.demo.dataset import generate_demo_dataset

SEGSTYLE = str(Path(sys.executable).with_name("segstyle"))
RUN = ["--city", "zurich", "--classes", "car", "--prompts", "gt-instances"]
RUN += ["--segmenter", "grabcut", "--stylizer", "feedforward", "--feather", "2"]
#: One thread per worker process, whatever library computes.
ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def timed_run(dataset: Path, out: Path, workers: int) -> tuple[float, float, int, float]:
    """Wall seconds of ``segstyle run --workers N``, its flow body's seconds, its images, and
    the seconds its stages report (``seconds_*`` summed over images: compute and slot waits)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    command = [SEGSTYLE, "run", "--dataset", str(dataset), *RUN, "--out", str(out)]
    command += ["--workers", str(workers)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**env, **ONE_THREAD})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"segstyle run --workers {workers} failed:\n{done.stderr[-3000:]}")
    rows = pd.read_parquet(done.stdout.strip().splitlines()[-1])
    body = (rows["finished_at"].max() - rows["started_at"].min()).total_seconds()
    stages = rows.groupby("image_id")[[c for c in rows if c.startswith("seconds_")]].first()
    return wall, body, int(rows["image_id"].nunique()), float(stages.to_numpy().sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8, help="annotated demo frames")
    parser.add_argument("--size", default="2048x1024", help="demo frame WxH (Cityscapes')")
    parser.add_argument("--smoke", action="store_true", help="2 frames at 256x128")
    args = parser.parse_args()
    if args.smoke:
        args.frames, args.size = 2, "256x128"
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="segstyle-bench-dask-") as tmp:
        work = Path(tmp)
        dataset = generate_demo_dataset(
            work / "data", size=(width, height), frames_per_city=args.frames, cities=("zurich",)
        )
        results = {n: timed_run(dataset, work / f"out-{n}", n) for n in (1, 2)}
    for workers, (wall, body, images, stages) in results.items():
        print(
            f"workers={workers}: {images} images, wall {wall:.1f} s, flow body {body:.1f} s, "
            f"{60 * images / body:.2f} images/min, stage seconds {stages:.1f}"
        )
    rate = {n: 60 * images / body for n, (_, body, images, _) in results.items()}
    speedup = results[1][1] / results[2][1]
    print(f"cpus={os.cpu_count()} frames={args.frames} size={args.size}")
    print(
        f"images_per_min_1={rate[1]:.3f} images_per_min_2={rate[2]:.3f} "
        f"speedup={speedup:.3f} efficiency={speedup / 2:.3f}"
    )


if __name__ == "__main__":
    main()

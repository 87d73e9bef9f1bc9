"""Throughput of one dataset run on 1 and on 2 Dask worker processes.

``segstyle run --workers N`` (one-thread workers) over one generated dataset, each into a fresh
``--out``, offline backends; timed whole and by its flow body (from the Parquet rows). Last
line: ``images_per_min_1=<..> images_per_min_2=<..> speedup=<flow body on 1 / on 2>
efficiency=<speedup / 2>``. ``benchmarks/README.md`` gives command lines and results.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from common import RUN, SEGSTYLE, flow_seconds, parse, run_rows, size_pair, timed

from segstyle_core.demo.dataset import generate_demo_dataset

ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def timed_run(dataset: Path, out: Path, workers: int) -> tuple[float, float, float, int]:
    """Wall, flow body and stage seconds of ``segstyle run --workers N``, and its images."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    command = [SEGSTYLE, "run", "--dataset", str(dataset), *RUN, "--out", str(out)]
    wall, done = timed([*command, "--workers", str(workers)], {**env, **ONE_THREAD}, out.parent)
    rows = run_rows(done.stdout)
    return wall, *flow_seconds(rows), int(rows["image_id"].nunique())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8, help="annotated demo frames")
    parser.add_argument("--size", default="2048x1024", help="demo frame WxH (Cityscapes')")
    parser.add_argument("--smoke", action="store_true", help="2 frames at 256x128")
    args = parse(parser, frames=2, size="256x128")
    with tempfile.TemporaryDirectory(prefix="segstyle-bench-dask-") as tmp:
        dataset = generate_demo_dataset(
            Path(tmp) / "data",
            size=size_pair(args.size),
            frames_per_city=args.frames,
            cities=("zurich",),
        )
        results = {n: timed_run(dataset, Path(tmp) / f"out-{n}", n) for n in (1, 2)}
    rate = {n: 60 * images / body for n, (_, body, _, images) in results.items()}
    for workers, (wall, body, stages, images) in results.items():
        print(
            f"workers={workers}: {images} images, wall {wall:.1f} s, flow body {body:.1f} s, "
            f"{rate[workers]:.2f} images/min, stage seconds {stages:.1f}"
        )
    speedup = results[1][1] / results[2][1]
    print(f"cpus={os.cpu_count()} frames={args.frames} size={args.size}")
    print(
        f"images_per_min_1={rate[1]:.3f} images_per_min_2={rate[2]:.3f} "
        f"speedup={speedup:.3f} efficiency={speedup / 2:.3f}"
    )


if __name__ == "__main__":
    main()

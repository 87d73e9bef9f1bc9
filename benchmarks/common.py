"""What the benchmark scripts share (they run as ``python benchmarks/<script>.py``, so this
folder is first on the path): sizes, options, timing, untrained models and timed ``segstyle``
subprocesses with the rows of a ``segstyle run``."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import pandas as pd
import torch

from segstyle_core.segment.sam import SAM_BUILDERS
from segstyle_core.testing import build_sam_tiny

Model = TypeVar("Model", bound=torch.nn.Module)
SAM_BUILDERS.setdefault("tiny", build_sam_tiny)  # SAM variant "tiny": the tests' tiny SAM

RANDOM = "random-weights"
SEGSTYLE = str(Path(sys.executable).with_name("segstyle"))
OFFLINE = ["--segmenter", "grabcut", "--stylizer", "feedforward"]
#: ``segstyle run`` on a demo dataset: zurich's cars, a prompt per GT instance, offline backends.
RUN = ["--city", "zurich", "--classes", "car", "--prompts", "gt-instances", *OFFLINE]
RUN += ["--feather", "2"]


def size_pair(text: str) -> tuple[int, int]:
    """``"1024x512"`` -> ``(1024, 512)``."""
    first, second = (int(v) for v in text.lower().split("x"))
    return first, second


def add_torch_options(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--threads`` (applied by :func:`parse`)."""
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")


def parse(parser: argparse.ArgumentParser, **smoke: object) -> argparse.Namespace:
    """The command line, with ``smoke``'s values under ``--smoke``; sets ``--threads``."""
    args = parser.parse_args()
    if args.smoke:
        vars(args).update(smoke)
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    return args


def stopwatch() -> Callable[[], tuple[float, float]]:
    """Started now: returns the wall and (this process's) CPU seconds since, when called."""
    start, cpu_start = time.perf_counter(), time.process_time()
    return lambda: (time.perf_counter() - start, time.process_time() - cpu_start)


def interleaved(
    repeats: int, calls: Mapping[str, Callable[[], object]], device: torch.device
) -> dict[str, list[tuple[float, float]]]:
    """``{name: [(wall s, CPU s) per round]}`` of ``repeats`` rounds of every call in turn (a
    load change on a shared machine hits every call alike); CUDA is synchronised per call."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            elapsed = stopwatch()
            call()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(elapsed())
    return times


def untrained(build: Callable[[], Model]) -> Model:
    """``build()`` with weights drawn from seed 0; the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build()


def timed(
    command: list[str], env: dict[str, str], cwd: Path, log: Path | None = None
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall seconds and the finished ``command`` (its output appended to ``log``); exits with
    its output when it fails."""
    elapsed = stopwatch()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=1800)
    if log is not None:
        with open(log, "a") as handle:
            handle.write(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}\n")
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(command)} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
        )
    return elapsed()[0], done


def run_rows(stdout: str) -> pd.DataFrame:
    """The rows of a ``segstyle run``, whose last stdout line is its Parquet file."""
    return pd.read_parquet(stdout.strip().splitlines()[-1])


def flow_seconds(rows: pd.DataFrame) -> tuple[float, float]:
    """A run's flow body (first row's start to last row's finish) and its stages' own seconds
    (each image's ``seconds_*`` summed: compute and slot waits)."""
    body = (rows["finished_at"].max() - rows["started_at"].min()).total_seconds()
    stages = rows.groupby("image_id")[[c for c in rows if c.startswith("seconds_")]].first()
    return body, float(stages.sum().sum())  # pandas skips a failed image's missing seconds

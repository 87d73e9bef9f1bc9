"""Every benchmark that ``make bench`` runs also runs here, in its ``--smoke`` mode.

The scripts are read from the Makefile's ``bench`` recipe, so a benchmark added there is
smoke-tested without another line here. Each runs as ``make bench`` calls it (a subprocess of
this interpreter, from the checkout's root) with ``--smoke`` (the smallest settings, the same
code path); its last line must be its summary: ``name=number`` pairs, every number finite.
A changed signature in the code a benchmark drives fails here, not in a user's ``make bench``.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

#: The last line's keys, per script: what the benchmark's README and issues quote.
SUMMARY_KEYS = {
    "bench_sam_prompts.py": {"ratio_16_vs_1"},
    "bench_encoders.py": {"time_ratio", "cosine", "mask_iou"},
    "bench_service.py": {"stylize_ratio", "rerun_speedup"},
    "bench_dask.py": {"images_per_min_1", "images_per_min_2", "speedup", "efficiency"},
    "bench_pipeline.py": {"speedup", "objective_ratio", "seam_ratio"},
}


def bench_scripts(makefile: Path = REPO_ROOT / "Makefile") -> list[str]:
    """The scripts of the Makefile's ``bench`` recipe, in order (``benchmarks/<name>.py``)."""
    recipe = re.search(r"^bench:.*\n((?:\t.*\n)+)", makefile.read_text(encoding="utf-8"), re.M)
    assert recipe, "the Makefile has no bench recipe"
    return re.findall(r"(benchmarks/\w+\.py)", recipe.group(1))


def summary(line: str) -> dict[str, float]:
    """``a=1.5 b=2`` -> ``{"a": 1.5, "b": 2.0}``; the ``key=value`` words of a line."""
    return {key: float(value) for key, value in re.findall(r"(\w+)=([-+0-9.eE]+|nan|inf)", line)}


def test_make_bench_runs_every_benchmark() -> None:
    scripts = bench_scripts()
    assert sorted(Path(s).name for s in scripts) == sorted(SUMMARY_KEYS)
    assert sorted(p.name for p in (REPO_ROOT / "benchmarks").glob("bench_*.py")) == sorted(
        SUMMARY_KEYS
    ), "a benchmark that make bench does not run"


@pytest.mark.slow
@pytest.mark.parametrize("script", bench_scripts())
def test_benchmark_smoke_mode_prints_its_summary(script: str) -> None:
    done = subprocess.run(
        [sys.executable, script, "--smoke"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    values = summary(last)
    assert set(values) == SUMMARY_KEYS[Path(script).name], last
    assert all(math.isfinite(v) and v > 0 for v in values.values()), last


@pytest.mark.slow
def test_pipeline_frame_times_and_warm_headline_in_smoke_mode() -> None:
    """``--frame-times`` prints its per-frame summary; the headline reports cold and warm
    seconds per path (issue #25)."""
    script = [sys.executable, "benchmarks/bench_pipeline.py", "--smoke", "--no-quality-budget"]
    runs = [
        subprocess.run(
            [*script, *extra], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
        )
        for extra in (["--frame-times"], [])
    ]
    assert all(run.returncode == 0 for run in runs), runs[0].stderr[-3000:]
    times = summary(runs[0].stdout.strip().splitlines()[-1])
    assert times["frames"] == 1 and times["bucket_px"] == 0 and times["cpu_steady_s"] > 0
    paths = re.findall(r"^  (\w+): warm_s=(\S+) cold_s=(\S+)", runs[1].stdout, re.M)
    assert [name for name, *_ in paths] == ["naive", "optimised"], runs[1].stdout
    # cold = warm + the first short pass's extra seconds: noise on a shared machine may make
    # that extra slightly negative, never the warm figure
    assert all(float(warm) > 0 and math.isfinite(float(cold)) for _, warm, cold in paths)

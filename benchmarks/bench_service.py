"""The command line's own cost: ``segstyle stylize`` and a cached ``segstyle run``.

Subprocesses, offline backends, wall seconds: (a) ``segstyle stylize`` on a generated street
against :func:`segstyle_core.photo.stylize_photo` after its imports, fresh caches:
``stylize_ratio`` = command / in-process (medians, target <= 1.5); (b) ``segstyle run`` over the
demo dataset twice into one ``--out`` against a running Prefect server: ``rerun_speedup`` =
first / second (target >= 10). The commands run a frozen copy of the sources (``--no-snapshot``:
the checkout, whose edits may change the stage cache keys between the runs). Last line:
``stylize_ratio=<..> rerun_speedup=<..>``.

    python benchmarks/bench_service.py                  # about 3 minutes on 2 cores
    python benchmarks/bench_service.py --repeats 5 --size 512x256
    python benchmarks/bench_service.py --smoke          # the same path in seconds
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
from common import OFFLINE, RUN, SEGSTYLE, flow_seconds, parse, run_rows, size_pair, timed

from segstyle_core.cityscapes import instances_from_ids
from segstyle_core.demo.dataset import generate_demo_dataset, render_scene
from segstyle_core.demo.scene import build_scene
from segstyle_core.images import write_png
from segstyle_core.results import TIMED_STAGES

REPO_ROOT = Path(__file__).resolve().parents[1]

#: The in-process side of (a): imports first, then the timed core steps; prints the seconds.
IN_PROCESS = """
import sys, time
from segstyle_core.config import CompositeConfig, PhotoPrompts, SegmenterConfig, StylizerConfig
from segstyle_core.paint import region_styles
from segstyle_core.photo import photo_prompts, stylize_photo
image, box, cache = sys.argv[1:4]
segmenter = SegmenterConfig(backend="grabcut")
stylizer = StylizerConfig(backend="feedforward")
start = time.perf_counter()
given = PhotoPrompts(boxes=(box,))
prompts = photo_prompts(image, given)
styles = region_styles(given, len(prompts), stylizer, "object")
stylize_photo(image, prompts, styles, segmenter, stylizer, CompositeConfig(), cache)
print(time.perf_counter() - start)
"""

#: Source folders of the checkout -> where a snapshot puts them (the installed layout).
SNAPSHOT_LAYOUT = {
    "segstyle_core": "segstyle_core",
    "tasks": "segstyle/tasks",
    "flows": "segstyle/flows",
    "data/styles": "data/styles",  # the default style, found beside segstyle_core
}


def _environment(work: Path, **extra: str) -> dict[str, str]:
    """Every subprocess's environment: no outside Prefect server or profile, a Prefect home
    and device-slot folder of the benchmark's own, and the snapshot first on the path."""
    dropped = ("API_URL", "API_KEY", "PROFILE", "LOGGING_HANDLERS_CONSOLE_LEVEL")
    env = {k: v for k, v in os.environ.items() if k not in {f"PREFECT_{d}" for d in dropped}}
    env.update(
        PREFECT_HOME=str(work / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        SEGSTYLE_DEVICE_SLOT_DIR=str(work / "device-slots"),
    )
    if (work / "src").is_dir():
        env["PYTHONPATH"] = str(work / "src")
    return env | extra


def snapshot(work: Path) -> None:
    """A frozen copy of the packages in ``work/src`` (before the editable install on the path)."""
    ignore = shutil.ignore_patterns("__pycache__")
    for source, target in SNAPSHOT_LAYOUT.items():
        shutil.copytree(REPO_ROOT / source, work / "src" / target, ignore=ignore)


def _sources(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*.py")}


def photo(work: Path, size: tuple[int, int]) -> tuple[Path, str]:
    """A generated street frame of ``size`` and a box around its largest car (``x0,y0,x1,y1``)."""
    width, height = size
    rng = np.random.default_rng(0)
    frame = render_scene(build_scene(width, height, rng), width, height, rng)
    largest = max(instances_from_ids(frame.instance_ids, ["car"]), key=lambda i: i.area)
    return write_png(work / "street.png", frame.image), ",".join(str(v) for v in largest.box)


def bench_stylize(work: Path, size: tuple[int, int], repeats: int) -> float:
    """(a): median command seconds / median in-process seconds."""
    image, box = photo(work, size)
    # every command runs in ``work``, which ``python -c`` puts first on the path
    run = partial(timed, env=_environment(work), cwd=work, log=work / "stylize.log")
    bare, _ = run([sys.executable, "-c", "pass"])
    run([sys.executable, "-c", "import segstyle.flows.cli, segstyle_core.photo"])  # untimed: .pyc
    imports, _ = run([sys.executable, "-c", "import segstyle.flows.cli"])
    command_s, inside_s = [], []
    for i in range(repeats):
        command = [SEGSTYLE, "stylize", str(image), "--box", box, *OFFLINE]
        command += ["-o", str(work / f"cli-{i}" / "out.png"), "--out", str(work / f"cli-{i}")]
        command_s.append(run(command)[0])
        cache = str(work / f"inproc-{i}" / "cache")
        _, done = run([sys.executable, "-c", IN_PROCESS, str(image), box, cache])
        inside_s.append(float(done.stdout.strip().splitlines()[-1]))
    command_med, inside_med = statistics.median(command_s), statistics.median(inside_s)
    print(f"(a) segstyle stylize, {size[0]}x{size[1]} photo, box {box}, {repeats} repeats")
    print(f"    command wall s:          {' '.join(f'{s:.2f}' for s in command_s)}")
    print(f"    stylize_photo() s:       {' '.join(f'{s:.2f}' for s in inside_s)}")
    print(f"    python -c 'pass': {bare:.2f} s; 'import segstyle.flows.cli': {imports:.2f} s")
    ratio = command_med / inside_med
    print(f"    median {command_med:.2f} s / {inside_med:.2f} s = {ratio:.2f} (target <= 1.5)")
    return ratio


def bench_rerun(work: Path, size: tuple[int, int], frames: int) -> float:
    """(b): first / second wall seconds of one ``segstyle run`` against a running server."""
    sys.path.insert(0, str(REPO_ROOT))
    from tests.prefect_service import prefect_service, tracebacks

    dataset = generate_demo_dataset(work / "demo", size=size, frames_per_city=frames)
    command = [SEGSTYLE, "run", "--dataset", str(dataset), *RUN, "--out", str(work / "run-out")]
    log = work / "run.log"
    server_start = time.perf_counter()
    with prefect_service(work / "server", check_log=False) as server:
        started_in = time.perf_counter() - server_start
        env = _environment(work, PREFECT_HOME=str(server.home), PREFECT_API_URL=server.api_url)
        watched = Path(env.get("PYTHONPATH") or REPO_ROOT)
        sources = _sources(watched)
        first, first_run = timed(command, env, work, log)
        second, second_run = timed(command, env, work, log)
        changed = sorted(set(sources.items()) ^ set(_sources(watched).items()))
        problems = tracebacks(server.log_text())
    runs = [run_rows(done.stdout) for done in (first_run, second_run)]
    print(
        f"(b) segstyle run, demo data {size[0]}x{size[1]}, {frames} frames of zurich, "
        f"{len(runs[0])} prompt rows; server {server.api_url} (up in {started_in:.1f} s)"
    )
    for name, seconds, rows in zip(("first", "second"), (first, second), runs, strict=True):
        flow_s, stage_s = flow_seconds(rows)
        cached = [s for s in TIMED_STAGES if rows[f"cached_{s}"].all()]
        print(
            f"    {name}: {seconds:.2f} s wall; flow body {flow_s:.2f} s; stage seconds "
            f"{stage_s:.2f}; status {sorted(set(rows['status']))}; all cached: {cached}"
        )
    if changed:
        names = sorted({name for name, _ in changed})
        recomputed = not all(runs[1][f"cached_{s}"].all() for s in TIMED_STAGES)
        verdict = "NOT A VALID RERUN (stages recomputed)" if recomputed else "warning"
        print(
            f"    {verdict}: {len(names)} source file(s) changed during the runs, and stage "
            f"cache keys hash the code: {', '.join(names[:6])}"
        )
    if problems:
        print(f"    the server's log holds {len(problems)} traceback(s), first:\n{problems[0]}")
    speedup = first / second
    print(f"    {first:.2f} s / {second:.2f} s = {speedup:.2f} (target >= 10)")
    return speedup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="(a): command/in-process pairs")
    parser.add_argument("--photo-size", type=size_pair, default=(751, 563), help="(a): WxH")
    parser.add_argument("--size", type=size_pair, default=(1024, 512), help="(b): demo WxH")
    parser.add_argument("--frames", type=int, default=6, help="(b): annotated demo frames")
    frozen = "run a frozen copy of the sources (a shared checkout may change meanwhile)"
    parser.add_argument(
        "--snapshot", action=argparse.BooleanOptionalAction, default=True, help=frozen
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (printed)")
    parser.add_argument(
        "--smoke", action="store_true", help="1 repeat, 256x192 photo, 256x128 demo, 1 frame"
    )
    args = parse(parser, repeats=1, photo_size=(256, 192), size=(256, 128), frames=1)
    work = Path(tempfile.mkdtemp(prefix="segstyle-bench-service-"))
    try:
        if args.snapshot:
            snapshot(work)
        stylize_ratio = bench_stylize(work, args.photo_size, args.repeats)
        rerun_speedup = bench_rerun(work, args.size, args.frames)
    finally:
        if args.keep:
            print(f"work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"stylize_ratio={stylize_ratio:.2f} rerun_speedup={rerun_speedup:.2f}")


if __name__ == "__main__":
    main()

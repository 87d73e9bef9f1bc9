"""README.md's shell examples run (issue #15, item 11).

Every command in README.md's ```sh blocks (backslash continuations joined, comments dropped) is
either run here or skipped by :data:`SKIPPED`, which says why; a command that is neither fails
:func:`test_every_readme_command_is_run_or_skipped_for_a_reason`, and so does a
:data:`SKIPPED` entry that no README command uses any more.

:func:`test_readme_commands_run` runs the ``segstyle`` commands in README order, in-process
(``segstyle.flows.cli.main``, against the ``prefect_api`` test server), in a temporary folder
that holds what they name, so they run as written:

* ``data/demo``: a generated Cityscapes-layout dataset (256×128, 2 annotated frames per city);
  ``export CITYSCAPES_DATASET=...`` points at it too (the paper's configuration must stop at the
  missing weights, not at a missing dataset);
* ``street.jpg``: a generated 1024×512 demo frame; ``painting.jpg`` and ``starry_night.jpg``:
  the project's default style, as JPEG;
* ``/tmp/clip`` becomes ``<tmp>/clip``; outputs (``artifacts/``, ``out.jpg``, ``clip.mp4``,
  ``DIR``) land in the temporary folder;
* a synopsis (``weights status|download|verify [NAME]``) runs once per alternative, without
  its optional parts.

A command whose backend needs downloaded weights (SAM, SAM 2, Gatys: chosen, or the CLI's
default) must exit 2 with one line that names ``segstyle weights download`` (or the checkpoint
file of its own that it gives); every other command must exit 0, except ``weights verify``
(see :data:`EXIT_STATUS`). ``segstyle video`` must track the generated clip's car: a mean IoU
of at least 0.5 in its ``metrics.json``.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
MAKEFILE = REPO_ROOT / "Makefile"
CI_RUN = REPO_ROOT / ".ci" / "run"

#: README commands that are not run, as (pattern on the command, reason).
SKIPPED: tuple[tuple[str, str], ...] = (
    (r"^\. ", "shell setup: activates .venv/"),
    (r"^make demo\b", "`.ci/run` runs it; test_demo_runs_offline runs `segstyle demo` small"),
    (r"^make test\b", "`.ci/run` runs it: the whole suite, this test included"),
    (r"^make (server|deploy|worker)\b", "starts long-running services (tests/test_service.py)"),
    (r"^segstyle serve\b", "a server that runs until it is stopped (tests/test_serve.py)"),
    (r"^segstyle weights download\b", "downloads checkpoints from the network"),
    (r"^\.venv/bin/dask ", "starts a cluster; tests/test_dask_cluster.py starts the same"),
    (r"^segstyle run .*--dask ", "a cluster on other machines: test_dask_cluster.py runs one"),
    (r"^export PREFECT_API_URL=", "points at `make server`; this test uses its own test server"),
    (r"^prefect ", "needs `make server` and the deployments of prefect.yaml (test_service.py)"),
)

#: Makefile targets that neither ``.ci/run`` nor a test runs through ``make``, and why.
MAKE_TARGETS_NOT_RUN: dict[str, str] = {
    "venv": "every other target depends on it",
    "test-fast": "`make test` without the tests marked slow",
    "bench": "minutes per script; tests/test_benchmarks.py runs each of its scripts in --smoke",
    "server": "runs until stopped; tests/prefect_service.py starts the same `prefect server start`",
    "deploy": "tests/test_service.py runs its two prefect commands against a test server",
    "worker": "runs until stopped; tests/test_service.py starts the same `prefect worker start`",
    "clean": "deletes artifacts/",
}

#: Exit status of commands that do not exit 0, and why.
EXIT_STATUS: dict[tuple[str, ...], tuple[int, str]] = {
    ("segstyle", "weights", "verify"): (1, "no checkpoint is downloaded here: all are missing"),
}

#: Backends that need downloaded weights.
WEIGHTED_BACKENDS = {"sam", "sam2", "gatys"}


def readme_commands(text: str) -> list[list[str]]:
    """The commands of the ```sh blocks of ``text`` as word lists, in order."""
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def skip_reason(words: list[str]) -> str | None:
    """Why :data:`SKIPPED` skips the command, or ``None``."""
    line = shlex.join(words)
    return next((reason for pattern, reason in SKIPPED if re.search(pattern, line)), None)


def expand(words: list[str]) -> list[list[str]]:
    """A synopsis as runnable commands: one per ``a|b`` alternative, ``[OPTIONAL]`` dropped."""
    kept = [word for word in words if not re.fullmatch(r"\[.*\]", word)]
    return [list(choice) for choice in itertools.product(*(w.split("|") for w in kept))]


def needs_weights(words: list[str]) -> bool:
    """Whether a ``segstyle`` command runs a backend that needs downloaded weights, chosen by
    its options or left at the CLI's default (the models the CLI builds say which)."""
    from segstyle.flows import options
    from segstyle.flows.cli import VIDEO_SEGMENTERS, Stylize, Video, parse

    if {"-h", "--help"} & set(words) or words[1] not in ("run", "evaluate", "stylize", "video"):
        return False
    command = parse(words[1:])
    if isinstance(command, Video):
        return VIDEO_SEGMENTERS[command.segmenter] in WEIGHTED_BACKENDS
    segmenter = options.SEGMENTER.build(command)
    backends = {segmenter.backend}
    if options.STYLIZER in command.groups:  # one style per --box for stylize, as the CLI builds it
        styles = getattr(command, "style")  # noqa: B009 (a field of the generated model)
        several = isinstance(command, Stylize)
        backends.add(options.build_stylizer(command, styles, segmenter, several=several).backend)
    return bool(backends & WEIGHTED_BACKENDS)


def test_every_readme_command_is_run_or_skipped_for_a_reason() -> None:
    commands = readme_commands(README.read_text(encoding="utf-8"))
    assert len(commands) >= 10
    joined = [shlex.join(words) for words in commands]
    assert all("\\" not in line for line in joined), "continuations are joined"
    stray = [
        line
        for words, line in zip(commands, joined, strict=True)
        if skip_reason(words) is None and words[0] not in ("segstyle", "export")
    ]
    assert not stray, f"README commands neither run nor skipped by SKIPPED: {stray}"
    unused = [pattern for pattern, _ in SKIPPED if not any(re.search(pattern, c) for c in joined)]
    assert not unused, f"SKIPPED entries no README command uses any more: {unused}"
    assert expand(["segstyle", "weights", "status|download|verify", "[NAME]"]) == [
        ["segstyle", "weights", "status"],
        ["segstyle", "weights", "download"],
        ["segstyle", "weights", "verify"],
    ]


def _workspace(root: Path) -> dict[str, str]:
    """Generate what the README's commands name under ``root``; the exports to substitute."""
    from PIL import Image

    from segstyle_core.demo.dataset import generate_demo_dataset
    from segstyle_core.styles import style_path

    demo = generate_demo_dataset(root / "data" / "demo", size=(256, 128), frames_per_city=2)
    photo = generate_demo_dataset(root / "photo", frames_per_city=1, cities=("street",))
    frame = next((photo / "leftImg8bit" / "train" / "street").glob("*.png"))
    Image.open(frame).convert("RGB").save(root / "street.jpg", quality=92)
    style = Image.open(style_path()).convert("RGB")
    for name in ("painting.jpg", "starry_night.jpg"):
        style.save(root / name, quality=92)
    return {"CITYSCAPES_DATASET": str(demo.resolve())}


def _call(main: Callable[[list[str]], int], argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_readme_commands_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from segstyle.flows.cli import main

    monkeypatch.chdir(tmp_path)
    substitutes = _workspace(tmp_path)
    ran, skipped, problems = [], [], []
    for words in readme_commands(README.read_text(encoding="utf-8")):
        reason = skip_reason(words)
        if reason is not None:
            skipped.append(f"{shlex.join(words)}  ({reason})")
            continue
        if words[0] == "export":
            name, _, value = words[1].partition("=")
            monkeypatch.setenv(name, substitutes.get(name, value))
            continue
        for command in expand([w.replace("/tmp/clip", str(tmp_path / "clip")) for w in words]):
            reason = skip_reason(command)  # a synopsis' alternatives: `weights download`
            if reason is not None:
                skipped.append(f"{shlex.join(command)}  ({reason})")
                continue
            capsys.readouterr()
            status = _call(main, command[1:])
            out, err = capsys.readouterr()
            line = shlex.join(command)
            ran.append(line)
            errors = [text for text in err.splitlines() if text.startswith("segstyle: error")]
            if needs_weights(command):
                own = [word for word in command if word.endswith((".pt", ".pth"))]
                named = "segstyle weights download" in err or any(f in err for f in own)
                if status != 2 or len(errors) != 1 or not named:
                    problems.append(
                        f"{line}: exit {status}, expected 2 and the weights error: {err}"
                    )
                continue
            expected, _ = EXIT_STATUS.get(tuple(command[:3]), (0, ""))
            if status != expected:
                problems.append(f"{line}: exit {status}, expected {expected}: {err[-2000:]}")
            elif command[1] == "video":
                (metrics,) = (tmp_path / "artifacts" / "runs" / "video").glob("*/metrics.json")
                mean_iou = json.loads(metrics.read_text())["mean_iou"]
                if mean_iou < 0.5:
                    problems.append(f"{line}: mean IoU {mean_iou:.3f} on the clip's car (< 0.5)")
            elif command[1] in ("run", "evaluate") and not Path(out.splitlines()[-1]).is_file():
                problems.append(f"{line}: the last line is not the run's Parquet: {out[-500:]}")
    print("\nran:\n  " + "\n  ".join(ran) + "\nskipped:\n  " + "\n  ".join(skipped))
    assert not problems, "\n".join(problems)
    assert any(" video " in line for line in ran) and any(" stylize " in line for line in ran)


def _make_targets(text: str) -> list[str]:
    """The targets a Makefile's ``.PHONY`` line declares."""
    match = re.search(r"^\.PHONY:(.*)$", text, re.M)
    assert match, "the Makefile declares no .PHONY targets"
    return match.group(1).split()


def test_every_make_target_is_run_or_listed_with_a_reason() -> None:
    ci_targets = set(re.findall(r"^\s*make ([\w-]+)", CI_RUN.read_text(encoding="utf-8"), re.M))
    assert {"lint", "demo", "test"} <= ci_targets, ".ci/run must run the README as written"
    targets = _make_targets(MAKEFILE.read_text(encoding="utf-8"))
    unaccounted = [t for t in targets if t not in ci_targets and t not in MAKE_TARGETS_NOT_RUN]
    assert not unaccounted, f"Makefile targets neither run nor listed with a reason: {unaccounted}"
    stale = [t for t in MAKE_TARGETS_NOT_RUN if t not in targets or t in ci_targets]
    assert not stale, f"MAKE_TARGETS_NOT_RUN entries that are gone or run by .ci/run: {stale}"


def test_ci_runs_lint_then_demo_then_test() -> None:
    steps = re.findall(r"^\s*make (lint|demo|test)\b", CI_RUN.read_text(encoding="utf-8"), re.M)
    assert steps == ["lint", "demo", "test"]


@pytest.mark.slow
def test_demo_runs_offline(tmp_path: Path) -> None:
    """``segstyle demo`` as a user runs it (the console script, its own temporary server), at a
    small size: exit 0, the Parquet on the last line reads with pandas, the printed report
    exists with every picture it shows, and the logs stay quiet about the frame that the demo
    leaves unannotated on purpose."""
    import subprocess
    import sys

    import pandas as pd

    segstyle = Path(sys.executable).with_name("segstyle")
    done = subprocess.run(
        [str(segstyle), "demo", "--data", str(tmp_path / "data"), "--size", "256x128"]
        + ["--frames", "2", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = pd.read_parquet(done.stdout.strip().splitlines()[-1])
    assert len(rows) >= 2 and set(rows["status"]) == {"ok"}
    assert set(rows["segmenter"]) == {"grabcut"} and set(rows["stylizer"]) == {"feedforward"}
    assert rows["image_iou"].between(0, 1).all() and rows["image_iou"].mean() > 0.5
    everything = pd.read_parquet(tmp_path / "out" / "metrics")
    assert len(everything) == len(rows)
    (report_line,) = [line for line in done.stderr.splitlines() if line.startswith("report:")]
    report = Path(report_line.removeprefix("report:").strip())
    run_name, flow_run_id = rows[["run_id", "flow_run_id"]].iloc[0]
    assert report.is_file() and report.parent.name == f"{run_name}-{flow_run_id[:8]}"

    sources = re.findall(r'<img[^>]*\bsrc="([^"]+)"', report.read_text(encoding="utf-8"))
    assert sources and all((report.parent / src).is_file() for src in sources)
    assert "skipped" not in done.stderr.lower() and "warning" not in done.stderr.lower()

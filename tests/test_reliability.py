"""Reliability (issue #9): bad inputs, a run killed half-way, concurrent runs, offline, OOM.

Flow-level checks run the dataset flow with the offline backends (GrabCut, feed-forward) on
small generated datasets whose paths hold spaces and non-ASCII letters, either in this
process or as ``segstyle run`` subprocesses against the session's Prefect test server.
"""

from __future__ import annotations

import contextlib
import errno
import io
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from segstyle_core import cityscapes, results
from segstyle_core.demo.dataset import generate_demo_dataset
from segstyle_core.errors import InputError
from segstyle_core.images import read_label_map, read_rgb
from segstyle_core.prompts.from_gt import prompts_from_instances
from tests.flow_params import offline_params

REPO = Path(__file__).resolve().parents[1]
CITY = "zurich"
MIN_AREA = 100  # the flows' default --min-area
FLOW = "segment_and_stylize"
RUN_OPTIONS = (
    *("--city", CITY, "--classes", "car", "--prompts", "gt-instances"),
    *("--segmenter", "grabcut", "--stylizer", "feedforward"),
)


# --- helpers ----------------------------------------------------------------------------------


def _frames(root: Path, limit: int | None = None) -> list[cityscapes.Frame]:
    return cityscapes.sample_city(root, city=CITY, limit=limit).frames


def _prompt_count(frame: cityscapes.Frame) -> int:
    """Rows a frame gets: one per GT car of at least MIN_AREA pixels (computed from its GT)."""
    instances = cityscapes.load_instances(frame, ["car"])
    return len(prompts_from_instances(instances, mode="all", min_area=MIN_AREA))


def _flow(root: Path, out: Path, **overrides: Any) -> Any:
    """Run ``segment_and_stylize`` in this process; return its final state."""
    from segstyle.flows.dataset import segment_and_stylize
    from segstyle_core.config import CompositeConfig

    params = offline_params(root, out, city=CITY, classes=("car",), **overrides)
    return segment_and_stylize(**{**params, "composite": CompositeConfig()}, return_state=True)


def _rows(state: Any, out: Path, flow: str = FLOW) -> pd.DataFrame:
    """The Parquet rows of a finished (completed or failed) run of ``flow``."""
    flow_run_id = str(state.state_details.flow_run_id)
    return pd.read_parquet(results.run_file(out / "metrics", flow, flow_run_id))


class CliRuns:
    """``segstyle run`` subprocesses against the session's test server, each in its own
    process group, with stdout/stderr in ``<logs>/<name>.out|.err``."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, root: Path, out: Path, *extra: str) -> subprocess.Popen[bytes]:
        """Start ``segstyle run --dataset root ... --out out`` with ``extra`` options."""
        from prefect.settings import PREFECT_API_URL

        # These runs get SIGKILLed. The session's test API (prefect_test_harness) runs no lease
        # repossessor, so a killed holder's Prefect slot would stay taken for good: the runs
        # take this machine's host slots, which the kernel frees when a holder dies. Prefect-
        # mode slots and their repossession are tested in tests/test_device_slots.py.
        env = {
            **os.environ,
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "SEGSTYLE_DEVICE_SLOTS": "host",
        }
        self.logs.mkdir(parents=True, exist_ok=True)
        with (
            open(self.logs / f"{name}.out", "wb") as stdout,
            open(self.logs / f"{name}.err", "wb") as stderr,
        ):
            self.started[name] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "segstyle.flows.cli",
                    "run",
                    "--dataset",
                    str(root),
                    *RUN_OPTIONS,
                ]
                + ["--out", str(out), *extra],
                cwd=REPO,
                env=env,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        return self.started[name]

    def finish(self, name: str, timeout: float = 300) -> Path:
        """Wait for run ``name``; assert it exited 0; return the Parquet path it printed last."""
        process = self.started[name]
        process.wait(timeout=timeout)
        stderr = (self.logs / f"{name}.err").read_text(errors="replace")
        assert process.returncode == 0, stderr[-3000:]
        return Path((self.logs / f"{name}.out").read_text().strip().splitlines()[-1])

    def kill(self, name: str) -> int:
        """SIGKILL run ``name`` and its whole process group; return its exit status."""
        process = self.started[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return process.wait(timeout=30)


@pytest.fixture()
def cli(tmp_path: Path) -> Iterator[CliRuns]:
    """Subprocess runs of one test; any still running at teardown is killed."""
    runs = CliRuns(tmp_path / "logs")
    yield runs
    for name, process in runs.started.items():
        if process.poll() is None:
            runs.kill(name)


def _records(out: Path) -> dict[Path, tuple[int, bytes]]:
    """Every stage record under ``out/cache`` with its mtime (ns) and bytes."""
    return {
        path: (path.stat().st_mtime_ns, path.read_bytes())
        for path in (out / "cache").rglob("record.json")
    }


@pytest.fixture(scope="module")
def streets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only 128×64 dataset of 5 annotated frames under a path with spaces and umlauts."""
    base = tmp_path_factory.mktemp("reliability") / "data sets" / "städte ü"
    return generate_demo_dataset(base, size=(128, 64), frames_per_city=5, cities=(CITY,))


# --- bad inputs -------------------------------------------------------------------------------


def _save_as(mode: str) -> Callable[[cityscapes.Frame], None]:
    """Rewrite a frame's image in another Pillow mode (same pixels as far as the mode allows)."""

    def convert(frame: cityscapes.Frame) -> None:
        image = Image.open(frame.image_path).convert("RGB")
        if mode == "I;16":
            deep = np.asarray(image.convert("L"), dtype=np.uint16) * 257
            converted = Image.fromarray(deep)
        elif mode == "RGBA":
            converted = image.convert("RGBA")
            converted.putalpha(96)
        else:
            converted = image.convert(mode)
        converted.save(frame.image_path, format="PNG")
        assert Image.open(frame.image_path).mode == mode

    return convert


def _jpeg_bytes(frame: cityscapes.Frame) -> bytes:
    buffer = io.BytesIO()
    Image.open(frame.image_path).save(buffer, format="JPEG")
    return buffer.getvalue()


def _write_jpeg(frame: cityscapes.Frame) -> None:
    frame.image_path.write_bytes(_jpeg_bytes(frame))


def _truncate(frame: cityscapes.Frame) -> Path:
    data = frame.image_path.read_bytes()
    frame.image_path.write_bytes(data[: len(data) // 2])
    return frame.image_path


def _scramble(frame: cityscapes.Frame) -> Path:
    data = bytearray(frame.image_path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(range(64))
    frame.image_path.write_bytes(bytes(data))
    return frame.image_path


def _truncated_jpeg(frame: cityscapes.Frame) -> Path:
    data = _jpeg_bytes(frame)
    frame.image_path.write_bytes(data[: len(data) // 2])
    return frame.image_path


def _empty(frame: cityscapes.Frame) -> Path:
    frame.image_path.write_bytes(b"")
    return frame.image_path


def _text(frame: cityscapes.Frame) -> Path:
    frame.image_path.write_text("this is a text file, not a PNG\n")
    return frame.image_path


def _huge(frame: cityscapes.Frame) -> Path:
    Image.new("L", (2000, 1000), 128).save(frame.image_path)  # above PIXEL_LIMIT
    return frame.image_path


def _small_gt(frame: cityscapes.Frame) -> Path:
    assert frame.label_ids_path is not None
    Image.open(frame.label_ids_path).resize((64, 32), Image.Resampling.NEAREST).save(
        frame.label_ids_path
    )
    return frame.label_ids_path


def _unknown_label_ids(frame: cityscapes.Frame) -> Path:
    assert frame.label_ids_path is not None
    ids = read_label_map(frame.label_ids_path).astype(np.uint8)
    ids[:8, :8] = 200  # no Cityscapes label has id 200
    Image.fromarray(ids).save(frame.label_ids_path)
    return frame.label_ids_path


#: Damage that the run must convert and process like any other image.
CONVERTIBLE: dict[str, Callable[[cityscapes.Frame], None]] = {
    "grayscale": _save_as("L"),
    "rgba": _save_as("RGBA"),
    "palette": _save_as("P"),
    "16-bit": _save_as("I;16"),
    "jpeg named .png": _write_jpeg,
}

#: Damage that must fail its image alone, with one line naming the returned file.
BROKEN: dict[str, Callable[[cityscapes.Frame], Path]] = {
    "truncated png": _truncate,
    "corrupt png": _scramble,
    "truncated jpeg": _truncated_jpeg,
    "zero bytes": _empty,
    "text named .png": _text,
    "over the pixel limit": _huge,
    "gt of another size": _small_gt,
    "label ids outside the table": _unknown_label_ids,
}

UNTOUCHED = 2

#: The corpus run's SEGSTYLE_MAX_PIXELS: above the 512 px default style and the stylizer's
#: 1024×512 working-size output, below the over-sized image.
PIXEL_LIMIT = 1_000_000


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_bad_input_corpus_fails_only_the_broken_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = len(CONVERTIBLE) + len(BROKEN) + UNTOUCHED
    root = generate_demo_dataset(
        tmp_path / "data sets" / "städte ü", size=(128, 64), frames_per_city=count, cities=(CITY,)
    )
    frames = _frames(root)
    assert len(frames) == count
    prompts = {f.image_id: _prompt_count(f) for f in frames}  # from the intact GT
    assert min(prompts.values()) >= 1
    convertible = frames[: len(CONVERTIBLE)]
    broken = frames[len(CONVERTIBLE) : len(CONVERTIBLE) + len(BROKEN)]
    for frame, damage in zip(convertible, CONVERTIBLE.values(), strict=True):
        damage(frame)
    named = {f.image_id: damage(f) for f, damage in zip(broken, BROKEN.values(), strict=True)}
    ok_ids = [f.image_id for f in frames if f.image_id not in named]
    monkeypatch.setenv("SEGSTYLE_MAX_PIXELS", str(PIXEL_LIMIT))

    out = tmp_path / "out put ü"
    state = _flow(root, out)
    assert state.is_failed()
    assert f"{len(BROKEN)} of {count} images failed" in state.message
    rows = _rows(state, out)

    assert sorted(rows["image_id"].unique()) == sorted(f.image_id for f in frames)
    assert not rows.duplicated(["image_id", "prompt_index"]).any()
    assert rows.groupby("image_id").size().to_dict() == {
        image_id: 1 if image_id in named else prompts[image_id] for image_id in prompts
    }
    good = rows[rows["image_id"].isin(ok_ids)]
    assert good["status"].eq("ok").all() and good["error"].isna().all()
    assert good["iou_instance"].between(0, 1).all()
    for path in good["composite_path"].unique():
        assert read_rgb(path).shape == (64, 128, 3)
    for image_id, path in named.items():
        (row,) = rows[rows["image_id"] == image_id].itertuples()
        assert row.status == "failed", image_id
        assert str(path) in row.error and "\n" not in row.error, row.error


def test_cli_boxes_outside_the_image_are_refused_and_overhangs_clipped(streets: Path) -> None:
    from segstyle_core.config import PhotoPrompts
    from segstyle_core.photo import photo_prompts

    def cli_prompts(image: str, boxes: list[str], points: list[str]) -> list:
        return photo_prompts(image, PhotoPrompts(boxes=tuple(boxes), points=tuple(points)))

    image = str(_frames(streets)[0].image_path)  # 128×64
    for box in ("-40,-30,-1,-1", "130,10,200,40", "10,70,40,90"):
        with pytest.raises(InputError, match="outside the 128x64 image") as info:
            cli_prompts(image, [box], [])
        assert str(info.value).startswith(image) and "\n" not in str(info.value)
    with pytest.raises(InputError, match="outside"):
        cli_prompts(image, ["10,10,40,40"], ["-3,20"])
    (prompt,) = cli_prompts(image, ["-10,-5,40,90"], ["20,30"])
    assert prompt.box == (0.0, 0.0, 40.0, 64.0) and prompt.points == ((20.0, 30.0),)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("prompts.json", '{"zurich_000000_000019": [{"box": ["10", "5", "40", "30"]}]}'),
        ("prompts.json", '{"zurich_000000_000019": [{"points": [[5, 6]], "labels": [true]}]}'),
        ("prompts.csv", "image_id,x0,y0,x1,y1\nzurich_000000_000019,10,five,40,30\n"),
    ],
)
def test_run_refuses_a_prompts_file_with_wrong_types_before_it_starts(
    streets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str
) -> None:
    from segstyle.flows.cli import EXIT_ERROR, main

    prompts = tmp_path / "my prompts ü" / name
    prompts.parent.mkdir()
    prompts.write_text(text)
    out = tmp_path / "out"
    args = ["run", "--dataset", str(streets), *RUN_OPTIONS, "--out", str(out)]
    args[args.index("gt-instances")] = str(prompts)
    assert main(args) == EXIT_ERROR
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"segstyle: error: {prompts}") and "\n" not in error
    assert not out.exists()  # refused before any stage or server started


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_prompts_file_boxes_are_checked_against_each_image(streets: Path, tmp_path: Path) -> None:
    from segstyle.flows.dataset import evaluate_segmentation

    inside, outside = (f.image_id for f in _frames(streets)[:2])
    prompts = tmp_path / "prompts.json"
    prompts.write_text(
        json.dumps({inside: [{"box": [-20, -10, 60, 50]}], outside: [{"box": [300, 5, 340, 40]}]})
    )
    out = tmp_path / "out"
    from segstyle_core.config import PromptConfig

    params = offline_params(streets, out, city=CITY)
    state = evaluate_segmentation(
        dataset=params["dataset"],
        prompts=PromptConfig(source=str(prompts)),
        segmenter=params["segmenter"],
        outputs=params["outputs"],
        return_state=True,
    )
    assert state.is_failed()
    rows = _rows(state, out, "evaluate_segmentation").set_index("image_id")
    assert rows.loc[inside, "status"] == "ok"
    assert rows.loc[inside, "prompt_box"].tolist() == [0.0, 0.0, 60.0, 50.0]  # clipped
    error = rows.loc[outside, "error"]
    assert rows.loc[outside, "status"] == "failed"
    assert str(prompts) in error and outside in error and "outside" in error, error
    assert "\n" not in error


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize("side", [20, 8])
def test_tiny_style_works_or_fails_fast_with_one_line(
    streets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], side: int
) -> None:
    from segstyle.flows.cli import EXIT_ERROR, main

    style = tmp_path / f"tiny style {side}.png"
    pattern = (np.indices((side, side)).sum(axis=0) % 2 * 255).astype(np.uint8)
    Image.fromarray(pattern).save(style)
    out = tmp_path / "out"
    args = ["run", "--dataset", str(streets), *RUN_OPTIONS, "--limit", "1", "--out", str(out)]
    status = main([*args, "--style", str(style)])
    captured = capsys.readouterr()
    if status == 0:
        frame = pd.read_parquet(captured.out.strip().splitlines()[-1])
        assert frame["status"].eq("ok").all() and frame["style_name"].eq(style.stem).all()
        return
    error = captured.err.strip()
    assert status == EXIT_ERROR, error
    assert error.startswith(f"segstyle: error: {style}") and "\n" not in error
    assert not (out / "metrics").exists()


# --- crash safety and concurrency -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_run_killed_mid_way_resumes_and_reuses_finished_stages(
    streets: Path, tmp_path: Path, cli: CliRuns
) -> None:
    out = tmp_path / "out"
    killed = cli.start("killed", streets, out)
    deadline = time.monotonic() + 240
    while not any((out / "cache" / "stylize").rglob("record.json")):
        assert killed.poll() is None, "the run ended before a stylize stage finished"
        assert time.monotonic() < deadline, "no stylize stage finished in time"
        time.sleep(0.05)
    assert cli.kill("killed") == -signal.SIGKILL
    # killed before its run file: at most the parts of images that had finished
    # no run file: only the link to the killed run's parts (segstyle_core.results)
    assert not [p for p in (out / "metrics").glob("flow=*/*.parquet") if p.is_file()]
    before = _records(out)

    # A stage killed between writing its image and its record: half a PNG, a temp file, no
    # record. The rerun must recompute it rather than read the half-written files.
    record = next(p for p in before if p.parts[-4] == "stylize")
    stylized = out / "cache" / json.loads(record.read_text())["outputs"]["stylized"]
    data = stylized.read_bytes()
    stylized.write_bytes(data[: len(data) // 2])
    (stylized.parent / f".{stylized.stem}.half.png").write_bytes(data[: len(data) // 3])
    record.unlink()
    del before[record]

    cli.start("rerun", streets, out)
    parquet = cli.finish("rerun")
    after = _records(out)
    assert {path: after.get(path) for path in before} == before  # reused, not rewritten
    assert record in after and read_rgb(stylized).ndim == 3

    frames = _frames(streets)
    metrics = pd.read_parquet(out / "metrics")
    assert list((out / "metrics").rglob("*.parquet")) == [parquet]
    assert not metrics.duplicated(["image_id", "prompt_index"]).any()
    assert metrics.groupby("image_id").size().to_dict() == {
        f.image_id: _prompt_count(f) for f in frames
    }
    assert metrics["status"].eq("ok").all()
    for path in metrics["composite_path"].unique():
        assert read_rgb(path).shape == (64, 128, 3)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_concurrent_runs_on_overlapping_images_share_the_cache_safely(
    streets: Path, tmp_path: Path, cli: CliRuns
) -> None:
    out = tmp_path / "shared out"
    cli.start("two", streets, out, "--limit", "2")
    cli.start("all", streets, out)
    parquets = {name: cli.finish(name) for name in ("two", "all")}
    assert parquets["two"] != parquets["all"]
    assert sorted((out / "metrics").rglob("*.parquet")) == sorted(parquets.values())

    tables = {name: pd.read_parquet(path) for name, path in parquets.items()}
    assert tables["two"]["image_id"].nunique() == 2
    assert tables["all"]["image_id"].nunique() == len(_frames(streets))
    composites = {}
    for table in tables.values():
        assert table["status"].eq("ok").all()
        for image_id, path in table.groupby("image_id")["composite_path"].first().items():
            composites.setdefault(image_id, []).append(read_rgb(path))
    for image_id, pictures in composites.items():
        assert all(np.array_equal(p, pictures[0]) for p in pictures), image_id
    for record in (out / "cache").rglob("record.json"):
        for path in json.loads(record.read_text())["outputs"].values():
            assert (out / "cache" / path).is_file(), record  # paths relative to the cache
    assert [p for p in out.rglob(".*") if p.is_file()] == []  # no temporary files left behind

    # The stage cache is intact: a third run reads it back.
    third = _flow(streets, out)
    assert third.is_completed(), third.message
    assert _rows(third, out)["iou"].tolist() == tables["all"]["iou"].tolist()


# --- safety -----------------------------------------------------------------------------------


def _is_local(host: Any) -> bool:
    if host in (None, "localhost"):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_dataset_run_needs_no_network(
    streets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[Any] = []

    def guard(real: Callable[..., Any], host_of: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            target = host_of(*args)
            if not _is_local(target):
                attempts.append(target)
                raise OSError(errno.ENETUNREACH, f"network blocked by the test: {target}")
            return real(*args, **kwargs)

        return guarded

    def address_host(sock: socket.socket, address: Any) -> Any:
        return address[0] if isinstance(address, tuple) else None  # AF_UNIX paths are local

    monkeypatch.setattr(socket.socket, "connect", guard(socket.socket.connect, address_host))
    monkeypatch.setattr(socket.socket, "connect_ex", guard(socket.socket.connect_ex, address_host))
    monkeypatch.setattr(socket, "getaddrinfo", guard(socket.getaddrinfo, lambda host, *_: host))

    state = _flow(streets, tmp_path / "out", limit=2)
    assert state.is_completed(), state.message
    assert _rows(state, tmp_path / "out")["status"].eq("ok").all()
    assert attempts == []
    with pytest.raises(OSError, match="network blocked by the test"):  # the guard is live
        socket.create_connection(("example.com", 443), timeout=1)
    assert attempts == ["example.com"]


def test_make_server_binds_only_to_localhost() -> None:
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^server:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe is not None, "no server target in the Makefile"
    assert "prefect server start" in recipe.group(1)
    assert re.findall(r"--host[= ](\S+)", recipe.group(1)) == ["127.0.0.1"]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_out_of_memory_fails_one_image_with_advice(
    streets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from segstyle_core.stylize.feedforward import FeedForwardStylizer

    frames = _frames(streets, limit=3)
    victim = frames[1]
    pixels = read_rgb(victim.image_path)
    original = FeedForwardStylizer.stylize

    def stylize(self: FeedForwardStylizer, content: np.ndarray, *args: Any, **kw: Any) -> Any:
        if content.shape == pixels.shape and np.array_equal(content, pixels):
            raise MemoryError("simulated allocation failure")
        return original(self, content, *args, **kw)

    monkeypatch.setattr(FeedForwardStylizer, "stylize", stylize)
    out = tmp_path / "out"
    state = _flow(streets, out, limit=3)
    assert state.is_failed()
    rows = _rows(state, out)
    failed = rows[rows["image_id"] == victim.image_id]
    assert failed["status"].eq("failed").all() and len(failed) == 1
    error = failed["error"].iloc[0]
    assert "out of memory" in error and "\n" not in error
    assert "device cpu" in error or "working height" in error
    assert str(victim.image_path) in error
    others = rows[rows["image_id"] != victim.image_id]
    assert others["image_id"].nunique() == 2 and others["status"].eq("ok").all()

"""Honest exits (issue #14, item 5): a run that would cover no frame, or whose prompts file
names no frame of the run, is an error before any work: exit 2 and one line naming the dataset
(or file) and the fix, and no Parquet."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from segstyle_core import cityscapes
from segstyle_core.config import DatasetSelection
from segstyle_core.demo.dataset import generate_demo_dataset
from segstyle_core.errors import ConfigError, InputError
from segstyle_core.preflight import check_prompt_ids, check_sample
from tests.flow_params import offline_params
from tests.test_reliability import RUN_OPTIONS

CITY = "zurich"


@pytest.fixture(scope="module")
def streets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only dataset of 3 annotated 128×64 frames of zurich, under an odd path."""
    base = tmp_path_factory.mktemp("exits") / "data sets" / "städte ü"
    return generate_demo_dataset(base, size=(128, 64), frames_per_city=3, cities=(CITY,))


@pytest.fixture()
def scratch(streets: Path, tmp_path: Path) -> Path:
    """A private copy of ``streets`` that a test may damage."""
    return Path(shutil.copytree(streets, tmp_path / "copy ü"))


def _refused(capsys: pytest.CaptureFixture[str], root: Path, out: Path, *extra: str) -> str:
    """Run ``segstyle run`` expecting exit 2; return its one stderr line (checked: one line,
    nothing written under ``out``)."""
    from segstyle.flows.cli import EXIT_ERROR, main

    status = main(["run", "--dataset", str(root), *RUN_OPTIONS, "--out", str(out), *extra])
    captured = capsys.readouterr()
    assert status == EXIT_ERROR, captured.err
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("segstyle: error: ")
    assert not out.exists()  # refused before any server, stage or Parquet
    assert captured.out == ""
    return line


# --- no frame to run ----------------------------------------------------------------------


def test_limit_zero_is_refused(
    streets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _refused(capsys, streets, tmp_path / "out", "--limit", "0")
    assert "limit=0 selects no frame of train/zurich" in line
    assert "use a limit of at least 1" in line


def test_a_city_without_annotated_frames_is_refused(
    scratch: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gt = scratch / "gtFine" / "train" / CITY
    shutil.rmtree(gt)
    images = len(list((scratch / "leftImg8bit" / "train" / CITY).glob("*.png")))
    line = _refused(capsys, scratch, tmp_path / "out")
    assert line.startswith(f"segstyle: error: {gt}: none of the {images} images of city 'zurich'")
    assert "has fine annotations" in line and "choose another city or split" in line


def test_a_city_without_images_is_refused(
    scratch: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = scratch / "leftImg8bit" / "train" / "bern"
    empty.mkdir()
    line = _refused(capsys, scratch, tmp_path / "out", "--city", "bern")
    assert line.startswith(f"segstyle: error: {empty}: no *_leftImg8bit.png images")
    assert "choose another city or split" in line


def test_an_empty_split_is_refused(
    scratch: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (scratch / "leftImg8bit" / "val").mkdir()
    line = _refused(capsys, scratch, tmp_path / "out", "--split", "val")
    assert str(scratch / "leftImg8bit" / "val") in line and "no city folders" in line


def test_a_named_city_without_annotated_frames_is_refused_among_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--city aachen,zurich`` with zurich unannotated ran aachen alone and exited 0; ``all``
    still runs the annotated cities (a split may hold cities without fine annotations)."""
    root = generate_demo_dataset(tmp_path / "two", size=(128, 64), frames_per_city=2)
    shutil.rmtree(root / "gtFine" / "train" / CITY)
    line = _refused(capsys, root, tmp_path / "out", "--city", f"aachen,{CITY}", "--limit", "1")
    assert line.startswith(
        f"segstyle: error: {root / 'gtFine' / 'train'}: no annotated frame of {CITY}, named in "
    )
    everything = check_sample(DatasetSelection(root=str(root), city="all"))
    assert {frame.city for frame in everything.frames} == {"aachen"}
    assert everything.empty_cities == (CITY,)


def test_check_sample_returns_the_frames_the_flow_runs(streets: Path) -> None:
    selection = DatasetSelection(root=str(streets), city=CITY, limit=2)
    sample = check_sample(selection)
    assert sample == cityscapes.sample_city(streets, city=CITY, limit=2)
    assert len(sample.frames) == 2
    with pytest.raises(ConfigError, match="limit=-1 selects no frame"):
        check_sample(selection.model_copy(update={"limit": -1}))


# --- prompts files that name no frame of the run -------------------------------------------


def test_a_prompts_file_naming_no_frame_is_refused_with_the_unknown_ids(
    streets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    typos = [f"zurich_00000{i}_00019" for i in range(7)]  # one digit short
    prompts = tmp_path / "my prompts.json"
    prompts.write_text(json.dumps({image_id: [{"box": [1, 2, 30, 40]}] for image_id in typos}))
    line = _refused(capsys, streets, tmp_path / "out", "--prompts", str(prompts))
    assert line.startswith(f"segstyle: error: {prompts}: none of its image ids is a frame")
    assert f"unknown ids: {', '.join(typos[:5])} and 2 more" in line
    assert "fix the ids" in line


def test_prompt_ids_matching_some_frames_pass_and_the_limit_is_named(streets: Path) -> None:
    sample = cityscapes.sample_city(streets, city=CITY)
    real = sample.frames[0].image_id
    check_prompt_ids("p.json", [real, "zurich_9_9"], sample)  # some match: the run has work
    check_prompt_ids("p.json", [], sample)  # an empty file is load_prompts_file's error
    one = cityscapes.sample_city(streets, city=CITY, limit=1)
    other = next(f.image_id for f in sample.frames if f.image_id != one.frames[0].image_id)
    with pytest.raises(InputError) as info:
        check_prompt_ids("p.json", [other, "x", "y"], one, limit=1)
    message = str(info.value)
    assert message.startswith("p.json: none of its image ids is a frame of this run (1 frames")
    assert "drawn with limit=1" in message and f"unknown ids: {other}, x, y;" in message
    assert message.endswith("without the limit") and "\n" not in message


# --- the same checks when the flow is started without the CLI (deployments, the UI) ---------


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_the_flow_itself_refuses_an_empty_sample_before_any_work(
    streets: Path, tmp_path: Path
) -> None:
    from segstyle.flows.dataset import segment_and_stylize

    out = tmp_path / "out"
    params = offline_params(streets, out, limit=0)
    state = segment_and_stylize(**params, return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ConfigError) and "limit=0 selects no frame" in str(error)
    assert "\n" not in str(error)
    assert not (out / "metrics").exists() and not (out / "cache").exists()


# --- invalid values and configuration errors name the flag a user typed ----------------------


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (("--limit", "x"), "--limit: Input should be a valid integer"),
        (("--box-expand", "-1"), "--box-expand: Input should be greater than or equal to 0"),
        (("--gt", "rgb"), "--gt: Input should be 'auto', 'labelIds' or 'color' (got 'rgb')"),
        (("--feather", "nan"), "--feather: Input should be"),
        (("--feather", "inf"), "--feather: Input should be a finite number"),
        (("--feather", "-1"), "--feather"),
        (("--classes", "car,car"), None),
        (("--min-area", "-1"), "--min-area: Input should be greater than or equal to 0"),
        (("--grabcut-iterations", "101"), "--grabcut-iterations: Input should be less than or"),
    ],
    ids=[
        "not-a-number",
        "below-its-bound",
        "not-a-choice",
        "nan",
        "infinite",
        "negative",
        "dup",
        "negative-area",
        "grabcut-beyond-100",
    ],  # fmt: skip
)
def test_an_invalid_value_is_one_line_naming_its_flag(
    streets: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: tuple[str, ...],
    needle: str | None,
) -> None:
    if needle is None:  # accepted: repeated classes are kept once
        from segstyle.flows.cli import parse
        from segstyle.flows.options import DATASET

        command = parse(["run", "--dataset", str(streets), *RUN_OPTIONS, *extra])
        assert DATASET.build(command).classes == ("car",)
        return
    line = _refused(capsys, streets, tmp_path / "out", *extra)
    assert line.startswith(f"segstyle: error: {needle}")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["demo-clip", "{tmp}/clip", "--seed", "-1"], "--seed: Input should be greater than"),
        (  # the limit lowered: a regression fails here instead of drawing 10^10 pixels
            ["demo-data", "{tmp}/data", "--size", "128x64"],
            "--size 128x64: 8192 pixels, over the 8000 an image may have",
        ),
    ],
    ids=["negative-seed", "size-over-the-pixel-limit"],
)
def test_generator_values_that_used_to_crash_or_exhaust_memory_are_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    needle: str,
) -> None:
    """A negative seed reached numpy's generator (a traceback); a 100000×100000 demo frame was
    drawn until the kernel killed the process. Now one line, before anything is written."""
    from segstyle.flows.cli import EXIT_ERROR, main

    monkeypatch.setenv("SEGSTYLE_MAX_PIXELS", "8000")

    status = main([arg.format(tmp=tmp_path) for arg in argv])
    (line,) = capsys.readouterr().err.splitlines()
    assert status == EXIT_ERROR and line.startswith(f"segstyle: error: {needle}")
    assert list(tmp_path.iterdir()) == []


def test_serve_refuses_a_port_beyond_65535(capsys: pytest.CaptureFixture[str]) -> None:
    from segstyle.flows.cli import EXIT_ERROR, main

    assert main(["serve", "--port", "70000"]) == EXIT_ERROR
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("segstyle: error: --port: Input should be less than or equal to 65535")


def test_field_names_in_errors_are_written_as_the_commands_flags() -> None:
    from segstyle.flows.cli import Run, Video
    from segstyle.flows.options import flag_names, with_flags

    run = flag_names(Run.groups)
    message = (
        "stylizer.class_styles needs classes: give stylizer.style, segmenter.checkpoint, "
        "stylizer.gatys.seed or composite.mode=object (see /in/stylizer.style.png)"
    )
    assert with_flags(message, run) == (
        "--style needs classes: give --style, --checkpoint, --noise-seed or --mode=object "
        "(see /in/stylizer.style.png)"
    )
    video = flag_names(Video.groups)
    assert with_flags("tracker.checkpoint and tracker.backend", video) == (
        "--sam2-checkpoint and --segmenter"
    )
    assert with_flags("dataset.root", video) == "dataset.root"  # no such flag in video


def test_an_out_folder_that_is_not_utf8_is_one_line(
    streets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A path with a byte that is not UTF-8 (as a shell passes it: a surrogate escape)."""
    out = tmp_path / "out\udcff"
    line = _refused(capsys, streets, out)
    assert line.startswith("segstyle: error: --out: Input should be a valid string")


# --- a device this machine lacks, a Dask scheduler that is not there ----------------------------

#: No machine has 100 GPUs: refused with CUDA (no such index) and without it (no CUDA).
ABSENT_GPU = "cuda:99"


@pytest.mark.parametrize(
    ("device", "needle"),
    [
        (ABSENT_GPU, f"device '{ABSENT_GPU}'"),
        ("tpu", "not a device: use auto, cpu, cuda or cuda:N (got 'tpu')"),
        ("CUDA", "not a device: use auto, cpu, cuda or cuda:N (got 'CUDA')"),
    ],
    ids=["absent-gpu", "unknown", "upper-case"],
)
def test_a_device_this_machine_lacks_is_refused_before_any_work(
    streets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], device: str, needle: str
) -> None:
    line = _refused(capsys, streets, tmp_path / "out", "--device", device)
    assert line.startswith(f"segstyle: error: --device: {needle}")
    assert "use " in line


def test_the_flow_itself_refuses_a_device_its_threads_lack(streets: Path, tmp_path: Path) -> None:
    """A deployment's run (threads on the worker's machine) fails before any image."""
    from segstyle.flows.dataset import segment_and_stylize
    from segstyle_core import config

    out = tmp_path / "out"
    params = offline_params(streets, out)
    params["segmenter"] = config.SegmenterConfig(backend="grabcut", device=ABSENT_GPU)
    state = segment_and_stylize(**params, return_state=True)
    error = state.result(raise_on_failure=False)
    assert state.is_failed() and isinstance(error, ConfigError)
    assert str(error).startswith(f"segmenter.device: device '{ABSENT_GPU}'")
    assert not (out / "metrics").exists() and not (out / "cache").exists()


def test_a_remote_clusters_device_is_not_checked_on_this_machine(
    streets: Path, tmp_path: Path
) -> None:
    """With ``--dask ADDRESS`` the stages compute on the workers: their GPUs count, not ours."""
    from segstyle_core import config
    from segstyle_core.preflight import check_run_inputs

    params = offline_params(streets, tmp_path / "out")
    gpu = {
        name: params[name].model_copy(update={"device": ABSENT_GPU})
        for name in ("segmenter", "stylizer")
    }
    settings = (params["dataset"], params["prompts"], gpu["segmenter"], gpu["stylizer"])
    identities = check_run_inputs(*settings, params["outputs"], devices_here=False)
    assert [identity.name for identity in identities if identity] == ["grabcut", "feedforward"]
    with pytest.raises(ConfigError, match=r"^segmenter\.device: "):
        check_run_inputs(*settings, params["outputs"])
    stylizer_only = (
        params["dataset"],
        params["prompts"],
        config.SegmenterConfig(backend="grabcut"),
    )
    with pytest.raises(ConfigError, match=r"^stylizer\.device: "):
        check_run_inputs(*stylizer_only, gpu["stylizer"], params["outputs"])


@pytest.mark.parametrize(
    ("address", "needle"),
    [
        ("local", "missing port number in address 'local'"),
        ("scheduler:port", "invalid literal for int()"),
        ("scheduler:70000", "port 70000 is not between 1 and 65535"),
        ("http://scheduler:8787", "scheme http:// where segstyle connects over tcp://"),
        ("tls://scheduler:8786", "scheme tls:// where segstyle connects over tcp://"),
    ],
    ids=["no-port", "port-not-a-number", "port-too-large", "dashboard-url", "tls"],
)
def test_a_malformed_dask_address_is_refused_naming_its_form(
    streets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], address: str, needle: str
) -> None:
    line = _refused(capsys, streets, tmp_path / "out", "--dask", address)
    assert line.startswith(f"segstyle: error: --dask {address}: not a Dask scheduler address")
    assert needle in line and line.endswith("e.g. tcp://127.0.0.1:8786")


def test_a_dask_address_where_no_scheduler_answers_is_refused_within_dasks_timeout(
    streets: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The variable a deployment sets is named when it gave the address; Dask's own connect
    timeout (here 1 s) bounds the wait."""
    import dask

    import segstyle.flows.dataset  # noqa: F401  its default task runner reads the variable once
    from segstyle.flows.cluster import DASK_ADDRESS_ENV
    from tests.prefect_service import free_port

    address = f"tcp://127.0.0.1:{free_port()}"
    monkeypatch.setenv(DASK_ADDRESS_ENV, address)
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        line = _refused(capsys, streets, tmp_path / "out")
    assert line.startswith(f"segstyle: error: ${DASK_ADDRESS_ENV} {address}: no Dask scheduler")
    assert "after 1 s" in line and "`dask scheduler`" in line


def test_a_listener_that_never_answers_dasks_handshake_is_refused_in_bounded_time(
    streets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Dask's connect timeout covers only the TCP connection; a port that accepts and stays
    silent (a wrong service) is given twice that for the whole exchange."""
    import socket

    import dask

    with socket.create_server(("127.0.0.1", 0)) as silent:
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
            line = _refused(capsys, streets, tmp_path / "out", "--dask", address)
    assert line.startswith(f"segstyle: error: --dask {address}: no Dask scheduler answered")
    assert "(no answer within 2 s)" in line

"""The ``segstyle`` command line: a pydantic model per command (its arguments and the flags of
:mod:`segstyle.flows.options`), parsed by pydantic-settings. An error prints one line naming the
flag: exit status 2 (1: a run with failed images).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, ValidationError, create_model
from pydantic_core import ErrorDetails
from pydantic_settings import (
    CliPositionalArg,
    CliSettingsSource,
    CliSubCommand,
    CliToggleFlag,
    get_subcommand,
)
from pydantic_settings.exceptions import SettingsError

from segstyle.flows.options import (
    COMPOSITE,
    DATASET,
    OUTPUTS,
    PHOTO_PROMPTS,
    PROMPTS,
    SEGMENTER,
    SHARED,
    STYLE,
    STYLIZER,
    TRACKER,
    VIDEO_COMPOSITE,
    VIDEO_OPTIONS,
    VIDEO_STYLIZER,
    Options,
    build_stylizer,
    flag_names,
    with_flags,
    with_options,
)
from segstyle_core.backends import validation_message
from segstyle_core.devices import keep_freed_memory
from segstyle_core.errors import ConfigError, SegstyleError, error_line, os_error_message
from segstyle_core.outputs import DEFAULT_PORT
from segstyle_core.weights import CHECKPOINTS

EXIT_FAILED_IMAGES = 1
EXIT_ERROR = 2
#: Repeatable options whose values hold commas (``--box 1,2,3,4``): each value stays whole.
WHOLE_VALUES = frozenset({"box", "point", "style"})
#: ``segstyle video --segmenter`` -> the tracker backend.
VIDEO_SEGMENTERS = {"grabcut": "flow", "sam2": "sam2"}


class Command(BaseModel):
    """A command: its own arguments (fields), the configuration options it adds (``groups``)."""

    groups: ClassVar[tuple[Options[Any], ...]] = ()

    def cli_cmd(self) -> int:
        """Run the command; the exit status."""
        raise NotImplementedError


class RunCommand(Command):
    """A command that runs a flow (or the stages) and writes under ``--out``."""

    verbose: CliToggleFlag[bool] = Field(default=False, description="show Prefect's logs")


def _size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` -> ``(width, height)``; :class:`ConfigError` for another form, or for
    more pixels than a run reads (``images.max_pixels_default``)."""
    from segstyle_core.images import max_pixels_default

    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size {text!r}: use WIDTHxHEIGHT, e.g. 1024x512") from None
    if width * height > (limit := max_pixels_default()):
        raise ConfigError(
            f"--size {text}: {width * height} pixels, over the {limit} an image may have "
            "($SEGSTYLE_MAX_PIXELS); use a smaller size, e.g. 2048x1024"
        )
    return width, height


def _quiet_prefect(verbose: bool) -> None:
    """Prefect's console quiet unless ``verbose``, no analytics, the core's logs in the runs'."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "segstyle_core")
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")


def _run_flow(flow: Any, *parameters: Any) -> int:
    """Run ``flow(*parameters)`` (the last: its ``OutputConfig``) against a local API, print its
    result: 0, 1 (some images failed), or :class:`SegstyleError` (failed before its Parquet)."""
    from segstyle.flows.server import local_api
    from segstyle_core import results

    out = Path(parameters[-1].out)
    with local_api(out / "logs" / "prefect-server.log"):
        state = flow(*parameters, return_state=True)
    if state.is_completed():
        print(state.result())
        return 0
    error = state.result(raise_on_failure=False)
    parquet = results.run_file(out / "metrics", flow.name, str(state.state_details.flow_run_id))
    if parquet.is_file():  # the run ended: some images failed, their rows say why
        print(f"segstyle: {error}", file=sys.stderr)
        print(parquet)
        return EXIT_FAILED_IMAGES
    if isinstance(error, BaseException):
        text = str(error) if isinstance(error, SegstyleError) else error_line(error)
    else:
        text = str(state.message or error)
    raise SegstyleError((text.splitlines() or [type(error).__name__])[0])


class DatasetCommand(RunCommand):
    """A dataset run, on threads (default) or on a Dask cluster (:mod:`segstyle.flows.cluster`)."""

    groups: ClassVar[tuple[Options[Any], ...]] = (DATASET, PROMPTS, SEGMENTER, OUTPUTS)
    dask: str | None = Field(
        default=None,
        description="scheduler address of a Dask cluster to run the tasks on (HOST:PORT or "
        "tcp://HOST:PORT); none: $SEGSTYLE_DASK_ADDRESS, else threads",
    )
    workers: int | None = Field(
        default=None, ge=1, description="start a local Dask cluster of N worker processes"
    )

    def run(self, flow: Any, *styling: Any) -> int:
        """Check the inputs, run ``flow`` on this command's task runner (``styling``: stylizer,
        composite)."""
        from segstyle.flows.cluster import check_cluster, computes_here, task_runner
        from segstyle_core.preflight import check_run_inputs

        if self.dask and self.workers:
            raise ConfigError("--dask and --workers: give one (a cluster, or one to start)")
        configs = (DATASET.build(self), PROMPTS.build(self), SEGMENTER.build(self))
        outputs = OUTPUTS.build(self)
        stylizer, composite = styling or (None, None)
        devices = [b.device for b in (configs[2], stylizer) if b is not None]
        runner = task_runner(self.dask, self.workers, devices)  # the flow's own rule: computes_here
        check_run_inputs(*configs, stylizer, outputs, composite, devices_here=computes_here(runner))
        if warning := check_cluster(self.dask, self.workers, devices):
            print(f"segstyle: warning: {warning}", file=sys.stderr)
        return _run_flow(flow.with_options(task_runner=runner), *configs, *styling, outputs)


class Run(DatasetCommand):
    """segment, stylize and score a Cityscapes-layout dataset"""

    groups = (DATASET, PROMPTS, SEGMENTER, STYLIZER, COMPOSITE, OUTPUTS)
    style: list[str] = STYLE

    def cli_cmd(self) -> int:
        from segstyle.flows.dataset import segment_and_stylize

        stylizer = build_stylizer(self, self.style, SEGMENTER.build(self))
        return self.run(segment_and_stylize, stylizer, COMPOSITE.build(self))


class Evaluate(DatasetCommand):
    """segment and score only, no styling"""

    def cli_cmd(self) -> int:
        from segstyle.flows.dataset import evaluate_segmentation

        return self.run(evaluate_segmentation)


class Stylize(RunCommand):
    """stylize the prompted object(s) of one photo, each in its style"""

    groups = (PHOTO_PROMPTS, SEGMENTER, STYLIZER, COMPOSITE, OUTPUTS)
    image: CliPositionalArg[str]
    box: list[str] = Field(
        default=[],
        description="x0,y0,x1,y1; repeatable: each box is a region, paired in order with --style",
    )
    point: list[str] = Field(
        default=[],
        description="x,y[,1|0]; repeatable (0: background); with one --box they refine it, "
        "otherwise they are one more region",
    )
    output: str = Field(description="composite image to write (.png, .jpg, .webp)")
    quality: int = Field(default=95, description="JPEG/WebP quality of the output, 1-100")
    style: list[str] = STYLE

    def cli_cmd(self) -> int:
        """One photo, without Prefect: the stages run in this process."""
        from segstyle_core.images import read_rgb, write_image
        from segstyle_core.photo import check_photo_job, stylize_photo

        segmenter = SEGMENTER.build(self)
        stylizer = build_stylizer(self, self.style, segmenter, several=True)
        composite, cache = COMPOSITE.build(self), str(Path(OUTPUTS.build(self).out) / "cache")
        styles = tuple(self.style) if len(self.style) > 1 else ()  # all plain: several=True
        given = PHOTO_PROMPTS.build(self, boxes=(*self.box,), points=(*self.point,), styles=styles)
        job = check_photo_job(self.image, self.output, given, segmenter, stylizer, composite)
        record = stylize_photo(
            self.image, job.prompts, job.styles, segmenter, stylizer, composite, cache
        )
        print(write_image(job.output, read_rgb(record.path("composite")), quality=self.quality))
        return 0


class Video(RunCommand):
    """stylize one tracked object through a video"""

    groups = (TRACKER, VIDEO_STYLIZER, VIDEO_COMPOSITE, VIDEO_OPTIONS, OUTPUTS)
    video: CliPositionalArg[str] = Field(
        description="video file (MP4, ...) or folder of PNG frames"
    )
    box: str = Field(description="x0,y0,x1,y1 around the object")
    output: str = Field(description="result video (.mp4) or folder")
    segmenter: Literal["grabcut", "sam2"] = Field(
        default="grabcut",
        description="mask tracker: optical flow refined by GrabCut (offline), or SAM 2's video "
        "predictor",
    )

    def cli_cmd(self) -> int:
        from segstyle.flows.video import stylize_video
        from segstyle_core.video.config import VIDEO_STYLIZER as STYLIZER_DEFAULTS
        from segstyle_core.video.job import check_video_job
        from segstyle_core.video.track import TrackerConfig

        shared = {name: getattr(self, name) for name in SHARED}
        segmenter = TrackerConfig().segmenter.changed(**shared)  # the flow tracker's refiner
        tracker = TRACKER.build(self, backend=VIDEO_SEGMENTERS[self.segmenter], segmenter=segmenter)
        stylizer = VIDEO_STYLIZER.build(
            self, backend=STYLIZER_DEFAULTS.backend, gatys=STYLIZER_DEFAULTS.gatys, **shared
        )
        composite, options = VIDEO_COMPOSITE.build(self), VIDEO_OPTIONS.build(self)
        check_video_job(self.video, self.output, tracker, stylizer, composite, options)
        configs = (tracker, stylizer, composite, options, OUTPUTS.build(self))
        return _run_flow(stylize_video, self.video, self.output, self.box, *configs)


class DemoClip(Command):
    """write a generated clip (a car crossing a street) with GT"""

    out: CliPositionalArg[str]
    size: str = Field(default="256x128", description="WIDTHxHEIGHT")
    frames: int = Field(default=24, ge=2)
    seed: int = Field(default=0, ge=0)

    def cli_cmd(self) -> int:
        from segstyle_core.demo.clip import generate_clip

        clip = generate_clip(
            Path(self.out), frames=self.frames, size=_size(self.size), seed=self.seed
        )
        box = ",".join(str(int(v)) for v in clip.boxes[0])
        hint = f"stylize it with: segstyle video {clip.frames_dir} --box {box} -o clip.mp4"
        print(hint, file=sys.stderr)
        print(clip.frames_dir)
        return 0


class DemoData(Command):
    """write a procedurally drawn Cityscapes-layout dataset"""

    out: CliPositionalArg[str]
    size: str = Field(default="1024x512", description="WIDTHxHEIGHT")
    frames: int = Field(default=6, description="annotated frames per city")
    seed: int = 0

    def cli_cmd(self) -> int:
        from segstyle_core.demo.dataset import generate_demo_dataset

        root = generate_demo_dataset(
            Path(self.out), size=_size(self.size), frames_per_city=self.frames, seed=self.seed
        )
        print(root)
        return 0


class Demo(RunCommand):
    """make the demo dataset and run the offline pipeline on it"""

    groups = (OUTPUTS,)
    data: str = Field(default="data/demo", description="where the demo dataset lives")
    city: str = "zurich"
    classes: tuple[str, ...] = Field(default=("car",), description="CLASS,... to stylize")
    size: str = Field(default="1024x512", description="WIDTHxHEIGHT of a generated dataset")
    frames: int = Field(default=6, description="annotated frames per city")

    def cli_cmd(self) -> int:
        from segstyle.flows.dataset import segment_and_stylize
        from segstyle_core import config, results
        from segstyle_core.demo.dataset import ensure_demo_dataset
        from segstyle_core.outputs import run_folder
        from segstyle_core.preflight import check_run_inputs

        if not Path(self.data, "leftImg8bit").is_dir():
            print(f"writing the demo dataset to {self.data} ...", file=sys.stderr)
        ensure_demo_dataset(self.data, size=_size(self.size), frames_per_city=self.frames)
        outputs = OUTPUTS.build(self)
        settings = (
            config.DatasetSelection(root=self.data, city=self.city, classes=self.classes),
            config.PromptConfig(source="gt-instances"),
            config.SegmenterConfig(backend="grabcut"),
            config.StylizerConfig(backend="feedforward"),
            config.CompositeConfig(feather_px=2.0),
        )
        check_run_inputs(*settings[:4], outputs, settings[4])
        backends = "GrabCut segmenter, feed-forward stylizer, generated style"
        doing = f"running segment_and_stylize on {self.data} (city {self.city})"
        print(f"{doing} with the offline backends: {backends}", file=sys.stderr)
        status = _run_flow(segment_and_stylize, *settings, outputs)
        out = Path(outputs.out).resolve()
        key, rows = results.select_run(results.read_metrics(out / "metrics"))
        report = run_folder(out, rows["run_id"].iloc[0], key) / "report.html"
        where = f"report:  {report}\nimages:  {out / 'runs'}\nmetrics: {out / 'metrics'}"
        print(f"{where}  (pandas.read_parquet reads the folder)", file=sys.stderr)
        return status


class Weights(Command):
    """list, download or verify model checkpoints (SAM, SAM 2, VGG19)"""

    action: CliPositionalArg[Literal["status", "download", "verify"]] = Field(
        description="status, download or verify"
    )
    name: CliPositionalArg[Literal[tuple(CHECKPOINTS)] | None] = Field(  # type: ignore[valid-type]
        default=None, description=f"checkpoint: {', '.join(CHECKPOINTS)}; none: all"
    )
    weights_dir: str | None = None
    url: str | None = Field(default=None, description="download from a mirror instead")

    def cli_cmd(self) -> int:
        from segstyle_core import weights

        names = [self.name] if self.name else list(weights.CHECKPOINTS)
        if self.action == "download":
            for name in names:
                print(weights.download(name, self.weights_dir, url=self.url))
            return 0
        verify = self.action == "verify"
        records = weights.status(self.weights_dir, verify=verify, names=names)
        print("\n".join(weights.status_report(records, self.weights_dir)))
        return 1 if verify and not all(r.ok for r in records) else 0


class Tune(Command):
    """time the Gatys speed options on this machine and cache the fastest that keep the numbers"""

    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N")
    cached: CliToggleFlag[bool] = Field(
        default=False, description="print the cached calibration if there is one"
    )

    def cli_cmd(self) -> int:
        from segstyle_core.stylize.calibration import tune_table

        print(tune_table(self.device, refresh=not self.cached))
        return 0


class Results(Command):
    """summarise a run from the Parquet metrics"""

    run: CliPositionalArg[str | None] = Field(
        default=None, description="run name or flow run id; none: the latest"
    )
    metrics: str = Field(default="artifacts/metrics", min_length=1)

    def cli_cmd(self) -> int:
        from segstyle_core.run_summary import run_text

        print(run_text(self.metrics, self.run))
        return 0


class Prune(Command):
    """remove all but the latest runs of each flow (their Parquet files and run folders)"""

    out: str = Field(default="artifacts", description="the flows' --out folder")
    keep: int = Field(ge=1, description="runs to keep per flow, the latest started")
    dry_run: CliToggleFlag[bool] = Field(default=False, description="list, remove nothing")

    def cli_cmd(self) -> int:
        from segstyle_core.retention import prune

        pruned = prune(self.out, self.keep, dry_run=self.dry_run)
        verb = "would remove" if self.dry_run else "removed"
        for run in pruned.runs:
            print(f"{verb} run {run}")
        print(
            f"{verb} {len(pruned.runs)} runs: {len(pruned.files)} Parquet files, "
            f"{len(pruned.folders)} run folders; the cache is kept"
        )
        return 0


class Serve(Command):
    """serve run outputs over HTTP on 127.0.0.1 so the Prefect UI can show them"""

    out: list[str] = Field(
        default=["artifacts"],
        description="a flows' --out folder: its runs/ and metrics/; repeat it to serve several",
    )
    port: int = Field(
        default=DEFAULT_PORT, ge=0, le=65535, description="TCP port; 0 picks a free one"
    )
    host: str = Field(default="127.0.0.1", description="a loopback address only")

    def cli_cmd(self) -> int:
        from segstyle_core.serve import serve

        serve([Path(out) for out in self.out], host=self.host, port=self.port)
        return 0


#: Command name (its class's, in kebab case) -> its model.
COMMANDS: dict[str, type[Command]] = {
    re.sub(r"(?<!^)(?=[A-Z])", "-", command.__name__).lower(): command
    for command in (Run, Evaluate, Stylize, Video, DemoClip, DemoData, Demo)
    + (Weights, Tune, Results, Prune, Serve)
}


def _add_argument(parser: Any, *names: str, **options: Any) -> Any:
    """pydantic-settings' ``add_argument``: each value of :data:`WHOLE_VALUES` kept whole (a JSON
    string is not split at commas), an option's value shown as its name (``--limit LIMIT``)."""
    if "dest" not in options:  # -h, or a positional argument (already shown by its name)
        return parser.add_argument(*names, **options)
    name = str(options["dest"]).rsplit(".", 1)[-1]
    if options.get("action") == "append" and name in WHOLE_VALUES:
        options["type"] = json.dumps
    metavar = options.get("metavar")
    if metavar and (not metavar.startswith("{") or len(metavar) > 80):  # a type, or too long
        many = metavar.startswith(("tuple[", "list[")) and name not in WHOLE_VALUES
        options["metavar"] = name.upper() + (",..." if many else "")
    return parser.add_argument(*names, **options)


def cli_source() -> CliSettingsSource[Any]:
    """pydantic-settings' CLI source: a subcommand per :data:`COMMANDS` entry."""
    subcommand: Any = CliSubCommand  # of a model made here, not a type mypy can see
    commands: dict[str, Any] = {
        name.replace("-", "_"): (
            subcommand[with_options(command, *command.groups)],
            Field(description=(command.__doc__ or "").splitlines()[0]),
        )
        for name, command in COMMANDS.items()
    }
    root = create_model(
        "segstyle", __doc__="Stylize only the region a segmentation model selects.", **commands
    )
    return CliSettingsSource(
        root,  # type: ignore[arg-type]
        cli_prog_name="segstyle",
        cli_parse_none_str="none",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_enforce_required=True,
        cli_avoid_json=True,
        cli_hide_none_type=True,
        cli_shortcuts={"output": "o"},
        add_argument_method=_add_argument,
    )


def parse(argv: Sequence[str]) -> Command:
    """The command of ``argv`` (``--help`` and usage errors exit); :class:`ConfigError`
    naming each invalid value's flag."""
    source = cli_source()
    try:
        parsed = source.settings_cls.model_validate(source(args=list(argv))())
    except ValidationError as error:
        raise ConfigError("; ".join(map(_invalid, error.errors()))) from None
    except SettingsError as error:
        raise ConfigError(str(error)) from None
    chosen = get_subcommand(parsed)
    assert isinstance(chosen, Command)
    return chosen


def _invalid(error: ErrorDetails) -> str:
    """``--limit: Input should be ... (got 'x')`` for an error at ``(command, field)``."""
    command, name = (*map(str, error["loc"]), "", "")[:2]
    own = COMMANDS[command.replace("_", "-")].model_fields.get(name)
    positional = own is not None and CliPositionalArg.__metadata__[0] in own.metadata  # type: ignore[attr-defined]
    shown = name.upper() if positional else "--" + name.replace("_", "-")
    return f"{shown}: {validation_message(error)} (got {error.get('input')!r})"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``segstyle`` console script."""
    flags: dict[str, str] = {}
    try:
        command = parse(sys.argv[1:] if argv is None else argv)
        keep_freed_memory()  # before Prefect starts its threads
        _quiet_prefect(getattr(command, "verbose", False))  # before anything imports Prefect
        flags = flag_names(command.groups)
        return command.cli_cmd()
    except (SegstyleError, OSError) as exc:  # a StorageError is both
        if isinstance(exc, SegstyleError):
            text = with_flags(str(exc), flags)
        else:
            text = os_error_message(exc)
        print(f"segstyle: error: {text}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("segstyle: interrupted; finished stages are cached, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The ``segstyle`` command line.

Commands that run flows import Prefect lazily, so ``segstyle --help``, ``demo-data`` and
``weights`` start fast. Errors of the :class:`~segstyle_core.errors.SegstyleError` family are
printed as one line, without a traceback, and the exit status is non-zero.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from segstyle.flows.options import (
    COMPOSITE,
    DATASET,
    OUTPUT,
    PHOTO_BOXES,
    PROMPTS,
    SEGMENTER,
    STYLIZER,
    VIDEO,
    VIDEO_COMPOSITE,
    VIDEO_SEGMENTERS,
    VIDEO_STYLE,
    VIDEO_TRACKER,
    add_options,
    build,
    build_stylizer,
    build_video_stylizer,
    build_video_tracker,
    split_styles,
    style_values,
)
from segstyle.flows.serve import add_serve_command
from segstyle_core.errors import SegstyleError

EXIT_FAILED_IMAGES = 1
EXIT_ERROR = 2
#: ``segstyle weights NAME``'s help: the names of :data:`segstyle_core.weights.CHECKPOINTS`,
#: written out so that ``--help`` need not import torch (a test keeps them in step).
WEIGHTS_NAME_HELP = (
    "checkpoint: sam_vit_b, sam_vit_l, sam_vit_h, vgg19, sam2.1_hiera_tiny, sam2.1_hiera_small, "
    "sam2.1_hiera_base_plus, sam2.1_hiera_large (default: all)"
)

_Formatter = argparse.ArgumentDefaultsHelpFormatter


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use WIDTHxHEIGHT, e.g. 1024x512") from None
    return width, height


def _csv(text: str) -> tuple[str, ...]:
    """``a,b`` -> ``("a", "b")``."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _quiet_prefect(verbose: bool) -> None:
    """Keep Prefect's console to warnings (or errors) unless --verbose; never phone home."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")


def _run_flow(out: str, flow_name: str, call: Callable[[], Any]) -> int:
    """Run a flow against a quiet local API; print the Parquet path last; map failures."""
    from segstyle.flows.server import local_api
    from segstyle_core import results

    with local_api(Path(out) / "logs" / "prefect-server.log"):
        state = call()
    flow_run_id = str(state.state_details.flow_run_id)
    if state.is_completed():
        print(state.result())
        return 0
    error = state.result(raise_on_failure=False)
    parquet = results.run_file(Path(out) / "metrics", flow_name, flow_run_id)
    if parquet.exists():  # the run ended: some images failed, their rows say why
        print(f"segstyle: {error}", file=sys.stderr)
        print(parquet)
        return EXIT_FAILED_IMAGES
    # an error raised inside the flow before it wrote its file: one line, as in main()
    print(f"segstyle: error: {_error_text(error, state.message)}", file=sys.stderr)
    return EXIT_ERROR


def _error_text(error: object, fallback: str | None) -> str:
    """One line for what a failed flow run returned (its exception, or its state message)."""
    from segstyle_core.errors import error_line

    if isinstance(error, SegstyleError):
        text = str(error)
    elif isinstance(error, BaseException):
        text = error_line(error)
    else:
        text = str(fallback or error)
    return (text.splitlines() or [type(error).__name__])[0]


def _cmd_run(args: argparse.Namespace) -> int:
    from segstyle.flows.dataset import segment_and_stylize
    from segstyle_core.preflight import check_run_inputs

    dataset, prompts, outputs = (build(g, args) for g in (DATASET, PROMPTS, OUTPUT))
    segmenter = build(SEGMENTER, args)
    stylizer = build_stylizer(args, segmenter)
    composite = build(COMPOSITE, args)
    check_run_inputs(dataset, prompts, segmenter, stylizer, outputs, composite)  # before a server
    return _run_flow(
        outputs.out,
        "segment_and_stylize",
        lambda: segment_and_stylize(
            dataset, prompts, segmenter, stylizer, composite, outputs, return_state=True
        ),
    )


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from segstyle.flows.dataset import evaluate_segmentation
    from segstyle_core.preflight import check_run_inputs

    dataset, prompts, segmenter, outputs = (
        build(g, args) for g in (DATASET, PROMPTS, SEGMENTER, OUTPUT)
    )
    check_run_inputs(dataset, prompts, segmenter, None, outputs)
    return _run_flow(
        outputs.out,
        "evaluate_segmentation",
        lambda: evaluate_segmentation(dataset, prompts, segmenter, outputs, return_state=True),
    )


def _cmd_stylize(args: argparse.Namespace) -> int:
    """One photo, without Prefect: the stages run in this process (no server to wait for).

    Everything that can fail before the work (prompts, output path, checkpoints, style image)
    is checked first; a failing stage's own error is printed as one line.
    """
    from segstyle_core.images import check_output_path, read_rgb, write_image
    from segstyle_core.paint import region_styles
    from segstyle_core.photo import photo_prompts, stylize_photo
    from segstyle_core.preflight import check_style

    segmenter = build(SEGMENTER, args)
    stylizer = build_stylizer(args, segmenter, several=True)
    composite, outputs = build(COMPOSITE, args), build(OUTPUT, args)
    plain, _ = split_styles(style_values(args))
    given = build(
        PHOTO_BOXES,
        args,
        boxes=getattr(args, "box", ()),
        points=getattr(args, "point", ()),
        styles=tuple(plain) if len(plain) > 1 else (),
    )
    prompts = photo_prompts(args.image, given)
    styles = region_styles(given, len(prompts), stylizer, composite.mode)
    output = check_output_path(args.output, [args.image, *styles])
    segmenter.identity()
    stylizer.identity()
    check_style(stylizer, styles)
    record = stylize_photo(
        args.image,
        prompts,
        styles,
        segmenter,
        stylizer,
        composite,
        str(Path(outputs.out) / "cache"),
    )
    print(write_image(output, read_rgb(record.path("composite")), quality=args.quality))
    return 0


def _cmd_video(args: argparse.Namespace) -> int:
    from segstyle.flows.video import stylize_video
    from segstyle_core.preflight import check_style
    from segstyle_core.video.stages import temporal_options

    tracker = build_video_tracker(args)
    stylizer = build_video_stylizer(args, tracker)
    composite, video_options, outputs = (build(g, args) for g in (VIDEO_COMPOSITE, VIDEO, OUTPUT))
    temporal_options(composite, video_options)  # before any server starts
    tracker.identity()
    stylizer.identity()
    check_style(stylizer)
    return _run_flow(
        outputs.out,
        "stylize_video",
        lambda: stylize_video(
            args.video,
            args.output,
            args.box,
            tracker,
            stylizer,
            composite,
            video_options,
            outputs,
            return_state=True,
        ),
    )


def _cmd_demo_data(args: argparse.Namespace) -> int:
    from segstyle_core.demo.dataset import generate_demo_dataset

    root = generate_demo_dataset(
        Path(args.out), size=args.size, frames_per_city=args.frames, seed=args.seed
    )
    print(root)
    return 0


def _cmd_demo_clip(args: argparse.Namespace) -> int:
    from segstyle_core.demo.clip import generate_clip

    clip = generate_clip(Path(args.out), frames=args.frames, size=args.size, seed=args.seed)
    box = ",".join(str(int(v)) for v in clip.boxes[0])
    print(
        f"stylize it with: segstyle video {clip.frames_dir} --box {box} -o clip.mp4",
        file=sys.stderr,
    )
    print(clip.frames_dir)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """The offline demo: generate the dataset when missing, run ``segment_and_stylize`` on it
    with GrabCut and the feed-forward stylizer, and print where the results are."""
    from segstyle.flows.dataset import segment_and_stylize
    from segstyle_core import results
    from segstyle_core.config import (
        CompositeConfig,
        DatasetSelection,
        PromptConfig,
        SegmenterConfig,
        StylizerConfig,
    )
    from segstyle_core.demo.dataset import generate_demo_dataset
    from segstyle_core.preflight import check_run_inputs

    data = Path(args.data)
    if not (data / "leftImg8bit").is_dir():
        print(f"writing the demo dataset to {data} ...", file=sys.stderr)
        generate_demo_dataset(data, size=args.size, frames_per_city=args.frames)
    dataset = DatasetSelection(root=str(data), city=args.city, classes=args.classes)
    prompts = PromptConfig(source="gt-instances")
    segmenter = SegmenterConfig(backend="grabcut")
    stylizer = StylizerConfig(backend="feedforward")
    composite = CompositeConfig(feather_px=2.0)
    outputs = build(OUTPUT, args)
    check_run_inputs(dataset, prompts, segmenter, stylizer, outputs, composite)
    print(
        f"running segment_and_stylize on {data} (city {args.city}) with the offline backends: "
        "GrabCut segmenter, feed-forward stylizer, generated style",
        file=sys.stderr,
    )
    status = _run_flow(
        outputs.out,
        "segment_and_stylize",
        lambda: segment_and_stylize(
            dataset, prompts, segmenter, stylizer, composite, outputs, return_state=True
        ),
    )
    if status == EXIT_ERROR:
        return status
    out = Path(outputs.out).resolve()
    latest = results.read_metrics(out / "metrics").sort_values("started_at", kind="stable")
    print(f"report:  {out / 'runs' / latest['run_id'].iloc[-1] / 'report.html'}", file=sys.stderr)
    print(f"images:  {out / 'runs'}", file=sys.stderr)
    print(f"metrics: {out / 'metrics'}  (pandas.read_parquet reads the folder)", file=sys.stderr)
    return status


def _cmd_weights(args: argparse.Namespace) -> int:
    from segstyle_core import weights

    names = [args.name] if args.name else list(weights.CHECKPOINTS)
    if args.action == "download":
        for name in names:
            print(weights.download(name, args.weights_dir, url=args.url))
        return 0
    verify = args.action == "verify"
    records = weights.status(args.weights_dir, verify=verify, names=names)
    print("\n".join(weights.status_report(records, args.weights_dir)))
    return 1 if verify and not all(r.ok for r in records) else 0


def _cmd_results(args: argparse.Namespace) -> int:
    import pandas as pd

    from segstyle_core import results

    everything = results.read_metrics(args.metrics)
    if everything.empty:
        raise SegstyleError(f"{args.metrics}: the results hold no rows; run `segstyle run` first")
    # a run is its flow run id (files of old versions may only have the run's name)
    everything = everything.assign(
        _run=everything["flow_run_id"].fillna(everything["run_id"]).fillna("(unnamed)")
    )
    order = list(
        everything.sort_values("started_at", na_position="first", kind="stable")["_run"]
        .drop_duplicates(keep="last")
        .astype(str)
    )
    frame = everything
    if args.run:
        frame = everything[(everything["run_id"] == args.run) | (everything["_run"] == args.run)]
        if frame.empty:
            names = everything.drop_duplicates("_run").set_index("_run")["run_id"]
            latest = [f"{names[key]} ({key})" for key in order[-5:]]
            raise SegstyleError(
                f"{args.metrics}: no run named {args.run!r}; latest runs: {', '.join(latest)}"
            )
    chosen = next(key for key in reversed(order) if key in set(frame["_run"]))
    frame = frame[frame["_run"] == chosen].drop(columns="_run")
    partial = {run.flow_run_id: run for run in results.partial_runs(args.metrics)}
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(f"run {frame['run_id'].iloc[0]} ({chosen})")
        if chosen in partial:
            run = partial[chosen]
            how = (
                "still running"
                if run.writing
                else "interrupted before it finished; rerun the same command to resume it"
            )
            print(f"partial: {run.images} images so far ({run.parts}), {how}")
        print(results.summarize(frame).to_string(index=False))
        failed = frame[frame["status"] == "failed"][["image_id", "error"]].drop_duplicates()
        if len(failed):
            print("\nfailed images:")
            print(failed.to_string(index=False))
        if not frame["status"].eq("ok").any():
            print(f"\nno image of this run succeeded ({len(failed)} failed); fix the errors above")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every ``segstyle`` command."""
    parser = argparse.ArgumentParser(
        prog="segstyle",
        description="Stylize only the region a segmentation model selects.",
        formatter_class=_Formatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_serve_command(commands, formatter_class=_Formatter)

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=help_text, description=help_text, formatter_class=_Formatter
        )
        sub.set_defaults(handler=handler)
        return sub

    def add_run_output(sub: argparse.ArgumentParser) -> None:
        add_options(sub, OUTPUT)
        sub.add_argument("--verbose", action="store_true", help="show Prefect's logs")

    run = command("run", _cmd_run, "segment, stylize and score a Cityscapes-layout dataset")
    for group in (DATASET, PROMPTS, SEGMENTER, STYLIZER, COMPOSITE):
        add_options(run, group)
    add_run_output(run)

    evaluate = command("evaluate", _cmd_evaluate, "segment and score only, no styling")
    for group in (DATASET, PROMPTS, SEGMENTER):
        add_options(evaluate, group)
    add_run_output(evaluate)

    stylize = command(
        "stylize", _cmd_stylize, "stylize the prompted object(s) of one photo, each in its style"
    )
    stylize.add_argument("image")
    stylize.add_argument(
        "--box",
        action="append",
        default=argparse.SUPPRESS,
        help="x0,y0,x1,y1; repeatable: each box is a region, paired in order with --style",
    )
    stylize.add_argument(
        "--point",
        action="append",
        default=argparse.SUPPRESS,
        help="x,y[,1|0]; repeatable (0: background); with one --box they refine it, otherwise "
        "they are one more region",
    )
    stylize.add_argument(
        "-o", "--output", required=True, help="composite image to write (.png, .jpg, .webp)"
    )
    stylize.add_argument(
        "--quality", type=int, default=95, help="JPEG/WebP quality of the output, 1-100"
    )
    for group in (PHOTO_BOXES, SEGMENTER, STYLIZER, COMPOSITE):
        add_options(stylize, group)
    add_run_output(stylize)

    video = command("video", _cmd_video, "stylize one tracked object through a video")
    video.add_argument("video", help="video file (MP4, ...) or folder of PNG frames")
    video.add_argument("--box", required=True, help="x0,y0,x1,y1 around the object")
    video.add_argument("-o", "--output", required=True, help="result video (.mp4) or folder")
    video.add_argument(
        "--segmenter",
        choices=tuple(VIDEO_SEGMENTERS),
        default="grabcut",
        help="mask tracker: optical flow refined by GrabCut (offline), or SAM 2's video predictor",
    )
    for group in (VIDEO_TRACKER, VIDEO_STYLE, VIDEO_COMPOSITE, VIDEO):
        add_options(video, group)
    add_run_output(video)

    demo_clip = command(
        "demo-clip", _cmd_demo_clip, "write a generated clip (a car crossing a street) with GT"
    )
    demo_clip.add_argument("out")
    demo_clip.add_argument("--size", type=_size, default=(256, 128), help="WIDTHxHEIGHT")
    demo_clip.add_argument("--frames", type=int, default=24)
    demo_clip.add_argument("--seed", type=int, default=0)

    demo_data = command(
        "demo-data", _cmd_demo_data, "write a procedurally drawn Cityscapes-layout dataset"
    )
    demo_data.add_argument("out")
    demo_data.add_argument("--size", type=_size, default=(1024, 512), help="WIDTHxHEIGHT")
    demo_data.add_argument("--frames", type=int, default=6, help="annotated frames per city")
    demo_data.add_argument("--seed", type=int, default=0)

    demo = command("demo", _cmd_demo, "make the demo dataset and run the offline pipeline on it")
    demo.add_argument("--data", default="data/demo", help="where the demo dataset lives")
    demo.add_argument("--city", default="zurich")
    demo.add_argument("--classes", type=_csv, default=("car",), help="CLASS,... to stylize")
    demo.add_argument(
        "--size", type=_size, default=(1024, 512), help="WIDTHxHEIGHT of a generated dataset"
    )
    demo.add_argument("--frames", type=int, default=6, help="annotated frames per city")
    add_run_output(demo)

    weights_cmd = command(
        "weights",
        _cmd_weights,
        "list, download or verify model checkpoints (SAM, SAM 2, VGG19)",
    )
    weights_cmd.add_argument("action", choices=("status", "download", "verify"))
    weights_cmd.add_argument("name", nargs="?", default=None, help=WEIGHTS_NAME_HELP)
    weights_cmd.add_argument("--weights-dir", default=None)
    weights_cmd.add_argument("--url", default=None, help="download from a mirror instead")

    res = command("results", _cmd_results, "summarise a run from the Parquet metrics")
    res.add_argument(
        "run", nargs="?", default=None, help="run name or flow run id (default: latest)"
    )
    res.add_argument("--metrics", default="artifacts/metrics")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``segstyle`` console script."""
    args = build_parser().parse_args(argv)
    _quiet_prefect(getattr(args, "verbose", False))  # before anything imports Prefect
    try:
        return int(args.handler(args))
    except SegstyleError as exc:
        print(f"segstyle: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        from segstyle_core.errors import os_error_message

        print(f"segstyle: error: {os_error_message(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("segstyle: interrupted; finished stages are cached, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

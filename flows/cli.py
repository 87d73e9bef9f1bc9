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

from segstyle_core.errors import SegstyleError

EXIT_FAILED_IMAGES = 1
EXIT_ERROR = 2

_Formatter = argparse.ArgumentDefaultsHelpFormatter


def _csv_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use WIDTHxHEIGHT, e.g. 1024x512") from None
    return width, height


def _add_dataset_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset", default=None, help="Cityscapes root (default: $CITYSCAPES_DATASET)"
    )
    parser.add_argument("--city", default="zurich", help="city name, or 'random' (uses --seed)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--classes", type=_csv_list, default=["car"], help="comma-separated")
    parser.add_argument(
        "--prompts", default="largest", help="gt-instances | largest | auto | PATH (JSON/CSV)"
    )
    parser.add_argument("--min-area", type=int, default=100, help="smallest instance prompted")
    parser.add_argument("--limit", type=int, default=None, help="at most N frames")
    parser.add_argument("--seed", type=int, default=0)


def _add_segmenter_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--segmenter", choices=("sam", "grabcut"), default="sam")
    parser.add_argument("--sam-variant", choices=("vit_b", "vit_l", "vit_h"), default="vit_l")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument(
        "--weights-dir", default=None, help="checkpoints folder (default: $SEGSTYLE_WEIGHTS_DIR)"
    )


def _add_style_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stylizer", choices=("gatys", "feedforward"), default="gatys")
    parser.add_argument(
        "--style", default=None, help="style image (default: the generated geometric abstraction)"
    )
    parser.add_argument("--mode", choices=("object", "background"), default="object")
    parser.add_argument("--feather", type=float, default=0.0, help="soft edge in pixels")
    parser.add_argument("--preserve-color", choices=("luminance", "histogram"), default=None)
    parser.add_argument(
        "--roi-margin", type=int, default=None, help="stylize only the mask's box + margin (px)"
    )
    parser.add_argument("--strength", type=float, default=1.0, help="feed-forward style blend")
    nst = parser.add_argument_group("Gatys settings")
    nst.add_argument("--content-weight", type=float, default=1e5)
    nst.add_argument("--style-weight", type=float, default=3e4)
    nst.add_argument("--tv-weight", type=float, default=1.0)
    nst.add_argument("--height", type=int, default=400, help="working height in pixels")
    nst.add_argument("--optimizer", choices=("lbfgs", "adam"), default="lbfgs")
    nst.add_argument("--iterations", type=int, default=1000)
    nst.add_argument("--init", choices=("content", "noise", "style"), default="content")


def _nst_options(args: argparse.Namespace) -> dict[str, Any]:
    names = (
        "content_weight",
        "style_weight",
        "tv_weight",
        "height",
        "optimizer",
        "iterations",
        "init",
    )
    return {name: getattr(args, name) for name in names}


def _quiet_prefect(verbose: bool) -> None:
    """Keep Prefect's console to warnings (or errors) unless --verbose; never phone home."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")


def _run_flow(args: argparse.Namespace, call: Callable[[], Any]) -> int:
    """Run a flow against a quiet local API; print the Parquet path last; map failures."""
    from flows.server import local_api
    from segstyle_core import results

    out = Path(args.out)
    with local_api(out / "logs" / "prefect-server.log"):
        state = call()
    flow_run_id = str(state.state_details.flow_run_id)
    if state.is_completed():
        print(state.result())
        return 0
    error = state.result(raise_on_failure=False)
    print(f"segstyle: {error}", file=sys.stderr)
    parquet = results.run_file(out / "metrics", args.flow_name, flow_run_id)
    if parquet.exists():
        print(parquet)
        return EXIT_FAILED_IMAGES
    return EXIT_ERROR


def _preflight(args: argparse.Namespace, stylizer: str | None) -> None:
    """Check inputs and checkpoints before the Prefect server starts (fail in a second)."""
    from flows.params import backend_specs, style_or_default
    from segstyle_core.pipeline import check_run_inputs

    seg_spec, sty_spec = backend_specs(
        args.segmenter, args.sam_variant, stylizer, None, 1.0, args.device, args.weights_dir
    )
    style = style_or_default(args.style) if stylizer else None
    check_run_inputs(args.dataset, args.classes, args.prompts, seg_spec, sty_spec, style)


#: CLI options passed to the flows under the same names, by option group.
_DATASET_PARAMS = ("dataset", "split", "classes", "prompts", "min_area", "limit", "seed")
_SEGMENTER_PARAMS = ("segmenter", "sam_variant", "device", "weights_dir", "out")
_STYLE_PARAMS = ("stylizer", "style", "mode", "strength", "feather", "preserve_color", "roi_margin")


def _params(args: argparse.Namespace, *groups: tuple[str, ...]) -> dict[str, Any]:
    """Flow keyword arguments from the parsed options of the given groups."""
    return {name: getattr(args, name) for group in groups for name in group}


def _city(args: argparse.Namespace) -> str | None:
    return None if args.city == "random" else args.city


def _cmd_run(args: argparse.Namespace) -> int:
    from flows.dataset import segment_and_stylize

    _preflight(args, args.stylizer)
    args.flow_name = "segment_and_stylize"
    return _run_flow(
        args,
        lambda: segment_and_stylize(
            **_params(args, _DATASET_PARAMS, _SEGMENTER_PARAMS, _STYLE_PARAMS),
            city=_city(args),
            nst=_nst_options(args),
            return_state=True,
        ),
    )


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from flows.dataset import evaluate_segmentation

    _preflight(args, None)
    args.flow_name = "evaluate_segmentation"
    return _run_flow(
        args,
        lambda: evaluate_segmentation(
            **_params(args, _DATASET_PARAMS, _SEGMENTER_PARAMS), city=_city(args), return_state=True
        ),
    )


def _cmd_stylize(args: argparse.Namespace) -> int:
    from flows.params import backend_specs, style_or_default
    from flows.single import cli_prompts, stylize_image
    from segstyle_core.images import read_rgb
    from segstyle_core.segment import segmenter_identity
    from segstyle_core.stylize import stylizer_identity

    seg_spec, sty_spec = backend_specs(
        args.segmenter, args.sam_variant, args.stylizer, None, 1.0, args.device, args.weights_dir
    )
    cli_prompts(args.image, args.box or [], args.point or [])
    segmenter_identity(seg_spec)
    stylizer_identity(sty_spec)
    read_rgb(style_or_default(args.style))
    args.flow_name = "stylize_image"
    return _run_flow(
        args,
        lambda: stylize_image(
            **_params(args, _SEGMENTER_PARAMS, _STYLE_PARAMS),
            image=args.image,
            boxes=args.box or [],
            points=args.point or [],
            nst=_nst_options(args),
            output=args.output,
            return_state=True,
        ),
    )


def _cmd_video(args: argparse.Namespace) -> int:
    from flows.video import stylize_video

    args.flow_name = "stylize_video"
    return _run_flow(
        args,
        lambda: stylize_video(
            video=args.video,
            output=args.output,
            box=args.box,
            style=args.style,
            start_frame=args.start_frame,
            segmenter=args.segmenter,
            sam2_variant=args.sam2_variant,
            mode=args.mode,
            blend=args.blend,
            feather=args.feather,
            strength=args.strength,
            height=args.height,
            chunk_size=args.chunk_size,
            device=args.device,
            weights_dir=args.weights_dir,
            out=args.out,
            return_state=True,
        ),
    )


def _cmd_demo_data(args: argparse.Namespace) -> int:
    from segstyle_core.demo_data import generate_demo_dataset

    root = generate_demo_dataset(
        Path(args.out), size=args.size, frames_per_city=args.frames, seed=args.seed
    )
    print(root)
    return 0


def _cmd_demo_clip(args: argparse.Namespace) -> int:
    from segstyle_core.video.clip import generate_clip

    clip = generate_clip(Path(args.out), frames=args.frames, size=args.size, seed=args.seed)
    box = ",".join(str(int(v)) for v in clip.boxes[0])
    print(
        f"stylize it with: segstyle video {clip.frames_dir} --box {box} -o clip.mp4",
        file=sys.stderr,
    )
    print(clip.frames_dir)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from segstyle_core.demo_data import generate_demo_dataset

    data = Path(args.data)
    if not (data / "leftImg8bit").is_dir():
        print(f"writing the demo dataset to {data} ...", file=sys.stderr)
        generate_demo_dataset(data)
    print(
        f"running segment_and_stylize on {data} (city {args.city}) with the offline backends: "
        "GrabCut segmenter, feed-forward stylizer, generated style",
        file=sys.stderr,
    )
    run_args = build_parser().parse_args(
        [
            "run",
            "--dataset",
            str(data),
            "--city",
            args.city,
            "--classes",
            args.classes,
            "--prompts",
            "gt-instances",
            "--segmenter",
            "grabcut",
            "--stylizer",
            "feedforward",
            "--feather",
            "2",
            "--out",
            args.out,
            *(["--verbose"] if args.verbose else []),
        ]
    )
    status = _cmd_run(run_args)
    out = Path(args.out).resolve()
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
    missing = 0
    for entry in weights.status(args.weights_dir, verify=verify):
        if entry["name"] not in names:
            continue
        state = entry["path"] or "missing"
        missing += entry["path"] is None
        check = f" sha256 ok ({entry['sha256'][:12]}...)" if verify and entry["path"] else ""
        print(f"{entry['name']:<10} {entry['filename']:<24} {state}{check}")
    if missing:
        print(
            "fetch with: segstyle weights download NAME "
            f"(into {weights.weights_dir(args.weights_dir)})"
        )
    return 1 if verify and missing else 0


def _cmd_results(args: argparse.Namespace) -> int:
    import pandas as pd

    from segstyle_core import results

    everything = results.read_metrics(args.metrics)
    runs = everything.sort_values("started_at")["run_id"].drop_duplicates()
    if args.run:
        frame = everything[
            (everything["run_id"] == args.run) | (everything["flow_run_id"] == args.run)
        ]
        if frame.empty:
            latest = runs.tail(5)
            raise SegstyleError(
                f"{args.metrics}: no run named {args.run!r}; latest runs: {', '.join(latest)}"
            )
    else:
        frame = everything[everything["run_id"] == runs.iloc[-1]]
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(f"run {frame['run_id'].iloc[0]} ({frame['flow_run_id'].iloc[0]})")
        print(results.summarize(frame).to_string(index=False))
        failed = frame[frame["status"] == "failed"][["image_id", "error"]].drop_duplicates()
        if len(failed):
            print("\nfailed images:")
            print(failed.to_string(index=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every ``segstyle`` command."""
    parser = argparse.ArgumentParser(
        prog="segstyle",
        description="Stylize only the region a segmentation model selects.",
        formatter_class=_Formatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=help_text, description=help_text, formatter_class=_Formatter
        )
        sub.set_defaults(handler=handler)
        return sub

    def add_run_output(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--out", default="artifacts", help="outputs, cache and Parquet metrics")
        sub.add_argument("--verbose", action="store_true", help="show Prefect's logs")

    run = command("run", _cmd_run, "segment, stylize and score a Cityscapes-layout dataset")
    _add_dataset_options(run)
    _add_segmenter_options(run)
    _add_style_options(run)
    add_run_output(run)

    evaluate = command("evaluate", _cmd_evaluate, "segment and score only, no styling")
    _add_dataset_options(evaluate)
    _add_segmenter_options(evaluate)
    add_run_output(evaluate)

    stylize = command("stylize", _cmd_stylize, "stylize the prompted object of one photo")
    stylize.add_argument("image")
    stylize.add_argument("--box", action="append", help="x0,y0,x1,y1 (repeatable)")
    stylize.add_argument("--point", action="append", help="x,y[,1|0] (repeatable; 0 = background)")
    stylize.add_argument("-o", "--output", required=True, help="composite PNG to write")
    _add_segmenter_options(stylize)
    _add_style_options(stylize)
    add_run_output(stylize)

    video = command("video", _cmd_video, "stylize one tracked object through a video")
    video.add_argument("video", help="video file (MP4, ...) or folder of PNG frames")
    video.add_argument("--box", required=True, help="x0,y0,x1,y1 around the object")
    video.add_argument("--start-frame", type=int, default=0, help="frame the box is drawn on")
    video.add_argument("-o", "--output", required=True, help="result video (.mp4) or folder")
    video.add_argument(
        "--segmenter", choices=("grabcut", "sam2"), default="grabcut", help="mask tracker"
    )
    video.add_argument(
        "--sam2-variant",
        choices=("hiera_tiny", "hiera_small", "hiera_base_plus", "hiera_large"),
        default="hiera_tiny",
    )
    video.add_argument(
        "--style", default=None, help="style image (default: the generated geometric abstraction)"
    )
    video.add_argument("--mode", choices=("object", "background"), default="object")
    video.add_argument(
        "--blend", type=float, default=0.6, help="weight of the previous frame's painting"
    )
    video.add_argument("--feather", type=float, default=0.0, help="soft edge in pixels")
    video.add_argument("--strength", type=float, default=1.0, help="feed-forward style blend")
    video.add_argument("--height", type=int, default=512, help="stylizer working height (px)")
    video.add_argument("--chunk-size", type=int, default=8, help="frames per cached task")
    video.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    video.add_argument(
        "--weights-dir", default=None, help="checkpoints folder (default: $SEGSTYLE_WEIGHTS_DIR)"
    )
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
    demo.add_argument("--classes", default="car")
    add_run_output(demo)

    weights_cmd = command("weights", _cmd_weights, "list, download or verify model checkpoints")
    weights_cmd.add_argument("action", choices=("status", "download", "verify"))
    weights_cmd.add_argument("name", nargs="?", default=None, help="checkpoint (default: all)")
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
    except KeyboardInterrupt:
        print("segstyle: interrupted; finished stages are cached, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

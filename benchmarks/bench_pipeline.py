"""Naive seed method vs segstyle's optimised path: time, peak memory and Gatys objective.

Both paths warm, then the budget chosen by quality. Last line: ``speedup=<naive/optimised s>
objective_ratio=<optimised/naive> seam_ratio=<optimised/naive>``. Other modes: ``--ablation``,
``--frame-times``, ``--rss 4,16``, ``--step [--compile]``; ``benchmarks/README.md`` describes
both paths, each mode with its command line, and what quality and seam measure.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple
from unittest import mock

import numpy as np
import torch
from common import RANDOM, add_torch_options, interleaved, parse, size_pair, stopwatch, untrained
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import vgg19

from segstyle_core import cityscapes, devices, weights
from segstyle_core.composite import Layer, composite_regions
from segstyle_core.demo.dataset import generate_demo_dataset
from segstyle_core.devices import resolve_device
from segstyle_core.errors import ConfigError, WeightsError
from segstyle_core.images import read_rgb
from segstyle_core.metrics import iou
from segstyle_core.prompts.from_gt import prompts_from_instances
from segstyle_core.roi import DEFAULT_BUCKET_PX, roi_box, stylize_roi
from segstyle_core.seams import seam_score
from segstyle_core.segment import load_segmenter
from segstyle_core.segment.base import Prompt
from segstyle_core.segment.sam import PromptSegmenter, SamSegmenter
from segstyle_core.styles import style_path
from segstyle_core.stylize import Progress, objective
from segstyle_core.stylize.gatys import GatysConfig, GatysStylizer, gatys_objective
from segstyle_core.stylize.vgg import VGGFeatures, load_vgg19_features


@dataclass(frozen=True)
class Settings:
    """Problem size: demo frame ``(width, height)``, Gatys working height and budgets, SAM."""

    frame_size: tuple[int, int]
    height: int
    iterations: int
    sam_variant: str
    opt_iterations: int | None = None  # the optimised budget (default: ``iterations``)

    @property
    def scale(self) -> float:
        """The whole-frame run's scale: working height / frame height."""
        return self.height / self.frame_size[1]

    def seed(self) -> GatysConfig:
        return GatysConfig(height=self.height, iterations=self.iterations, **SEED_OPTIONS)

    def optimised(self) -> GatysConfig:
        """The performance options, the crop painted at the whole frame's scale."""
        options = PERFORMANCE_OPTIONS | {"content_scale": self.scale}
        iterations = self.opt_iterations or self.iterations
        return GatysConfig(height=self.height, iterations=iterations, **options)


SMALL = Settings(frame_size=(1024, 512), height=200, iterations=100, sam_variant="tiny")
SEED = Settings(frame_size=(2048, 1024), height=400, iterations=1000, sam_variant="vit_l")
#: ``--smoke``: the same code path in seconds (tests run it; its figures mean nothing).
SMOKE = Settings(frame_size=(256, 128), height=48, iterations=4, sam_variant="tiny")


class Frame(NamedTuple):
    """One demo frame: ``H×W×3 uint8`` image, the box prompt of its largest car and that
    car's ground-truth ``H×W bool`` mask."""

    image_id: str
    image: np.ndarray
    prompt: Prompt
    gt_mask: np.ndarray


class Inputs(NamedTuple):
    """The frames, the default style (``H×W×3 uint8``) and both models' weight files
    (``sha256 == RANDOM``: generated random weights)."""

    frames: list[Frame]
    style: np.ndarray
    vgg: weights.CheckpointFile
    sam: weights.CheckpointFile
    sam_variant: str


@dataclass(frozen=True)
class PathOptions:
    """How one path runs: Gatys settings, ROI or whole frame, models reused or reloaded."""

    config: GatysConfig
    roi: bool = True
    reload: bool = False  # load SAM and VGG for every image (so no style-target cache either)
    embedding_cache: bool = True
    bucket_px: int = DEFAULT_BUCKET_PX  # ROI crops rounded up to multiples of this (0: off)


@dataclass
class PathResult:
    """Per-image composites and masks, stage seconds, peak memory and quality of one path."""

    composites: list[np.ndarray] = field(default_factory=list)
    stylized: list[np.ndarray] = field(default_factory=list)  # what each composite was made of
    masks: list[np.ndarray] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    frame_stylize: list[tuple[float, float]] = field(default_factory=list)  # (wall, CPU) s
    one_time: float = 0.0  # seconds per image of the first pass's one-time cost (warm_up)
    evaluations: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    start_rss_mb: float = 0.0
    peak_rss_mb: float = 0.0
    peak_cuda_mb: float | None = None
    totals: list[float] = field(default_factory=list)  # quality: objective total per image
    seams: list[float] = field(default_factory=list)  # and seam score per image

    def count(self, _progress: Progress) -> None:
        """Progress callback: count Gatys objective evaluations."""
        self.evaluations += 1

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Add the block's wall seconds to ``stages[name]`` (stylize: also ``frame_stylize``)."""
        elapsed = stopwatch()
        yield
        wall, cpu = elapsed()
        self.stages[name] += wall
        if name == "stylize":
            self.frame_stylize.append((wall, cpu))


def reset_peak_rss() -> float:
    """Give freed heap back to the OS, reset the peak-RSS mark (Linux ``clear_refs`` 5) and
    return the resident set size now, in MiB."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return status_mib("VmRSS")


def status_mib(key: str) -> float:
    """``key`` of ``/proc/self/status`` in MiB (``VmHWM``: the peak since the reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status: memory figures need Linux")


def checkpoint(
    given: Path | None, flag: str, name: str, build: Callable[[], torch.nn.Module], folder: Path
) -> weights.CheckpointFile:
    """``given`` (the option ``flag``), else the downloaded official ``name``; else
    ``build()``'s random weights (seed 0) saved in ``folder`` (VGG19: a full ``vgg19()``, as
    costly to reload as the real one)."""
    if given is not None:
        return weights.own_checkpoint(given, flag)
    try:
        path = weights.find_checkpoint(name)
    except (WeightsError, ConfigError):  # not downloaded; ConfigError: none official (tiny SAM)
        random = folder / f"{name}-random.pth"
        torch.save(untrained(build).state_dict(), random)
        return weights.CheckpointFile(random, RANDOM)
    return weights.CheckpointFile(path, weights.verify_checkpoint(path, name))


def inputs(args: argparse.Namespace, settings: Settings, count: int, tmp: Path) -> Inputs:
    """``count`` demo frames, the default style and the checkpoints."""
    root = generate_demo_dataset(
        tmp / "demo", size=settings.frame_size, frames_per_city=count, cities=["zurich"]
    )
    frames = []
    for frame in cityscapes.sample_city(root, "train", "zurich").frames:
        image = read_rgb(frame.image_path)
        instances = cityscapes.load_instances(frame, ["car"], image)
        (prompt,) = prompts_from_instances(instances, mode="largest")
        mask = next(i.mask for i in instances if i.instance_id == prompt.instance_id)
        frames.append(Frame(frame.image_id, image, prompt, mask))
    variant = settings.sam_variant
    sam = partial(SamSegmenter.architecture, variant)
    sam_file = checkpoint(args.sam, "--sam", f"sam_{variant}", sam, tmp)
    vgg = checkpoint(args.vgg, "--vgg", "vgg19", vgg19, tmp)
    return Inputs(frames, read_rgb(style_path()), vgg, sam_file, variant)


def load_extractor(vgg: weights.CheckpointFile, config: GatysConfig) -> VGGFeatures:
    return load_vgg19_features(vgg.path, config.layers, config.pooling, config.normalization)


#: The seed's plain float32 run: every performance option off, no early stop.
SEED_OPTIONS: dict[str, Any] = {"autocast": None, "channels_last": False, "compile": False}
SEED_OPTIONS |= {"plateau_tol": 0.0, "coarse_fraction": 0.0}
#: The optimised path's options (GatysConfig's defaults, spelled out so that the comparison
#: stays fixed if a default changes; channels_last and compile: this machine's calibration).
PERFORMANCE_OPTIONS: dict[str, Any] = dict(autocast="auto", channels_last="auto", compile="auto")
PERFORMANCE_OPTIONS |= dict(plateau_tol=1e-3, plateau_patience=20, float32_after_plateau=False)
PERFORMANCE_OPTIONS |= dict(coarse_fraction=0.5)


#: Budget of the two short passes that measure a path's one-time cost (its coarse and fine
#: stages both run, so every crop shape's kernels are built).
WARMUP_EVALUATIONS = 4


def run_path(
    data: Inputs,
    options: PathOptions,
    device: torch.device,
    cache_dir: Path,
    keep: bool = True,
    after_image: Callable[[int], None] | None = None,
    warm_up: bool = False,
) -> PathResult:
    """Segment, stylize and composite every frame; time every stage, track peak memory.

    ``warm_up``: two short passes first, ``one_time`` = (first - second) per image.
    ``options.reload``: load both models in every image's timing, else once (timed too).
    ``keep``: keep composites, stylized frames and masks; ``after_image(n)`` after image n.
    """
    one_time = 0.0
    if warm_up:
        short = replace(options, config=options.config.changed(iterations=WARMUP_EVALUATIONS))
        cold, warm = (
            run_path(data, short, device, cache_dir / f"short{n}", keep=False) for n in range(2)
        )
        one_time = (cold.seconds - warm.seconds) / len(data.frames)
    result = PathResult(start_rss_mb=reset_peak_rss(), one_time=one_time)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elapsed = stopwatch()

    def load() -> tuple[PromptSegmenter, GatysStylizer]:
        with result.stage("load"):
            devices.MODELS.clear()  # load_segmenter would reuse the model loaded before
            cache = cache_dir if options.embedding_cache else None
            segmenter = load_segmenter("sam", data.sam_variant, data.sam, str(device), cache)
            extractor = load_extractor(data.vgg, options.config)
            return segmenter, GatysStylizer(options.config, device=str(device), extractor=extractor)

    models = None if options.reload else load()
    for index, frame in enumerate(data.frames, start=1):
        segmenter, stylizer = load() if models is None else models
        with result.stage("segment"):
            (prediction,) = segmenter.segment(frame.image, [frame.prompt])
        mask = frame.gt_mask if data.sam.sha256 == RANDOM else prediction.mask
        roi = partial(stylize_roi, stylizer, mask=mask, bucket_px=options.bucket_px)
        stylize = roi if options.roi else stylizer.stylize
        with result.stage("stylize"):
            stylized = stylize(frame.image, data.style, progress=result.count)
        with result.stage("composite"):
            final = composite_regions(frame.image, [Layer(stylized, mask)])
        if keep:
            result.composites.append(final)
            result.stylized.append(stylized)
            result.masks.append(mask)
        if after_image is not None:
            after_image(index)
    result.seconds, result.cpu_seconds = elapsed()
    result.peak_rss_mb = status_mib("VmHWM")
    if device.type == "cuda":
        result.peak_cuda_mb = torch.cuda.max_memory_allocated(device) / 2**20
    return result


HEADER = (
    f"{'path':<26}{'s/image':>9}{'cold s':>8}{'cpu s/img':>10}{'evals/img':>10}{'peak RSS MiB':>14}"
    f"{'(start)':>9}{'objective':>12}{'speedup':>9}{'cpu x':>7}{'obj ratio':>10}{'worst':>8}"
    f"{'seam':>7}{'seam ratio':>11}"
)


def row(name: str, result: PathResult, naive: PathResult) -> tuple[str, str]:
    """One table line, and ``speedup=.. objective_ratio=.. seam_ratio=..`` (of the means)."""
    total, seam = statistics.mean(result.totals), statistics.mean(result.seams)
    naive_total, naive_seam = statistics.mean(naive.totals), statistics.mean(naive.seams)
    ratio, seam_ratio = total / naive_total, seam / naive_seam
    worst = max(np.divide(result.totals, naive.totals))
    speedup, cpu_speedup = naive.seconds / result.seconds, naive.cpu_seconds / result.cpu_seconds
    count = len(result.totals)
    warm = result.seconds / count
    line = (
        f"{name:<26}{warm:9.2f}{warm + result.one_time:8.2f}{result.cpu_seconds / count:10.2f}"
        f"{result.evaluations / count:10.1f}{result.peak_rss_mb:14.0f}{result.start_rss_mb:9.0f}"
        f"{total:12.4g}{speedup:9.2f}{cpu_speedup:7.2f}{ratio:10.4f}{worst:8.4f}"
        f"{seam:7.2f}{seam_ratio:11.4f}"
    )
    if result.peak_cuda_mb is not None:
        line += f"  peak CUDA {result.peak_cuda_mb:.0f} MiB"
    return line, f"speedup={speedup:.3f} objective_ratio={ratio:.4f} seam_ratio={seam_ratio:.4f}"


def stages(name: str, result: PathResult, count: int) -> str:
    """Seconds per image of each stage, warm and cold."""
    parts = " ".join(f"{k}={v / count:.2f}" for k, v in result.stages.items())
    warm = result.seconds / count
    return (
        f"  {name}: warm_s={warm:.2f} cold_s={warm + result.one_time:.2f} "
        f"one_time_s={result.one_time:.2f}; warm seconds per image: {parts}"
    )


def banner(data: Inputs) -> None:
    """A warning when either model has random weights."""
    kinds = [n for n, file in (("VGG19", data.vgg), ("SAM", data.sam)) if file.sha256 == RANDOM]
    if kinds:
        print(
            f"{'!' * 100}\n!!! RANDOM WEIGHTS for {' and '.join(kinds)}: timings are real; SAM "
            "masks are meaningless (composites use the GT instance mask);\n!!! objectives "
            "compare both paths under the same random VGG19: like for like, not a perceptual "
            f"quality measure.\n{'!' * 100}"
        )


def compare(args: argparse.Namespace, settings: Settings, device: torch.device, tmp: Path) -> None:
    """Naive path, then the optimised path (and ablation variants); the table and last line."""
    data = inputs(args, settings, args.frames, tmp)
    frames, style = data.frames, data.style
    banner(data)
    print(
        f"device={device} threads={torch.get_num_threads()} frames={len(frames)} "
        f"frame={settings.frame_size[0]}x{settings.frame_size[1]} height={settings.height} "
        f"iterations={settings.iterations} sam={settings.sam_variant}"
    )
    naive_options = PathOptions(settings.seed(), roi=False, reload=True, embedding_cache=False)
    config = settings.optimised()
    variants = {"optimised": PathOptions(config, bucket_px=args.bucket_px)}
    if args.ablation:
        variants.update(ablation_variants(config))
    # the quality measure: seed weights, float32, at the whole-frame run's scale
    measure = settings.seed().changed(content_scale=settings.scale)
    extractor = load_extractor(data.vgg, measure).to(device)

    def box_total(frame: Frame, image: np.ndarray, mask: np.ndarray) -> float:
        """Total objective of ``image`` on ``mask``'s bounding box, ``frame``'s the content."""
        x0, y0, x1, y1 = roi_box(mask, margin_pct=0.0)
        crop = (slice(y0, y1), slice(x0, x1))
        return gatys_objective(image[crop], frame.image[crop], style, extractor, measure)["total"]

    naive = run_path(data, naive_options, device, tmp / "cache-naive", warm_up=True)
    masks = naive.masks  # the measurement region of both paths

    def measured(result: PathResult) -> PathResult:
        """``result`` with its quality: objective totals on ``masks``, seams on its own masks."""
        totals = [box_total(*each) for each in zip(frames, result.composites, masks, strict=True)]
        parts = zip(result.composites, result.stylized, result.masks, strict=True)
        result.totals, result.seams = totals, [seam_score(*part) for part in parts]
        return result

    measured(naive)
    unstylized = [box_total(f, f.image, mask) for f, mask in zip(frames, masks, strict=True)]
    print(HEADER)
    print(row("naive (seed method)", naive, naive)[0], flush=True)
    details, results, summary = [stages("naive", naive, len(frames))], {}, ""
    for name, options in variants.items():
        cache = tmp / f"cache-{name}"
        result = results[name] = run_path(data, options, device, cache, warm_up=True)
        line, ratios = row(name, measured(result), naive)
        print(line, flush=True)
        details.append(stages(name, result, len(frames)))
        if min(iou(a, b) for a, b in zip(result.masks, masks, strict=True)) < 1:
            details.append(f"  {name}: its SAM masks differ from the naive path's")
        summary = summary or ratios
    print("\n".join(details))
    print(
        f"objective of the unstylized crops (the start of both paths): "
        f"{statistics.mean(unstylized):.4g}"
    )
    if args.quality_budget:
        own = load_extractor(data.vgg, config).to(device)
        optimised = results["optimised"], GatysStylizer(config, device=str(device), extractor=own)
        quality_budget(data, naive, optimised, box_total, args.bucket_px)
    banner(data)
    print(summary)


def ablation_variants(base: GatysConfig) -> dict[str, PathOptions]:
    """The optimised path ``base`` with one thing changed each (an option off: the seed's)."""
    offs = ("autocast", "channels_last", "coarse_fraction", "plateau_tol")
    return {
        "ROI off (whole frame)": PathOptions(base.changed(content_scale=None), roi=False),
        "models reloaded": PathOptions(base, reload=True),
        "crop buckets 64 px": PathOptions(base, bucket_px=64),  # default: off
        **{f"{name} off": PathOptions(base.changed(**{name: SEED_OPTIONS[name]})) for name in offs},
        "float32 after a plateau": PathOptions(base.changed(float32_after_plateau=True)),
        "half budget": PathOptions(base.changed(iterations=base.iterations // 2)),
    }


#: Budgets (objective evaluations) tried by the quality budget, smallest first, about 25 %
#: apart (2, 4, 6, 8, 10, 12, 16, 20, 24, 32 ... 768); the optimised budget ends the list.
QUALITY_BUDGETS = (2, 4, 6, *(m * 2**e for e in range(1, 8) for m in (4, 5, 6)))


class Chosen(NamedTuple):
    """A frame's budget chosen by quality: its evaluations, stylize seconds, objective, seam."""

    budget: int
    evaluations: int
    seconds: float
    total: float
    reached: bool
    seam: float


def quality_budget(
    data: Inputs,
    naive: PathResult,
    optimised: tuple[PathResult, GatysStylizer],
    objective: Callable[[Frame, np.ndarray, np.ndarray], float],
    bucket_px: int,
) -> None:
    """Per frame, the smallest budget of :data:`QUALITY_BUDGETS` (then the optimised budget)
    whose composite's objective (on the naive path's mask) is at most the naive path's, each a
    fresh ROI run of the optimised config (its crops rounded up to ``bucket_px``, as the
    optimised path's). Prints each frame's, then ``quality_budget: ...`` (``path_speedup``:
    naive s/image over the optimised path's with its stylize stage at the chosen budget,
    composed from this run's stages)."""
    optimised_path, stylizer = optimised
    frames, style = data.frames, data.style
    count, base, naive_totals = len(frames), stylizer.config, naive.totals
    naive_s, optimised_s = (p.stages["stylize"] / count for p in (naive, optimised_path))
    budgets = [b for b in QUALITY_BUDGETS if b < base.iterations] + [base.iterations]
    chosen: list[Chosen] = []
    for frame, mask, target in zip(frames, naive.masks, naive_totals, strict=True):
        for budget in budgets:
            # One stylizer, its config swapped: the style's Gram matrices stay cached.
            stylizer.config = base.changed(iterations=budget)
            counter = PathResult()
            with counter.stage("stylize"):
                stylized = stylize_roi(
                    stylizer, frame.image, style, mask, progress=counter.count, bucket_px=bucket_px
                )
            final = composite_regions(frame.image, [Layer(stylized, mask)])
            total = objective(frame, final, mask)
            if total <= target:
                break
        seconds, seam = counter.stages["stylize"], seam_score(final, stylized, mask)
        last = Chosen(budget, counter.evaluations, seconds, total, total <= target, seam)
        chosen.append(last)
        print(
            f"  quality budget, {frame.image_id}: {'reached' if last.reached else 'NOT reached'} "
            f"at budget {last.budget} ({last.evaluations} evaluations, {last.seconds:.2f} s "
            f"stylize), objective {last.total:.4g} vs naive {target:.4g} "
            f"({last.total / target:.4f})"
        )
    seconds = statistics.mean(c.seconds for c in chosen)
    ratio = statistics.mean(c.total for c in chosen) / statistics.mean(naive_totals)
    seam_ratio = statistics.mean(c.seam for c in chosen) / statistics.mean(naive.seams)
    path_seconds = optimised_path.seconds / count - optimised_s + seconds
    print(
        f"quality_budget: reached={sum(c.reached for c in chosen)}/{len(chosen)} "
        f"evaluations/image={statistics.mean(c.evaluations for c in chosen):.1f} "
        f"(budgets {[c.budget for c in chosen]}) stylize_s/image={seconds:.2f} "
        f"stylize_speedup_vs_naive={naive_s / seconds:.2f} "
        f"vs_optimised={optimised_s / seconds:.2f} path_s/image={path_seconds:.2f} "
        f"path_speedup={naive.seconds / count / path_seconds:.2f} "
        f"objective_ratio={ratio:.4f} seam_ratio={seam_ratio:.4f}",
        flush=True,
    )


def rss(args: argparse.Namespace, settings: Settings, device: torch.device, tmp: Path) -> None:
    """The optimised path over the most images asked for (counts above 1). After each count:
    the peak RSS of the whole run (loading the models included), the peak since the first
    image was done (processing only) and the current RSS (what stays)."""
    counts = sorted(int(n) for n in args.rss.split(","))
    data = inputs(args, settings, counts[-1], tmp)
    banner(data)
    options = PathOptions(settings.optimised())
    first_image_peak = 0.0
    marks: dict[int, tuple[float, float, float]] = {}

    def record(done: int) -> None:
        nonlocal first_image_peak
        if done == 1:
            first_image_peak = status_mib("VmHWM")
            reset_peak_rss()
        if done in counts:
            processing = status_mib("VmHWM")
            marks[done] = max(first_image_peak, processing), processing, status_mib("VmRSS")
            print(
                f"after {done:3d} images: peak_rss={marks[done][0]:.0f}MiB "
                f"processing_peak_rss={processing:.0f}MiB rss={marks[done][2]:.0f}MiB",
                flush=True,
            )

    result = run_path(data, options, device, tmp / "cache", keep=False, after_image=record)
    print(f"rss before loading the models: {result.start_rss_mb:.0f}MiB")
    first, last = counts[0], counts[-1]
    ratios = np.divide(marks[last], marks[first])
    print(
        f"rss_ratio_{last}_vs_{first}: peak={ratios[0]:.4f} processing_peak={ratios[1]:.4f} "
        f"current={ratios[2]:.4f}"
    )


def frame_times(
    args: argparse.Namespace, settings: Settings, device: torch.device, tmp: Path
) -> None:
    """Stylize seconds per frame of the optimised path: a first pass (new crop shapes build
    their kernels), then the same frames again (steady). Last line: how many of frames 2..N
    of the first pass are within 10 % of their steady seconds, and the worst ratio, in CPU
    and in wall seconds."""
    data = inputs(args, settings, args.frames, tmp)
    options = PathOptions(settings.optimised(), bucket_px=args.bucket_px)
    first, steady = (
        run_path(data, options, device, tmp / f"cache{n}", keep=False).frame_stylize
        for n in range(2)
    )
    for frame, cold, warm in zip(data.frames, first, steady, strict=True):
        print(
            f"  {frame.image_id}: first={cold[0]:.2f}s (CPU {cold[1]:.2f}s) "
            f"steady={warm[0]:.2f}s (CPU {warm[1]:.2f}s)"
        )
    summary = []
    for index, clock in ((1, "cpu"), (0, "wall")):
        ratios = [a[index] / b[index] for a, b in zip(first, steady, strict=True)][1:] or [1.0]
        summary.append(
            f"{clock}_within_10pct={sum(r <= 1.1 for r in ratios)}/{len(ratios)} "
            f"{clock}_worst_ratio={max(ratios):.3f} "
            f"{clock}_first_s={sum(a[index] for a in first):.2f} "
            f"{clock}_steady_s={sum(b[index] for b in steady):.2f}"
        )
    print(f"frame_times: frames={len(data.frames)} bucket_px={args.bucket_px} {' '.join(summary)}")


def seed_styled_relu(
    x: torch.Tensor, target: torch.Tensor, weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The seed's ReLU and style term of one layer: ``gram_matrix`` with autograd's backward."""
    features = torch.relu(x)
    return features, weight * torch.sum((objective.gram_matrix(features) - target) ** 2)


def gemm_rate(dtype: torch.dtype, device: torch.device, n: int = 4096) -> float:
    """Best GFLOP/s of an ``n×n`` matrix product in ``dtype`` (the first of 4 runs warms up)."""
    a = torch.randn(n, n, device=device).to(dtype)
    (runs,) = interleaved(4, {"mm": partial(torch.mm, a, a)}, device).values()
    return max(2 * n**3 / wall / 1e9 for wall, _ in runs[1:])


def step_variants(compile_: bool) -> dict[str, tuple[GatysConfig, bool, bool]]:
    """``{name: (config, seed Gram, torch.compile)}`` for :func:`step`."""
    seed = GatysConfig(autocast=None, channels_last=False)
    variants = {"float32 autograd Gram (seed)": (seed, True, False)}
    for dtype in (None, "bfloat16"):
        for layout in (False, True):
            name = f"{dtype or 'float32'}{' channels_last' if layout else ''}"
            variants[name] = (GatysConfig(autocast=dtype, channels_last=layout), False, False)
    if compile_:
        for name in ("float32", "bfloat16 channels_last"):
            variants[f"{name} compiled"] = (variants[name][0], False, True)
    return variants


def make_evaluation(
    extractor: VGGFeatures,
    config: GatysConfig,
    content: torch.Tensor,
    style: torch.Tensor,
    seed_gram: bool,
    compiled: bool,
) -> Callable[[], tuple[float, torch.Tensor]]:
    """One objective evaluation (forward + backward to the pixels) of ``content * 0.8 + 0.1``
    against ``content``'s and ``style``'s targets; returns the total and the gradient."""
    if config.channels_last:
        extractor = extractor.to(memory_format=torch.channels_last)
    with torch.no_grad():
        style_features = objective.vgg_features(extractor, style, config)
        grams = objective.grams_of(style_features, config.style_layers)
        features = objective.vgg_features(extractor, content, config)
    targets = {name: features[name] for name in config.content_layers}
    network = torch.compile(extractor) if compiled else extractor
    image = (content * 0.8 + 0.1).requires_grad_(True)

    def evaluate() -> tuple[float, torch.Tensor]:
        image.grad = None
        seed = mock.patch.object(objective._StyledReLU, "apply", seed_styled_relu)
        with seed if seed_gram else contextlib.nullcontext():
            terms = objective.loss_terms(network, image, targets, grams, config)
            terms["total"].backward()
        assert image.grad is not None  # set by backward() (FlopCounterMode: no autograd.grad)
        return terms["total"].item(), image.grad.clone()

    return evaluate


def step(args: argparse.Namespace, _settings: Settings, device: torch.device, tmp: Path) -> None:
    """Time one objective evaluation per variant (interleaved repeats) against the floor (the
    problem size is ``--step-size``, not the settings)."""
    height, width = size_pair(args.step_size)
    vgg = checkpoint(args.vgg, "--vgg", "vgg19", vgg19, tmp)
    if vgg.sha256 == RANDOM:
        print("!!! RANDOM WEIGHTS for VGG19: timings are real; objectives are under random VGG19")
    generator = torch.Generator().manual_seed(0)
    content = torch.rand(1, 3, height, width, generator=generator).to(device)
    style = torch.rand(1, 3, height, height, generator=generator).to(device)
    runs, last = {}, {}
    for name, (config, seed_gram, compiled) in step_variants(args.compile).items():
        extractor = load_extractor(vgg, config).to(device)
        runs[name] = make_evaluation(extractor, config, content, style, seed_gram, compiled)
        elapsed = stopwatch()
        last[name] = runs[name]()  # warm-up (oneDNN primitives, compilation); deterministic
        print(f"{name:<34} first call {elapsed()[0]:.2f}s", flush=True)
    with FlopCounterMode(display=False) as counter:
        runs["float32"]()
    gflop = counter.get_total_flops() / 1e9
    times = {n: [wall for wall, _ in t] for n, t in interleaved(args.repeats, runs, device).items()}
    rates = {dtype: gemm_rate(dtype, device) for dtype in (torch.float32, torch.bfloat16)}
    print(
        f"device={device} threads={torch.get_num_threads()} image={height}x{width} "
        f"evaluation={gflop:.1f} GFLOP (FlopCounterMode: conv forward, conv backward to the "
        "input, Gram products)"
    )
    for dtype, rate in rates.items():
        print(f"{str(dtype):<15} GEMM {rate:6.0f} GFLOP/s -> floor {gflop / rate:.3f} s")
    ref_total, ref_grad = last["float32"]
    reference = min(times["float32"])
    for name, seconds in times.items():
        total, grad = last[name]
        cosine = torch.nn.functional.cosine_similarity(grad.flatten(), ref_grad.flatten(), dim=0)
        print(
            f"{name:<34} min={min(seconds):.3f}s median={statistics.median(seconds):.3f}s "
            f"ratio_vs_float32={min(seconds) / reference:.3f} "
            f"GFLOP/s={gflop / min(seconds):.0f} objective_rel_diff={total / ref_total - 1:+.2e} "
            f"grad_cosine={cosine:.5f}"
        )
    best = min(min(t) for name, t in times.items() if "bfloat16" in name)
    print(
        f"step_float32={reference:.3f}s step_bfloat16_best={best:.3f}s "
        f"float32_floor={gflop / rates[torch.float32]:.3f}s"
    )


def main() -> None:
    devices.keep_freed_memory()  # as the segstyle command does (SEGSTYLE_KEEP_FREED_MEMORY=0: not)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--seed-settings", action="store_true", help="2048x1024, 400 px, 1000 its, SAM ViT-L"
    )
    size.add_argument(
        "--smoke", action="store_true", help="256x128, 48 px, 4 its, 1 frame: the path in seconds"
    )
    parser.add_argument("--frames", type=int, default=2, help="demo frames to process")
    parser.add_argument("--height", type=int, help="Gatys working height of the whole frame")
    parser.add_argument("--iterations", type=int, help="naive L-BFGS evaluation budget")
    parser.add_argument("--opt-iterations", type=int, help="optimised budget (default: the same)")
    parser.add_argument("--frame-size", type=size_pair, help="demo frame WxH, e.g. 1024x512")
    parser.add_argument("--sam-variant", help="tiny, vit_b, vit_l or vit_h")
    parser.add_argument("--vgg", type=Path, help="VGG19 checkpoint (default: downloaded or random)")
    parser.add_argument("--sam", type=Path, help="SAM checkpoint (default: downloaded or random)")
    add_torch_options(parser)
    budget_help = "also find the smallest budget that reaches the naive objective (default: on)"
    parser.add_argument(
        "--quality-budget", action=argparse.BooleanOptionalAction, default=True, help=budget_help
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--ablation", action="store_true", help="also run one-change variants")
    mode.add_argument("--rss", metavar="N,M", help="optimised path's peak RSS after N, M images")
    mode.add_argument("--step", action="store_true", help="time one VGG19 forward+backward")
    mode.add_argument(
        "--frame-times", action="store_true", help="stylize seconds per frame, cold vs steady"
    )
    parser.add_argument(
        "--bucket-px", type=int, default=DEFAULT_BUCKET_PX, help="ROI crop bucket (0: off)"
    )
    parser.add_argument("--step-size", default="400x800", help="HxW of --step")
    parser.add_argument("--repeats", type=int, default=5, help="--step repeats")
    parser.add_argument("--compile", action="store_true", help="--step: also torch.compile")
    args = parse(parser, frames=1, repeats=1, step_size="64x128")
    base = SEED if args.seed_settings else SMOKE if args.smoke else SMALL
    given = {f.name: getattr(args, f.name) for f in fields(Settings)}  # the options given
    settings = replace(base, **{k: v for k, v in given.items() if v})
    run = step if args.step else frame_times if args.frame_times else rss if args.rss else compare
    with tempfile.TemporaryDirectory(prefix="segstyle-bench-") as tmp:
        run(args, settings, resolve_device(args.device), Path(tmp))


if __name__ == "__main__":
    main()

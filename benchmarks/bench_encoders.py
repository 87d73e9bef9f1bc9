"""SAM's image encoder in float32 vs bfloat16 autocast: time, embedding and mask agreement.

For each SAM variant (default ViT-B) and, where ``sam2`` is importable, each SAM 2 variant
(default Hiera-B+, measured first), on one generated demo frame (1024×1024, the encoders' input
size) with a box and a point prompt on each of its largest objects, through ``SamSegmenter`` /
``Sam2ImageSegmenter`` at ``precision="float32"`` vs ``"bfloat16"`` (one model object):

* the encoder's time (``set_image``, no embedding cache) and a whole ``segment`` call's, the
  minimum over interleaved repeats, wall and process CPU seconds;
* the cosine between the float32 and bfloat16 embeddings (flattened) and their largest
  difference relative to the float32 embedding's largest magnitude (SAM 2: its image
  embedding; the worst of its two high-resolution feature maps is printed too);
* the IoU between the float32 and bfloat16 mask of every prompt (mean, worst) and the largest
  difference of the predicted-IoU scores.

Without ``--sam`` SAM has RANDOM weights (seeded registry builder): timings are real and the
bf16 agreement is measured, though a trained model may be less kind to bfloat16; SAM 2 always
has random weights here. Last line, of the last SAM variant:
``encoder=<variant> time_ratio=<bf16/f32 encoder wall> cosine=<..> mask_iou=<mean>``.

    python benchmarks/bench_encoders.py                        # Hiera-B+, then ViT-B
    python benchmarks/bench_encoders.py --variants vit_l,vit_b --sam2-variants none
    python benchmarks/bench_encoders.py --smoke                # the same path in seconds
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import Sam

from segstyle_core import cityscapes, weights
from segstyle_core.demo.dataset import generate_demo_dataset
from segstyle_core.devices import native_bfloat16, resolve_device
from segstyle_core.errors import ConfigError
from segstyle_core.images import read_rgb
from segstyle_core.metrics import iou
from segstyle_core.segment import load_segmenter
from segstyle_core.segment.base import Prompt, SamPrecision, Segmenter
from segstyle_core.segment.sam import SamSegmenter
from segstyle_core.testing import build_sam_tiny

CLASSES = ("car", "person", "bicycle", "truck", "bus", "rider")
PRECISIONS: tuple[SamPrecision, ...] = ("float32", "bfloat16")
RANDOM = "random-weights"


def make_inputs(size: tuple[int, int], out: Path, count: int) -> tuple[np.ndarray, list[Prompt]]:
    """One demo frame and prompts on its ``count`` largest objects: for each, its box, and one
    foreground point at its innermost pixel (ties: the first)."""
    root = generate_demo_dataset(out, size=size, frames_per_city=1, cities=["zurich"])
    frame = cityscapes.sample_city(root, "train", "zurich").frames[0]
    image = read_rgb(frame.image_path)
    instances = []
    for name in CLASSES:
        try:
            instances += cityscapes.load_instances(frame, [name], image)
        except ConfigError:  # no instance of that class in this frame
            continue
    instances = sorted(instances, key=lambda i: -i.area)[:count]
    prompts = []
    for instance in instances:
        prompts.append(Prompt(box=instance.box))
        depth = cv2.distanceTransform(instance.mask.astype(np.uint8), cv2.DIST_L2, 3)
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        prompts.append(Prompt(points=((float(x), float(y)),), point_labels=(1,)))
    return image, prompts


def build(variant: str, checkpoint: Path | None, device: torch.device) -> tuple[Sam, str]:
    """The model (checkpoint, or random weights seeded with 0; ``tiny``: the tests' tiny SAM)
    and its weights' label."""
    if variant == "tiny":
        return build_sam_tiny().eval().to(device), RANDOM
    if checkpoint is not None:
        file = weights.own_checkpoint(checkpoint, "--checkpoint")
        return load_segmenter("sam", variant, file, str(device)).model, checkpoint.name
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = sam_model_registry[variant]()
    return model.eval().to(device), RANDOM


def segmenters(
    family: str, variant: str, checkpoint: Path | None, device: torch.device
) -> tuple[dict[str, Segmenter], str]:
    """``{precision: segmenter}`` on one model of ``family`` (``SAM``: :func:`build`; ``SAM 2``:
    random weights, seed 0), and the weights' label."""
    if family == "SAM":
        model, label = build(variant, checkpoint, device)
        kind: type = SamSegmenter
    else:
        from segstyle_core.segment.sam2_image import Sam2ImageSegmenter

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, label = Sam2ImageSegmenter.architecture(variant).eval().to(device), RANDOM
        kind = Sam2ImageSegmenter
    return {p: kind(model, variant, label, precision=p) for p in PRECISIONS}, label


def embeddings(segmenter: Segmenter) -> list[torch.Tensor]:
    """The image embedding the segmenter's predictor holds (SAM 2: then its two
    high-resolution feature maps), each flattened to float32."""
    predictor = segmenter._predictor  # type: ignore[attr-defined]
    if hasattr(predictor, "features"):  # SAM
        maps = [predictor.features]
    else:  # SAM 2
        maps = [predictor._features["image_embed"], *predictor._features["high_res_feats"]]
    return [m.detach().float().flatten() for m in maps]


def encode(segmenter: Segmenter, image: np.ndarray, device: torch.device) -> None:
    """The image encoder alone (``set_image`` on ``H×W×3 uint8``), synchronised on CUDA."""
    with torch.inference_mode():
        segmenter._predictor.set_image(image)  # type: ignore[attr-defined]
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(repeats: int, calls: dict[str, Callable[[], object]]) -> dict[str, tuple[float, float]]:
    """``{name: (min wall s, min CPU s)}`` over ``repeats`` interleaved rounds (a load change on
    a shared machine hits every call alike)."""
    best = {name: (math.inf, math.inf) for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            call()
            seconds = time.perf_counter() - start, time.process_time() - cpu_start
            best[name] = (min(best[name][0], seconds[0]), min(best[name][1], seconds[1]))
    return best


def measure(
    family: str,
    variant: str,
    segmenters: dict[str, Segmenter],
    label: str,
    image: np.ndarray,
    prompts: list[Prompt],
    device: torch.device,
    repeats: int,
) -> str:
    """Print one variant's figures; return its summary line."""
    for segmenter in segmenters.values():  # warm-up: oneDNN primitives for both dtypes
        segmenter.segment(image, prompts[:1])

    calls: dict[str, Callable[[], object]] = {}
    for precision, segmenter in segmenters.items():
        calls[f"encoder {precision}"] = partial(encode, segmenter, image, device)
        calls[f"segment {precision}"] = partial(segmenter.segment, image, prompts)
    times = best_of(repeats, calls)

    high, low = (segmenters[p].segment(image, prompts) for p in PRECISIONS)
    pairs = list(zip(*(embeddings(segmenters[p]) for p in PRECISIONS), strict=True))
    cosines = [float(torch.nn.functional.cosine_similarity(a, b, dim=0)) for a, b in pairs]
    max_rels = [float((a - b).abs().max() / a.abs().max()) for a, b in pairs]
    cosine, max_rel = cosines[0], max_rels[0]
    masks = list(zip(high, low, strict=True))
    ious = [iou(a.mask, b.mask) for a, b in masks]
    scores = max(abs(a.score - b.score) for a, b in masks)
    areas = [int(a.mask.sum()) for a, _ in masks]
    differing = [int((a.mask != b.mask).sum()) for a, b in masks]

    print(
        f"--- {family} {variant} ({label}), {len(prompts)} prompts, image {image.shape[1]}x"
        f"{image.shape[0]}"
    )
    for name, (wall, cpu) in times.items():
        print(f"  {name:<18} wall {wall:7.3f} s   CPU {cpu:7.3f} s")
    ratio = times["encoder bfloat16"][0] / times["encoder float32"][0]
    cpu_ratio = times["encoder bfloat16"][1] / times["encoder float32"][1]
    call_ratio = times["segment bfloat16"][0] / times["segment float32"][0]
    print(
        f"  encoder bf16/f32: wall {ratio:.3f} CPU {cpu_ratio:.3f}; whole segment call "
        f"{call_ratio:.3f}"
    )
    print(f"  embedding: cosine {cosine:.6f}, max |diff| / max |f32| {max_rel:.4f}")
    if len(cosines) > 1:
        print(
            f"  high-resolution features: worst cosine {min(cosines[1:]):.6f}, worst max |diff| "
            f"/ max |f32| {max(max_rels[1:]):.4f}"
        )
    print(
        f"  masks: IoU mean {statistics.mean(ious):.4f} worst {min(ious):.4f} "
        f"({sum(i == 1.0 for i in ious)} of {len(ious)} identical); "
        f"max |score diff| {scores:.4f}; f32 mask areas {min(areas)}..{max(areas)} px, "
        f"pixels differing {min(differing)}..{max(differing)}"
    )
    return (
        f"encoder={variant} time_ratio={ratio:.3f} cosine={cosine:.5f} "
        f"mask_iou={statistics.mean(ious):.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants", default="vit_b", help="comma-separated SAM variants; none: skip"
    )
    parser.add_argument(
        "--sam2-variants",
        default="hiera_base_plus",
        help="comma-separated SAM 2 variants, measured first where sam2 is importable; none: skip",
    )
    parser.add_argument("--sam", type=Path, help="checkpoint of the (single) variant")
    parser.add_argument("--frame-size", default="1024x1024", help="demo frame WxH")
    parser.add_argument("--objects", type=int, default=8, help="objects prompted (box + point)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="the tiny SAM and SAM 2 Hiera-T on a 256x256 frame, 2 objects, 1 repeat",
    )
    args = parser.parse_args()
    if args.smoke:
        args.variants, args.sam2_variants, args.frame_size = "tiny", "hiera_tiny", "256x256"
        args.objects, args.repeats = 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [v for v in args.variants.split(",") if v and v != "none"]
    if args.sam is not None and len(variants) != 1:
        parser.error("--sam needs exactly one variant")
    device = resolve_device(args.device)
    size = tuple(int(v) for v in args.frame_size.split("x"))
    print(
        f"device={device} threads={torch.get_num_threads()} "
        f"native_bfloat16={native_bfloat16(device)} torch={torch.__version__}"
    )
    if args.sam is None:
        print("!!! RANDOM WEIGHTS: timings are real; masks are arbitrary (their agreement is not)")
    with tempfile.TemporaryDirectory(prefix="segstyle-bench-") as tmp:
        image, prompts = make_inputs((size[0], size[1]), Path(tmp), args.objects)
    sam2_variants = [v for v in args.sam2_variants.split(",") if v and v != "none"]
    if sam2_variants and importlib.util.find_spec("sam2") is None:
        print("sam2: the package is not importable here; SAM 2's image encoder is not measured")
        sam2_variants = []
    summary = ""
    for family, variant in [("SAM 2", v) for v in sam2_variants] + [("SAM", v) for v in variants]:
        pair, label = segmenters(family, variant, args.sam, device)
        summary = measure(family, variant, pair, label, image, prompts, device, args.repeats)
        if family == "SAM 2":
            print(summary)
        del pair
    print(summary)


if __name__ == "__main__":
    main()

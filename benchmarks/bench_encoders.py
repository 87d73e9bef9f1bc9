"""SAM's image encoder in float32 vs bfloat16 autocast: time, embedding and mask agreement.

Per SAM 2 variant (where ``sam2`` imports), then SAM variant, on one demo frame with a box and a
point prompt on each of its largest objects: the encoder's and a whole ``segment`` call's
minimum seconds over interleaved repeats, embedding cosine and relative difference, each mask's
IoU and score difference. Weights are RANDOM (seed 0) unless ``--sam`` gives SAM's. Last line,
of the last SAM variant: ``encoder=<variant> time_ratio=<bf16/f32 encoder wall> cosine=<..>
mask_iou=<mean>``. ``benchmarks/README.md`` gives command lines and results.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
from common import RANDOM, add_torch_options, interleaved, parse, size_pair, untrained

from segstyle_core import cityscapes, weights
from segstyle_core.demo.dataset import generate_demo_dataset
from segstyle_core.devices import native_bfloat16, resolve_device
from segstyle_core.images import read_rgb
from segstyle_core.metrics import iou
from segstyle_core.segment import load_segmenter
from segstyle_core.segment.base import Prompt, SamPrecision, Segmenter
from segstyle_core.segment.sam import SamSegmenter
from segstyle_core.segment.sam2_image import Sam2ImageSegmenter

CLASSES = ("car", "person", "bicycle", "truck", "bus", "rider")
PRECISIONS: tuple[SamPrecision, ...] = ("float32", "bfloat16")


def make_inputs(size: tuple[int, int], out: Path, count: int) -> tuple[np.ndarray, list[Prompt]]:
    """One demo frame and prompts on its ``count`` largest objects: for each, its box, and one
    foreground point at its innermost pixel (ties: the first)."""
    root = generate_demo_dataset(out, size=size, frames_per_city=1, cities=["zurich"])
    frame = cityscapes.sample_city(root, "train", "zurich").frames[0]
    image = read_rgb(frame.image_path)
    instances = cityscapes.load_instances(frame, list(CLASSES), image)
    instances.sort(key=lambda i: (-i.area, CLASSES.index(i.class_name)))
    prompts = []
    for instance in instances[:count]:
        prompts.append(Prompt(box=instance.box))
        depth = cv2.distanceTransform(instance.mask.astype(np.uint8), cv2.DIST_L2, 3)
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        prompts.append(Prompt(points=((float(x), float(y)),), point_labels=(1,)))
    return image, prompts


def segmenters(
    family: str, variant: str, checkpoint: Path | None, device: torch.device
) -> tuple[dict[str, Segmenter], str]:
    """``{precision: segmenter}`` on one model of ``family`` (``SAM``: ``checkpoint`` if given)
    and the weights' label."""
    kind = SamSegmenter if family == "SAM" else Sam2ImageSegmenter
    if family == "SAM" and checkpoint is not None:
        file = weights.own_checkpoint(checkpoint, "--sam")
        model, label = load_segmenter("sam", variant, file, str(device)).model, checkpoint.name
    else:
        model, label = untrained(partial(kind.architecture, variant)), RANDOM
    model = model.eval().to(device)
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


def encode(segmenter: Segmenter, image: np.ndarray) -> None:
    """The image encoder alone (``set_image`` on ``H×W×3 uint8``)."""
    with torch.inference_mode():
        segmenter._predictor.set_image(image)  # type: ignore[attr-defined]


def measure(
    family: str, variant: str, image: np.ndarray, prompts: list[Prompt], args: argparse.Namespace
) -> str:
    """Print one variant's figures; return its summary line."""
    device = resolve_device(args.device)
    pair, label = segmenters(family, variant, args.sam, device)
    for segmenter in pair.values():  # warm-up: oneDNN primitives for both dtypes
        segmenter.segment(image, prompts[:1])

    calls: dict[str, Callable[[], object]] = {}
    for precision, segmenter in pair.items():
        calls[f"encoder {precision}"] = partial(encode, segmenter, image)
        calls[f"segment {precision}"] = partial(segmenter.segment, image, prompts)
    times = {  # name -> the minimum (wall, CPU) seconds
        name: np.array(runs).min(axis=0)
        for name, runs in interleaved(args.repeats, calls, device).items()
    }

    high, low = (pair[p].segment(image, prompts) for p in PRECISIONS)
    maps = list(zip(*(embeddings(pair[p]) for p in PRECISIONS), strict=True))
    cosines = [float(torch.nn.functional.cosine_similarity(a, b, dim=0)) for a, b in maps]
    max_rels = [float((a - b).abs().max() / a.abs().max()) for a, b in maps]
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
    ratio, cpu_ratio = times["encoder bfloat16"] / times["encoder float32"]
    call_ratio = times["segment bfloat16"][0] / times["segment float32"][0]
    print(
        f"  encoder bf16/f32: wall {ratio:.3f} CPU {cpu_ratio:.3f}; whole segment call "
        f"{call_ratio:.3f}"
    )
    print(f"  embedding: cosine {cosines[0]:.6f}, max |diff| / max |f32| {max_rels[0]:.4f}")
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
        f"encoder={variant} time_ratio={ratio:.3f} cosine={cosines[0]:.5f} "
        f"mask_iou={statistics.mean(ious):.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="vit_b", help="SAM variants, a,b (none: skip)")
    parser.add_argument(
        "--sam2-variants",
        default="hiera_base_plus",
        help="SAM 2 variants, a,b, measured first where sam2 is importable (none: skip)",
    )
    parser.add_argument("--sam", type=Path, help="checkpoint of the (single) variant")
    parser.add_argument("--frame-size", default="1024x1024", help="demo frame WxH")
    parser.add_argument("--objects", type=int, default=8, help="objects prompted (box + point)")
    parser.add_argument("--repeats", type=int, default=3)
    add_torch_options(parser)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="the tiny SAM and SAM 2 Hiera-T on a 256x256 frame, 2 objects, 1 repeat",
    )
    smoke = {"variants": "tiny", "sam2_variants": "hiera_tiny", "frame_size": "256x256"}
    args = parse(parser, **smoke, objects=2, repeats=1)
    variants, sam2_variants = (
        [v for v in text.split(",") if v and v != "none"]
        for text in (args.variants, args.sam2_variants)
    )
    if args.sam is not None and len(variants) != 1:
        parser.error("--sam needs exactly one variant")
    device = resolve_device(args.device)
    print(
        f"device={device} threads={torch.get_num_threads()} "
        f"native_bfloat16={native_bfloat16(device)} torch={torch.__version__}"
    )
    if args.sam is None:
        print("!!! RANDOM WEIGHTS: timings are real; masks are arbitrary (their agreement is not)")
    with tempfile.TemporaryDirectory(prefix="segstyle-bench-") as tmp:
        image, prompts = make_inputs(size_pair(args.frame_size), Path(tmp), args.objects)
    if sam2_variants and importlib.util.find_spec("sam2") is None:
        print("sam2: the package is not importable here; SAM 2's image encoder is not measured")
        sam2_variants = []
    for family, variant in [("SAM 2", v) for v in sam2_variants] + [("SAM", v) for v in variants]:
        print(measure(family, variant, image, prompts, args))


if __name__ == "__main__":
    main()

"""Time SamSegmenter.segment() with 1 box prompt vs 16 box prompts on one image.

Each timed call includes its own image-encoder pass (no embedding cache), so the ratio shows
what batching the prompt decoding costs on top of the encoder. The same calls are also timed
with the embedding cached (decode only), which is robust to a noisy shared CPU. Target with a
real ViT-B: ``ratio_16_vs_1 <= 1.2``.

    python benchmarks/bench_sam_prompts.py                       # tiny random SAM (plumbing only)
    python benchmarks/bench_sam_prompts.py --variant vit_b --checkpoint sam_vit_b_01ec64.pth
    python benchmarks/bench_sam_prompts.py --variant vit_b --random-weights  # timing only
    python benchmarks/bench_sam_prompts.py --smoke                      # seconds, same path
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from segment_anything import sam_model_registry

from segstyle_core import weights
from segstyle_core.devices import resolve_device
from segstyle_core.segment import load_segmenter
from segstyle_core.segment.base import Prompt
from segstyle_core.segment.sam import PromptSegmenter, SamSegmenter
from segstyle_core.testing import build_sam_tiny


def make_segmenters(
    args: argparse.Namespace, cache_dir: Path
) -> tuple[PromptSegmenter, PromptSegmenter]:
    """Two segmenters over one model, without and with an embedding cache in ``cache_dir``: the
    tiny random SAM, an official architecture with untrained weights (``--random-weights``),
    or an official variant loaded from ``--checkpoint``."""
    variant, caches = args.variant, (None, cache_dir)
    if variant != "tiny" and not args.random_weights:
        checkpoint = weights.resolve_checkpoint(args.checkpoint, "--checkpoint", f"sam_{variant}")
        pair = [load_segmenter("sam", variant, checkpoint, args.device, c) for c in caches]
    else:
        device = resolve_device(args.device)
        model = build_sam_tiny() if variant == "tiny" else sam_model_registry[variant]().to(device)
        pair = [
            SamSegmenter(model, variant, "random-weights", embedding_cache_dir=c) for c in caches
        ]
    return pair[0], pair[1]


def random_boxes(count: int, width: int, height: int, seed: int = 0) -> list[Prompt]:
    """``count`` XYXY box prompts inside a ``width×height`` image."""
    rng = np.random.default_rng(seed)
    corners = rng.uniform(0, 1, (count, 2, 2)) * (width, height)
    return [Prompt(box=(*pair.min(axis=0), *pair.max(axis=0))) for pair in corners]


def time_segment(
    segmenter: PromptSegmenter, image: np.ndarray, prompts: list[Prompt], repeats: int
) -> float:
    """Median seconds of ``segmenter.segment(image, prompts)`` over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        segmenter.segment(image, prompts)
        if segmenter.device.type == "cuda":
            torch.cuda.synchronize(segmenter.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="tiny", help="tiny, vit_b, vit_l or vit_h")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint file for an official variant")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="official architecture with untrained weights (timing only, masks meaningless)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny SAM, 256x128, 1 repeat: the path in seconds"
    )
    args = parser.parse_args()
    if args.smoke:
        args.variant, args.height, args.width, args.repeats = "tiny", 128, 256, 1
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as cache_dir:
        segmenter, cached = make_segmenters(args, Path(cache_dir))
        image = np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3), np.uint8)
        one = random_boxes(1, args.width, args.height)
        sixteen = random_boxes(16, args.width, args.height)
        cached.segment(image, one)  # warm-up, fills the embedding cache
        t1, t16, d1, d16 = (  # with the encoder, then decode only
            time_segment(s, image, p, args.repeats)
            for s in (segmenter, cached)
            for p in (one, sixteen)
        )
    random = segmenter.weights_sha256 == "random-weights"
    kind = "random weights, timing only" if random else "checkpoint"
    size = f"{args.width}x{args.height}"
    print(f"variant={segmenter.variant} ({kind}) device={segmenter.device} image={size}")
    print(f"with encoder: seconds_1_prompt={t1:.4f} seconds_16_prompts={t16:.4f}")
    print(f"cached embedding (decode only): seconds_1_prompt={d1:.4f} seconds_16_prompts={d16:.4f}")
    print(f"ratio_16_vs_1={t16 / t1:.3f}")


if __name__ == "__main__":
    main()

"""Time SamSegmenter.segment() with 1 box prompt vs 16 box prompts on one image.

Each call runs its own image-encoder pass (no embedding cache), so the ratio is what batching
the prompt decoding costs on top of the encoder; the same calls with the embedding cached
(decode only) are printed too. Target with a real ViT-B: ``ratio_16_vs_1 <= 1.2``.

    python benchmarks/bench_sam_prompts.py                       # tiny random SAM (plumbing only)
    python benchmarks/bench_sam_prompts.py --variant vit_b --checkpoint sam_vit_b_01ec64.pth
    python benchmarks/bench_sam_prompts.py --variant vit_b --random-weights  # timing only
    python benchmarks/bench_sam_prompts.py --smoke                      # seconds, same path
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
from common import RANDOM, add_torch_options, interleaved, parse, untrained

from segstyle_core import weights
from segstyle_core.devices import resolve_device
from segstyle_core.segment import load_segmenter
from segstyle_core.segment.base import Prompt
from segstyle_core.segment.sam import PromptSegmenter, SamSegmenter


def make_segmenters(args: argparse.Namespace, cache_dir: Path) -> list[PromptSegmenter]:
    """Two segmenters over one model, without and with an embedding cache in ``cache_dir``:
    untrained (the tiny SAM, ``--random-weights``), else from ``--checkpoint`` or downloaded."""
    caches = (None, cache_dir)
    if args.variant != "tiny" and not args.random_weights:
        file = weights.resolve_checkpoint(args.checkpoint, "--checkpoint", f"sam_{args.variant}")
        return [load_segmenter("sam", args.variant, file, args.device, c) for c in caches]
    device = resolve_device(args.device)
    model = untrained(partial(SamSegmenter.architecture, args.variant)).to(device)
    return [SamSegmenter(model, args.variant, RANDOM, embedding_cache_dir=c) for c in caches]


def random_boxes(count: int, width: int, height: int) -> list[Prompt]:
    """``count`` XYXY box prompts inside a ``width×height`` image (seed 0)."""
    corners = np.random.default_rng(0).uniform(0, 1, (count, 2, 2)) * (width, height)
    return [Prompt(box=(*pair.min(axis=0), *pair.max(axis=0))) for pair in corners]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="tiny", help="tiny, vit_b, vit_l or vit_h")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint file for an official variant")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="official architecture with untrained weights (timing only, masks meaningless)",
    )
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    add_torch_options(parser)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny SAM, 256x128, 1 repeat: the path in seconds"
    )
    args = parse(parser, variant="tiny", height=128, width=256, repeats=1)
    with tempfile.TemporaryDirectory() as cache_dir:
        segmenter, cached = make_segmenters(args, Path(cache_dir))
        image = np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3), np.uint8)
        prompts = {n: random_boxes(n, args.width, args.height) for n in (1, 16)}
        cached.segment(image, prompts[1])  # warm-up, fills the embedding cache
        calls = {
            f"{name} {n}": partial(s.segment, image, p)  # with the encoder, then decode only
            for name, s in (("encoder", segmenter), ("decode", cached))
            for n, p in prompts.items()
        }
        times = interleaved(args.repeats, calls, segmenter.device)
    t1, t16, d1, d16 = (statistics.median(wall for wall, _ in t) for t in times.values())
    kind = "random weights, timing only" if segmenter.weights_sha256 == RANDOM else "checkpoint"
    size = f"{args.width}x{args.height}"
    print(f"variant={segmenter.variant} ({kind}) device={segmenter.device} image={size}")
    print(f"with encoder: seconds_1_prompt={t1:.4f} seconds_16_prompts={t16:.4f}")
    print(f"cached embedding (decode only): seconds_1_prompt={d1:.4f} seconds_16_prompts={d16:.4f}")
    print(f"ratio_16_vs_1={t16 / t1:.3f}")


if __name__ == "__main__":
    main()

"""The paper's figures 4–7 as ``H×W×3 uint8 RGB`` arrays, drawn with Pillow (masks ``H×W bool``,
boxes XYXY in image pixels): prompts on masks, mask overlays, panels."""

from __future__ import annotations

import colorsys
import math
from collections.abc import Mapping, Sequence

import numpy as np
from cityscapesscripts.helpers.labels import labels
from PIL import Image, ImageDraw, ImageFont

from segstyle_core.composite import resize_to
from segstyle_core.errors import InputError
from segstyle_core.images import check_rgb, check_same_size
from segstyle_core.segment.base import Prompt

RGB = tuple[int, int, int]

BOX_COLOR: RGB = (30, 144, 255)
FOREGROUND_COLOR: RGB = (0, 200, 0)
BACKGROUND_COLOR: RGB = (230, 0, 0)
_WHITE: RGB = (255, 255, 255)  # the dots' rims and the paper
_INK: RGB = (20, 20, 20)

SCORE_LABELS = {"iou": "IoU", "dice": "Dice"}  # caption labels; other keys show as named

# Label id -> table colour; ids not in the table (and license plate, id -1) stay black (void).
_LABEL_COLORS = np.zeros((256, 3), dtype=np.uint8)
_TABLE_COLORS = {label.id: label.color for label in labels if label.id >= 0}
_LABEL_COLORS[list(_TABLE_COLORS)] = list(_TABLE_COLORS.values())


def mask_to_rgb(mask: np.ndarray) -> np.ndarray:
    """``H×W bool`` mask -> ``H×W×3 uint8``: white inside, black outside."""
    return np.repeat(np.where(mask, 255, 0).astype(np.uint8)[..., None], 3, axis=2)


def label_ids_to_rgb(label_ids: np.ndarray) -> np.ndarray:
    """``H×W`` integer labelIds map -> ``H×W×3 uint8`` as a ``*_gtFine_color.png`` (ids not in
    the label table: black); InputError for another array or values outside 0..255."""
    integers = label_ids.ndim == 2 and np.issubdtype(label_ids.dtype, np.integer)
    if not integers or (label_ids.size and not 0 <= label_ids.min() <= label_ids.max() <= 255):
        raise InputError(
            f"label map of shape {label_ids.shape}, dtype {label_ids.dtype} is not an H×W map of "
            "label ids 0..255; pass a *_gtFine_labelIds.png, not an instanceIds map"
        )
    return _LABEL_COLORS[label_ids]


def draw_prompts(image: np.ndarray, prompts: Sequence[Prompt]) -> np.ndarray:
    """A copy of ``image`` (``H×W×3 uint8``) with boxes as blue rectangles and points as dots
    with a white rim, green for foreground (label 1), red for background (label 0)."""
    canvas = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(min(image.shape[:2]) / 150))  # still visible in a ~256 px panel
    radius = 2 * width + 1
    for prompt in prompts:
        if prompt.box is not None:
            draw.rectangle(prompt.box, outline=BOX_COLOR, width=width)
        for (x, y), label in zip(prompt.points, prompt.point_labels, strict=True):
            fill = FOREGROUND_COLOR if label == 1 else BACKGROUND_COLOR
            draw.circle((x, y), radius, fill=fill, outline=_WHITE, width=max(1, width // 2))
    return np.asarray(canvas, dtype=np.uint8)


def overlay_masks(
    image: np.ndarray, masks: Sequence[np.ndarray], alpha: float = 0.5, seed: int = 0
) -> np.ndarray:
    """Automatic masks (``H×W bool``) over ``image`` (``H×W×3 uint8``), larger first, in hues a
    golden ratio apart from a ``seed``ed start: covered pixels are ``(1 - alpha) * image + alpha *
    colour``. InputError: a mask's size differs from the image's, or ``alpha`` is outside [0, 1]."""
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha={alpha}: must be in [0, 1]; 0.5 shows image and colour equally")
    layer = np.zeros(image.shape, dtype=np.float32)
    covered = np.zeros(image.shape[:2], dtype=bool)
    hues = np.random.default_rng(seed).random() + np.arange(len(masks)) * ((math.sqrt(5) - 1) / 2)
    hsv = [colorsys.hsv_to_rgb(hue, 0.8, 0.95) for hue in (hues % 1.0).tolist()]
    colors = [tuple(round(c * 255) for c in rgb) for rgb in hsv]
    for index in sorted(range(len(masks)), key=lambda i: -int(np.count_nonzero(masks[i]))):
        mask = masks[index].astype(bool)
        check_same_size(image, mask, f"automatic mask {index}", "overlay_masks")
        layer[mask] = colors[index]
        covered |= mask
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * layer
    return np.where(covered[..., None], np.rint(blended), image).astype(np.uint8)


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> list[str]:
    """Greedy word wrap of ``text`` to lines no wider than ``width`` pixels."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def panel(
    tiles: Sequence[tuple[str, np.ndarray]],
    caption: str,
    columns: int = 3,
    tile_height: int = 256,
) -> np.ndarray:
    """``H×W×3 uint8``: titled tiles (``h×w×3 uint8``) scaled to ``tile_height`` rows, centred in
    cells as wide as the widest, ``columns`` per row, the caption wrapped underneath. InputError:
    no tiles, a tile not ``h×w×3 uint8``, or ``columns``/``tile_height`` < 1."""
    if not tiles or columns < 1 or tile_height < 1:
        raise InputError(
            f"panel of {len(tiles)} tiles, columns={columns}, tile_height={tile_height}: "
            "pass at least one tile and positive sizes"
        )
    scaled = []
    for title, tile in tiles:
        check_rgb(tile, f"panel tile {title!r}", "render masks with mask_to_rgb")
        tile_width = max(1, round(tile.shape[1] * tile_height / tile.shape[0]))
        scaled.append((title, resize_to(tile, (tile_height, tile_width))))
    font = ImageFont.load_default(size=max(10, tile_height // 16))
    line = round(font.size * 1.4) if isinstance(font, ImageFont.FreeTypeFont) else 14
    gap = max(4, tile_height // 32)
    cell_w = max(tile.shape[1] for _, tile in scaled)
    cell_h = line + tile_height
    cols = min(columns, len(scaled))
    rows = math.ceil(len(scaled) / cols)
    width = cols * cell_w + (cols + 1) * gap
    caption_lines = _wrap(caption, font, width - 2 * gap) if caption else []
    height = rows * (cell_h + gap) + gap + len(caption_lines) * line + (gap if caption else 0)
    canvas = Image.new("RGB", (width, height), _WHITE)
    draw = ImageDraw.Draw(canvas)
    for index, (title, tile) in enumerate(scaled):
        row, col = divmod(index, cols)
        x = gap + col * (cell_w + gap)
        y = gap + row * (cell_h + gap)
        draw.text((x + cell_w / 2, y + line / 2), title, fill=_INK, font=font, anchor="mm")
        canvas.paste(Image.fromarray(tile), (x + (cell_w - tile.shape[1]) // 2, y + line))
    top = gap + rows * (cell_h + gap)
    for number, text in enumerate(caption_lines):
        draw.text((gap, top + number * line), text, fill=_INK, font=font)
    return np.asarray(canvas, dtype=np.uint8)


def format_scores(scores: Mapping[str, float | None]) -> str:
    """``{"iou": 0.8351, "dice": 0.91}`` -> ``"IoU 0.835 · Dice 0.910"``; missing/NaN -> ``n/a``."""
    texts = ("n/a" if v is None or not math.isfinite(v) else f"{v:.3f}" for v in scores.values())
    return " · ".join(f"{SCORE_LABELS.get(k, k)} {t}" for k, t in zip(scores, texts, strict=True))


def image_panel(
    original: np.ndarray,
    gt_color: np.ndarray | None,
    gt_binary: np.ndarray | None,
    pred_mask: np.ndarray,
    prompts: Sequence[Prompt],
    stylized: np.ndarray | None,
    composite: np.ndarray | None,
    scores: Mapping[str, float | None] | None,
    auto_masks: Sequence[np.ndarray] | None = None,
    title: str = "",
    columns: int = 3,
    tile_height: int = 256,
) -> np.ndarray:
    """One image's figures as one :func:`panel` (a ``None`` tile left out) captioned ``title``
    and ``scores``. ``original``/``composite``: ``H×W×3 uint8``; ``gt_color``: ``H×W×3 uint8``
    or ``H×W`` integer labelIds; ``gt_binary``, ``pred_mask`` (``prompts`` drawn on it) and
    ``auto_masks``: ``H×W bool``; ``stylized``: any size. InputError: a ground truth or mask
    whose size differs from ``original``'s."""
    tiles: list[tuple[str, np.ndarray]] = [("original", original)]
    if gt_color is not None:
        check_same_size(original, gt_color, "colour ground truth", "image_panel")
        shown = label_ids_to_rgb(gt_color) if gt_color.ndim == 2 else gt_color
        tiles.append(("ground truth", shown))
    if gt_binary is not None:
        check_same_size(original, gt_binary, "binarized ground truth", "image_panel")
        tiles.append(("binarized ground truth", mask_to_rgb(gt_binary)))
    check_same_size(original, pred_mask, "predicted mask", "image_panel")
    tiles.append(("predicted mask + prompt", draw_prompts(mask_to_rgb(pred_mask), prompts)))
    if auto_masks is not None:
        tiles.append(("automatic masks", overlay_masks(original, auto_masks)))
    for name, tile in (("stylized", stylized), ("composite", composite)):
        if tile is not None:
            tiles.append((name, tile))
    caption = " · ".join(part for part in (title, format_scores(scores or {})) if part)
    return panel(tiles, caption, columns=columns, tile_height=tile_height)

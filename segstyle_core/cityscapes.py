"""Cityscapes layout, city sampling, the label table, and ground truth as masks.

Layout: ``leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png``, GT beside it in
``gtFine/`` (:data:`GT_SUFFIXES`). Label maps ``H×W`` int, colour GT ``H×W×3 uint8 RGB``, masks
``H×W bool``, boxes XYXY pixels (exclusive end). Regions: instances from the instanceIds PNG for
classes with instances (when the frame has it), else 8-connected components of the class's GT."""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from cityscapesscripts.helpers.labels import id2label, labels

from segstyle_core.errors import ConfigError, InputError
from segstyle_core.images import check_rgb, check_same_size, read_label_map, read_rgb

ROOT_ENV = "CITYSCAPES_DATASET"
IMAGE_SUFFIX = "_leftImg8bit.png"
GT_SUFFIXES = {
    "labelIds": "_gtFine_labelIds.png",
    "instanceIds": "_gtFine_instanceIds.png",
    "color": "_gtFine_color.png",
    "polygons": "_gtFine_polygons.json",
}
#: Label map values at or above this are instance ids: ``class_id * 1000 + n``.
INSTANCE_OFFSET = 1000
GtSource = Literal["auto", "labelIds", "color"]
GtKind = Literal["labelIds", "color"]
GT_SOURCES: tuple[str, ...] = ("auto", "labelIds", "color")
ALL_CITIES = "all"

# Labels that can appear in ground truth (``license plate`` has id -1 and never does).
_DRAWN = {label.name: label for label in labels if label.id >= 0}
_VALID_IDS = [label.id for label in _DRAWN.values()]
_INSTANCE_CLASS_IDS = {label.id for label in _DRAWN.values() if label.hasInstances}


def _pack_rgb(colors: np.ndarray) -> np.ndarray:
    """``...×3 uint8`` RGB packed into one ``uint32`` per colour."""
    c = colors.astype(np.uint32)
    return (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]


# The table's packed colours, sorted, and the lowest label id of each (the table is in id order;
# ``pole`` and ``polegroup``, and the void classes, share a colour).
_COLOR_KEYS, _FIRST = np.unique(
    _pack_rgb(np.array([label.color for label in _DRAWN.values()], np.uint8)), return_index=True
)
_COLOR_IDS = np.array(_VALID_IDS)[_FIRST]


def _color_ids(color: np.ndarray) -> np.ndarray:
    """``H×W``: the label id of each pixel's colour (``H×W×3 uint8``), -1 if not in the table."""
    packed = _pack_rgb(color)
    position = np.minimum(np.searchsorted(_COLOR_KEYS, packed), len(_COLOR_KEYS) - 1)
    return np.where(_COLOR_KEYS[position] == packed, _COLOR_IDS[position], -1)


@dataclass(frozen=True)
class Frame:
    """One ``leftImg8bit`` image and whichever ``gtFine`` files exist beside it (else None)."""

    image_id: str
    city: str
    split: str
    image_path: Path
    label_ids_path: Path | None
    instance_ids_path: Path | None
    color_path: Path | None
    polygons_path: Path | None

    def gt_path(self, kind: str) -> Path | None:
        """The gtFine file of ``kind`` (:data:`GT_SUFFIXES` key; ``auto``: labelIds or colour)."""
        if kind == "auto":
            return self.label_ids_path or self.color_path
        paths = (self.label_ids_path, self.instance_ids_path, self.color_path, self.polygons_path)
        return dict(zip(GT_SUFFIXES, paths, strict=True))[kind]


@dataclass
class Sample:
    """Fine-annotated frames by city and image id; ``skipped``: ``(path, reason)`` per file;
    ``empty_cities``: the chosen cities without one annotated frame (before any limit)."""

    city: str
    split: str
    frames: list[Frame]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    cities: tuple[str, ...] = ()
    unannotated: list[str] = field(default_factory=list)
    empty_cities: tuple[str, ...] = ()


def resolve_root(root: str | os.PathLike[str] | None) -> Path:
    """``root``, else ``$CITYSCAPES_DATASET`` (ConfigError: neither; InputError: no leftImg8bit)."""
    root = root or os.environ.get(ROOT_ENV)
    if not root:
        raise ConfigError(f"no Cityscapes root given; pass the dataset folder or set {ROOT_ENV}")
    path = Path(root).expanduser()
    if not (path / "leftImg8bit").is_dir():
        raise InputError(
            f"{path}: not a Cityscapes root (no leftImg8bit/ folder); expected "
            "leftImg8bit/{split}/{city}/*_leftImg8bit.png and gtFine/{split}/{city}/* beside it"
        )
    return path


def _subdirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def list_cities(root: str | os.PathLike[str] | None, split: str) -> list[str]:
    """Sorted city names of ``split`` (ConfigError listing the splits if it is not one)."""
    base = resolve_root(root)
    splits = _subdirs(base / "leftImg8bit")
    if split not in splits:
        raise ConfigError(
            f"{base}: no split {split!r} under leftImg8bit/; choose one of {', '.join(splits)}"
        )
    return _subdirs(base / "leftImg8bit" / split)


def _frame(root: Path, split: str, city: str, image_path: Path) -> Frame:
    image_id = image_path.name[: -len(IMAGE_SUFFIX)]
    gt = [root / "gtFine" / split / city / f"{image_id}{end}" for end in GT_SUFFIXES.values()]
    return Frame(image_id, city, split, image_path, *(p if p.is_file() else None for p in gt))


def frame_from_image_path(path: str | os.PathLike[str]) -> Frame:
    """The :class:`Frame` of a ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` (InputError)."""
    image_path = Path(path).expanduser().absolute()
    if not image_path.is_file():
        raise InputError(f"{image_path}: no such image file; check the path")
    parents = image_path.parents
    in_layout = len(parents) >= 4 and parents[2].name == "leftImg8bit"
    if not (in_layout and image_path.name.endswith(IMAGE_SUFFIX)):
        raise InputError(
            f"{image_path}: not in the Cityscapes layout; expected "
            "<root>/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png"
        )
    return _frame(parents[3], parents[1].name, parents[0].name, image_path)


def _scan_city(root: Path, split: str, city: str) -> tuple[list[Frame], list[tuple[str, str]]]:
    pattern = re.compile(rf"{re.escape(city)}_\d+_\d+")
    frames: list[Frame] = []
    skipped: list[tuple[str, str]] = []
    for path in sorted((root / "leftImg8bit" / split / city).glob(f"*{IMAGE_SUFFIX}")):
        if not path.is_file():
            skipped.append((str(path), "not a regular file"))
        elif not pattern.fullmatch(path.name[: -len(IMAGE_SUFFIX)]):
            skipped.append((str(path), f"name is not {city}_<seq>_<frame>{IMAGE_SUFFIX}"))
        else:
            frames.append(_frame(root, split, city, path))
    return frames, skipped


def _choose_cities(
    city: str | Sequence[str] | None, cities: list[str], split: str, seed: int
) -> tuple[str, list[str]]:
    """``(label, chosen cities)`` of a ``city`` selection among the split's sorted ``cities``."""
    if city is None or city == "random":
        chosen = random.Random(seed).choice(cities)
        return chosen, [chosen]
    if city == ALL_CITIES:
        return ALL_CITIES, list(cities)
    names = [city] if isinstance(city, str) else list(dict.fromkeys(city))
    unknown = [name for name in names if name not in cities]
    if unknown or not names:
        what = f"no city {unknown[0]!r}" if unknown else "no city named"
        raise ConfigError(
            f"{what} in split {split!r}; choose one of {', '.join(cities)} "
            f"(or {ALL_CITIES!r} for every city)"
        )
    return ",".join(sorted(names)), sorted(names)


def sample_city(
    root: str | os.PathLike[str] | None,
    split: str = "train",
    city: str | Sequence[str] | None = None,
    seed: int = 0,
    limit: int | None = None,
    source: GtSource = "auto",
) -> Sample:
    """The fine-annotated frames of one city, several cities or the whole split (``"all"``).
    ``city=None``/``"random"``: ``random.Random(seed).choice`` of the sorted cities. Frames
    without ``source`` GT go to ``skipped``. ``limit``: ``random.Random(seed).sample`` of the
    frames, sorted. ConfigError: unknown split, city or ``source``, limit below 1."""
    base = resolve_root(root)
    cities = list_cities(base, split)
    if not cities:
        raise InputError(f"{base / 'leftImg8bit' / split}: no city folders; check the dataset")
    if source not in GT_SOURCES:
        raise ConfigError(f"gt={source!r}: unknown; choose one of {', '.join(GT_SOURCES)}")
    label, chosen = _choose_cities(city, cities, split, seed)
    if limit is not None and limit < 1:
        raise ConfigError(f"limit={limit}: must be at least 1, or None for every frame")
    scans = [_scan_city(base, split, name) for name in chosen]
    frames = [frame for city_frames, _ in scans for frame in city_frames]
    fine = [f for f in frames if f.gt_path(source) is not None]
    unannotated = [str(f.image_path) for f in frames if f.gt_path(source) is None]
    wanted = "labelIds or color" if source == "auto" else source
    missing = f"no gtFine {wanted} PNG beside it (gt={source})"
    skipped = [odd for _, city_skipped in scans for odd in city_skipped]
    skipped += [(path, missing) for path in unannotated]
    annotated = {frame.city for frame in fine}
    empty = tuple(name for name in chosen if name not in annotated)
    if limit is not None and limit < len(fine):
        fine = sorted(random.Random(seed).sample(fine, limit), key=lambda f: (f.city, f.image_id))
    return Sample(label, split, fine, skipped, tuple(chosen), unannotated, empty)


def _label_names(names: Iterable[str]) -> list[str]:
    """Canonical table names for ``names`` (case-insensitive), in order, without repeats."""
    lookup = {name.lower(): name for name in _DRAWN}
    given = [names] if isinstance(names, str) else list(names)
    bad = [raw for raw in given if str(raw).strip().lower() not in lookup]
    if bad:
        raise ConfigError(f"unknown Cityscapes class {bad[0]!r}; valid names: {', '.join(_DRAWN)}")
    result = list(dict.fromkeys(lookup[str(raw).strip().lower()] for raw in given))
    if not result:
        raise ConfigError(f"no class names given; pass one or more of: {', '.join(_DRAWN)}")
    return result


def class_ids(names: Iterable[str]) -> dict[str, int]:
    """Label id per class name (case-insensitive; ConfigError: unknown name, or none)."""
    return {name: _DRAWN[name].id for name in _label_names(names)}


def _check_int_map(array: np.ndarray, where: str, what: str, fix: str) -> np.ndarray:
    """The sorted values of an ``H×W`` integer map, else an InputError naming ``fix``."""
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise InputError(
            f"{where}: expected an H×W integer {what}, got {array.dtype} {array.shape}; use {fix}"
        )
    return np.unique(array)


def gt_label_ids(gt: np.ndarray, kind: GtKind, names: list[str], where: str) -> np.ndarray:
    """``H×W`` label ids of a labelIds map (``H×W`` int) or colour GT (``H×W×3 uint8``; a shared
    colour reads as its lowest id) for the table's class ``names``. ConfigError: a class shares
    its colour with one not requested (``pole``/``polegroup``, void classes); InputError naming
    ``where``: values outside the table."""
    if kind == "labelIds":
        fix = "a *_gtFine_labelIds.png"
        present = _check_int_map(gt, where, "label map", fix)
        unknown = present[~np.isin(present, _VALID_IDS)]
        if unknown.size:
            raise InputError(
                f"{where}: label ids {unknown[:8].tolist()} are not in the Cityscapes label "
                f"table; use {fix} (not trainIds or instanceIds)"
            )
        return gt
    colors = {_DRAWN[name].color for name in names}
    twins = [o for o, label in _DRAWN.items() if label.color in colors and o not in names]
    if twins:
        raise ConfigError(
            f"classes {names} share colours with {twins} in colour PNGs; "
            "request those classes too or binarize the labelIds PNG instead"
        )
    check_rgb(gt, where, "use a *_gtFine_color.png")
    ids = _color_ids(gt)
    off_table = ids < 0
    if off_table.any():
        y, x = np.argwhere(off_table)[0]
        raise InputError(
            f"{where}: {int(off_table.sum())} pixels have colours outside the Cityscapes table "
            f"(first {tuple(int(v) for v in gt[y, x])} at x={x}, y={y}); the file was resized "
            "or lossy-compressed: use the original colour PNG or the labelIds PNG"
        )
    return ids


def _read_checked(frame: Frame, kind: str, image: np.ndarray | None) -> tuple[np.ndarray, Path]:
    """The frame's gtFine PNG of ``kind`` and its path, checked against the image's size."""
    path = frame.gt_path(kind)
    if path is None:
        raise InputError(
            f"{frame.image_path}: no gtFine {kind} file ({frame.image_id}{GT_SUFFIXES[kind]}) "
            "for this frame; add it or use the frames sample_city keeps"
        )
    gt = read_rgb(path) if kind == "color" else read_label_map(path)
    reference = read_rgb(frame.image_path) if image is None else image
    check_same_size(reference, gt, f"{kind} ground truth", path)
    return gt, path


@dataclass(frozen=True, eq=False)
class Instance:
    """An instance (from an instanceIds map) or a component of a class's GT: id ``class_id *
    1000 + n``, ``H×W bool`` mask, XYXY box, area in pixels."""

    instance_id: int
    class_name: str
    mask: np.ndarray
    box: tuple[int, int, int, int]
    area: int
    kind: Literal["instance", "component"] = "instance"


def _xyxy(x: int, y: int, w: int, h: int) -> tuple[int, int, int, int]:
    return int(x), int(y), int(x + w), int(y + h)


def instances_from_ids(
    instance_ids: np.ndarray, classes: Iterable[str], path: str | os.PathLike[str] | None = None
) -> list[Instance]:
    """The instances of ``classes`` in an instanceIds map (``H×W`` int), sorted by id; values
    below 1000 are plain label ids (stuff, groups such as ``cargroup``) and yield none.
    ConfigError: a class unknown or without instances; InputError: values outside the table."""
    wanted = class_ids(classes)
    flat = [name for name in wanted if not _DRAWN[name].hasInstances]
    if flat:
        choices = ", ".join(name for name, label in _DRAWN.items() if label.hasInstances)
        raise ConfigError(f"classes {flat} have no instances in Cityscapes; choose from {choices}")
    where, fix = str(path or "instance map"), "a *_gtFine_instanceIds.png"
    present = _check_int_map(instance_ids, where, "instance map", fix)
    ids = present[present >= INSTANCE_OFFSET]
    plain = present[present < INSTANCE_OFFSET]
    bad = plain[~np.isin(plain, _VALID_IDS)].tolist() + [
        int(i) for i in ids if int(i) // INSTANCE_OFFSET not in _INSTANCE_CLASS_IDS
    ]
    if bad:
        raise InputError(
            f"{where}: values {bad[:8]} are neither Cityscapes label ids nor id*1000+n of a class "
            f"with instances; use {fix}"
        )
    result: list[Instance] = []
    for value in ids[np.isin(ids // INSTANCE_OFFSET, list(wanted.values()))].tolist():
        mask = instance_ids == value
        box = _xyxy(*cv2.boundingRect(mask.astype(np.uint8)))
        name = id2label[value // INSTANCE_OFFSET].name
        result.append(Instance(value, name, mask, box, int(mask.sum())))
    return result


def load_instances(
    frame: Frame, classes: Iterable[str], image: np.ndarray | None = None
) -> list[Instance]:
    """:func:`instances_from_ids` of the frame's instanceIds PNG (InputError: missing or bad)."""
    instance_ids, path = _read_checked(frame, "instanceIds", image)
    return instances_from_ids(instance_ids, classes, path)


def _components(mask: np.ndarray, class_name: str, min_area: int) -> list[Instance]:
    """The 8-connected components of ``mask`` of at least ``min_area`` pixels, ``n`` by
    decreasing area (ties in raster order), at most 1000 so ids stay in the class."""
    count, index, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA].tolist()
    order = sorted(range(1, count), key=lambda k: (-areas[k], k))
    kept = [k for k in order if areas[k] >= max(min_area, 1)][:INSTANCE_OFFSET]
    first_id = _DRAWN[class_name].id * INSTANCE_OFFSET
    return [
        Instance(first_id + n, class_name, index == k, _xyxy(*stats[k, :4]), areas[k], "component")
        for n, k in enumerate(kept)
    ]


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """A frame's GT file ``kind`` and ``path``, ``H×W bool`` class mask, regions sorted by id."""

    kind: GtKind
    path: Path
    mask: np.ndarray
    regions: list[Instance] = field(default_factory=list)


def load_gt(
    frame: Frame,
    classes: Iterable[str],
    source: GtSource = "auto",
    image: np.ndarray | None = None,
    regions: bool = False,
    min_area: int = 0,
) -> GroundTruth:
    """Read a frame's GT once: the class mask and, with ``regions``, its regions (components of
    at least ``min_area`` pixels). InputError: missing, unreadable or wrongly sized files, values
    outside the table; ConfigError: unknown classes, or ones a colour PNG cannot tell apart."""
    names = _label_names(classes)
    if source not in GT_SOURCES:
        raise ConfigError(f"source={source!r}: choose 'auto', 'labelIds' or 'color'")
    if image is None:
        image = read_rgb(frame.image_path)
    auto: GtKind = "labelIds" if frame.label_ids_path is not None else "color"
    kind: GtKind = auto if source == "auto" else source
    gt, path = _read_checked(frame, kind, image)
    gt_ids = gt_label_ids(gt, kind, names, str(path))
    mask = np.isin(gt_ids, [_DRAWN[name].id for name in names])
    if not regions:
        return GroundTruth(kind, path, mask)
    things = [n for n in names if frame.instance_ids_path is not None and _DRAWN[n].hasInstances]
    found = load_instances(frame, things, image) if things else []
    for name in names:
        if name not in things:
            found += _components(gt_ids == _DRAWN[name].id, name, min_area)
    return GroundTruth(kind, path, mask, sorted(found, key=lambda r: r.instance_id))

"""Cityscapes layout, city sampling, the label table, and ground truth as masks.

A dataset root holds ``leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png`` and,
for annotated frames, ``gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_{kind}`` with kind
``labelIds.png``, ``instanceIds.png``, ``color.png`` and ``polygons.json``.

The label table (names, ids, colours, which classes have instances) is
``cityscapesscripts.helpers.labels``; nothing here re-types it. Label maps are ``H×W`` integer
arrays, colour ground truth is ``H×W×3 uint8 RGB``, masks are ``H×W bool`` and boxes are XYXY
pixel coordinates with an exclusive end (``x1 = xmax + 1``).

Regions: what ``largest``/``gt-instances``/``auto`` prompt and score. Classes with instances
(``hasInstances`` in the table: car, person, ...) come from the instanceIds PNG when the frame
has one; stuff classes (road, sky, building, vegetation, ...), and classes with instances on a
frame without an instanceIds PNG, come as the 8-connected components of the class's binarized
ground truth (:func:`load_regions`).
"""

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

#: Environment variable that names the dataset root (the cityscapesScripts convention).
ROOT_ENV = "CITYSCAPES_DATASET"

IMAGE_SUFFIX = "_leftImg8bit.png"
GT_SUFFIXES = {
    "labelIds": "_gtFine_labelIds.png",
    "instanceIds": "_gtFine_instanceIds.png",
    "color": "_gtFine_color.png",
    "polygons": "_gtFine_polygons.json",
}

#: Where a label map value at or above this is an instance id: ``class_id * 1000 + n``.
INSTANCE_OFFSET = 1000

GtSource = Literal["auto", "labelIds", "color"]
#: The ground truth sources :func:`read_gt` and :func:`sample_city` accept.
GT_SOURCES: tuple[str, ...] = ("auto", "labelIds", "color")
#: ``city`` value that selects every city of a split.
ALL_CITIES = "all"

# Labels that can appear in ground truth images (``license plate`` has id -1 and never does).
_DRAWN = {label.name: label for label in labels if label.id >= 0}
_VALID_IDS = np.array(sorted({label.id for label in _DRAWN.values()}), dtype=np.int64)
_INSTANCE_CLASS_IDS = {label.id for label in _DRAWN.values() if label.hasInstances}


def _pack_rgb(colors: np.ndarray) -> np.ndarray:
    """Pack ``...×3`` uint8 RGB into one ``uint32`` per colour (``r << 16 | g << 8 | b``)."""
    c = colors.astype(np.uint32)
    return (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]


_TABLE_COLORS = _pack_rgb(np.array([label.color for label in _DRAWN.values()], dtype=np.uint8))


# ----------------------------------------------------------------------------- layout


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

    @property
    def has_fine(self) -> bool:
        """True when the frame has a fine label map (labelIds or colour PNG)."""
        return self.label_ids_path is not None or self.color_path is not None

    def has_gt(self, source: GtSource = "auto") -> bool:
        """True when the frame has the ``source`` ground truth (``auto``: :attr:`has_fine`)."""
        if source == "labelIds":
            return self.label_ids_path is not None
        if source == "color":
            return self.color_path is not None
        return self.has_fine


@dataclass
class Sample:
    """The frames of one or more cities of a split that have fine annotations, sorted by city
    then image id.

    ``city`` names the selection in messages: the city, ``all``, or the cities joined by
    commas; ``cities`` lists the cities covered (sorted); each frame has its own
    :attr:`Frame.city`. ``skipped`` lists ``(path, reason)`` for every file the scan left out;
    ``unannotated`` the paths among them that are well-formed images without the ground truth
    (the usual case in a Cityscapes layout, where not every image is finely annotated).
    """

    city: str
    split: str
    frames: list[Frame]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    cities: tuple[str, ...] = ()
    unannotated: list[str] = field(default_factory=list)


def resolve_root(root: str | os.PathLike[str] | None) -> Path:
    """The dataset root: ``root`` if given, else the ``CITYSCAPES_DATASET`` environment variable.

    Raises:
        ConfigError: neither is set.
        InputError: the root has no ``leftImg8bit/`` folder.
    """
    if root is None or str(root) == "":
        root = os.environ.get(ROOT_ENV) or None
    if root is None:
        raise ConfigError(
            f"no Cityscapes root given; pass the dataset folder or set {ROOT_ENV} to it"
        )
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
    """Sorted city names of ``split``.

    Raises:
        ConfigError: ``split`` is not a folder under ``leftImg8bit/`` (the message lists them).
    """
    base = resolve_root(root)
    splits = _subdirs(base / "leftImg8bit")
    if split not in splits:
        raise ConfigError(
            f"{base}: no split {split!r} under leftImg8bit/; choose one of {', '.join(splits)}"
        )
    return _subdirs(base / "leftImg8bit" / split)


def _gt_file(root: Path, split: str, city: str, image_id: str, kind: str) -> Path | None:
    path = root / "gtFine" / split / city / f"{image_id}{GT_SUFFIXES[kind]}"
    return path if path.is_file() else None


def _frame(root: Path, split: str, city: str, image_path: Path) -> Frame:
    image_id = image_path.name[: -len(IMAGE_SUFFIX)]
    return Frame(
        image_id=image_id,
        city=city,
        split=split,
        image_path=image_path,
        label_ids_path=_gt_file(root, split, city, image_id, "labelIds"),
        instance_ids_path=_gt_file(root, split, city, image_id, "instanceIds"),
        color_path=_gt_file(root, split, city, image_id, "color"),
        polygons_path=_gt_file(root, split, city, image_id, "polygons"),
    )


def frame_from_image_path(path: str | os.PathLike[str]) -> Frame:
    """The :class:`Frame` of one ``.../leftImg8bit/{split}/{city}/*_leftImg8bit.png`` file.

    Raises:
        InputError: the file is missing or not in the Cityscapes layout.
    """
    image_path = Path(path).expanduser().absolute()
    if not image_path.is_file():
        raise InputError(f"{image_path}: no such image file; check the path")
    parents = image_path.parents
    if (
        not image_path.name.endswith(IMAGE_SUFFIX)
        or len(parents) < 4
        or parents[2].name != "leftImg8bit"
    ):
        raise InputError(
            f"{image_path}: not in the Cityscapes layout; expected "
            "<root>/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png"
        )
    return _frame(parents[3], parents[1].name, parents[0].name, image_path)


def _scan_city(root: Path, split: str, city: str) -> tuple[list[Frame], list[tuple[str, str]]]:
    """Every image of a city as a sorted frame list, plus ``(path, reason)`` for odd files."""
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
    chosen_list = sorted(names)
    return ",".join(chosen_list), chosen_list


def sample_city(
    root: str | os.PathLike[str] | None,
    split: str = "train",
    city: str | Sequence[str] | None = None,
    seed: int = 0,
    limit: int | None = None,
    source: GtSource = "auto",
) -> Sample:
    """The fine-annotated frames of one city, several cities or the whole split.

    ``city``: a city name; several names (a list or tuple); ``"all"`` for every city of the
    split; ``None`` (or ``"random"``) picks one with ``random.Random(seed).choice`` over the
    sorted city list. Frames are sorted by city, then image id. Frames without the ``source``
    ground truth (``auto``: a labelIds or colour PNG) go to ``skipped`` with a reason, never
    an error. With ``limit`` below the number of annotated frames, a subset of ``limit``
    frames is drawn over all the selected cities' frames together with
    ``random.Random(seed).sample`` (its own generator, so the subset does not depend on
    whether the city was named or drawn) and returned in sorted order. Files are not decoded
    here; :func:`validate_frames` does that.

    Raises:
        ConfigError: unknown split or city (the message lists the valid ones), limit below 1,
            unknown ``source``.
        InputError: the root is not a Cityscapes root.
    """
    base = resolve_root(root)
    cities = list_cities(base, split)
    if not cities:
        raise InputError(f"{base / 'leftImg8bit' / split}: no city folders; check the dataset")
    if source not in GT_SOURCES:
        raise ConfigError(f"gt={source!r}: unknown; choose one of {', '.join(GT_SOURCES)}")
    label, chosen = _choose_cities(city, cities, split, seed)
    if limit is not None and limit < 1:
        raise ConfigError(f"limit={limit}: must be at least 1, or None for every frame")
    frames: list[Frame] = []
    skipped: list[tuple[str, str]] = []
    for name in chosen:
        city_frames, city_skipped = _scan_city(base, split, name)
        frames += city_frames
        skipped += city_skipped
    fine = [f for f in frames if f.has_gt(source)]
    missing = (
        "no gtFine labelIds or color PNG beside it"
        if source == "auto"
        else f"no gtFine {source} PNG beside it (gt={source})"
    )
    unannotated = [str(f.image_path) for f in frames if not f.has_gt(source)]
    skipped += [(path, missing) for path in unannotated]
    if limit is not None and limit < len(fine):
        drawn = random.Random(seed).sample(fine, limit)
        fine = sorted(drawn, key=lambda f: (f.city, f.image_id))
    return Sample(
        city=label,
        split=split,
        frames=fine,
        skipped=skipped,
        cities=tuple(chosen),
        unannotated=unannotated,
    )


# ----------------------------------------------------------------------------- label table


def _label_names(names: Iterable[str]) -> list[str]:
    """Canonical table names for ``names`` (case-insensitive), in order, without repeats."""
    if isinstance(names, str):
        names = [names]
    lookup = {name.lower(): name for name in _DRAWN}
    result: list[str] = []
    for raw in names:
        name = lookup.get(str(raw).strip().lower())
        if name is None:
            raise ConfigError(f"unknown Cityscapes class {raw!r}; valid names: {', '.join(_DRAWN)}")
        if name not in result:
            result.append(name)
    if not result:
        raise ConfigError(f"no class names given; pass one or more of: {', '.join(_DRAWN)}")
    return result


def class_ids(names: Iterable[str]) -> dict[str, int]:
    """Label id of each class name (case-insensitive), keyed by the table's spelling.

    Raises:
        ConfigError: an unknown name (the message lists the valid names) or no names at all.
    """
    return {name: _DRAWN[name].id for name in _label_names(names)}


def class_colors(names: Iterable[str]) -> dict[str, tuple[int, int, int]]:
    """RGB colour of each class name in Cityscapes colour PNGs, keyed by the table's spelling."""
    return {name: tuple(_DRAWN[name].color) for name in _label_names(names)}


def _check_label_ids(label_ids: np.ndarray, where: str) -> None:
    if label_ids.ndim != 2 or not np.issubdtype(label_ids.dtype, np.integer):
        raise InputError(
            f"{where}: expected an H×W integer label map, got {label_ids.dtype} {label_ids.shape}; "
            "use a *_gtFine_labelIds.png"
        )
    present = np.unique(label_ids)
    unknown = present[~np.isin(present, _VALID_IDS)]
    if unknown.size:
        raise InputError(
            f"{where}: label ids {unknown[:8].tolist()} are not in the Cityscapes label table; "
            "use a *_gtFine_labelIds.png (not trainIds or instanceIds)"
        )


def binarize_label_ids(
    label_ids: np.ndarray, classes: Iterable[str], path: str | os.PathLike[str] | None = None
) -> np.ndarray:
    """``H×W bool`` mask of the pixels whose label id belongs to ``classes``.

    Args:
        label_ids: ``H×W`` integer map of Cityscapes label ids (a ``*_gtFine_labelIds.png``).
        classes: class names, case-insensitive.
        path: the file the map came from, named in error messages.

    Raises:
        InputError: a value is not a label id of the table.
        ConfigError: an unknown class name.
    """
    wanted = list(class_ids(classes).values())
    _check_label_ids(label_ids, str(path) if path is not None else "label map")
    return np.isin(label_ids, wanted)


def _check_colors(color: np.ndarray, where: str) -> np.ndarray:
    """Check ``color`` is ``H×W×3 uint8`` with table colours only; return it packed (``H×W``)."""
    check_rgb(color, where, "use a *_gtFine_color.png")
    packed = _pack_rgb(color)
    off_table = ~np.isin(packed, _TABLE_COLORS)
    if off_table.any():
        y, x = np.argwhere(off_table)[0]
        raise InputError(
            f"{where}: {int(off_table.sum())} pixels have colours outside the Cityscapes table "
            f"(first {tuple(int(v) for v in color[y, x])} at x={x}, y={y}); the file was resized "
            "or lossy-compressed: use the original colour PNG or the labelIds PNG"
        )
    return packed


def binarize_color(
    color: np.ndarray, classes: Iterable[str], path: str | os.PathLike[str] | None = None
) -> np.ndarray:
    """``H×W bool`` mask of the pixels whose colour equals a class colour (the seed's method).

    Args:
        color: ``H×W×3 uint8 RGB`` colour ground truth (a ``*_gtFine_color.png``).
        classes: class names, case-insensitive.
        path: the file the image came from, named in error messages.

    Raises:
        ConfigError: a requested class shares its colour with a class not requested (for
            example ``pole`` and ``polegroup``, or the black void classes), so a colour PNG
            cannot tell them apart.
        InputError: the array is not ``H×W×3`` or has colours outside the table (a resized
            or lossy-compressed colour PNG).
    """
    names = _label_names(classes)
    for name in names:
        twins = [
            other
            for other, label in _DRAWN.items()
            if label.color == _DRAWN[name].color and other not in names
        ]
        if twins:
            raise ConfigError(
                f"class {name!r} shares colour {_DRAWN[name].color} with {twins} in colour PNGs; "
                "request those classes too or binarize the labelIds PNG instead"
            )
    packed = _check_colors(color, str(path) if path is not None else "colour image")
    wanted = _pack_rgb(np.array([_DRAWN[name].color for name in names], dtype=np.uint8))
    return np.isin(packed, wanted)


# ----------------------------------------------------------------------------- reading GT


def _missing(frame: Frame, kind: str) -> InputError:
    return InputError(
        f"{frame.image_path}: no gtFine {kind} file ({frame.image_id}{GT_SUFFIXES[kind]}) for "
        "this frame; add it or use frames with has_fine (sample_city keeps only those)"
    )


def _read_checked(
    frame: Frame, kind: str, path: Path | None, image: np.ndarray | None
) -> tuple[np.ndarray, Path]:
    """Read one gtFine PNG of ``frame`` and check its size against the image's."""
    if path is None:
        raise _missing(frame, kind)
    gt = read_rgb(path) if kind == "color" else read_label_map(path)
    reference = read_rgb(frame.image_path) if image is None else image
    check_same_size(reference, gt, f"{kind} ground truth", path)
    return gt, path


def resolve_gt_source(frame: Frame, source: GtSource) -> Literal["labelIds", "color"]:
    """The ground truth ``source`` means for ``frame``: ``auto`` is labelIds if the frame has a
    labelIds PNG, else the colour PNG.

    Raises:
        ConfigError: an unknown ``source``.
    """
    if source == "auto":
        return "labelIds" if frame.label_ids_path is not None else "color"
    if source in ("labelIds", "color"):
        return source
    raise ConfigError(f"source={source!r}: choose 'auto', 'labelIds' or 'color'")


def gt_path(frame: Frame, source: GtSource) -> Path | None:
    """The file ``source`` reads for ``frame`` (see :func:`resolve_gt_source`), or ``None``."""
    kind = resolve_gt_source(frame, source)
    return frame.label_ids_path if kind == "labelIds" else frame.color_path


def read_gt(
    frame: Frame, source: GtSource = "auto", image: np.ndarray | None = None
) -> tuple[Literal["labelIds", "color"], np.ndarray, Path]:
    """Read ``frame``'s ``source`` ground truth: ``(kind, array, path)``.

    ``kind`` is ``labelIds`` (``H×W`` int label map) or ``color`` (``H×W×3 uint8``); ``auto``
    reads labelIds if present, else the colour PNG. The values are not checked here (the
    binarization does that).

    Raises:
        InputError: a missing, unreadable or wrongly sized file (names it).
        ConfigError: an unknown ``source``.
    """
    kind = resolve_gt_source(frame, source)
    path = frame.label_ids_path if kind == "labelIds" else frame.color_path
    return kind, *_read_checked(frame, kind, path, image)


def binarize_gt_map(
    kind: Literal["labelIds", "color"],
    gt: np.ndarray,
    classes: Iterable[str],
    path: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """:func:`binarize_label_ids` or :func:`binarize_color`, by ``kind`` (see :func:`read_gt`)."""
    if kind == "labelIds":
        return binarize_label_ids(gt, classes, path)
    return binarize_color(gt, classes, path)


def load_binary_gt(
    frame: Frame,
    classes: Iterable[str],
    source: GtSource = "auto",
    image: np.ndarray | None = None,
) -> np.ndarray:
    """Read a frame's fine ground truth and binarize it by class: ``H×W bool``.

    Args:
        frame: the frame.
        classes: class names, case-insensitive.
        source: ``"labelIds"``, ``"color"``, or ``"auto"`` (labelIds when present, else colour).
        image: the frame's ``H×W×3`` image if already read (its size is checked against the
            ground truth; without it the image file is read for that check).

    Raises:
        InputError: missing, unreadable or wrongly sized ground truth, values outside the
            table (each message names the file).
        ConfigError: unknown class names, or classes a colour PNG cannot tell apart.
    """
    kind, gt, path = read_gt(frame, source, image)
    return binarize_gt_map(kind, gt, classes, path)


def validate_frames(
    frames: Iterable[Frame], source: GtSource = "auto"
) -> tuple[list[Frame], list[tuple[str, str]]]:
    """Decode every frame's image and ground truth; split the usable frames from the broken.

    Returns:
        ``(good, skipped)``: the frames whose image, ``source`` ground truth and instanceIds
        PNG (when present) decode, match the image size and hold only table values; and
        ``(image path, reason)`` for the others, ``reason`` being the one-line error message.
    """
    good: list[Frame] = []
    skipped: list[tuple[str, str]] = []
    for frame in frames:
        try:
            image = read_rgb(frame.image_path)
            kind, gt, path = read_gt(frame, source, image)
            if kind == "labelIds":
                _check_label_ids(gt, str(path))
            else:
                _check_colors(gt, str(path))
            if frame.instance_ids_path is not None:
                ids, path = _read_checked(frame, "instanceIds", frame.instance_ids_path, image)
                _decode_instance_ids(ids, str(path))
        except InputError as exc:
            skipped.append((str(frame.image_path), str(exc)))
        else:
            good.append(frame)
    return good, skipped


# ----------------------------------------------------------------------------- instances


@dataclass(frozen=True, eq=False)
class Instance:
    """One object instance of a Cityscapes instanceIds map.

    Attributes:
        instance_id: ``class_id * 1000 + n``.
        class_name: the label table's name of ``class_id``.
        mask: ``H×W bool``.
        box: ``(xmin, ymin, xmax + 1, ymax + 1)``, XYXY with an exclusive end.
        area: number of pixels in ``mask``.
        kind: ``instance`` (from an instanceIds map) or ``component`` (a connected component
            of a class's binarized ground truth, see :func:`load_regions`; its id is
            ``class_id * 1000 + n``, ``n`` counting the class's components by decreasing area).
    """

    instance_id: int
    class_name: str
    mask: np.ndarray
    box: tuple[int, int, int, int]
    area: int
    kind: Literal["instance", "component"] = "instance"


def _decode_instance_ids(instance_ids: np.ndarray, where: str) -> np.ndarray:
    """The sorted instance ids (values >= 1000) of a map; check every value against the table."""
    if instance_ids.ndim != 2 or not np.issubdtype(instance_ids.dtype, np.integer):
        raise InputError(
            f"{where}: expected an H×W integer instance map, got {instance_ids.dtype} "
            f"{instance_ids.shape}; use a *_gtFine_instanceIds.png"
        )
    present = np.unique(instance_ids)
    ids = present[present >= INSTANCE_OFFSET]
    plain = present[present < INSTANCE_OFFSET]
    bad = plain[~np.isin(plain, _VALID_IDS)].tolist() + [
        int(i) for i in ids if int(i) // INSTANCE_OFFSET not in _INSTANCE_CLASS_IDS
    ]
    if bad:
        raise InputError(
            f"{where}: values {bad[:8]} are neither Cityscapes label ids nor id*1000+n of a class "
            "with instances; use a *_gtFine_instanceIds.png"
        )
    return ids


def instances_from_ids(
    instance_ids: np.ndarray, classes: Iterable[str], path: str | os.PathLike[str] | None = None
) -> list[Instance]:
    """The instances of ``classes`` in an instanceIds map, sorted by instance id.

    Values ``>= 1000`` encode ``class_id * 1000 + n``; smaller values are plain label ids
    (stuff classes, and objects annotated only as a group such as ``cargroup``) and yield no
    instance.

    Args:
        instance_ids: ``H×W`` integer map (a ``*_gtFine_instanceIds.png``).
        classes: class names with instances (``car``, ``person``, ...), case-insensitive.
        path: the file the map came from, named in error messages.

    Raises:
        ConfigError: an unknown class or one without instances.
        InputError: values that are neither label ids nor instance ids of the table.
    """
    wanted = class_ids(classes)
    flat = [name for name in wanted if not _DRAWN[name].hasInstances]
    if flat:
        instanced = ", ".join(name for name, label in _DRAWN.items() if label.hasInstances)
        raise ConfigError(
            f"classes {flat} have no instances in Cityscapes; choose from {instanced}"
        )
    wanted_ids = set(wanted.values())
    result: list[Instance] = []
    where = str(path) if path is not None else "instance map"
    for value in _decode_instance_ids(instance_ids, where):
        class_id = int(value) // INSTANCE_OFFSET
        if class_id not in wanted_ids:
            continue
        mask = instance_ids == value
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
        result.append(
            Instance(int(value), id2label[class_id].name, mask, box, int(np.count_nonzero(mask)))
        )
    return result


def load_instances(
    frame: Frame, classes: Iterable[str], image: np.ndarray | None = None
) -> list[Instance]:
    """Read a frame's instanceIds PNG and return the instances of ``classes`` (sorted by id).

    ``image``: the frame's ``H×W×3`` image if already read, for the size check.

    Raises:
        InputError: missing, unreadable or wrongly sized instanceIds PNG, or values outside
            the table (the message names the file).
        ConfigError: unknown classes or classes without instances.
    """
    instance_ids, path = _read_checked(frame, "instanceIds", frame.instance_ids_path, image)
    return instances_from_ids(instance_ids, classes, path)


# ----------------------------------------------------------------------------- regions


def _class_map(kind: Literal["labelIds", "color"], gt: np.ndarray, names: list[str]) -> np.ndarray:
    """``H×W int32``: the label id of the requested class at each pixel, -1 elsewhere.

    Requested classes that share a colour in a colour PNG (``pole`` and ``polegroup``) cannot
    be told apart there: their pixels get the lowest of their ids.
    """
    if kind == "labelIds":
        ids = [_DRAWN[name].id for name in names]
        return np.where(np.isin(gt, ids), gt, -1).astype(np.int32)
    packed = _pack_rgb(gt)
    result = np.full(packed.shape, -1, dtype=np.int32)
    for name in sorted(names, key=lambda n: _DRAWN[n].id, reverse=True):  # lowest id wins
        colour = _pack_rgb(np.array(_DRAWN[name].color, dtype=np.uint8))
        result[packed == colour] = _DRAWN[name].id
    return result


def connected_regions(mask: np.ndarray, class_name: str, min_area: int = 0) -> list[Instance]:
    """The 8-connected components of ``mask`` (``H×W bool``) of at least ``min_area`` pixels.

    Each becomes an :class:`Instance` of kind ``component`` with id ``class_id * 1000 + n``,
    ``n`` counting by decreasing area (ties: the component met first in raster order). At
    most 1000 components (the largest) are kept, so ids never reach the next class's.
    """
    (name,) = _label_names([class_name])
    class_id = _DRAWN[name].id
    count, labels_map, stats, _ = cv2.connectedComponentsWithStats(
        mask.astype(np.uint8), connectivity=8
    )
    areas = stats[:, cv2.CC_STAT_AREA]
    order = sorted(range(1, count), key=lambda k: (-int(areas[k]), k))
    kept = [k for k in order if areas[k] >= max(min_area, 1)][:INSTANCE_OFFSET]
    regions = []
    for n, k in enumerate(kept):
        x, y, w, h = (int(v) for v in stats[k, :4])
        regions.append(
            Instance(
                class_id * INSTANCE_OFFSET + n,
                name,
                labels_map == k,
                (x, y, x + w, y + h),
                int(areas[k]),
                "component",
            )
        )
    return regions


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """One frame's ground truth, read once: its kind, file, binarized mask and regions.

    Attributes:
        kind: ``labelIds`` or ``color``: the file the mask came from.
        path: that file.
        mask: ``H×W bool`` binarized ground truth of the requested classes.
        regions: the frame's regions (see :func:`load_regions`), sorted by id; empty unless
            they were asked for.
    """

    kind: Literal["labelIds", "color"]
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
    """Read a frame's ground truth once: the binarized mask and, with ``regions``, its regions.

    Regions (what GT prompts and automatic-mode scores refer to): for each requested class
    with instances, the instances of the instanceIds PNG when the frame has one (this is the
    only case that reads it); for stuff classes (``hasInstances`` False: road, sky, building,
    vegetation, ...), and for classes with instances on a frame without an instanceIds PNG,
    the 8-connected components of that class's binarized ground truth with at least
    ``min_area`` pixels (:func:`connected_regions`; touching objects of one class merge).

    Args:
        frame: the frame.
        classes: class names, case-insensitive.
        source: ``labelIds``, ``color`` or ``auto`` (see :func:`read_gt`).
        image: the frame's ``H×W×3`` image if already read (for the size checks).
        regions: also derive the regions.
        min_area: smallest connected component kept as a region.

    Raises:
        InputError: missing, unreadable or wrongly sized files, values outside the table.
        ConfigError: unknown class names, or classes a colour PNG cannot tell apart.
    """
    names = _label_names(classes)
    if image is None:
        image = read_rgb(frame.image_path)
    kind, gt, path = read_gt(frame, source, image)
    mask = binarize_gt_map(kind, gt, names, path)
    if not regions:
        return GroundTruth(kind, path, mask)
    things = [n for n in names if _DRAWN[n].hasInstances]
    found: list[Instance] = []
    if things and frame.instance_ids_path is not None:
        ids, ids_path = _read_checked(frame, "instanceIds", frame.instance_ids_path, image)
        found += instances_from_ids(ids, things, ids_path)
        components = [n for n in names if n not in things]
    else:
        components = names
    if components:
        class_map = _class_map(kind, gt, components)
        for name in components:
            found += connected_regions(class_map == _DRAWN[name].id, name, min_area)
    return GroundTruth(kind, path, mask, sorted(found, key=lambda r: r.instance_id))


def load_regions(
    frame: Frame,
    classes: Iterable[str],
    source: GtSource = "auto",
    image: np.ndarray | None = None,
    min_area: int = 0,
) -> list[Instance]:
    """The regions of ``classes`` in a frame, sorted by id (see :func:`load_gt`).

    Works for every class: instances of classes with instances (from the instanceIds PNG when
    present), connected components otherwise.
    """
    return load_gt(frame, classes, source, image, regions=True, min_area=min_area).regions

"""The stage graphs of a dataset frame and of a photo, declared once.

A dataset frame (``evaluate_segmentation``: without stylize and composite)::

    gt ──► segment ──► metrics ──► stylize, once per distinct style ──► composite ──► figures

A photo (``segstyle stylize``, the flow ``stylize_image``)::

    segment ──► stylize, once per distinct region style ──► composite

A :class:`Runner` binds the cache folder: ``run(stage, run_name, **inputs)`` returns a
:class:`Handle`; an input may be an earlier stage's handle (or a list of them).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from segstyle_core.cityscapes import Frame
from segstyle_core.config import CompositeConfig, DatasetSelection, PromptConfig
from segstyle_core.paint import PaintPlan, plan_by_class, plan_by_region
from segstyle_core.segment import SegmenterConfig
from segstyle_core.segment.base import Prompt
from segstyle_core.stagecache import Stage, StageRecord
from segstyle_core.stages.composite import CompositeRecord, composite
from segstyle_core.stages.figures import figures
from segstyle_core.stages.gt import binarize_gt
from segstyle_core.stages.metrics import score_frame
from segstyle_core.stages.segment import segment
from segstyle_core.stages.stylize import StylizeRecord, stylize
from segstyle_core.stylize import StylizerConfig

R = TypeVar("R", bound=StageRecord)
R_co = TypeVar("R_co", covariant=True)


class Handle(Protocol[R_co]):
    """A started stage: ``result()`` waits for its record or raises the stage's error."""

    def result(self) -> R_co: ...


class Runner(Protocol):
    """Starts a stage with its inputs (records or handles) in the runner's cache folder;
    ``run_name``: ``segment-<image id>``, ..."""

    def __call__(self, stage: Stage[..., R], run_name: str, /, **inputs: Any) -> Handle[R]: ...


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """The flows' parameters that a dataset run applies to each frame."""

    dataset: DatasetSelection
    prompts: PromptConfig  # ``auto``: automatic masks
    segmenter: SegmenterConfig
    stylizer: StylizerConfig | None  # None: masks and metrics only
    composite: CompositeConfig

    @property
    def automatic(self) -> bool:
        return self.prompts.source == "auto"


def frame_stages(
    run: Runner, frame: Frame, settings: RunSettings, stages: dict[str, Handle[StageRecord]]
) -> Iterator[None]:
    """Start the stages of one dataset frame into ``stages`` (``stylize_2``, ... for further
    styles); a frame without a prompt, or whose ``gt`` (automatic: ``metrics``) failed, stops
    there. It yields before each wait: :func:`run_frames` starts every frame's stages first."""
    image_id, image, dataset = frame.image_id, str(frame.image_path), settings.dataset
    stages["gt"] = gt = run(
        binarize_gt,
        f"gt-{image_id}",
        frame=frame,
        classes=dataset.classes,
        prompts=settings.prompts,
        gt_source=dataset.gt,
        seed=dataset.seed,
    )
    yield  # every frame's gt starts before any wait
    truth = _finished(gt)
    if truth is None or not (settings.automatic or truth.prompts):
        return
    stages["segment"] = masks = run(
        segment,
        f"segment-{image_id}",
        image=image,
        prompts=truth.prompts,
        automatic=settings.automatic,
        segmenter=settings.segmenter,
    )
    stages["metrics"] = scores = run(
        score_frame, f"metrics-{image_id}", gt=gt, masks=masks, automatic=settings.automatic
    )
    if settings.automatic:  # the masks' classes are known once matched to the GT regions
        yield  # every frame's masks start before any wait
        scored = _finished(scores)
        if scored is None:
            return
        labels = [score["prompt"].get("class_name") for score in scored.scores]
    else:  # the prompts' classes are known: paint without waiting
        labels = [prompt.get("class_name") for prompt in truth.prompts]
    if (stylizer := settings.stylizer) is not None:
        plan = plan_by_class(labels, dataset.classes, stylizer, settings.composite.mode)
        stylized, painted = paint(run, image, image_id, plan, scores, stylizer, settings.composite)
        # "stylize" is the first style's (published, and shown in the figures)
        stages.update({f"stylize_{k + 1}" if k else "stylize": h for k, h in enumerate(stylized)})
        stages["composite"] = painted
    panel = run(
        figures,
        f"figures-{image_id}",
        frame=frame,
        gt=gt,
        masks=masks,
        scores=scores,
        automatic=settings.automatic,
        stylized=stages.get("stylize"),
        painted=stages.get("composite"),
    )
    stages["figures"] = panel


def run_frames(
    run: Runner, frames: Sequence[Frame], settings: RunSettings
) -> list[dict[str, Handle[StageRecord]]]:
    """Start the stages of every frame round by round (every ``gt``, then each frame's masks,
    metrics and painting); return each frame's stage name -> handle, in pipeline order."""
    stages: list[dict[str, Handle[StageRecord]]] = [{} for _ in frames]
    pending = [frame_stages(run, f, settings, s) for f, s in zip(frames, stages, strict=True)]
    while pending:
        pending = [graph for graph in pending if next(graph, False) is None]  # None: it yielded
    return stages


def photo_stages(
    run: Runner,
    image: str,
    prompts: Sequence[Prompt],
    styles: Sequence[str],
    segmenter: SegmenterConfig,
    stylizer: StylizerConfig,
    settings: CompositeConfig,
) -> Handle[CompositeRecord]:
    """Start the stages of one photo: segment its prompted regions, paint region ``k`` in
    ``styles[k]``; return the handle of ``composite.png`` (the photo's size, ``H×W×3`` RGB)."""
    image_id = Path(image).stem
    masks = run(
        segment,
        f"segment-{image_id}",
        image=image,
        prompts=[p.as_dict() for p in prompts],
        automatic=False,
        segmenter=segmenter,
    )
    return paint(run, image, image_id, plan_by_region(styles), masks, stylizer, settings)[1]


def paint(
    run: Runner,
    image: str,
    image_id: str,
    plan: PaintPlan,
    masks: Handle[StageRecord],
    stylizer: StylizerConfig,
    settings: CompositeConfig,
) -> tuple[list[Handle[StylizeRecord]], Handle[CompositeRecord]]:
    """Start ``stylize`` once per style of ``plan``, then ``composite`` of its layers over
    ``masks`` (a record or handle with per-prompt masks)."""
    stylized = [
        run(
            stylize,
            f"stylize-{image_id}-{Path(style).stem}",
            image=image,
            style=style,
            stylizer=stylizer,
            **plan.roi_options(index, settings, masks),
        )
        for index, style in enumerate(plan.styles)
    ]
    painted = run(
        composite,
        f"composite-{image_id}",
        image=image,
        stylized=stylized,
        masks=masks,
        layers=plan.layers,
        settings=settings,
    )
    return stylized, painted


@dataclass(frozen=True)
class InProcess:
    """A runner of each stage at once in this process (``segstyle stylize``); a failing stage
    raises from the call."""

    cache_dir: Path

    def __call__(self, stage: Stage[..., R], run_name: str, /, **inputs: Any) -> Future[R]:
        done: Future[R] = Future()
        done.set_result(stage.run(self.cache_dir, **{k: _resolved(v) for k, v in inputs.items()}))
        return done


def _resolved(value: Any) -> Any:
    """An input with every finished future in it replaced by its record."""
    if isinstance(value, Future):
        return value.result()
    if isinstance(value, list):
        return [_resolved(item) for item in value]
    return value


def _finished(handle: Handle[R]) -> R | None:
    """The handle's record, or ``None`` when its stage failed (the flow reports it)."""
    try:
        return handle.result()
    except Exception:  # noqa: BLE001 - any failure of the stage: the frame stops here
        return None

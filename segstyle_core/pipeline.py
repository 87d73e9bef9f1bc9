"""What an image goes through, declared once: the stage graphs of a dataset frame and a photo.

A dataset frame (flows ``segment_and_stylize`` and ``evaluate_segmentation``, without stylize
and composite)::

    gt ──► segment ──► metrics ──► stylize, once per distinct style ──► composite ──► figures
    (GT mask,          (scores, the   of the frame's paint plan         (the used masks
     prompts)           used masks)   (the metrics' classes)             in each style)

A photo (``segstyle stylize`` and the flow ``stylize_image``)::

    segment ──► stylize, once per distinct region style ──► composite

Each stage is a cached :class:`~segstyle_core.stagecache.Stage`, started through a
:class:`Runner` that binds the cache folder: ``run(stage, run_name, **inputs)`` returns a
:class:`Handle`; an input may be an earlier stage's handle (or a list of them).
:class:`InProcess` runs each stage at once (``segstyle stylize``); the flows'
:class:`segstyle.tasks.stage.PrefectRunner` submits each as a Prefect task named ``run_name``.
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
    """A started stage: ``result()`` waits for its record, or raises the stage's error."""

    def result(self) -> R_co: ...


class Runner(Protocol):
    """Starts a stage with its inputs (records, or handles of earlier stages) in the runner's
    cache folder; ``run_name``: ``segment-<image id>``, ..."""

    def __call__(self, stage: Stage[..., R], run_name: str, /, **inputs: Any) -> Handle[R]: ...


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """What a dataset run applies to each of its frames: the flows' parameters."""

    dataset: DatasetSelection
    prompts: PromptConfig  # ``auto``: automatic masks
    segmenter: SegmenterConfig
    stylizer: StylizerConfig | None  # None: masks and metrics only
    composite: CompositeConfig

    @property
    def automatic(self) -> bool:
        """Automatic masks (every mask the segmenter finds), not one mask per prompt."""
        return self.prompts.source == "auto"


def frame_stages(
    run: Runner, frame: Frame, settings: RunSettings, stages: dict[str, Handle[StageRecord]]
) -> Iterator[None]:
    """Start the stages of one dataset frame, entering each into ``stages`` as it starts:
    ``gt``, ``segment``, ``metrics``, ``stylize`` (``stylize_2``, ... for further styles),
    ``composite``, ``figures``. A frame without a prompt, or whose ``gt`` (in automatic mode:
    ``metrics``) failed, stops there. It yields before each wait for a stage's result, so that
    :func:`run_frames` starts the stages of every frame up to that point first.
    """
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
    masks = run(
        segment,
        f"segment-{image_id}",
        image=image,
        prompts=truth.prompts,
        automatic=settings.automatic,
        segmenter=settings.segmenter,
    )
    scores = run(
        score_frame, f"metrics-{image_id}", gt=gt, masks=masks, automatic=settings.automatic
    )
    stages.update(segment=masks, metrics=scores)
    if settings.automatic:  # the masks' classes are known once matched to the GT regions
        yield  # every frame's masks start before any wait
        scored = _finished(scores)
        if scored is None:
            return
        labels = [score["prompt"].get("class_name") for score in scored.scores]
    else:  # the prompts' classes are known: paint without waiting
        labels = [prompt.get("class_name") for prompt in truth.prompts]
    stylized: list[Handle[StylizeRecord]] = []
    painted = None
    if (stylizer := settings.stylizer) is not None:
        plan = plan_by_class(labels, dataset.classes, stylizer, settings.composite.mode)
        stylized, painted = paint(run, image, image_id, plan, scores, stylizer, settings.composite)
        # "stylize" is the first style's (published, and shown in the figures)
        stages.update(
            {"stylize" if k == 0 else f"stylize_{k + 1}": h for k, h in enumerate(stylized)}
        )
        stages["composite"] = painted
    panel = run(
        figures,
        f"figures-{image_id}",
        frame=frame,
        gt=gt,
        masks=masks,
        scores=scores,
        automatic=settings.automatic,
        stylized=stylized[0] if stylized else None,
        painted=painted,
    )
    stages["figures"] = panel


_DONE = object()


def run_frames(
    run: Runner, frames: Sequence[Frame], settings: RunSettings
) -> list[dict[str, Handle[StageRecord]]]:
    """Start the stages of every frame (:func:`frame_stages`) round by round: every ``gt``, then
    each frame's masks and metrics (and, unless automatic, its painting) as its ``gt`` is done;
    in automatic mode the painting comes in a third round. Returns each frame's stages (stage
    name -> handle, in pipeline order)."""
    stages: list[dict[str, Handle[StageRecord]]] = [{} for _ in frames]
    pending = [frame_stages(run, f, settings, s) for f, s in zip(frames, stages, strict=True)]
    while pending:
        pending = [graph for graph in pending if next(graph, _DONE) is not _DONE]
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
    """Start ``stylize`` once per style of ``plan`` (with an ROI margin, only its own masks'
    box), then ``composite`` of the plan's layers over ``masks`` (per-prompt masks)."""
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
    """A runner of each stage at once, in this process, with its results in ``cache_dir``; its
    handles are finished futures, and a failing stage raises its error from the call."""

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
    """The handle's record, or ``None`` when its stage failed or could not start (the flow
    reports it as the image's error)."""
    try:
        return handle.result()
    except Exception:  # noqa: BLE001 - any failure of the stage: the frame stops here
        return None

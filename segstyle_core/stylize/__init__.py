"""Style-transfer backends and their frozen configuration :class:`StylizerConfig` (hashed into
cache keys, rendered as a form in the Prefect UI)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from segstyle_core import weights
from segstyle_core.backends import BackendConfig, BackendIdentity
from segstyle_core.stylize.base import Progress, ProgressCallback, Stylizer
from segstyle_core.stylize.gatys_config import MIN_SIDE, SPEED_OPTIONS, GatysConfig

__all__ = ["GatysConfig", "Progress", "ProgressCallback", "Stylizer", "StylizerConfig"]


class StylizerConfig(BackendConfig):
    """The style-transfer backend of a run and the style image it paints with."""

    backend: Literal["gatys", "feedforward"] = "gatys"
    """gatys: Gatys et al. on VGG19 (needs its checkpoint); feedforward: an offline network."""
    style: str | None = None
    """Style image; none: the project's generated geometric abstraction."""
    class_styles: dict[str, str] = Field(default_factory=dict, title="Per-class styles")
    """Style image per class name (case-insensitive), e.g. {"car": "/data/van_gogh.jpg"}; a class
    without one gets the style above. Paint order: classes without their own style, then each
    in the order of the run's classes (a later class over an earlier one)."""
    gatys: GatysConfig = Field(default_factory=GatysConfig, title="Gatys settings")
    """Gatys settings (layers, weights, working height, optimizer, speed options)."""
    strength: float = Field(default=1.0, ge=0.0, le=1.0)
    """Feed-forward: blend of the style into the content, 0 to 1."""
    vgg_checkpoint: str | None = None
    """Gatys: a VGG19 checkpoint file of your own (torchvision's layout), identified by its full
    SHA-256; none: the official vgg19-dcbb9e9d.pth."""

    @field_validator("class_styles")
    @classmethod
    def _class_names(cls, styles: dict[str, str]) -> dict[str, str]:
        cleaned = {name.strip().lower(): path.strip() for name, path in styles.items()}
        if "" in cleaned or "" in cleaned.values():
            raise ValueError("give each per-class style as CLASS=IMAGE, neither empty")
        return cleaned

    def __hash__(self) -> int:
        """By value (pydantic's own hash fails on the ``class_styles`` dict)."""
        return hash((type(self).__name__, self.model_dump_json()))

    def _vgg_checkpoint(self) -> weights.CheckpointFile:
        return weights.resolve_checkpoint(
            self.vgg_checkpoint, "stylizer.vgg_checkpoint", "vgg19", self.weights_dir
        )

    def identity(self) -> BackendIdentity:
        """Name, variant and weights SHA-256, without loading the model (:class:`WeightsError`:
        the VGG19 checkpoint is missing or fails its checksum)."""
        if self.backend == "gatys":
            return BackendIdentity("gatys", "vgg19", self._vgg_checkpoint().sha256)
        from segstyle_core.stylize.feedforward import MODEL_VARIANT, model_sha256

        return BackendIdentity("feedforward", MODEL_VARIANT, model_sha256())

    def settings(self) -> dict[str, object]:
        """The settings that change this backend's output (its cache-key part; no style path)."""
        if self.backend == "gatys":
            return {"gatys": self.gatys.model_dump(mode="json", exclude=set(SPEED_OPTIONS))}
        return {"strength": self.strength}

    def min_style_side(self) -> int:
        """The smallest style-image side, in pixels, this backend accepts."""
        if self.backend == "gatys":
            return MIN_SIDE
        from segstyle_core.stylize.feedforward import MIN_SIDE as FEEDFORWARD_MIN_SIDE

        return FEEDFORWARD_MIN_SIDE

    def style_path(self) -> str:
        """The configured style image, else the generated default."""
        from segstyle_core import styles

        return self.style or str(styles.style_path())

    def style_for(self, class_name: str | None) -> str:
        """The style image of a class: its own (:attr:`class_styles`), else :meth:`style_path`."""
        return self.class_styles.get((class_name or "").lower()) or self.style_path()

    def style_paths(self) -> list[str]:
        """Every distinct style image this configuration may paint with, the plain one first."""
        return list(dict.fromkeys([self.style_path(), *self.class_styles.values()]))

    def build(self, content_size: int | None = None) -> Stylizer:
        """The stylizer, loaded once per process; ``content_size``: the feed-forward network's
        largest working height (none: the image's own, within its pixel budget)."""

        def factory() -> Stylizer:
            if self.backend == "gatys":
                from segstyle_core.stylize.gatys import GatysStylizer

                path = self._vgg_checkpoint().path
                verify = self.vgg_checkpoint is None
                return GatysStylizer(self.gatys, checkpoint=path, device=self.device, verify=verify)
            from segstyle_core.stylize.feedforward import FeedForwardStylizer

            return FeedForwardStylizer(strength=self.strength, content_size=content_size)

        return self.load_once(factory, content_size if self.backend == "feedforward" else None)

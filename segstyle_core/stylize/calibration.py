"""Per-machine choice of the ``"auto"`` Gatys speed options: the fastest combination whose
objective matches the plain eager run's, cached per device model and torch version."""

from __future__ import annotations

import functools
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import platformdirs
import torch
from torchvision.models.vgg import cfgs, make_layers

from segstyle_core import devices
from segstyle_core.fileio import write_json_atomic
from segstyle_core.stylize.gatys_config import SPEED_OPTIONS, GatysConfig
from segstyle_core.stylize.objective import grams_of, loss_terms, vgg_features
from segstyle_core.stylize.vgg import VGGFeatures

#: The working size ``(h, w)`` of the calibration image: a typical ROI crop's.
CALIBRATION_SIZE = (96, 128)
#: Relative objective difference a speed option may make against the plain eager run.
OBJECTIVE_TOL = 1e-3
#: Evaluations a compiled graph is used for (its first call is charged over these).
AMORTISED_EVALUATIONS = 100


@dataclass(frozen=True)
class Trial:
    """One combination: ``first_s`` its first call, ``step_s`` its best later evaluation."""

    channels_last: bool
    compile: bool
    first_s: float
    step_s: float
    objective_rel: float

    @property
    def score(self) -> float:
        """Seconds per evaluation, a compiled run's first call amortised."""
        extra = (self.first_s - self.step_s) / AMORTISED_EVALUATIONS if self.compile else 0.0
        return self.step_s + extra

    @property
    def kept(self) -> bool:
        return abs(self.objective_rel) <= OBJECTIVE_TOL


def machine_key(device: torch.device) -> str:
    """The device's model (CPU model name and thread count, or GPU name) and torch's version."""
    if device.type == "cuda":
        model = torch.cuda.get_device_name(device)
    else:
        model = f"{_cpu_model()} threads={torch.get_num_threads()}"
    return f"{device.type}: {model}; torch {torch.__version__}"


@functools.cache
def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return models[0] if models else platform.processor() or platform.machine()


def cache_path() -> Path:
    """``$SEGSTYLE_CALIBRATION``, else ``calibration.json`` in the user cache: a JSON object
    ``{machine key: {"channels_last": bool, "compile": bool, "trials": [Trial fields]}}``."""
    default = Path(platformdirs.user_cache_dir("segstyle")) / "calibration.json"
    return Path(os.environ.get("SEGSTYLE_CALIBRATION") or default)


def _trial(
    config: GatysConfig, device: torch.device, channels_last: bool, compiled: bool, repeats: int
) -> tuple[float, float, float]:
    """``(first call s, best later s, objective)`` of one evaluation with these options."""
    cfg = config.changed(channels_last=channels_last, compile=compiled, content_scale=None)
    torch.manual_seed(0)  # VGG19 with random weights: timings do not depend on their values
    features = make_layers(cfgs["E"])
    extractor = VGGFeatures(features, cfg.layers, cfg.pooling, cfg.normalization).to(device)
    if channels_last:
        extractor = extractor.to(memory_format=torch.channels_last)
    network = torch.compile(extractor, dynamic=False) if compiled else extractor
    generator = torch.Generator().manual_seed(0)
    content = torch.rand(1, 3, *CALIBRATION_SIZE, generator=generator).to(device)
    with torch.no_grad():
        grams = grams_of(vgg_features(extractor, content.flip(3), cfg), cfg.style_layers)
        targets = {n: vgg_features(extractor, content, cfg)[n] for n in cfg.content_layers}
    image = (content * 0.8 + 0.1).requires_grad_(True)
    times = []
    for _ in range(repeats + 1):
        image.grad = None
        start = time.perf_counter()
        terms = loss_terms(network, image, targets, grams, cfg)
        terms["total"].backward()
        total = terms["total"].item()
        times.append(time.perf_counter() - start)
    return times[0], min(times[1:]), total


def calibrate(
    config: GatysConfig, device: torch.device, compile_: bool = True, repeats: int = 10
) -> list[Trial]:
    """Time eager runs, channels-last off and on, then (``compile_``) compiled, faster layout."""
    results = {(cl, False): _trial(config, device, cl, False, repeats) for cl in (False, True)}
    if compile_:
        layout = results[(True, False)][1] < results[(False, False)][1]
        results[(layout, True)] = _trial(config, device, layout, True, repeats)
    reference = results[(False, False)][2]
    return [
        Trial(cl, comp, first, step, total / reference - 1)
        for (cl, comp), (first, step, total) in results.items()
    ]


def choose(trials: list[Trial]) -> dict[str, bool]:
    """The options of the kept trial with the lowest :attr:`Trial.score`."""
    best = min((t for t in trials if t.kept), key=lambda t: t.score)
    return {"channels_last": best.channels_last, "compile": best.compile}


#: Entries read or made in this process, per machine key.
_ENTRIES: dict[str, dict] = {}


def _load() -> dict[str, dict]:
    """The cache file's entries; ``{}`` for a missing or malformed file."""
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _cached(key: str) -> dict | None:
    """The entry for ``key`` made or read in this process, else the file's if well formed."""
    if key not in _ENTRIES:
        entry = _load().get(key)
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(name), bool) for name in SPEED_OPTIONS
        ):
            return None
        try:
            [Trial(**trial) for trial in entry.get("trials", [])]
        except TypeError:
            return None
        _ENTRIES[key] = entry
    return _ENTRIES[key]


def run_and_cache(device: torch.device, compile_: bool = True) -> dict:
    """Calibrate on ``device`` (default settings), store the entry and return it."""
    trials = calibrate(GatysConfig(), device, compile_)
    entry = {**choose(trials), "trials": [asdict(t) for t in trials]}
    cache = _load()
    cache[machine_key(device)] = _ENTRIES[machine_key(device)] = entry
    write_json_atomic(cache_path(), cache)
    return entry


def resolve(config: GatysConfig, device: torch.device) -> GatysConfig:
    """``config`` with its ``"auto"`` speed options replaced by this machine's choice: cached,
    else calibrated now (eager runs only, a few seconds; :func:`tune_table` tries compiling)."""
    auto = [name for name in SPEED_OPTIONS if getattr(config, name) == "auto"]
    if not auto:
        return config
    entry = _cached(machine_key(device)) or run_and_cache(device, compile_=False)
    return config.changed(**{name: entry[name] for name in auto})


def tune_table(device: str = "auto", refresh: bool = True) -> str:
    """The calibration table of ``device`` (one line per combination, then the choice), run
    now (``refresh``) or cached."""
    resolved = devices.resolve_device(device)
    key = machine_key(resolved)
    entry = (None if refresh else _cached(key)) or run_and_cache(resolved)
    lines = [
        f"{key} (cache: {cache_path()})",
        f"{'channels_last':>13} {'compile':>7} {'first s':>8} {'step s':>8} {'objective':>10}",
    ]
    for trial in entry["trials"]:
        t = Trial(**trial)
        flag = "" if t.kept else "  (objective differs: not kept)"
        lines.append(
            f"{t.channels_last!s:>13} {t.compile!s:>7} {t.first_s:8.3f} {t.step_s:8.3f} "
            f"{t.objective_rel:+10.1e}{flag}"
        )
    lines.append(f"chosen: channels_last={entry['channels_last']} compile={entry['compile']}")
    return "\n".join(lines)

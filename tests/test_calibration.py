"""Per-machine calibration of the Gatys speed options (issue #25)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from segstyle_core.stylize import StylizerConfig, calibration
from segstyle_core.stylize.calibration import Trial
from segstyle_core.stylize.gatys_config import GatysConfig

CPU = torch.device("cpu")


@pytest.fixture()
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    path = tmp_path / "calibration.json"
    monkeypatch.setenv("SEGSTYLE_CALIBRATION", str(path))
    monkeypatch.setattr(calibration, "_ENTRIES", {})
    return path


def test_choose_takes_the_fastest_kept_trial_with_compilation_amortised() -> None:
    eager = Trial(False, False, first_s=0.2, step_s=0.10, objective_rel=0.0)
    layout = Trial(True, False, first_s=0.2, step_s=0.08, objective_rel=0.0)
    compiled = Trial(True, True, first_s=5.0, step_s=0.05, objective_rel=1e-5)
    assert calibration.choose([eager, layout]) == {"channels_last": True, "compile": False}
    # 0.05 + (5 - 0.05) / 100 = 0.0995 > 0.08: compiling does not pay over 100 evaluations
    assert calibration.choose([eager, layout, compiled])["compile"] is False
    cheap = Trial(True, True, first_s=1.0, step_s=0.05, objective_rel=1e-5)
    assert calibration.choose([eager, layout, cheap]) == {"channels_last": True, "compile": True}
    drifting = Trial(True, True, first_s=0.1, step_s=0.01, objective_rel=0.02)
    assert calibration.choose([eager, drifting]) == {"channels_last": False, "compile": False}


def test_auto_options_take_the_cached_choice(cache: Path) -> None:
    entry = {"channels_last": False, "compile": True, "trials": []}
    cache.write_text(json.dumps({calibration.machine_key(CPU): entry}))
    resolved = calibration.resolve(GatysConfig(), CPU)
    assert (resolved.channels_last, resolved.compile) == (False, True)
    fixed = calibration.resolve(GatysConfig(channels_last=True, compile=False), CPU)
    assert (fixed.channels_last, fixed.compile) == (True, False)


def test_speed_options_stay_out_of_the_stage_key() -> None:
    plain = StylizerConfig(gatys=GatysConfig(channels_last=True, compile=False)).settings()
    assert plain == StylizerConfig().settings()
    assert "channels_last" not in plain["gatys"] and "compile" not in plain["gatys"]
    assert StylizerConfig(gatys=GatysConfig(autocast=None)).settings() != plain


def test_a_real_calibration_is_cached_and_tabled(cache: Path) -> None:
    """Eager trials on the CPU (the implicit calibration), then the table from the cache."""
    config = GatysConfig(content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"))
    trials = calibration.calibrate(config, CPU, compile_=False, repeats=1)
    assert [(t.channels_last, t.compile) for t in trials] == [(False, False), (True, False)]
    assert all(t.step_s > 0 and abs(t.objective_rel) < 1e-4 for t in trials)
    resolved = calibration.resolve(GatysConfig(), CPU)  # nothing cached: calibrates and stores
    stored = json.loads(cache.read_text())[calibration.machine_key(CPU)]
    assert (resolved.channels_last, resolved.compile) == (stored["channels_last"], False)
    table = calibration.tune_table("cpu", refresh=False)  # from the cache, no new run
    assert calibration.machine_key(CPU) in table and len(table.splitlines()) == 5
    assert table.endswith(f"chosen: channels_last={stored['channels_last']} compile=False")


def test_segstyle_tune_cached_prints_the_cached_table(
    cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from segstyle.flows.cli import main

    calibration.resolve(GatysConfig(), CPU)  # an eager calibration, cached
    capsys.readouterr()
    assert main(["tune", "--device", "cpu", "--cached"]) == 0
    assert capsys.readouterr().out.strip() == calibration.tune_table("cpu", refresh=False)


@pytest.mark.parametrize("text", ["[1, 2]", "not json", '{"KEY": {"channels_last": "yes"}}'])
def test_a_malformed_cache_file_is_remade_not_trusted(cache: Path, text: str) -> None:
    cache.write_text(text.replace("KEY", calibration.machine_key(CPU)))
    resolved = calibration.resolve(GatysConfig(), CPU)
    options = {name: getattr(resolved, name) for name in ("channels_last", "compile")}
    assert all(isinstance(value, bool) for value in options.values())
    stored = json.loads(cache.read_text())[calibration.machine_key(CPU)]
    assert {name: stored[name] for name in options} == options

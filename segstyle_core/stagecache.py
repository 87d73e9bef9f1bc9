"""Content-addressed stage results on disk.

A stage result lives in ``<cache_dir>/<stage>/<key[:2]>/<key>/`` with its output files and a
``record.json`` written last (atomically). The key is the SHA-256 of the stage name, the code
version, the SHA-256 of every input file's bytes and the stage's configuration (which carries
the weights' SHA-256 for model stages). A result counts only while its record and every file
it names exist, so a deleted output is recomputed, and a half-finished stage (killed before
its record was written) is never read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from segstyle_core import __version__
from segstyle_core.fileio import file_sha256, sha256_json, write_json_atomic

#: Bump when a stage's output format or algorithm changes, so old cache entries are not reused.
STAGE_VERSIONS: dict[str, int] = {
    "gt": 1,
    "segment": 1,
    "stylize": 1,
    "composite": 1,
    "metrics": 1,
    "figures": 1,
    "video_frames": 1,
    "video_chunk": 1,
    "video_encode": 1,
    "video_score": 1,
}

RECORD = "record.json"


def stage_key(stage: str, files: Mapping[str, str | os.PathLike[str]], config: Any) -> str:
    """The cache key of one stage run: code version + input file contents + configuration."""
    return sha256_json(
        {
            "stage": stage,
            "stage_version": STAGE_VERSIONS[stage],
            "code_version": __version__,
            "files": {name: file_sha256(path) for name, path in sorted(files.items())},
            "config": config,
        }
    )


def stage_dir(cache_dir: str | os.PathLike[str], stage: str, key: str) -> Path:
    """Directory of one stage result."""
    return Path(cache_dir) / stage / key[:2] / key


def load_record(directory: Path) -> dict[str, Any] | None:
    """The stored record if it and every output path it lists still exist, else ``None``."""
    try:
        record = json.loads((directory / RECORD).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    outputs = record.get("outputs", {})
    if all(Path(path).exists() for path in outputs.values()):
        return record
    return None


def run_stage(
    stage: str,
    cache_dir: str | os.PathLike[str],
    files: Mapping[str, str | os.PathLike[str]],
    config: Any,
    compute: Callable[[Path], dict[str, Any]],
) -> dict[str, Any]:
    """Return the cached record of this stage run, or call ``compute(out_dir)`` and store it.

    ``compute`` writes its files into ``out_dir`` and returns a JSON-able record whose
    ``"outputs"`` maps names to the paths it wrote. The record gains ``cache_key`` and
    ``cached`` (whether it came from disk).
    """
    key = stage_key(stage, files, config)
    directory = stage_dir(cache_dir, stage, key)
    found = load_record(directory)
    if found is not None:
        return {**found, "cached": True}
    directory.mkdir(parents=True, exist_ok=True)
    record = {**compute(directory), "cache_key": key}
    write_json_atomic(directory / RECORD, record)
    return {**record, "cached": False}


def is_cached(
    stage: str,
    cache_dir: str | os.PathLike[str],
    files: Mapping[str, str | os.PathLike[str]],
    config: Any,
) -> tuple[str, bool]:
    """``(key, present)`` for a stage run, without computing anything."""
    key = stage_key(stage, files, config)
    return key, load_record(stage_dir(cache_dir, stage, key)) is not None

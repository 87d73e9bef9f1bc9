"""The demo dataset on demand, for deployments that run over it on a fresh machine.

The offline nightly deployment points at ``data/demo`` (relative to the worker's working
directory, the repository root). On a machine where ``make demo`` never ran that folder is
missing, so the flow calls :func:`ensure_demo_dataset` first: it writes the same dataset that
``segstyle demo`` writes (same generator, same defaults), and leaves an existing one alone.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segstyle_core.demo.dataset import generate_demo_dataset
from segstyle_core.errors import ConfigError


def ensure_demo_dataset(
    root: str,
    *,
    size: tuple[int, int] | None = None,
    frames_per_city: int | None = None,
    cities: Sequence[str] | None = None,
    seed: int = 0,
) -> str:
    """Return ``root``, first writing the generated demo dataset there when it is missing.

    A folder that already holds ``leftImg8bit/`` is returned untouched (whatever its size or
    cities). A missing or empty folder gets the demo dataset, written into a temporary sibling
    and renamed into place, so an interrupted run never leaves half a dataset and two runs
    starting at once both end with one complete dataset. The optional arguments pass through
    to the generator (its defaults are those of ``segstyle demo``).

    Raises:
        ConfigError: ``root`` exists and holds something other than a dataset (never
            overwritten), or is a file.
    """
    path = Path(root)
    if (path / "leftImg8bit").is_dir():
        return root
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConfigError(
            f"{root} exists but holds no leftImg8bit/ folder; it is not a Cityscapes-layout "
            "dataset and is left alone (point the run at another folder, or empty this one)"
        )
    options: dict[str, Any] = {"seed": seed}  # only what the caller chose; else its defaults
    if size is not None:
        options["size"] = size
    if frames_per_city is not None:
        options["frames_per_city"] = frames_per_city
    if cities is not None:
        options["cities"] = tuple(cities)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:12]}"
    staging.mkdir()  # the umask's permissions, unlike tempfile.mkdtemp's 0700
    try:
        generate_demo_dataset(staging, **options)
        try:
            os.rename(staging, path)  # replaces a missing or empty folder, atomically
        except OSError:
            if not (path / "leftImg8bit").is_dir():  # not another run's finished dataset
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root

"""Prefect cache policy over :mod:`segstyle_core.stagecache`.

Prefect's cache key for a stage task is the stage's content key: the SHA-256 of the input
files' bytes, the stage configuration (with the weights' SHA-256 for model stages) and the
code version. When Prefect holds a result for that key but the files behind it have been
deleted, the policy returns a fresh one-off key, so Prefect runs the task again instead of
handing back paths that are gone.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext

from segstyle_core.stagecache import is_cached

#: Maps a task's inputs to ``(files, config)`` for :func:`segstyle_core.stagecache.stage_key`.
KeyInputs = Callable[[dict[str, Any]], tuple[dict[str, Any], Any]]


@dataclass
class StageCachePolicy(CachePolicy):
    """Cache a stage task on the content of its inputs (see the module docstring)."""

    stage: str = ""
    key_inputs: KeyInputs | None = field(default=None)

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        """The stage key, or a one-off key when its outputs are missing or unreadable."""
        if self.key_inputs is None:
            raise ValueError("StageCachePolicy needs key_inputs")
        try:
            files, config = self.key_inputs(inputs)
            key, present = is_cached(self.stage, inputs["cache_dir"], files, config)
        except (OSError, ValueError):
            # An input file is missing or unreadable: let the task run and report it.
            return None
        cache_key = f"{self.stage}-{key}"
        if present:
            return cache_key
        store = getattr(task_ctx, "result_store", None)
        if store is not None and store.exists(cache_key):
            # Prefect remembers this result but its files are gone: compute it again.
            return f"{cache_key}-rebuild-{uuid.uuid4().hex}"
        return cache_key

"""Prompts for segmentation runs, one module per concern; import from the module you need.

:mod:`~segstyle_core.prompts.validation` checks a prompt against an image and parses CLI
``--box``/``--point`` values; :mod:`~segstyle_core.prompts.from_gt` makes prompts from
ground-truth instances (with optional jitter) and picks a frame's prompts for a run's prompt
source; :mod:`~segstyle_core.prompts.files` reads the JSON and CSV prompt files. Every box is
``(x0, y0, x1, y1)`` XYXY in original-image pixels with an exclusive maximum, and every point is
``(x, y)`` with label 1 (foreground) or 0 (background). Scoring a prompt's mask lives in
:mod:`segstyle_core.scoring`.
"""

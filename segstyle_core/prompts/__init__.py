"""Prompts: :mod:`.validation` (against an image; text values), :mod:`.from_gt` (from ground
truth, per frame), :mod:`.files` (JSON and CSV prompt files)."""

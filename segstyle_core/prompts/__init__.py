"""Prompts: checks and text values (``validation``), from GT (``from_gt``), files (``files``)."""

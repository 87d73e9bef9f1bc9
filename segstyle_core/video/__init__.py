"""Video: read and write clips, track one object's mask through them, stylize it stably."""

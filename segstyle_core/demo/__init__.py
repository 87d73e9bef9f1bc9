"""Generated demo data: street scenes (``scene``), a Cityscapes ``dataset`` and a video ``clip``."""

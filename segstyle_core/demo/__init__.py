"""Generated demo data: street scenes, a Cityscapes-layout dataset and a video clip.

Nothing in the production path imports this package; the ``segstyle demo*`` commands, the tests
and the benchmarks do. :mod:`~segstyle_core.demo.scene` places the objects of a street as
image-space polygons, :mod:`~segstyle_core.demo.dataset` rasterises scenes into images and
Cityscapes ground truth and writes a dataset, and :mod:`~segstyle_core.demo.clip` writes a
short clip of a car crossing a parked camera's view, with per-frame ground truth.
"""

"""segstyle core library: images, Cityscapes data, segmentation, stylization, compositing.

Pure library: numpy / torch / PIL in, numpy / PIL out. Nothing here imports Prefect.
"""

__version__ = "0.1.0"

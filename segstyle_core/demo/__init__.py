"""Generated demo data (``segstyle demo*``, tests, benchmarks): street scenes as polygons
(``scene``), a Cityscapes-layout dataset (``dataset``) and a video clip with GT (``clip``)."""

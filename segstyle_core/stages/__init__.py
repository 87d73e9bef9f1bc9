"""The cached steps of a run (:class:`~segstyle_core.stagecache.Stage`), one module each, free
of Prefect; how an image goes through them is :mod:`segstyle_core.pipeline`."""

"""The cached steps of a run, one module each, free of Prefect.

Each module declares one :class:`~segstyle_core.stagecache.Stage`: its record type and the
computation that writes its files, whose arguments are its cache key. How an image goes
through them is :mod:`segstyle_core.pipeline`.
"""

"""The cached steps of a run, one module each, free of Prefect.

Each module declares one :class:`~segstyle_core.stagecache.Stage`: its record type, the
inputs of its cache key and the computation that writes its files. The Prefect tasks
(:mod:`segstyle.tasks`) wrap them one-to-one; ``segstyle stylize`` calls them directly.
"""

"""The ground floor: what every stage shares, importing no stage.

``core.data`` (datasets read through one loader), ``core.sequences`` (member histories and the
leave-one-out split), ``core.artifacts`` (self-describing, atomically written artifact folders),
``core.metrics`` (rank metrics with standard errors), ``core.overrides`` (``--set KEY=VALUE`` into
a config dataclass) and ``core.logs`` (library chatter to a log file).
``tests/test_layers.py`` keeps the floors apart.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sidrec")
except PackageNotFoundError:  # a checkout on PYTHONPATH without an install (the GPU machine)
    __version__ = "0.1.0"

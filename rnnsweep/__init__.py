"""rnnsweep: Hydra grid sweeps of recurrent text classifiers, logged to W&B, with result records.

From Python (see rnnsweep.api): `rnnsweep.train(*overrides)`, `rnnsweep.load(run)`,
`rnnsweep.evaluate(run, *data_overrides)`, `rnnsweep.runs(path)`. They load on first use, so
`import rnnsweep` stays cheap (no torch, no Hydra).
"""

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rnnsweep")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

# Module-level names that load their module on first use (PEP 562).
_LAZY = {"train": "api", "load": "api", "evaluate": "api", "runs": "api", "Classifier": "predict"}

__all__ = ["Classifier", "__version__", "evaluate", "load", "runs", "train"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

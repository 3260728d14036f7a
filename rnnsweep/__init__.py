"""rnnsweep: Hydra grid sweeps of recurrent text classifiers, logged to W&B, with result records."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rnnsweep")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

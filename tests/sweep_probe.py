"""A Hydra callback for tests: which heavy modules the sweep's own process has imported when it exits.

Added to a sweep with `+hydra.callbacks.probe._target_=sweep_probe.ParentImports
+hydra.callbacks.probe.out=FILE` (the tests directory on PYTHONPATH). It checks at interpreter
exit, after every other callback (the summary and the report included) has run.
"""

from __future__ import annotations

import atexit
import json
import sys

from hydra.experimental.callback import Callback

WATCHED = ("torch", "numba", "rnnsweep.run")


class ParentImports(Callback):
    def __init__(self, out: str) -> None:
        self.out = out

    def on_multirun_start(self, config, **kwargs) -> None:
        atexit.register(self._write)

    def _write(self) -> None:
        with open(self.out, "w") as f:
            json.dump(sorted(m for m in WATCHED if m in sys.modules), f)

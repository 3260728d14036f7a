"""Progress bars leave nothing behind in a process that is killed, as launcher=parallel's workers are."""

from __future__ import annotations

import subprocess
import sys

import pytest

KILLED_WITH_A_BAR = """
import multiprocessing, os, signal
multiprocessing.set_start_method("spawn")  # as in a loky worker: semaphores are tracked by name
from {module} import tqdm
for _ in tqdm(range(3), disable=True):
    pass
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("module, leaks", [("tqdm.auto", True), ("rnnsweep.progress", False)])
def test_a_killed_process_that_drew_a_bar_leaks_no_semaphore(module, leaks):
    # tqdm.auto is the control: it shows that this check sees the leak where there is one.
    res = subprocess.run([sys.executable, "-c", KILLED_WITH_A_BAR.format(module=module)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == -9
    assert ("leaked semaphore" in res.stderr) is leaks, res.stderr

"""`make run`, the README's first command, lists the records of the sweep it just ran."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_run_names_one_sweep_directory_however_the_clock_ticks(tmp_path):
    # A `date` that answers a new time at every call, as a second ticking over would.
    counter = tmp_path / "calls"
    fake = tmp_path / "date"
    fake.write_text(f'#!/bin/sh\necho x >> "{counter}"\nwc -l < "{counter}" | tr -d " "\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    res = subprocess.run(["make", "-n", "run"], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    named = set(re.findall(r"outputs/multirun/demo_\S+?(?=/|\s|$)", res.stdout))
    assert len(named) == 1, res.stdout

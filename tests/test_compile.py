"""The first run after an install says that it compiles the CPU kernels, and compiles them side by
side; the runs after it load them from numba's cache and say nothing."""

from __future__ import annotations

import pytest

from conftest import TINY, run_cli


@pytest.mark.slow
def test_a_cold_kernel_cache_is_announced_compiled_once_and_then_loaded(tmp_path):
    cache = tmp_path / "numba"
    args = [*[a for a in TINY if a != "runtime.threads=1"], "model=rnn", "ledger.force=true"]
    first = run_cli(args, tmp_path, NUMBA_CACHE_DIR=str(cache))
    assert first.returncode == 0, first.stderr
    log = first.stdout + first.stderr
    assert "compiling the CPU kernels (RNN layer, deferred Adam), once after an install" in log
    assert "compiled the CPU kernels in" in log
    assert any(cache.rglob("*rnn_forward*.nbi")) and any(cache.rglob("*adam_rows*.nbi"))

    again = run_cli(args, tmp_path, NUMBA_CACHE_DIR=str(cache))
    assert again.returncode == 0, again.stderr
    assert "compiling the CPU kernels" not in again.stdout + again.stderr


@pytest.mark.slow
def test_a_sweeps_first_cold_job_compiles_the_kernels_its_other_jobs_may_need(tmp_path):
    cache = tmp_path / "numba"
    args = ["-m", "model=rnn", *[a for a in TINY if a != "runtime.threads=1"], f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    res = run_cli(args, tmp_path, NUMBA_CACHE_DIR=str(cache))
    assert res.returncode == 0, res.stderr
    assert "for the sweep's other jobs also" in res.stdout + res.stderr
    for loop in ("rnn_forward", "lstm_forward", "gru_backward", "adam_rows"):
        assert any(cache.rglob(f"*{loop}*.nbi")), loop

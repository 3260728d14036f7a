"""`make bench` keeps working and prints what the README quotes from it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import parallel_sweep  # noqa: E402
import train_speed  # noqa: E402


def test_ratio_cell_pairs_each_repeat_with_its_own_reference_run():
    refs = [{"ex_s": 100.0}, {"ex_s": 200.0}, {"ex_s": 150.0}]
    runs = [{"ex_s": 1000.0}, {"ex_s": 3000.0}, {"ex_s": 1200.0}]
    # best 3000 against best 200; per repeat 10x, 15x and 8x, whose median is 10x
    assert train_speed.ratio_cell(runs, refs) == "15.0x / 10.0x"


def test_the_parallel_ceilings_credit_one_thread_jobs_with_what_they_measured():
    # A 22 s basic sweep: 1 s start-up, 1 s end, 20 s of jobs (1 s of it the first job's warm-up).
    basic = {"total": 22.0, "start": 1.0, "end": 1.0, "warm_up": 1.0, "jobs": 20.0}
    # Amdahl's ceiling on two free cores: 3 s serial, 19 s halved.
    assert parallel_sweep.ceiling(basic, 2.0) == pytest.approx(22 / 12.5)
    # The same jobs take 31 s on one thread each (1 s of it warm-up): 3 s serial, 30 s halved.
    slower = {"jobs": 31.0, "warm_up": 1.0}
    assert parallel_sweep.one_thread_ceiling(basic, slower, 2.0) == pytest.approx(22 / 18)
    # Jobs no slower on one thread than on all cores: the two ceilings agree.
    assert parallel_sweep.one_thread_ceiling(basic, basic, 2.0) == pytest.approx(parallel_sweep.ceiling(basic, 2.0))


def test_ratio_cell_refuses_unpaired_repeats():
    with pytest.raises(ValueError):
        train_speed.ratio_cell([{"ex_s": 1.0}], [{"ex_s": 1.0}, {"ex_s": 2.0}])


def run_on_small_data(tmp_path: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    """A benchmark script run on 3,000 generated training texts; it must succeed."""
    data = tmp_path / "data"
    subprocess.run([sys.executable, str(BENCH / "agnews_like.py"), str(data), "--train", "3000", "--test", "300"],
                   check=True, capture_output=True)
    res = subprocess.run([sys.executable, str(BENCH / script), "--data", str(data), *args],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.mark.slow
def test_train_speed_benchmark_runs_end_to_end_on_small_data(tmp_path):
    res = run_on_small_data(tmp_path, "train_speed.py", "--models", "lstm", "--repeats", "2", "--epoch-size", "160",
                            "--no-levers", "--threads", "1")
    row = next(line for line in res.stdout.splitlines() if line.startswith("| lstm |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 9
    for ratio in (cells[5], cells[8]):
        best, paired = re.fullmatch(r"([\d.]+)x / ([\d.]+)x", ratio).groups()
        assert float(best) > 0 and float(paired) > 0
    assert "seed 0:" in res.stdout and "seed 1:" in res.stdout
    assert re.search(r"^cpu: .+, \d+ cores, torch .+ \(kernels: \w+\)$", res.stdout, re.M)
    assert "rnnsweep's compiled LSTM:" in res.stdout and "torch's LSTM (oneDNN):" in res.stdout
    interleaved = re.search(r"^- the same share, interleaved \(.*; 160 examples, 1 thread\(s\), median of 3 rounds\): "
                            r"(\d+)%$", res.stdout, re.M)
    assert interleaved and int(interleaved.group(1)) > 0


def test_train_speed_refuses_an_unknown_model_before_generating_anything(tmp_path):
    res = subprocess.run([sys.executable, str(BENCH / "train_speed.py"), "--models", "lstm,transformer"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 2
    assert "--models: unknown 'transformer' (choose from: rnn,lstm,gru,packed_lstm)" in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_contention_refuses_an_unknown_neighbour_before_starting_anything(tmp_path):
    res = subprocess.run([sys.executable, str(BENCH / "contention.py"), "--neighbours", "idle,browser"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 2
    assert "--neighbours: unknown 'browser' (choose from: idle,cpu-bound,training)" in res.stderr


@pytest.mark.slow
def test_catch_up_benchmark_replays_a_recorded_stretch_both_ways(tmp_path):
    res = run_on_small_data(tmp_path, "catch_up.py", "--warm-steps", "30", "--steps", "20", "--repeats", "1",
                            "--threads", "1")
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")[1:]]
            for line in res.stdout.splitlines() if line.startswith("| ") and not line.startswith("| catch-up")}
    assert float(rows["step by step (reference)"][0]) > 0 and float(rows["closed form (rnnsweep)"][1]) > 0
    assert all(re.fullmatch(r"[\d.]+x", c) for c in rows["speed of the closed form, reference = 1 (median of pairs)"])
    assert "steps 31-50 of a real run" in res.stdout
    assert re.search(r"differ by at most [\d.e+-]+ ", res.stdout)


@pytest.mark.slow
def test_kernel_share_benchmark_times_every_variant_against_the_kernel(tmp_path):
    res = run_on_small_data(tmp_path, "kernel_share.py", "--epoch-size", "160", "--rounds", "2", "--threads", "1",
                            "--chunk", "3")
    rows = [line for line in res.stdout.splitlines() if line.startswith("| ") and not line.startswith("| variant")]
    assert len(rows) == 5 and rows[0].startswith("| bare kernel") and rows[0].endswith("| 100.0% |")
    shares = [float(re.search(r"\| ([\d.]+)% \|$", row).group(1)) for row in rows]
    assert all(0 < share < 1000 for share in shares)
    assert "10 batches of 16 (160 examples), 1 thread(s), 2 rounds, variants taking turns every 3 batches" in res.stdout

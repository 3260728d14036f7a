# Two commands set everything up on a fresh machine:
#   make run    build .venv, then sweep the four models over both synthetic variants
#   make test   build .venv, then run the whole test suite (slow tests included, as CI does)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# `date` runs once (:=): run at each use of SWEEP, a second ticking over between the sweep and the
# listing of its records gave them two different directory names.
DEMO_SWEEP := outputs/multirun/demo_$(shell date +%Y-%m-%d_%H-%M-%S)
SWEEP  ?= $(DEMO_SWEEP)

RAY_VENV ?= .venv-ray

.PHONY: venv run test test-fast test-ray bench bench-data bench-parallel bench-contention bench-cold bench-catch-up bench-share clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@# numba compiles the CPU kernels once and caches them: here, in parallel, rather than in the first run
	$(PY) -m rnnsweep.fast.compile
	touch $@

run: $(STAMP)
	$(VENV)/bin/rnnsweep -m model=bow,rnn,lstm,gru data.variant=order,long_range hydra.sweep.dir=$(SWEEP) $(ARGS)
	@echo
	@echo "Result records:"
	@ls -1 $(SWEEP)/*/metrics.json

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

# launcher=ray in an environment of its own (hydra-ray-launcher pins cloudpickle < 3).
$(RAY_VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(RAY_VENV)
	$(RAY_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[ray]' pytest
	touch $@

test-ray: $(RAY_VENV)/.installed
	$(RAY_VENV)/bin/python -m pytest tests/ray --rootdir=. -p no:cacheprovider

# Training throughput: the lesson's procedure vs rnnsweep (and lever by lever, and the bare
# kernel) on generated AG News-sized data; ARGS="--data DIR" for real AG News CSVs,
# ARGS="--device cuda" for both sides on a GPU.
bench: $(STAMP)
	$(PY) benchmarks/train_speed.py $(ARGS)

# Tokenize/encode/cache 120,000 and 1,000,000 generated AG News-like rows; reload; tokenizer speeds.
bench-data: $(STAMP)
	$(PY) benchmarks/data_cache.py $(ARGS)

# Wall time of the 12-job grid: basic launcher vs launcher=parallel, in one run, with W&B offline;
# ARGS="--logger none" without a tracker, ARGS="--epochs 5" for longer jobs.
bench-parallel: $(STAMP)
	$(PY) benchmarks/parallel_sweep.py $(ARGS)

# The lesson's LSTM at the default thread count and at one thread: idle, beside a CPU-bound
# process, beside a second training run (started and stopped here); ARGS="--repeats 5".
bench-contention: $(STAMP)
	$(PY) benchmarks/contention.py $(ARGS)

# Seconds to the first training step: cold (empty numba and data caches; kernels compiled one
# after the other, as before, or side by side) and warm; a single run and a 3-job sweep.
bench-cold: $(STAMP)
	$(PY) benchmarks/cold_start.py $(ARGS)

# Deferred Adam's catch-up on a real run's recorded steps: closed form vs step-by-step replay.
bench-catch-up: $(STAMP)
	$(PY) benchmarks/catch_up.py $(ARGS)

# rnnsweep's share of the bare compiled kernel, taken apart (model, table and optimizer, training
# loop), every variant alternating in one process.
bench-share: $(STAMP)
	$(PY) benchmarks/kernel_share.py $(ARGS)

clean:
	rm -rf $(VENV) $(RAY_VENV) dist build *.egg-info .pytest_cache

"""The `rnnsweep` command: the only place that knows Hydra.

Hydra composes `conf/` and the command line; this module validates the result, tells the run
where it lives and what it is called, and turns every error a user can cause into one line.
"""

from __future__ import annotations

import os

# An OpenMP thread (torch's, the compiled layers') that runs out of work spins for 300,000 turns
# by default before it sleeps: on a shared machine it takes the core another thread or program
# needs. 10,000 turns keep it awake between the parallel regions of one training step and let it
# sleep soon after (benchmarks/README.md, "Speed on a shared CPU"). Read by GNU OpenMP when torch
# loads it, so it is set before anything imports torch; a value already set is kept.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import logging
import math
import re
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from . import __version__, config, store, sweep

log = logging.getLogger("rnnsweep")


def _sweep_logger() -> logging.Logger:
    """The logger of the process that ends a sweep. Hydra formats that process's root logger as
    `[HYDRA]`; rnnsweep's own lines (the report, its warnings) say they are rnnsweep's."""
    for name in ("rnnsweep.sweep", "rnnsweep.report"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(logging.Formatter("[%(asctime)s][rnnsweep][%(levelname)s] - %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False
    return logging.getLogger("rnnsweep.sweep")


def config_dir() -> str:
    """`conf/` inside an installed wheel, else the repository's top-level `conf/`."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"rnnsweep's config directory is missing (looked in {here / 'conf'} and {here.parent / 'conf'})")


config.register_schemas()
# `rnnsweep --help` lists the keys whose values come from a fixed set (conf/config.yaml's template).
OmegaConf.register_new_resolver("rnnsweep_fixed_choices", config.fixed_choices, replace=True)


# The Hydra launcher each of our launcher presets selects.
PRESET_LAUNCHERS = {"basic": "basic", "parallel": "joblib", "submitit_local": "submitit_local",
                    "slurm": "submitit_slurm", "ray": "ray"}


def _names_the_run(override: str) -> bool:
    """Whether an override says what the run is (`model=gru`, `optimizer.lr=0.01`), not how or
    where it runs (`logger.mode=offline`, `ledger.store=...`, `hydra.sweep.dir=...`)."""
    key = override.split("=", 1)[0].lstrip("+~")
    return not key.startswith("hydra") and key not in ("launcher", "search") and store.is_result_key(key)


def current_job():
    from .run import Job  # torch: imported where jobs run, not in a launcher's parent process

    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra/") and k != "rnnsweep_schema"}
    hydra_launcher = hc.runtime.choices.get("hydra/launcher")
    if hydra_launcher and PRESET_LAUNCHERS.get(choices.get("launcher")) != hydra_launcher:
        choices["launcher"] = hydra_launcher  # hydra/launcher=joblib given as Hydra spells it
    return Job(
        dir=Path(hc.runtime.output_dir),
        name=",".join(o for o in overrides if _names_the_run(o)) or "defaults",
        sweep=Path(hc.sweep.dir).name if is_multirun() else None,
        choices=choices,
        overrides=overrides,
        base_dir=Path(hc.runtime.cwd),
    )


def is_multirun() -> bool:
    return HydraConfig.get().mode == RunMode.MULTIRUN


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity: a cluster job's allocation), not the node's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity on this OS
        return os.cpu_count() or 1


def threads_per_job() -> int:
    """The cores this process may use, divided among the jobs that run at once, so parallel
    workers do not oversubscribe."""
    cores = available_cores()
    launcher = HydraConfig.get().launcher
    target = str(launcher.get("_target_", ""))
    if "joblib" in target:
        n_jobs = launcher.get("n_jobs") or -1
        workers = cores + 1 + n_jobs if n_jobs < 0 else n_jobs  # joblib's convention for negatives
        return max(1, cores // max(1, workers))
    if "submitit" in target:
        return max(1, int(launcher.get("cpus_per_task") or 1))
    if "ray" in target.lower():
        remote = (launcher.get("ray") or {}).get("remote") or {}
        return max(1, int(remote.get("num_cpus") or 1))
    return cores  # in-process launcher: one job at a time


def store_root(store: str) -> Path:
    path = Path(store)
    return path if path.is_absolute() else Path(HydraConfig.get().runtime.cwd) / path


def _discard(directory: Path, base_dir: Path, made_of: set[str]) -> None:
    """sweep.discard, with the job's log file closed first (it is one of Hydra's files there)."""
    if directory.is_dir() and {p.name for p in directory.iterdir()} <= made_of:
        logging.shutdown()
    sweep.discard(directory, base_dir, made_of)


def _exit_with_error(ex: BaseException, job_dir: Path, base_dir: Path) -> None:
    """A single run's bad config or input: one line and exit status 2, from inside the job (Hydra
    would otherwise add its own report of the job's error), and nothing left behind: the run
    directory Hydra made for the job (its .hydra/ and an empty log) is removed again."""
    if os.environ.get("RNNSWEEP_FULL_ERROR") == "1":
        raise ex
    _discard(job_dir, base_dir, {".hydra", sweep.LOG_NAME})
    print(f"rnnsweep: error: {ex}", file=sys.stderr)
    raise SystemExit(2) from ex


# The sweep directory a multirun of this process made (not one it found): a sweep that fails to
# compose its first job removes it again (see main).
_new_sweep_dir: list[Path] = []


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def app(cfg: DictConfig) -> float:
    job = current_job()
    if not is_multirun() and HydraConfig.get().sweeper.get("params"):
        # An experiment that defines a grid (experiment=paper_grid) only sweeps it with -m.
        print(f"rnnsweep: warning: {', '.join(f'{k}={v}' for k, v in job.choices.items() if k == 'experiment')}"
              " defines a sweep; without -m this trains one job, with each swept key at its default. "
              "Add -m to run the grid.", file=sys.stderr)
    try:
        settings = config.validate(cfg)  # fails here, before any data is loaded
        job.threads = threads_per_job()
        from .run import preflight

        problem = preflight(settings)  # what the config asks of this machine (CUDA, ...)
        if problem:
            raise config.ConfigError(problem)
    except config.ConfigError as ex:
        if not is_multirun():
            _exit_with_error(ex, job.dir, job.base_dir)
        # One invalid combination must not end a sweep.
        sweep.write_job_file(job.dir, job.overrides, outcome="invalid", status="invalid", reason=str(ex))
        log.warning("%s: invalid, skipped: %s", job.name, ex)
        return math.nan

    from .data import DataError
    from .run import run_job

    try:
        result = run_job(settings, job, store_root(settings.ledger.store), raise_on_failure=not is_multirun())
    except DataError as ex:  # bad input of a single run: one line, as for a bad config
        _exit_with_error(ex, job.dir, job.base_dir)
    except Exception as ex:  # noqa: BLE001
        if not is_multirun():
            raise
        # Whatever a job raises, anywhere, it is one failed job: the sweep goes on, and ends with
        # its summary, its report and a non-zero exit.
        log.error("%s: failed: %s: %s", job.name, type(ex).__name__, ex, exc_info=True)
        sweep.write_job_file(job.dir, job.overrides, outcome="failed", status="failed",
                             error=f"{type(ex).__name__}: {ex}")
        return math.nan
    outcome = result.job
    if outcome["outcome"] == "plan":
        log.info("%s: would %s (run %s is %s)", job.name, outcome["action"], outcome["id"], outcome["status"])
        return math.nan
    record = result.record or {"metrics": {}, "status": outcome["status"]}
    where = job.dir / store.RECORD
    m = record["metrics"]
    if record["status"] == "completed":
        log.info(
            "%s: %s, test acc %.4f, macro-F1 %.4f, %.0f examples/s -> %s",
            job.name, outcome["outcome"], m["test/acc"], m["test/macro_f1"], m["train/examples_per_s"], where,
        )
        if outcome["outcome"] == "skipped" and not is_multirun():
            log.info("(already in the store at %s; ledger.force=true retrains)", outcome["store_dir"])
    else:
        log.warning("%s: %s -> %s", job.name, record["status"], where)
    # Sweepers that optimise (Optuna) read this; NaN marks a trial that produced no result.
    return m.get("val/acc", math.nan)


def _release_parallel_workers() -> None:
    """launcher=parallel keeps its loky worker processes for reuse, and the interpreter's exit
    waits several seconds for them to wind down; a finished sweep reuses nothing, so stop them now."""
    reusable = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(reusable, "_executor", None)  # None unless this process started workers
    if executor is not None:
        executor.shutdown(wait=False, kill_workers=True)


class SweepSummary(Callback):
    """At the end of a multirun: what every job did, the report, and a non-zero exit if any failed."""

    def __init__(self) -> None:
        self.started: float | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.started = time.time()
        sweep_dir = Path(config.hydra.sweep.dir).absolute()
        if not sweep_dir.exists():
            _new_sweep_dir.append(sweep_dir)

    @staticmethod
    def _report(sweep_dir: Path, cfg: DictConfig, jobs: list[dict]) -> None:
        from . import report  # pandas and matplotlib: only the process that ends the sweep pays

        _sweep_logger()
        records = [str(p) for p in (Path(j["job_dir"]) / store.RECORD for j in jobs) if p.is_file()]
        # A report that cannot be built must not turn a finished sweep into a failed one.
        try:
            result = report.build(records, sweep_dir)
        except Exception as ex:  # noqa: BLE001
            _sweep_logger().error("could not build the sweep report: %s: %s", type(ex).__name__, ex)
            return
        print(f"\n{result.table_markdown}\nreport: {sweep_dir / 'report.md'}", flush=True)
        for warning in result.warnings:
            _sweep_logger().warning("report: %s", warning)
        logger = OmegaConf.to_container(cfg.logger, enum_to_str=True)
        if logger["backend"] == "wandb" and logger["mode"] != "disabled":
            from .report import wandb_compare

            try:
                wandb_compare.publish(result, sweep_dir, project=logger["project"], entity=logger["entity"],
                                      mode=logger["mode"])
            except Exception as ex:  # noqa: BLE001
                _sweep_logger().error("could not log the sweep comparison to W&B: %s: %s", type(ex).__name__, ex)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        _release_parallel_workers()
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = sweep.read_jobs(sweep_dir, since=self.started)
        if not jobs:
            return
        text = sweep.summarize(jobs)
        (sweep_dir / "summary.txt").write_text(text + "\n")
        print(f"\nSweep summary ({sweep_dir}):\n{text}", flush=True)
        if not config.ledger.plan and any(j["status"] == "completed" for j in jobs):
            self._report(sweep_dir, config, jobs)
        failed = [j for j in jobs if j["outcome"] == "failed"]
        if failed and config.ledger.fail_on_error:
            print(f"rnnsweep: error: {len(failed)} job(s) failed (logs and records above; "
                  "ledger.fail_on_error=false keeps the exit status 0)", file=sys.stderr)
            raise SystemExit(1)
        if all(j["outcome"] == "invalid" for j in jobs):
            print("rnnsweep: error: every job of the sweep was invalid; nothing ran", file=sys.stderr)
            raise SystemExit(2)


# Hydra plugins behind our launcher/search presets, and the extra that installs each.
PLUGIN_EXTRAS = {
    "hydra/launcher": {"joblib": "parallel", "submitit_local": "slurm", "submitit_slurm": "slurm", "ray": "ray"},
    "hydra/sweeper": {"optuna": "optuna"},
}


def _first_line(ex: BaseException) -> str:
    """The message's first line, and its reason where the first line only introduces it (Hydra's
    "In 'launcher/parallel': ConfigKeyError raised while composing config:")."""
    lines = [line.strip() for line in str(ex).strip().splitlines() if line.strip()]
    if not lines:
        return type(ex).__name__
    if lines[0].endswith(":") and len(lines) > 1:
        return f"{lines[0]} {lines[1]}"
    return lines[0]


def describe(ex: BaseException) -> str:
    """One line: what is wrong and, where we know it, what is expected instead."""
    if isinstance(ex, MissingConfigException) and ex.missing_cfg_file and ex.options is not None:
        group, _, option = ex.missing_cfg_file.rpartition("/")
        message = f"unknown option '{option}' for config group '{group}' (choose from: {', '.join(ex.options)})"
        if group in PLUGIN_EXTRAS and option in PLUGIN_EXTRAS[group]:
            message += f"; install its Hydra plugin: pip install 'rnnsweep[{PLUGIN_EXTRAS[group][option]}]'"
        return message
    if isinstance(ex, OverrideParseException):
        return f"cannot parse override '{ex.override}': {_first_line(ex)}"
    parts = [_first_line(ex).removeprefix("Error merging override ")]
    cause = ex.__cause__
    unknown_key = False
    while cause is not None and isinstance(cause, (OmegaConfBaseException, HydraException)):
        parts.append(_first_line(cause))
        unknown_key = unknown_key or isinstance(cause, (ConfigAttributeError, ConfigKeyError))
        cause = cause.__cause__
    message = ": ".join(p.rstrip(".") for p in parts)
    preset = re.match(r"In 'launcher/(\w+)'", message)
    if preset:
        message += (f" (launcher={preset.group(1)} picks its Hydra launcher itself: leave out hydra/launcher=..., "
                    "or use hydra/launcher=... without a launcher preset)")
    overridden = re.match(r"Could not override '([\w.]+)'", parts[0])
    if unknown_key and overridden:
        hint = config.unknown_key_hint(overridden.group(1))
        message += f" {hint}" if hint.startswith("(") else f"; {hint}" if hint else ""
    return message


# Hydra's flags that take no value: argparse refuses them after the first override
# (`rnnsweep model=gru -m`), with a screen of usage; they mean the same anywhere.
_BARE_FLAGS = ("-m", "--multirun", "--resolve", "-h", "--help", "--hydra-help", "--version")


def main() -> None:
    """Console-script entry: Hydra's CLI, with user errors reported in one line."""
    args = sys.argv[1:]
    if "--version" in args:  # Hydra's own flag would print Hydra's version
        print(f"rnnsweep {__version__} (hydra-core {hydra.__version__})")
        return
    flags = [a for a in args if a in _BARE_FLAGS]
    sys.argv[1:] = flags + [a for a in args if a not in _BARE_FLAGS]
    full_traces = os.environ.get("HYDRA_FULL_ERROR") == "1"
    if full_traces:
        os.environ["RNNSWEEP_FULL_ERROR"] = "1"
    # Let exceptions reach us instead of Hydra's multi-line report; we print our own line.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        app()
    except (config.ConfigError, HydraException, OmegaConfBaseException) as ex:
        if full_traces:
            raise
        for sweep_dir in _new_sweep_dir:  # made, then no job could be composed: nothing to keep
            _discard(sweep_dir, Path.cwd(), {"multirun.yaml"})
        print(f"rnnsweep: error: {describe(ex)}", file=sys.stderr)
        sys.exit(2)
    except OSError as ex:  # Hydra writing a run or sweep directory it cannot create, a full disk
        if full_traces or not ex.filename:
            raise
        why = "a file, not a directory" if os.path.isfile(ex.filename) else ex.strerror or ex
        print(f"rnnsweep: error: {ex.filename}: {why}", file=sys.stderr)
        sys.exit(2)
    except Exception as ex:
        from .run import RunFailed

        if full_traces or not isinstance(ex, RunFailed):
            raise
        print(f"rnnsweep: error: {describe(ex)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("rnnsweep: interrupted", file=sys.stderr)
        sys.exit(130)

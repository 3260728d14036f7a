"""The `rnnsweep` command: the only place that knows Hydra.

Hydra composes `conf/` and the command line; this module validates the result, tells the run
where it lives and what it is called, and turns every error a user can cause into one line.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from . import config, job

log = logging.getLogger("rnnsweep")


def config_dir() -> str:
    """`conf/` inside an installed wheel, else the repository's top-level `conf/`."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"rnnsweep's config directory is missing (looked in {here / 'conf'} and {here.parent / 'conf'})")


config.register_schemas()


def run_context() -> job.RunContext:
    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra/") and k != "rnnsweep_schema"}
    multirun = hc.mode == RunMode.MULTIRUN
    return job.RunContext(
        out_dir=Path(hc.runtime.output_dir),
        name=",".join(overrides) or "defaults",
        group=Path(hc.sweep.dir).name if multirun else None,
        job_type="sweep" if multirun else "train",
        choices=choices,
        overrides=overrides,
    )


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def app(cfg: DictConfig) -> float | None:
    try:
        settings = config.validate(cfg)  # fails here, before any data is loaded
    except config.ConfigError as ex:
        # Exit from inside the job: Hydra would otherwise add its own report of the job's error.
        if os.environ.get("RNNSWEEP_FULL_ERROR") == "1":
            raise
        print(f"rnnsweep: error: {ex}", file=sys.stderr)
        raise SystemExit(2) from ex
    ctx = run_context()
    record = job.run(settings, ctx)
    m = record["metrics"]
    if record["status"] == "completed":
        log.info(
            "%s: test acc %.4f, macro-F1 %.4f, %.0f examples/s -> %s",
            ctx.name, m["test/acc"], m["test/macro_f1"], m["train/examples_per_s"], ctx.out_dir / "metrics.json",
        )
    else:
        log.warning("%s: %s -> %s", ctx.name, record["status"], ctx.out_dir / "metrics.json")
    # Sweepers that optimise (e.g. Optuna) read the return value.
    return m.get("val/acc")


def _first_line(ex: BaseException) -> str:
    text = str(ex).strip()
    return text.splitlines()[0].strip() if text else type(ex).__name__


def describe(ex: BaseException) -> str:
    """One line: what is wrong and, where we know it, what is expected instead."""
    if isinstance(ex, MissingConfigException) and ex.missing_cfg_file and ex.options:
        group, _, option = ex.missing_cfg_file.rpartition("/")
        return f"unknown option '{option}' for config group '{group}' (choose from: {', '.join(ex.options)})"
    if isinstance(ex, OverrideParseException):
        return f"cannot parse override '{ex.override}': {_first_line(ex)}"
    parts = [_first_line(ex).removeprefix("Error merging override ")]
    cause = ex.__cause__
    while cause is not None and isinstance(cause, (OmegaConfBaseException, HydraException)):
        parts.append(_first_line(cause))
        cause = cause.__cause__
    return ": ".join(p.rstrip(".") for p in parts)


def main() -> None:
    """Console-script entry: Hydra's CLI, with user errors reported in one line."""
    full_traces = os.environ.get("HYDRA_FULL_ERROR") == "1"
    if full_traces:
        os.environ["RNNSWEEP_FULL_ERROR"] = "1"
    # Let exceptions reach us instead of Hydra's multi-line report; we print our own line.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        app()
    except (config.ConfigError, HydraException, OmegaConfBaseException, job.RunFailed) as ex:
        if full_traces:
            raise
        print(f"rnnsweep: error: {describe(ex)}", file=sys.stderr)
        sys.exit(2 if not isinstance(ex, job.RunFailed) else 1)
    except KeyboardInterrupt:
        print("rnnsweep: interrupted", file=sys.stderr)
        sys.exit(130)

"""rnnsweep from Python (a notebook, a script): train, load, evaluate, and the table of runs.

    import rnnsweep
    rec = rnnsweep.train("model=gru", "train.epochs=2")   # what `rnnsweep model=gru train.epochs=2` trains
    clf = rnnsweep.load(rec["id"])                        # its exported model
    clf.predict(["Stocks rally as oil falls"])
    ev = rnnsweep.evaluate(rec["id"], "data=csv", "data.train=other.csv")
    df = rnnsweep.runs("outputs/store")                   # one row per result record

`train` composes conf/ with Hydra's compose API, exactly as the `rnnsweep` command composes it,
and runs the job through run.run_job with the same store: a run trained here and one started
from the command line with the same overrides have one identity, one store entry, and the
second is skipped. Hydra's global state is left as it was found, so this works inside a test
session or a Hydra app that composes too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from .composition import compose

if TYPE_CHECKING:  # the heavy modules load when used, not when `rnnsweep` is imported
    import pandas as pd

    from .predict import Classifier


def _overrides(items: Iterable[Any]) -> list[str]:
    """Overrides as strings; a list or tuple among them is spliced in (train(["model=gru"]) works too)."""
    out: list[str] = []
    for item in items:
        if isinstance(item, (list, tuple)):
            out.extend(_overrides(item))
        elif isinstance(item, str):
            out.append(item)
        else:
            raise TypeError(f"overrides are strings like 'model=gru', not {type(item).__name__} ({item!r})")
    return out


def train(*overrides: str | Sequence[str], dir: str | os.PathLike | None = None,
          base_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train what `rnnsweep <overrides>` trains, and return its result record (a dict).

    `overrides`: the command line's, e.g. train("model=gru", "topology=bi", "train.epochs=2").
    The run has the command's identity and store (ledger.store, relative to `base_dir`): one the
    store already holds completed is not trained again, its record is returned (ledger.force=true
    retrains). `dir`: the job's directory (job.json, a copy of the record, .hydra/); default: the
    command's outputs/run/<time> under `base_dir`. `base_dir`: where relative paths start (the
    current directory by default), as the directory the command is started in.

    Raises config.ConfigError for a bad override or value, data.DataError for bad input (both
    one line, as the command prints them) and run.RunFailed when training fails. With
    ledger.plan=true nothing trains and the job's plan (job.json's content) is returned.
    """
    from omegaconf import OmegaConf, open_dict

    from . import cli, config, sweep
    from .data import DataError
    from .run import Job, preflight, run_job

    given = _overrides(overrides)
    cfg = compose(given, hydra_config=True)
    hc = cfg.hydra
    base = Path(base_dir).expanduser().absolute() if base_dir is not None else Path.cwd()
    job_dir = Path(dir).expanduser() if dir is not None else sweep.fresh_dir(base / str(hc.run.dir))
    job_dir = job_dir if job_dir.is_absolute() else base / job_dir
    # What cli.current_job reads from HydraConfig, from the composed hydra node.
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra/") and k != "rnnsweep_schema"}
    task_overrides = list(hc.overrides.task)
    with open_dict(cfg):
        del cfg["hydra"]
    settings = config.validate(cfg)  # before anything is written: a mistake leaves nothing behind
    problem = preflight(settings)
    if problem:
        raise config.ConfigError(problem)
    job = Job(dir=job_dir, name=",".join(o for o in task_overrides if cli._names_the_run(o)) or "defaults",
              sweep=None, choices=choices, overrides=task_overrides, base_dir=base,
              threads=cli.available_cores())  # the basic launcher's share: every core this process may use
    store_root = Path(settings.ledger.store).expanduser()
    store_root = store_root if store_root.is_absolute() else base / store_root
    (job_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, job_dir / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(task_overrides), job_dir / ".hydra" / "overrides.yaml")
    try:
        result = run_job(settings, job, store_root, raise_on_failure=True)
    except (DataError, config.ConfigError):
        sweep.discard(job_dir, base, {".hydra"})
        raise
    if result.record is not None:
        return result.record
    if result.job.get("outcome") == "plan":
        return result.job
    raise RuntimeError(f"run {result.job.get('id')} is still training in another process "
                       f"(waited ledger.busy_wait={settings.ledger.busy_wait}s); see {job_dir / sweep.JOB_FILE}")


def load(run: str | os.PathLike, store: str | os.PathLike | None = None, **options: Any) -> "Classifier":
    """A completed run's model: see rnnsweep.predict.load (`run`: id or unique prefix, store
    entry, job or model directory; `store`: where ids are looked up, default outputs/store)."""
    from .predict import load as load_model

    return load_model(run, store, **options)


def evaluate(run: str | os.PathLike, *overrides: str | Sequence[str], split: str = "test",
             store: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
             **options: Any) -> dict[str, Any]:
    """Score a trained run on labelled data and write an evaluation record; returns it.

    `overrides`: data overrides (`data=csv`, `data.train=other.csv`, ...); none: the run's own
    data. `split`: test (default), val, train or all. See rnnsweep.evaluation.evaluate_run.
    """
    from .evaluation import evaluate_run

    return evaluate_run(run, _overrides(overrides), split=split, store=store, out=out, **options)


def _row(record: dict[str, Any], path: Path) -> dict[str, Any]:
    from .report.records import flatten

    row: dict[str, Any] = {"id": record.get("id"), "status": record.get("status"), "name": record.get("name"),
                           "group_id": record.get("group_id")}
    row.update({k: v for k, v in (record.get("choices") or {}).items()})
    row.update({f"config.{k}": v for k, v in flatten(record["config"]).items()})
    row.update(record["metrics"])
    row.update({"started_at": record.get("started_at"), "finished_at": record.get("finished_at"),
                "model_dir": (record.get("model") or {}).get("dir") if isinstance(record.get("model"), dict) else None,
                "path": str(path)})
    return row


def runs(path: str | os.PathLike = "outputs/store") -> "pd.DataFrame":
    """One row per result record (metrics.json) found under `path`: a run store, a sweep
    directory, any directory (searched recursively) or one record file. A run found twice (a
    sweep's copy and the store's original) is one row; files that are not usable records are
    left out, as rnnsweep-report leaves them out. Columns:

    - `id`, `status` (completed, diverged, failed, interrupted, running), `name`, `group_id`;
    - one column per config group with its choice: `model`, `batching`, `topology`, `data`, ...;
    - every config key, flattened and prefixed: `config.model.arch`, `config.train.epochs`, ...
      (lists as JSON text);
    - every metric under its own name: `test/acc`, `test/macro_f1`, `val/acc`, `train/loss`,
      `train/examples_per_s`, `wall_s`, `params`, ...;
    - `started_at`, `finished_at` (ISO 8601, UTC), `model_dir`, `path` (the record file).

    Rows are ordered by `started_at`. No records at all: an empty DataFrame with those first
    columns. A `path` that does not exist raises FileNotFoundError.
    """
    import json

    import pandas as pd

    from .report.records import record_paths
    from .store import record_problem

    where = Path(path).expanduser()
    if not where.exists():
        raise FileNotFoundError(f"{where}: no such file or directory")
    rows, seen = [], set()
    for file in record_paths([str(where)]):
        try:
            record = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if record_problem(record):
            continue
        key = record.get("id") or str(file.resolve())
        if key in seen:
            continue
        seen.add(key)
        rows.append(_row(record, file))
    if not rows:
        return pd.DataFrame(columns=["id", "status", "name", "group_id", "started_at", "finished_at", "path"])
    frame = pd.DataFrame(rows)
    return frame.sort_values("started_at", kind="stable", na_position="last").reset_index(drop=True)

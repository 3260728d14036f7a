"""Result records on disk -> one pandas table, one row per run.

Accepts sweep directories, run-store directories, single record files and glob patterns; a run
found twice (a sweep's copy and the store's original) counts once, as its completed record where
one of the copies is (a failed attempt's copy beside a later rerun's).
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from ..store import RECORD as RECORD_NAME
from ..store import record_problem

METRICS = ("test/acc", "test/macro_f1", "val/acc", "params", "train/seconds", "train/examples_per_s", "wall_s")


class ReportError(ValueError):
    """Nothing to report on, or an input that is not what it claims to be."""


def record_paths(inputs: Iterable[str]) -> list[Path]:
    found: list[Path] = []
    for item in inputs:
        matches = sorted(glob.glob(item)) if any(ch in item for ch in "*?[") else [item]
        if not matches:
            raise ReportError(f"{item}: no file or directory matches")
        for match in matches:
            path = Path(match)
            if path.is_file():
                found.append(path)
            elif path.is_dir():
                found.extend(sorted(path.rglob(RECORD_NAME)))
            else:
                raise ReportError(f"{path}: no such file or directory")
    return found


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, list):
            out[f"{prefix}{key}"] = json.dumps(value)  # hashable, comparable
        else:
            out[f"{prefix}{key}"] = value
    return out


def load_runs(inputs: Iterable[str]) -> tuple[pd.DataFrame, dict[str, list[dict[str, float]]], list[str]]:
    """(runs, histories, skipped): one row per distinct run; `histories` maps a run's key to its
    epochs; `skipped` says which files were left out, and why (damaged, or not a record)."""
    rows, histories, seen, skipped = [], {}, {}, []
    for path in record_paths(inputs):
        try:
            rec = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as ex:
            skipped.append(f"{path}: left out, not a JSON result record ({ex})")
            continue
        problem = record_problem(rec)
        if problem:
            skipped.append(f"{path}: left out, not a usable result record ({problem})")
            continue
        key = rec.get("id") or str(path.resolve())
        if key in seen and not _newer(rec, seen[key]):
            continue  # the same run found again (a sweep's copy and the store's original)
        row: dict[str, Any] = {"run": key, "status": rec["status"], "path": str(path),
                               "finished_at": rec.get("finished_at")}
        row.update({f"choice:{k}": v for k, v in (rec.get("choices") or {}).items() if v is not None})
        row.update({f"cfg:{k}": v for k, v in flatten(rec["config"]).items()})
        row.update({f"metric:{k}": rec["metrics"].get(k) for k in METRICS})
        env = rec.get("env") or {}
        row.update({
            "env:git_commit": env.get("git_commit"),
            "env:rnnsweep": env.get("rnnsweep"),
            "env:torch": env.get("torch"),
            "env:device": env.get("device"),
            "wandb:id": (rec.get("wandb") or {}).get("id") if isinstance(rec.get("wandb"), dict) else None,
            "data:fingerprint": (rec.get("data") or {}).get("fingerprint"),
        })
        if key in seen:  # a later attempt of a run found before (a rerun, ledger.force): it wins
            rows = [r for r in rows if r is not seen[key]]
        seen[key] = row
        rows.append(row)
        histories[key] = rec.get("history") or []
    if not rows:
        why = f" ({skipped[0]}{' and more' if len(skipped) > 1 else ''})" if skipped else ""
        raise ReportError(f"no usable result records ({RECORD_NAME}) under: {', '.join(inputs)}{why}")
    runs = pd.DataFrame(rows)
    return runs, histories, skipped


def _newer(rec: dict[str, Any], seen: dict[str, Any]) -> bool:
    """Whether `rec` replaces the copy of the same run read before: a completed record over one
    that is not, and among completed ones the later attempt (ledger.force retrains a run; an old
    sweep directory keeps the first attempt's copy, the store the last)."""
    done, seen_done = rec["status"] == "completed", seen["status"] == "completed"
    if done != seen_done:
        return done
    return str(rec.get("finished_at") or "") > str(seen.get("finished_at") or "")


def apply_where(runs: pd.DataFrame, where: list[str]) -> pd.DataFrame:
    """Keep runs matching every `key=value` (a config group's choice or a dotted config key)."""
    for cond in where:
        key, sep, value = cond.partition("=")
        if not sep:
            raise ReportError(f"--where {cond}: expected key=value, e.g. model=lstm or model.hidden_dim=64")
        column = f"choice:{key}" if f"choice:{key}" in runs else f"cfg:{key}"
        if column not in runs:
            raise ReportError(f"--where {cond}: no run has a choice or config key '{key}'")
        runs = runs[runs[column].astype(str).str.lower() == value.lower()]
    if runs.empty:
        raise ReportError(f"no run matches --where {' '.join(where)}")
    return runs

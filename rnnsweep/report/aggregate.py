"""Runs -> groups: which keys were swept, and mean / std / 95% CI of each metric over seeds."""

from __future__ import annotations

import math

import pandas as pd

from ..store import CHOICE_ORDER, RESULT_GROUPS, is_result_key
from .records import METRICS

# Choices (in CHOICE_ORDER) are read before raw config keys; a column that the columns already
# chosen determine (model.arch once `model` is a column) adds nothing and is left out. Only the
# groups that change what a run computes (RESULT_GROUPS) can be columns: not logger or launcher.
MISSING = "–"  # a grouping key a run's record does not have (a csv run has no data.variant)

# Two-sided 95% critical values of Student's t for 1..30 degrees of freedom.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042)


def t95(dof: int) -> float:
    return _T95[dof - 1] if 1 <= dof <= len(_T95) else 1.960


def label(column: str) -> str:
    return column.split(":", 1)[1]


def varies_within(runs: pd.DataFrame, column: str, given: list[str]) -> bool:
    """Whether `column` takes more than one value among runs that agree on every `given` column."""
    values = runs[column].astype(str)
    if not given:
        return values.nunique() > 1
    return bool((values.groupby([runs[g].astype(str) for g in given]).nunique() > 1).any())


def swept_columns(runs: pd.DataFrame) -> list[str]:
    """The columns that tell the runs' configurations apart, the seed excepted."""
    candidates = [f"choice:{g}" for g in CHOICE_ORDER if f"choice:{g}" in runs]
    candidates += sorted(c for c in runs if c.startswith("choice:") and c not in candidates
                         and label(c) in RESULT_GROUPS)
    candidates += sorted(
        c for c in runs if c.startswith("cfg:") and c != "cfg:seed" and is_result_key(label(c))
    )
    chosen: list[str] = []
    for column in candidates:
        if varies_within(runs, column, chosen):
            chosen.append(column)
    return chosen


def resolve_keys(runs: pd.DataFrame, keys: list[str]) -> list[str]:
    """User-named keys (`model`, `model.hidden_dim`) -> columns."""
    out = []
    for key in keys:
        for column in (f"choice:{key}", f"cfg:{key}"):
            if column in runs:
                out.append(column)
                break
        else:
            raise ValueError(f"no run has a choice or config key '{key}'")
    return out


def _text(column: pd.Series) -> pd.Series:
    """A grouping column as text; a run without the key gets MISSING (groupby would drop it)."""
    return column.astype(object).where(column.notna(), MISSING).astype(str)


def _order(value: str) -> tuple:
    """Numbers by value (64 before 128), then text."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def groups_of(frame: pd.DataFrame, keys: list[str]):
    """(values tuple, rows) per group of `frame` by `keys`, sorted (numbers by value); one group
    of all rows if no keys. Every row is in a group, those without a key too."""
    if not keys:
        return [((), frame)]
    groups = [(v if isinstance(v, tuple) else (v,), g)
              for v, g in frame.groupby([_text(frame[k]) for k in keys], sort=False, dropna=False)]
    return sorted(groups, key=lambda item: tuple(_order(v) for v in item[0]))


def aggregate(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per group of completed runs: n, and mean / std / ci95 of every metric.

    Runs that did not complete are left out of the means; `excluded` counts them per group.
    """
    not_done = {values: int((group["status"] != "completed").sum()) for values, group in groups_of(runs, keys)}
    rows = []
    for values, group in groups_of(runs[runs["status"] == "completed"], keys):
        row: dict[str, object] = {label(k): v for k, v in zip(keys, values)}
        row["n"] = len(group)
        for m in METRICS:
            series = pd.to_numeric(group[f"metric:{m}"], errors="coerce").dropna()
            std = float(series.std(ddof=1)) if len(series) > 1 else math.nan
            row[f"{m}:mean"] = float(series.mean()) if len(series) else math.nan
            row[f"{m}:std"] = std
            row[f"{m}:ci95"] = t95(len(series) - 1) * std / math.sqrt(len(series)) if len(series) > 1 else math.nan
            row[f"{m}:n"] = len(series)  # fewer than n where records lack the metric
        row["excluded"] = not_done[values]
        # Seeds a row holds more than once: its runs differ in something the columns do not show
        # (a version, a device, a thread count), and its spread is not one over seeds.
        seeds = group["cfg:seed"] if "cfg:seed" in group else pd.Series(dtype=object)
        row["repeated_seeds"] = int(len(seeds) - seeds.nunique(dropna=False))
        rows.append(row)
    return pd.DataFrame(rows)

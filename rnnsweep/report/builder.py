"""Read result records, aggregate them, write the tables, the plots and report.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from . import DEFAULT_PLOT_FORMATS, PLOT_FORMATS, aggregate, tables
from .records import METRICS, ReportError, apply_where, load_runs


@dataclass
class Report:
    table_markdown: str
    keys: list[str]  # the grouping keys, as named in the tables
    groups: pd.DataFrame
    runs: pd.DataFrame
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    provenance: dict[str, list[str]] = field(default_factory=dict)


def provenance(runs: pd.DataFrame, keys: list[str], groups: pd.DataFrame) -> tuple[dict[str, list[str]], list[str]]:
    """What produced the runs, and warnings where runs that are compared (`groups`, aggregated by
    `keys`) differ in it."""
    facts, warnings = {}, []
    for column, what in (("env:git_commit", "commits"), ("env:rnnsweep", "rnnsweep versions"),
                         ("env:torch", "torch versions"), ("data:fingerprint", "data fingerprints")):
        values = sorted({str(v) for v in runs[column].dropna()}) if column in runs else []
        facts[what] = values
        if column == "data:fingerprint":
            if any(group[column].nunique() > 1 for _, group in aggregate.groups_of(runs, keys)):
                warnings.append("runs averaged together were trained on different data (data fingerprints differ)")
        elif len(values) > 1:
            warnings.append(f"the runs come from {len(values)} different {what}: {', '.join(values)}")
    labels = [aggregate.label(k) for k in keys]
    repeated = [" ".join(f"{k}={row[k]}" for k in labels) or "the one row"
                for _, row in groups.iterrows() if row["repeated_seeds"]] if not groups.empty else []
    if repeated:
        warnings.append(f"rows holding a seed more than once (runs that differ in something the columns do not "
                        f"show; their ± is not a spread over seeds): {'; '.join(repeated)}")
    dirty = [v for v in facts["commits"] if v.endswith("-dirty")]
    if dirty:
        warnings.append(f"runs from a checkout with uncommitted changes: {', '.join(dirty)}")
    return facts, warnings


def build(
    inputs: list[str],
    out_dir: Path | None,
    *,
    where: list[str] = (),
    rows: list[str] | None = None,
    cols: str | None = None,
    metric: str = "test/acc",
    make_plots: bool = True,
    plot_formats: tuple[str, ...] = DEFAULT_PLOT_FORMATS,
) -> Report:
    """Read the records under `inputs`, aggregate, and (if `out_dir`) write every output there."""
    if metric not in METRICS:
        raise ReportError(f"metric {metric!r}: not one the records hold (choose from: {', '.join(METRICS)})")
    unknown = [f for f in plot_formats if f not in PLOT_FORMATS]
    if unknown or not plot_formats:
        raise ReportError(f"plot formats {list(plot_formats)}: expected one or more of {', '.join(PLOT_FORMATS)}")
    runs, histories, skipped = load_runs(inputs)
    if where:
        runs = apply_where(runs, list(where))
    columns = aggregate.resolve_keys(runs, rows) if rows else aggregate.swept_columns(runs)
    col_column = aggregate.resolve_keys(runs, [cols])[0] if cols else None
    if col_column and col_column not in columns:
        columns.append(col_column)
    groups = aggregate.aggregate(runs, columns)
    keys = [aggregate.label(c) for c in columns]
    table_md = tables.markdown(groups, keys, runs) if not groups.empty else tables.footnote(runs) + "\n"
    if col_column and not groups.empty:
        table_md += "\n" + tables.pivot_markdown(groups, [k for k in keys if k != aggregate.label(col_column)],
                                                 aggregate.label(col_column), metric)
    facts, warnings = provenance(runs, columns, groups)
    if rows:  # --rows chosen by hand: say which swept keys its rows average over
        merged = [aggregate.label(c) for c in aggregate.swept_columns(runs) if c not in columns
                  and aggregate.varies_within(runs[runs["status"] == "completed"], c, columns)]
        if merged:
            warnings.append(f"--rows {','.join(rows)}: each row averages runs that differ in {', '.join(merged)}")
    warnings = skipped + warnings
    report = Report(table_md, keys, groups, runs, warnings=warnings, provenance=facts)
    if out_dir is None:
        return report

    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {
        "table.md": table_md,
        "table.csv": tables.groups_csv(groups) if not groups.empty else "",
        "runs.csv": tables.runs_csv(runs, columns),
    }
    if not groups.empty:
        outputs["table.tex"] = tables.latex(groups, keys, runs)
    for name, text in outputs.items():
        (out_dir / name).write_text(text)
        report.files.append(out_dir / name)
    figures: list[Path] = []
    if make_plots and not groups.empty:
        from . import plots  # matplotlib: only when there are plots to draw

        figures += plots.accuracy_bars(groups, keys, out_dir, plot_formats)
        figures += plots.learning_curves(runs, histories, columns, out_dir, plot_formats)
        figures += plots.accuracy_vs_time(runs, columns, out_dir, plot_formats)
    report.files += figures
    (out_dir / "report.md").write_text(_report_markdown(report, inputs, figures))
    report.files.append(out_dir / "report.md")
    return report


def _describe_inputs(inputs: list[str]) -> str:
    if len(inputs) <= 3:
        return ", ".join(inputs)
    parents = {str(Path(i).parent.parent) for i in inputs}
    return f"{len(inputs)} records under {parents.pop()}" if len(parents) == 1 else f"{len(inputs)} inputs"


def _report_markdown(report: Report, inputs: list[str], figures: list[Path]) -> str:
    lines = [
        "# rnnsweep report",
        "",
        f"{len(report.runs)} runs from {_describe_inputs(inputs)}; "
        f"grouped by {', '.join(report.keys) or 'nothing (one group)'}.",
        f"Written {datetime.now(timezone.utc).isoformat(timespec='seconds')}.",
        "",
        "## Results",
        "",
        report.table_markdown,
        "Files: `table.md`, `table.tex` (booktabs fragment), `table.csv` (one row per group), "
        "`runs.csv` (one row per run, failed and diverged included).",
        "",
    ]
    if figures:
        pngs = [f for f in figures if f.suffix == ".png"]
        lines += ["## Plots", ""] + [line for f in pngs for line in (f"![{f.stem.replace('_', ' ')}]({f.name})", "")]
        lines += ["Files: " + ", ".join(f"`{f.name}`" for f in figures) + ".", ""]
    lines += ["## Provenance", ""]
    lines += [f"- {what}: {', '.join(values) or 'unknown'}" for what, values in report.provenance.items()]
    if report.warnings:
        lines += ["", "**Warnings**", ""] + [f"- {w}" for w in report.warnings]
    return "\n".join(lines) + "\n"

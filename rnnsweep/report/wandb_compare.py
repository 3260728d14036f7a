"""A sweep's comparison in W&B: a sweep-level run with the table and plots, and a W&B Report.

The Report is described by a plain JSON spec (`wandb_report.json` in the sweep directory) so it
can be written offline and saved later (`rnnsweep-report SWEEP_DIR --push-wandb`); saving needs
the optional `wandb-workspaces` package (`pip install 'rnnsweep[reports]'`) and an online W&B.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..tracking import resolve_wandb_mode
from .builder import Report

log = logging.getLogger(__name__)

SPEC_NAME = "wandb_report.json"
BAR_METRICS = (("test/acc", "Test accuracy"), ("test/macro_f1", "Test macro-F1"))


def config_keys(report: Report) -> list[str]:
    """The W&B config keys behind the report's grouping columns (a choice -> the keys it sets)."""
    runs, keys = report.runs, []
    for name in report.keys:
        if f"cfg:{name}" in runs:
            keys.append(name)
            continue
        under = sorted(c[4:] for c in runs if c.startswith(f"cfg:{name}.") and runs[c].astype(str).nunique() > 1)
        keys.extend(under)
    return keys


def report_spec(report: Report, sweep: str, project: str, entity: str | None) -> dict[str, Any]:
    return {
        "project": project,
        "entity": entity,
        "title": f"rnnsweep: {sweep}",
        "description": f"{len(report.runs)} runs of sweep {sweep}, grouped by their seed-free identity; "
        f"swept: {', '.join(report.keys) or 'nothing'}.",
        "runset": {"name": sweep, "filters": f"JobType = '{sweep}'", "groupby": ["group"]},
        "parallel_coordinates": [*(f"config:{k}" for k in config_keys(report)), "summary:test/acc"],
        "bar_charts": [{"title": title, "metric": metric, "groupby": "group"} for metric, title in BAR_METRICS],
        "table_markdown": report.table_markdown,
    }


def build_report(spec: dict[str, Any]):
    """The spec as a `wandb_workspaces` Report object (no network until `.save()`)."""
    import wandb_workspaces.reports.v2 as wr

    def column(ref: str):
        section, name = ref.split(":", 1)
        return wr.ParallelCoordinatesPlotColumn(metric=wr.Config(name) if section == "config" else wr.SummaryMetric(name))

    r = spec["runset"]
    panels = [wr.ParallelCoordinatesPlot(columns=[column(c) for c in spec["parallel_coordinates"]],
                                         title="Swept keys vs test accuracy")]
    panels += [wr.BarPlot(title=b["title"], metrics=[wr.SummaryMetric(b["metric"])], groupby=b["groupby"],
                          groupby_aggfunc="mean", groupby_rangefunc="stddev") for b in spec["bar_charts"]]
    return wr.Report(
        project=spec["project"],
        entity=spec["entity"] or "",
        title=spec["title"],
        description=spec["description"],
        blocks=[
            wr.H1(text=spec["title"]),
            wr.P(text=spec["description"]),
            wr.PanelGrid(
                runsets=[wr.Runset(project=spec["project"], entity=spec["entity"] or "", name=r["name"],
                                   filters=r["filters"], groupby=r["groupby"])],
                panels=panels,
            ),
            wr.MarkdownBlock(text=spec["table_markdown"]),
        ],
    )


def push_report(sweep_dir: Path) -> str:
    """Save the spec written earlier (offline) as a W&B Report; returns its URL."""
    spec_path = sweep_dir / SPEC_NAME
    if not spec_path.is_file():
        raise ValueError(f"{spec_path}: no W&B report spec (a sweep with logger=wandb writes one)")
    try:
        report = build_report(json.loads(spec_path.read_text()))
    except ImportError as ex:
        raise ValueError("saving W&B reports needs wandb-workspaces: pip install 'rnnsweep[reports]'") from ex
    report.save()
    return report.url


def publish(report: Report, sweep_dir: Path, *, project: str, entity: str | None, mode: str) -> None:
    """Log the comparison as a sweep-level W&B run; save the W&B Report when online."""
    import wandb

    sweep = sweep_dir.name
    spec = report_spec(report, sweep, project, entity)
    (sweep_dir / SPEC_NAME).write_text(json.dumps(spec, indent=2) + "\n")
    resolved, _ = resolve_wandb_mode(mode)
    run = wandb.init(project=project, entity=entity, mode=resolved, name=f"{sweep} comparison", job_type="report",
                     group=sweep, dir=str(sweep_dir), config={"sweep": sweep, "grouped_by": report.keys},
                     reinit="finish_previous",
                     # Built from records: a package scan (about 0.15 s) would describe nothing this run did.
                     settings=wandb.Settings(silent=True, x_save_requirements=False))
    try:
        payload: dict[str, Any] = {"comparison": wandb.Table(dataframe=report.groups)}
        for png in sorted(p for p in report.files if p.suffix == ".png"):
            payload[f"plots/{png.stem}"] = wandb.Image(str(png))
        run.log(payload)
    finally:
        run.finish()
    if resolved != "online":
        log.info("W&B report spec written to %s (save it later: rnnsweep-report %s --push-wandb)", sweep_dir / SPEC_NAME, sweep_dir)
        return
    try:
        log.info("W&B report: %s", push_report(sweep_dir))
    except ValueError as ex:
        log.warning("%s", ex)

"""A sweep's comparison in W&B: a sweep-level run with the table and plots, and a W&B Report.

The Report is described by a plain JSON spec (`wandb_report.json` in the sweep directory) so it
can be written offline and saved later (`rnnsweep-report SWEEP_DIR --push-wandb`); saving needs
the optional `wandb-workspaces` package (`pip install 'rnnsweep[reports]'`) and an online W&B.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd

from ..store import RECORD, read_record
from ..sweep import read_jobs
from ..tracking import resolve_wandb_mode, wandb_api_key_configured
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


def table_wandb_ids(report: Report) -> list[str]:
    """The W&B runs of the runs the table averages (completed ones), whichever sweep trained them:
    a run the store reused keeps the job type of the sweep that trained it."""
    runs = report.runs
    if "wandb:id" not in runs:
        return []
    done = runs[(runs["status"] == "completed") & runs["wandb:id"].notna()]
    return sorted(str(i) for i in done["wandb:id"])


def runs_without_wandb(report: Report) -> list[str]:
    """The table's runs that have no W&B run (trained with logger=none, then reused by the store):
    the W&B Report cannot show them."""
    runs = report.runs
    done = runs[runs["status"] == "completed"]
    missing = done["wandb:id"].isna() if "wandb:id" in done else pd.Series(True, index=done.index)
    return sorted(str(r) for r in done.loc[missing, "run"])


def report_spec(report: Report, sweep: str, project: str, entity: str | None) -> dict[str, Any]:
    ids, without = table_wandb_ids(report), runs_without_wandb(report)
    lacking = (f" {len(without)} more of the table's runs were trained without W&B and are not in it: "
               f"{', '.join(without)}." if without else "")
    return {
        "project": project,
        "entity": entity,  # null: the logged-in user's default entity, resolved when saved
        "title": f"rnnsweep: {sweep}",
        "description": f"{len(ids)} runs of sweep {sweep}, grouped by their seed-free identity; "
        f"swept: {', '.join(report.keys) or 'nothing'}.{lacking}",
        "runs_without_wandb": without,
        # Selected by id: the runs of the table, reused ones included. "Group" is W&B's run group
        # ("group" would be read as a config key of that name).
        "runset": {"name": sweep, "filters": f"ID in [{', '.join(repr(i) for i in ids)}]", "groupby": ["Group"]},
        "parallel_coordinates": [*(f"config:{k}" for k in config_keys(report)), "summary:test/acc"],
        "bar_charts": [{"title": title, "metric": metric, "groupby": "Group"} for metric, title in BAR_METRICS],
        "table_markdown": report.table_markdown,
    }


def build_report(spec: dict[str, Any], entity: str):
    """The spec as a `wandb_workspaces` Report object (no network until `.save()`); `entity`: the
    spec's, or where it names none, the user's default (push_report asks W&B for it)."""
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
        entity=entity,
        title=spec["title"],
        description=spec["description"],
        blocks=[
            wr.H1(text=spec["title"]),
            wr.P(text=spec["description"]),
            wr.PanelGrid(
                runsets=[wr.Runset(project=spec["project"], entity=entity, name=r["name"], filters=r["filters"],
                                   groupby=r["groupby"])],
                panels=panels,
            ),
            wr.MarkdownBlock(text=spec["table_markdown"]),
        ],
    )


def online_problem(sweep_dir: Path) -> str | None:
    """Why W&B cannot be reached from here, in one line, quickly; None when it can."""
    synced_first = f"(the sweep's offline runs go up first: rnnsweep-report {sweep_dir} --sync-wandb)"
    if not wandb_api_key_configured() and not os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return f"not logged in to W&B: run `wandb login` or set WANDB_API_KEY {synced_first}"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return None  # through a proxy a direct probe says nothing: W&B itself reports what fails
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    url = urlparse(base)
    outcome: list[str | None] = []

    def connect() -> None:  # name lookup has no timeout of its own: a thread bounds it
        try:
            socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), 3).close()
            outcome.append(None)
        except OSError as ex:
            outcome.append(ex.strerror or str(ex))

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(4)
    if not outcome or outcome[0] is not None:
        return f"cannot reach W&B at {base} ({outcome[0] if outcome else 'no answer in 4 s'}) {synced_first}"
    return None


def offline_runs(sweep_dir: Path) -> tuple[list[Path], list[Path]]:
    """(the offline W&B runs of the sweep's runs, reused ones included; the sweep's comparison run)."""
    runs: list[Path] = []
    for job in read_jobs(sweep_dir):
        record = read_record(Path(job["job_dir"]) / RECORD) or {}
        where = record.get("wandb") if isinstance(record.get("wandb"), dict) else None
        if where and where.get("mode") == "offline":
            runs += sorted(p for p in Path(where["dir"]).glob("offline-run-*") if p.name.endswith(f"-{where['id']}"))
    return runs, sorted((sweep_dir / "wandb").glob("offline-run-*"))


def sync_sweep(sweep_dir: Path, *, dry_run: bool) -> list[str]:
    """Upload every offline W&B run of the sweep (`wandb sync`), then save its Report; with
    `dry_run`, only say what would be synced. Returns the lines to print."""
    runs, comparison = offline_runs(sweep_dir)
    lines = [f"{len(runs)} offline run(s) of the sweep's jobs:", *(f"  {p}" for p in runs)]
    lines += [f"and {len(comparison)} comparison run(s) of the sweep:", *(f"  {p}" for p in comparison)]
    if dry_run:
        return lines + ["(dry run: nothing synced)"]
    problem = online_problem(sweep_dir)
    if problem:
        raise ValueError(problem.split(" (the sweep's")[0])
    if runs or comparison:  # a bare `wandb sync` would sync every run of the wandb directory
        wandb_cli = shutil.which("wandb") or str(Path(sys.executable).with_name("wandb"))
        done = subprocess.run([wandb_cli, "sync", *map(str, runs + comparison)], capture_output=True, text=True)
        if done.returncode != 0:
            raise ValueError(f"wandb sync failed: {(done.stderr.strip().splitlines() or ['no message'])[-1]}")
    return lines + [f"synced; W&B report: {push_report(sweep_dir)}"]


def push_report(sweep_dir: Path) -> str:
    """Save the spec written earlier (offline) as a W&B Report; returns its URL."""
    spec_path = sweep_dir / SPEC_NAME
    if not spec_path.is_file():
        raise ValueError(f"{spec_path}: no W&B report spec (a sweep with logger=wandb writes one)")
    problem = online_problem(sweep_dir)
    if problem:
        raise ValueError(problem)
    spec = json.loads(spec_path.read_text())
    try:
        import wandb

        report = build_report(spec, spec["entity"] or wandb.Api().default_entity)
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
    if spec["runs_without_wandb"]:
        log.warning("the W&B comparison lacks %d of the table's runs, trained without W&B and reused from the "
                    "store: %s", len(spec["runs_without_wandb"]), ", ".join(spec["runs_without_wandb"]))
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

"""The `job.json` every job of a sweep leaves in its directory, and the sweep's summary of them.

Torch-free on purpose: the process that ends a sweep (a launcher's parent) reads these files
without importing anything a job needs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .store import write_json

JOB_FILE = "job.json"
LOG_NAME = "rnnsweep.log"  # Hydra's job log: hydra.job.name + ".log"


def write_job_file(job_dir: Path, overrides: list[str], **fields: Any) -> dict[str, Any]:
    payload = {"overrides": overrides, "job_dir": str(job_dir), **fields}
    write_json(job_dir / JOB_FILE, payload)
    return payload


def read_jobs(sweep_dir: Path, since: float | None = None) -> list[dict[str, Any]]:
    """The job.json of every job under a sweep directory, in job-number order.

    `since` (a time.time() value) leaves out files older than the sweep: a sweep directory
    given explicitly may hold the jobs of an earlier, larger sweep.
    """
    jobs = []
    # Jobs sit in hydra.sweep.subdir, which may be nested (`${model.arch}/s${seed}`).
    for path in sweep_dir.rglob(JOB_FILE):
        if since is not None and path.stat().st_mtime < since:
            continue
        payload = json.loads(path.read_text())
        payload["num"] = path.parent.relative_to(sweep_dir).as_posix()
        jobs.append(payload)
    return sorted(jobs, key=lambda j: (not j["num"].isdigit(), int(j["num"]) if j["num"].isdigit() else 0, j["num"]))


def summarize(jobs: list[dict[str, Any]]) -> str:
    """A table of what each job did, then the counts."""
    def log_path(j: dict[str, Any]) -> str:
        path = Path(j["job_dir"]) / LOG_NAME
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)

    width = max([len(log_path(j)) for j in jobs] + [3])
    lines = [f"{'job':>4}  {'outcome':<9} {'status':<11} {'run id':<16}  {'log':<{width}}  overrides"]
    counts: dict[str, int] = {}
    for j in jobs:
        outcome = j["action"] if j["outcome"] == "plan" else j["outcome"]
        status = j.get("status", "")
        # Count what a reader asks first: how many finished, were skipped, failed, diverged.
        label = outcome if j["outcome"] not in ("trained", "resumed") else status
        counts[label] = counts.get(label, 0) + 1
        lines.append(f"{j['num']:>4}  {outcome:<9} {status:<11} {j.get('id', '-'):<16}  {log_path(j):<{width}}  "
                     f"{' '.join(j['overrides'])}")
        if j.get("reason"):
            lines.append(f"{'':>4}  {'':<9} reason: {j['reason']}")
        if j["outcome"] == "failed":
            lines.append(f"{'':>4}  {'':<9} {j.get('error', '')}")
    lines.append(", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + f" ({len(jobs)} jobs)")
    return "\n".join(lines)


def fresh_dir(path: Path) -> Path:
    """`path`, or `path-1`, `path-2`, ... if it exists: two runs started in one second (Hydra's
    directory names have seconds) must not share a job directory."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def discard(directory: Path, base_dir: Path, made_of: set[str]) -> None:
    """Remove a job or sweep directory that ended in a user error, if it holds nothing but
    `made_of` (Hydra's own files), with the parents that became empty (outputs/run/, outputs/)."""
    if not directory.is_dir() or not {p.name for p in directory.iterdir()} <= made_of:
        return
    shutil.rmtree(directory, ignore_errors=True)
    for parent in directory.parents:
        if parent == base_dir or not parent.is_relative_to(base_dir) or any(parent.iterdir()):
            break
        parent.rmdir()

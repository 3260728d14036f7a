"""`rnnsweep-report`: tables, plots and a report from result records."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import DEFAULT_PLOT_FORMATS, PLOT_FORMATS


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rnnsweep-report",
        description="Aggregate rnnsweep result records (mean ± std over seeds) into Markdown, LaTeX and CSV "
        "tables, plots and report.md.",
        epilog="examples:\n"
        "  rnnsweep-report outputs/multirun/2026-11-26_10-00-00\n"
        "  rnnsweep-report outputs/store --where model=lstm --rows topology --out paper/\n"
        "  rnnsweep-report 'outputs/multirun/*' --cols data.variant --out outputs/report\n"
        "  rnnsweep-report SWEEP_DIR --formats png,pdf --out paper/   # figures for LaTeX\n"
        "  rnnsweep-report SWEEP_DIR --sync-wandb --dry-run   # the sweep's offline W&B runs\n"
        "  rnnsweep-report SWEEP_DIR --sync-wandb      # upload them, then save the W&B report\n"
        "  rnnsweep-report SWEEP_DIR --push-wandb      # save the W&B report written offline",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", help="sweep directories, the run store, metrics.json files or glob patterns")
    p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                   help="keep runs whose choice or config key has this value (repeatable)")
    p.add_argument("--rows", help="comma-separated keys to group by (default: every key the runs differ in, seed excepted)")
    p.add_argument("--cols", metavar="KEY", help="also print a table with one column per value of KEY")
    p.add_argument("--metric", default="test/acc",
                   help="metric of the --cols table: test/acc (default), test/macro_f1, val/acc, params, "
                   "train/seconds, train/examples_per_s or wall_s")
    p.add_argument("--out", type=Path, help="where to write (default: the input directory, if there is one)")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--formats", default=",".join(DEFAULT_PLOT_FORMATS), metavar="EXT,...",
                   help=f"the plots' file formats, from {', '.join(PLOT_FORMATS)} "
                   f"(default: {','.join(DEFAULT_PLOT_FORMATS)}; pdf for LaTeX)")
    p.add_argument("--push-wandb", action="store_true",
                   help="save the W&B report spec found in the input directory (wandb_report.json) to W&B")
    p.add_argument("--sync-wandb", action="store_true",
                   help="upload every offline W&B run of the sweep in the input directory (reused runs "
                   "included), then save its W&B report")
    p.add_argument("--dry-run", action="store_true", help="with --sync-wandb: list what would be synced")
    return p


def _fail(message: str) -> None:
    """One line on stderr, exit status 2 (argparse's, without its usage block)."""
    print(f"rnnsweep-report: error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    out = args.out
    formats = tuple(f.strip().lower().lstrip(".") for f in args.formats.split(",") if f.strip())
    unknown = [f for f in formats if f not in PLOT_FORMATS]
    if unknown or not formats:
        _fail(f"--formats {args.formats}: expected one or more of {', '.join(PLOT_FORMATS)}, comma-separated"
              + (f" ('{unknown[0]}' is not one)" if unknown else ""))
    # A quoted glob ('outputs/multirun/*') is expanded by the report itself, not by the shell.
    missing = [i for i in args.inputs if not any(ch in i for ch in "*?[") and not Path(i).exists()]
    if missing:  # before the --out check, which would otherwise blame a typo on a missing --out
        _fail(f"{missing[0]}: no such file or directory")
    if out is None and len(args.inputs) == 1 and Path(args.inputs[0]).is_dir():
        out = Path(args.inputs[0])
    if out is None:
        parser().error("--out is needed when the inputs are not one directory")
    from . import ReportError, build  # pandas: only once the arguments are known to be usable

    try:
        if args.sync_wandb:
            from .wandb_compare import sync_sweep

            print("\n".join(sync_sweep(Path(args.inputs[0]), dry_run=args.dry_run)))
            return
        if args.push_wandb:
            from .wandb_compare import push_report

            print(push_report(Path(args.inputs[0])))
            return
        report = build(args.inputs, out, where=args.where, rows=args.rows.split(",") if args.rows else None,
                       cols=args.cols, metric=args.metric, make_plots=not args.no_plots,
                       plot_formats=formats)
    except OSError as ex:  # --out that is a file, or under one; no permission
        if not ex.filename:
            _fail(str(ex))
        _fail(f"{ex.filename}: {'a file, not a directory' if Path(ex.filename).is_file() else ex.strerror}")
    except (ReportError, ValueError) as ex:
        _fail(str(ex))
    print(report.table_markdown)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"report: {out / 'report.md'}")


if __name__ == "__main__":
    main()

"""From result records to paper tables: aggregation, exclusion, LaTeX, W&B spec, the CLI."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rnnsweep.report import ReportError, build, tables
from rnnsweep.report.aggregate import t95
from rnnsweep.report.wandb_compare import build_report, report_spec


def write_record(root: Path, name: str, *, model: str, seed: int, acc: float, status: str = "completed",
                 hidden: int = 64, commit: str = "abc123", history=(0.5, 0.7), fingerprint: str = "fp1") -> Path:
    rec = {
        "status": status,
        "id": f"{model}-{hidden}-{seed}",
        "choices": {"model": model, "batching": "padded", "logger": "none"},
        "config": {"seed": seed, "model": {"arch": model, "hidden_dim": hidden}, "batching": {"mode": "padded"},
                   "logger": {"backend": "none"}, "runtime": {"threads": seed + 1}},
        "metrics": {} if status != "completed" else {
            "test/acc": acc, "test/macro_f1": acc - 0.01, "val/acc": acc, "params": 1000,
            "train/seconds": 2.0 + seed, "train/examples_per_s": 100.0 * (seed + 1), "wall_s": 3.0},
        "history": [{"epoch": i + 1, "val/acc": v} for i, v in enumerate(history)],
        "env": {"git_commit": commit, "rnnsweep": "0.1.0", "torch": "2.13.0"},
        "wandb": {"id": f"{model}-{hidden}-{seed}-st0r3", "mode": "offline", "dir": str(root / name / "wandb")},
        "data": {"fingerprint": fingerprint},
    }
    path = root / name / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(rec))
    return path


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    for seed, acc in enumerate((0.8, 0.9, 1.0)):
        write_record(root, f"l{seed}", model="lstm", seed=seed, acc=acc)
    for seed, acc in enumerate((0.5, 0.6)):
        write_record(root, f"g{seed}", model="gru", seed=seed, acc=acc)
    write_record(root, "g-failed", model="gru", seed=7, acc=0, status="failed")
    write_record(root, "l-nan", model="lstm", seed=8, acc=0, status="diverged")
    return root


def test_means_stds_and_intervals_of_hand_made_records(sweep):
    report = build([str(sweep)], None)
    assert report.keys == ["model"]  # seed, threads and logger differ too, but are not swept keys
    g = report.groups.set_index("model")
    assert list(g.index) == ["gru", "lstm"]
    assert g.loc["lstm", "n"] == 3 and g.loc["gru", "n"] == 2
    assert g.loc["lstm", "test/acc:mean"] == pytest.approx(0.9)
    assert g.loc["lstm", "test/acc:std"] == pytest.approx(0.1)
    assert g.loc["lstm", "test/acc:ci95"] == pytest.approx(4.303 * 0.1 / math.sqrt(3))
    assert g.loc["gru", "test/acc:mean"] == pytest.approx(0.55)
    assert g.loc["gru", "test/acc:std"] == pytest.approx(math.sqrt(0.005))
    assert g.loc["gru", "excluded"] == 1 and g.loc["lstm", "excluded"] == 1
    assert "| lstm | 3 | **90.0 ± 10.0** |" in report.table_markdown
    assert "| gru | 2 | 55.0 ± 7.1 |" in report.table_markdown
    assert "Excluded from the means: 1 diverged, 1 failed (listed in runs.csv)" in report.table_markdown
    assert t95(2) == 4.303 and t95(100) == 1.96


def test_failed_and_diverged_runs_are_listed_not_averaged(sweep, tmp_path):
    out = tmp_path / "out"
    build([str(sweep)], out, make_plots=False)
    runs = (out / "runs.csv").read_text().splitlines()
    assert len(runs) == 1 + 7
    assert sum(",failed," in r for r in runs) == 1 and sum(",diverged," in r for r in runs) == 1
    groups = (out / "table.csv").read_text().splitlines()
    assert groups[0].startswith("model,n,test/acc:mean,test/acc:std,test/acc:ci95")
    assert groups[2].startswith("lstm,3,0.9,0.1,")


def test_outputs_and_plots_are_written(sweep, tmp_path):
    out = tmp_path / "out"
    report = build([str(sweep)], out)
    names = {p.name for p in report.files}
    assert {"report.md", "table.md", "table.tex", "table.csv", "runs.csv"} <= names
    for plot in ("learning_curves", "test_accuracy", "accuracy_vs_time"):
        assert {f"{plot}.png", f"{plot}.svg"} <= names
        assert (out / f"{plot}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "![test accuracy](test_accuracy.png)" in md and "- commits: abc123" in md


def test_figures_come_in_the_formats_asked_for_and_byte_for_byte_reproducible(sweep, tmp_path):
    pdf_only = build([str(sweep)], tmp_path / "pdf", plot_formats=("pdf",))
    figures = sorted(p.name for p in pdf_only.files if p.suffix in {".png", ".svg", ".pdf"})
    assert figures == ["accuracy_vs_time.pdf", "learning_curves.pdf", "test_accuracy.pdf"]
    assert all((tmp_path / "pdf" / name).read_bytes().startswith(b"%PDF-") for name in figures)
    md = (tmp_path / "pdf" / "report.md").read_text()
    assert "![" not in md and "`test_accuracy.pdf`" in md

    first, second = (build([str(sweep)], tmp_path / name, plot_formats=("png", "svg", "pdf")) for name in "ab")
    every = sorted(p.name for p in first.files if p.suffix in {".png", ".svg", ".pdf"})
    assert len(every) == 9
    for name in every:  # no dates, no random ids: a rebuilt report changes no file
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name

    with pytest.raises(ReportError, match="expected one or more of png, svg, pdf"):
        build([str(sweep)], tmp_path / "c", plot_formats=("jpg",))
    assert not (tmp_path / "c").exists()


def test_latex_is_a_booktabs_fragment_with_the_best_value_bold(sweep):
    report = build([str(sweep)], None)
    tex = tables.latex(report.groups, report.keys, report.runs)
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "$\\mathbf{90.0} \\pm 10.0$" in tex  # the best test accuracy, ± in math mode
    assert "$55.0 \\pm 7.1$" in tex
    assert "test acc (\\%)" in tex and "1{,}000" in tex
    assert tex.count("\\\\") == 2 + len(report.groups) + 1 - 1  # header, rows, footnote


needs_latex = pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no LaTeX installed")


def compile_latex(tmp_path: Path, package: str, body: str) -> Path:
    """A one-page document around `body`, compiled by pdflatex in `tmp_path`; the PDF's path."""
    doc = tmp_path / "doc.tex"
    doc.write_text(f"\\documentclass{{article}}\\usepackage{{{package}}}\\begin{{document}}{body}\\end{{document}}\n")
    res = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-2000:]
    return tmp_path / "doc.pdf"


@needs_latex
def test_latex_fragment_compiles(sweep, tmp_path):
    report = build([str(sweep)], tmp_path / "out", make_plots=False)
    pdf = compile_latex(tmp_path, "booktabs", "\\begin{table}\\input{out/table.tex}\\end{table}")
    assert pdf.stat().st_size > 1000
    assert report.keys == ["model"]


@needs_latex
def test_pdf_figure_goes_into_a_latex_document(sweep, tmp_path):
    build([str(sweep)], tmp_path / "out", plot_formats=("pdf",))
    pdf = compile_latex(tmp_path, "graphicx", "\\includegraphics[width=\\linewidth]{out/test_accuracy.pdf}")
    assert pdf.stat().st_size > (tmp_path / "out" / "test_accuracy.pdf").stat().st_size / 2


def test_a_key_that_varies_independently_of_a_choice_becomes_a_column(tmp_path):
    root = tmp_path / "s"
    for i, (model, hidden) in enumerate([("lstm", 32), ("lstm", 64), ("gru", 32), ("gru", 64)]):
        write_record(root, f"r{i}", model=model, seed=0, acc=0.5 + i / 10, hidden=hidden)
    assert build([str(root)], None).keys == ["model", "model.hidden_dim"]


def test_where_rows_and_cols(sweep):
    only_lstm = build([str(sweep)], None, where=["model=lstm"])
    assert only_lstm.keys == [] and list(only_lstm.groups["n"]) == [3]  # nothing left to tell apart
    pooled = build([str(sweep)], None, rows=["batching"])
    assert list(pooled.groups["n"]) == [5]
    pivot = build([str(sweep)], None, rows=["batching"], cols="model")
    assert "test acc (%) by model:" in pivot.table_markdown
    assert "| padded | 55.0 ± 7.1 | 90.0 ± 10.0 |" in pivot.table_markdown
    with pytest.raises(ReportError, match="no run has a choice or config key 'colour'"):
        build([str(sweep)], None, where=["colour=red"])


def test_an_unknown_metric_is_refused_by_name(sweep):
    with pytest.raises(ReportError, match=r"metric 'test/nope': not one the records hold \(choose from: test/acc, "):
        build([str(sweep)], None, cols="model", metric="test/nope")


def test_provenance_warns_when_runs_differ_in_commit(sweep):
    write_record(sweep, "l9", model="lstm", seed=9, acc=0.9, commit="def456-dirty")
    report = build([str(sweep)], None)
    assert report.provenance["commits"] == ["abc123", "def456-dirty"]
    assert any("2 different commits" in w for w in report.warnings)
    assert any("uncommitted changes" in w for w in report.warnings)
    assert not any("different data" in w for w in report.warnings)
    write_record(sweep, "l10", model="lstm", seed=10, acc=0.9, fingerprint="fp2")
    assert any("different data" in w for w in build([str(sweep)], None).warnings)


def test_bad_input_is_one_clear_error(tmp_path):
    with pytest.raises(ReportError, match="no usable result records"):
        build([str(tmp_path)], None)
    bad = tmp_path / "x" / "metrics.json"
    bad.parent.mkdir()
    bad.write_text("{ not json")
    with pytest.raises(ReportError, match=r"no usable result records .*x/metrics.json: left out, not a JSON result record"):
        build([str(tmp_path)], None)


@pytest.mark.parametrize("damage", ["[]", '{"status": "bogus"}', "{ not json",
                                    '{"status": "completed", "config": {}, "metrics": [1, 2]}',
                                    '{"status": "completed", "config": {}, "metrics": {}}'])
def test_a_damaged_record_is_left_out_with_a_warning_and_the_rest_reported(sweep, damage):
    intact = len(build([str(sweep)], None).runs)
    path = sweep / "damaged" / "metrics.json"
    path.parent.mkdir()
    path.write_text(damage)
    report = build([str(sweep)], None)
    assert len(report.runs) == intact
    assert any(w.startswith(f"{path}: left out") for w in report.warnings), report.warnings


def test_wandb_report_spec_is_built_offline(sweep):
    report = build([str(sweep)], None)
    spec = report_spec(report, "2026-11-26_10-00-00", "rnnsweep", None)
    table_ids = sorted(report.runs.loc[report.runs["status"] == "completed", "wandb:id"])
    assert spec["entity"] is None  # not "": the user's default entity, resolved when the report is saved
    assert spec["runset"] == {"name": "2026-11-26_10-00-00", "groupby": ["Group"],
                              "filters": "ID in [" + ", ".join(repr(i) for i in table_ids) + "]"}
    assert spec["parallel_coordinates"] == ["config:model.arch", "summary:test/acc"]
    assert [b["metric"] for b in spec["bar_charts"]] == ["test/acc", "test/macro_f1"]
    json.dumps(spec)  # what is written to wandb_report.json
    pytest.importorskip("wandb_workspaces")  # the `reports` extra (part of `dev`)
    from wandb_workspaces import expr
    from wandb_workspaces.reports.v2.interface import _metric_to_backend_groupby

    wr_report = build_report(spec, "someone")  # the wandb-workspaces object; nothing is sent until .save()
    assert wr_report.title == "rnnsweep: 2026-11-26_10-00-00" and wr_report.entity == "someone"
    grid = wr_report.blocks[2]
    (runset,) = grid.runsets
    # What wandb-workspaces sends: the run set is the table's runs by W&B id, grouped by the run
    # group; the bars group by the run group too (not by a config key named "group").
    selected = expr.expr_to_filters(runset.filters)
    assert (selected.op, selected.key.name, sorted(selected.value)) == ("IN", "name", table_ids)
    assert [expr.groupby_str_to_key(g).name for g in runset.groupby] == ["group"]
    bars = [p for p in grid.panels if type(p).__name__ == "BarPlot"]
    assert len(bars) == 2 and {_metric_to_backend_groupby(b.groupby) for b in bars} == {"group"}


def test_report_cli(sweep, tmp_path):
    res = subprocess.run([sys.executable, "-m", "rnnsweep.report.cli", str(sweep), "--out", str(tmp_path / "o"),
                          "--no-plots"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "| lstm | 3 | **90.0 ± 10.0** |" in res.stdout
    bad = subprocess.run([sys.executable, "-m", "rnnsweep.report.cli", str(tmp_path / "nope"), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [f"rnnsweep-report: error: {tmp_path / 'nope'}: no such file or directory"]
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    out_file = subprocess.run([sys.executable, "-m", "rnnsweep.report.cli", str(sweep), "--out", str(blocker)],
                              capture_output=True, text=True, timeout=120)
    assert out_file.returncode == 2
    assert out_file.stderr.strip().splitlines() == [f"rnnsweep-report: error: {blocker}: a file, not a directory"]
    fmt = subprocess.run([sys.executable, "-m", "rnnsweep.report.cli", str(sweep), "--out", str(tmp_path / "f"),
                          "--formats", "png,jpg"], capture_output=True, text=True, timeout=120)
    assert fmt.returncode == 2 and not (tmp_path / "f").exists()
    assert fmt.stderr.strip().splitlines() == ["rnnsweep-report: error: --formats png,jpg: expected one or more of "
                                               "png, svg, pdf, comma-separated ('jpg' is not one)"]
    typo = subprocess.run([sys.executable, "-m", "rnnsweep.report.cli", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=120)
    assert typo.returncode == 2
    assert typo.stderr.strip().splitlines() == [f"rnnsweep-report: error: {tmp_path / 'nope'}: no such file or directory"]


@pytest.mark.slow
def test_a_sweep_ends_with_its_report_and_a_rerun_from_scratch_reproduces_the_table(tmp_path):
    from conftest import run_cli
    from wandb_records import read_offline_run

    common = ["-m", "model=rnn,gru", "seed=0,1", "data.train_size=200", "data.test_size=60", "train.epochs=2",
              "model.embed_dim=8", "model.hidden_dim=8", "runtime.progress=off", "runtime.device=cpu"]
    first = run_cli([*common, "logger=wandb", f"ledger.store={tmp_path / 's1'}", f"hydra.sweep.dir={tmp_path / 'a'}"],
                    cwd=tmp_path)
    second = run_cli([*common, "logger=none", f"ledger.store={tmp_path / 's2'}", f"hydra.sweep.dir={tmp_path / 'b'}"],
                     cwd=tmp_path)
    for res, sweep in ((first, tmp_path / "a"), (second, tmp_path / "b")):
        assert res.returncode == 0, res.stdout + res.stderr
        assert "| model | n | test acc (%) |" in res.stdout
        for name in ("report.md", "table.md", "table.tex", "table.csv", "runs.csv", "test_accuracy.png"):
            assert (sweep / name).is_file(), name
    a, b = build([str(tmp_path / "a")], None), build([str(tmp_path / "b")], None)

    def untimed(report):  # the two sweeps took their own time: everything else must agree
        timing = ("train/seconds", "train/examples_per_s", "wall_s")
        return report.groups.assign(**{c: 0.0 for c in report.groups if c.split(":")[0] in timing})

    assert tables.groups_csv(untimed(a)) == tables.groups_csv(untimed(b))
    assert tables.markdown(untimed(a), a.keys, a.runs) == tables.markdown(untimed(b), b.keys, b.runs)

    # logger=wandb: a sweep-level W&B run holds the comparison, and the Report spec waits offline.
    spec = json.loads((tmp_path / "a" / "wandb_report.json").read_text())
    ids = sorted(json.loads(p.read_text())["wandb"]["id"] for p in (tmp_path / "a").glob("*/metrics.json"))
    assert spec["runset"]["filters"] == "ID in [" + ", ".join(repr(i) for i in ids) + "]"
    (run_dir,) = (tmp_path / "a" / "wandb").glob("offline-run-*")
    run = read_offline_run(run_dir)
    assert run.job_type == "report" and run.group == "a"
    assert run.summary["comparison/_type"] == "table-file" and run.summary["comparison/nrows"] == 2
    (table_file,) = (run_dir / "files" / "media" / "table").glob("comparison_*.table.json")
    logged = json.loads(table_file.read_text())
    assert logged["columns"][:2] == ["model", "n"] and [r[0] for r in logged["data"]] == ["gru", "rnn"]
    assert run.summary["plots/test_accuracy/_type"] == "image-file"


def test_the_report_command_imports_nothing_from_training_nor_pandas_before_it_builds():
    heavy = ('torch', 'hydra', 'rnnsweep.job', 'pandas', 'matplotlib')
    code = f"import sys, rnnsweep.report.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr


def patch_record(path: Path, change) -> None:
    rec = json.loads(path.read_text())
    change(rec)
    path.write_text(json.dumps(rec))


def test_runs_without_a_grouping_key_are_a_row_of_their_own_not_dropped(tmp_path):
    """A csv run has no data.variant while synthetic runs sweep it: the csv runs are a row with an
    en dash for the missing key, in the table, its counts and the plots' groups."""
    root = tmp_path / "s"
    for i, (variant, acc) in enumerate((("order", 0.5), ("order", 0.6), ("long", 0.4), ("long", 0.3),
                                        (None, 0.9), (None, 0.95))):
        path = write_record(root, f"r{i}", model="lstm", seed=i % 2, acc=acc, hidden=64 + i)

        def change(rec, variant=variant):
            rec["config"]["model"]["hidden_dim"] = 64
            if variant is not None:
                rec["config"]["data"] = {"variant": variant}
        patch_record(path, change)
    report = build([str(root)], tmp_path / "out")
    assert report.keys == ["data.variant"]
    assert list(report.groups["data.variant"]) == ["long", "order", "–"]
    assert report.groups["n"].sum() == 6
    assert report.groups.set_index("data.variant").loc["–", "test/acc:mean"] == pytest.approx(0.925)
    assert "| – | 2 | **92.5 ± 3.5** |" in report.table_markdown


def test_the_bold_mean_is_the_best_printed_one(tmp_path):
    """gru 90.65 prints as 90.7 and rnn's 90.6 as 90.6: gru is bold, rnn is not."""
    root = tmp_path / "s"
    for name, model, seed, acc in (("g0", "gru", 0, 0.900), ("g1", "gru", 1, 0.913),
                                   ("r0", "rnn", 0, 0.906), ("r1", "rnn", 1, 0.906)):
        write_record(root, name, model=model, seed=seed, acc=acc)
    report = build([str(root)], None)
    rows = {line.split(" | ")[0].strip("| "): line for line in report.table_markdown.splitlines()
            if line.startswith(("| gru", "| rnn"))}
    assert "| **90.7 ± 0.9** |" in rows["gru"] and "| 90.6 ± 0.0 |" in rows["rnn"]
    assert "\\mathbf{90.7}" in tables.latex(report.groups, report.keys, report.runs)


def test_a_completed_rerun_of_a_run_found_failed_elsewhere_is_the_one_reported(tmp_path):
    """A sweep's copy of a failed attempt and a later sweep's completed record of the same run id:
    the run counts once, as completed, whichever is found first."""
    first = write_record(tmp_path / "a", "j0", model="lstm", seed=0, acc=0, status="failed")
    write_record(tmp_path / "b", "j0", model="lstm", seed=0, acc=0.8)
    write_record(tmp_path / "b", "j1", model="lstm", seed=1, acc=0.9)
    assert json.loads(first.read_text())["id"] == "lstm-64-0"
    for order in ([tmp_path / "a", tmp_path / "b"], [tmp_path / "b", tmp_path / "a"]):
        report = build([str(p) for p in order], None)
        assert len(report.runs) == 2 and set(report.runs["status"]) == {"completed"}
        assert report.groups.loc[0, "n"] == 2 and report.groups.loc[0, "test/acc:mean"] == pytest.approx(0.85)


def test_a_row_holding_a_seed_twice_is_marked_and_warned_about(tmp_path):
    """The same seed under two rnnsweep versions (two run ids): the row's ± is not a spread over seeds."""
    root = tmp_path / "s"
    for i, version in enumerate(("0.2.1", "0.2.2")):
        for seed in (0, 1):
            path = write_record(root, f"{version}-{seed}", model="lstm", seed=seed, acc=0.8 + 0.1 * seed)
            patch_record(path, lambda rec, v=version, s=seed: (rec["env"].update(rnnsweep=v),
                                                               rec.update(id=f"{v}-{s}")))
    report = build([str(root)], None)
    assert "| 4† |" in report.table_markdown and "† A row that holds a seed more than once" in report.table_markdown
    assert any("rows holding a seed more than once" in w for w in report.warnings)


def test_a_mean_over_fewer_runs_than_the_rows_n_says_so(tmp_path):
    root = tmp_path / "s"
    for seed, acc in enumerate((0.9, 0.8, 0.7)):
        path = write_record(root, f"r{seed}", model="lstm", seed=seed, acc=acc)
        if seed == 2:  # an older record without macro-F1
            patch_record(path, lambda rec: rec["metrics"].pop("test/macro_f1"))
    report = build([str(root)], None)
    assert "| 3 | 80.0 ± 10.0 | 84.0 ± 7.1 (n=2) |" in report.table_markdown
    assert "$84.0 \\pm 7.1$ ($n{=}2$)" in tables.latex(report.groups, report.keys, report.runs)


def test_numeric_keys_sort_by_value_and_a_missing_value_is_text_in_latex(tmp_path):
    root = tmp_path / "s"
    for hidden in (256, 64, 128):
        write_record(root, f"h{hidden}", model="lstm", seed=0, acc=hidden / 1000, hidden=hidden)
    path = write_record(root, "h32", model="lstm", seed=0, acc=0.5, hidden=32)
    patch_record(path, lambda rec: rec["metrics"].pop("test/macro_f1"))
    report = build([str(root)], None)
    assert list(report.groups["model.hidden_dim"].astype(int)) == [32, 64, 128, 256]
    assert "$–$" not in tables.latex(report.groups, report.keys, report.runs)
    assert " & -- & " in tables.latex(report.groups, report.keys, report.runs)


def test_logger_and_launcher_choices_are_never_columns(tmp_path):
    root = tmp_path / "s"
    for seed, logger in enumerate(("none", "wandb", "wandb")):
        path = write_record(root, f"r{seed}", model="lstm", seed=seed, acc=0.8)
        patch_record(path, lambda rec, lg=logger: rec["choices"].update(logger=lg, launcher="basic"))
    assert build([str(root)], None).keys == []


def test_the_wandb_spec_names_the_tables_runs_trained_without_wandb(sweep):
    first = next(p for p in sorted(sweep.rglob("metrics.json")) if json.loads(p.read_text())["status"] == "completed")
    patch_record(first, lambda rec: rec.pop("wandb"))
    spec = report_spec(build([str(sweep)], None), "s", "p", None)
    missing = json.loads(first.read_text())["id"]
    assert spec["runs_without_wandb"] == [missing] and missing in spec["description"]
    assert missing not in spec["runset"]["filters"]


def test_the_report_command_expands_a_quoted_glob_itself(sweep, tmp_path, capsys):
    """The README's `rnnsweep-report 'outputs/multirun/*'`: the shell leaves the pattern alone."""
    from rnnsweep.report import cli

    cli.main([str(sweep / "*"), "--out", str(tmp_path / "out"), "--no-plots"])
    assert "| lstm | 3 |" in (tmp_path / "out" / "table.md").read_text()
    with pytest.raises(SystemExit):
        cli.main([str(tmp_path / "nothing-*"), "--out", str(tmp_path / "out2"), "--no-plots"])
    assert "no file or directory matches" in capsys.readouterr().err


def test_rows_chosen_by_hand_that_average_over_a_swept_key_are_warned_about(tmp_path):
    root = tmp_path / "s"
    for hidden in (64, 128):
        for model in ("lstm", "gru"):
            write_record(root, f"{model}{hidden}", model=model, seed=0, acc=hidden / 200, hidden=hidden)
    report = build([str(root)], None, rows=["model"])
    assert any(w == "--rows model: each row averages runs that differ in model.hidden_dim" for w in report.warnings)
    assert not any("--rows" in w for w in build([str(root)], None, rows=["model", "model.hidden_dim"]).warnings)


def test_of_two_completed_attempts_of_a_run_the_later_is_reported(tmp_path):
    """ledger.force retrains a run under its id: an old sweep directory keeps the first attempt's
    copy, the store the last; whichever is read first, the report takes the later."""
    old = write_record(tmp_path / "a", "j0", model="lstm", seed=0, acc=0.5)
    new = write_record(tmp_path / "b", "j0", model="lstm", seed=0, acc=0.7)
    patch_record(old, lambda rec: rec.update(finished_at="2026-11-30T10:00:00+00:00"))
    patch_record(new, lambda rec: rec.update(finished_at="2026-11-30T11:00:00+00:00"))
    for order in ([tmp_path / "a", tmp_path / "b"], [tmp_path / "b", tmp_path / "a"]):
        report = build([str(p) for p in order], None)
        assert len(report.runs) == 1 and report.groups.loc[0, "test/acc:mean"] == pytest.approx(0.7)

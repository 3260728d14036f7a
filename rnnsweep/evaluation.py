"""Evaluate-only: score a trained run on labelled data (any `data=` source) and write a record.

    rnnsweep-evaluate RUN                                   # the run's own data, its test split
    rnnsweep-evaluate RUN data=csv data.train=other.csv data.test=other_test.csv
    rnnsweep-evaluate RUN data=ag_news --split all

Only the data group is composed from the command line (Hydra's compose API over the same conf/,
validated by config.validate); the source is read as training reads it, split by the pipeline's
own splitting, encoded with the RUN's vocabulary (its model directory, not the data cache), and
scored by the training loop's `evaluate` on the batches the run's evaluation cut. The data's
class names are matched to the run's by name; a label the run does not know is an error.

The record, `evaluation.json` in outputs/evaluate/<time>/ (or --out DIR), holds the run, the
data (config, fingerprint, split, rows, counts per class), the metrics (acc, macro_f1, loss),
the time and the versions. Not a metrics.json: reports over a store never mistake it for a run.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import __version__
from .console import OneLineParser, positive_int, run_reporting_errors

RECORD_NAME = "evaluation.json"
SPLITS = ("test", "val", "train", "all")
KIND = "evaluation"


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _allowed(override: str) -> bool:
    key = _key(override)
    return "=" in override and (key == "data" or key.startswith("data.") or key == "runtime.cache_dir")


def data_settings(run_config: dict[str, Any], overrides: Sequence[str]):
    """The validated config whose `data` section names what to evaluate on: the run's own data
    section unless `overrides` choose another source (data=...); data.KEY=... overrides either."""
    from omegaconf import OmegaConf

    from . import config
    from .composition import compose

    for o in overrides:
        if not _allowed(o):
            raise config.ConfigError(f"{o}: only data overrides here (data=NAME, data.KEY=VALUE, "
                                     "runtime.cache_dir=DIR); the model is the run's")
    keys = [_key(o) for o in overrides]
    own = run_config.get("data") if isinstance(run_config.get("data"), dict) else {}
    start_from_run = "data" not in keys and bool(own.get("name"))
    base = ["logger=none"] + ([f"data={own['name']}"] if start_from_run else [])
    cfg = compose([*base, *overrides])
    if start_from_run:
        given = {k.split(".", 1)[1] for k in keys if k.startswith("data.")}
        for k, v in own.items():
            if k not in given and k in cfg.data.keys():  # `in cfg.data` is False for a ??? value
                OmegaConf.update(cfg, f"data.{k}", v, merge=False)
    return config.validate(cfg)


def _rows(raw, split_options, split: str) -> tuple[list[str], np.ndarray]:
    """The texts and class indices of `split`: the pipeline's own splitting (`all`: every row read)."""
    from .data.pipeline import split_texts

    if split == "all":
        texts = list(raw.train_texts) + list(raw.test_texts or [])
        labels = list(raw.train_labels) + list(raw.test_labels or [])
        return texts, np.asarray(labels, dtype=np.int64)
    return split_texts(raw, split_options)[split]


def map_classes(data_classes: Sequence[str], labels: np.ndarray, run_classes: Sequence[str],
                run_id: str | None) -> tuple[np.ndarray, dict[str, str]]:
    """The data's class indices as the run's, matched by name; a class that occurs in the rows
    but is not one of the run's is a DataError naming it."""
    from .data import DataError

    index = {name: i for i, name in enumerate(run_classes)}
    to_run = np.array([index.get(str(name), -1) for name in data_classes], dtype=np.int64)
    used = np.unique(labels)
    unknown = [str(data_classes[i]) for i in used if to_run[i] < 0]
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise DataError(f"the data's class(es) {shown} are not among run {run_id}'s classes "
                        f"({', '.join(map(str, run_classes))}); evaluate on data labelled with the run's classes "
                        "(for your files, data.classes=[...] names the classes of integer labels)")
    mapping = {str(data_classes[i]): str(run_classes[to_run[i]]) for i in used}
    return to_run[labels], mapping


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _out_dir(out: str | os.PathLike | None, base_dir: Path) -> Path:
    if out is not None:
        path = Path(out).expanduser()
        return path if path.is_absolute() else base_dir / path
    from .sweep import fresh_dir

    return fresh_dir(base_dir / "outputs" / "evaluate" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))


def evaluate_run(run: str | os.PathLike, overrides: Sequence[str] = (), *, split: str = "test",
                 store: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                 base_dir: str | os.PathLike | None = None, device: str = "cpu",
                 batch_size: int | None = None) -> dict[str, Any]:
    """Score `run` (see predict.load) on `split` of the data `overrides` name (none: the run's
    own data config, relative paths from `base_dir`), write `evaluation.json` into `out`
    (default outputs/evaluate/<time>/ under `base_dir`) and return the record.

    Raises config.ConfigError (a bad or non-data override), data.DataError (bad input, a class
    the run does not know), predict.LoadError (no such run, no model)."""
    import torch

    from . import builders, store as store_module
    from .config import to_plain
    from .data import data_fingerprint
    from .predict import load
    from .run import git_commit

    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {', '.join(SPLITS)}")
    started, t0 = _now(), time.perf_counter()
    base = Path(base_dir).expanduser().absolute() if base_dir is not None else Path.cwd()
    clf = load(run, store, device=device, batch_size=batch_size)
    settings = data_settings(clf.config, list(overrides))
    source = builders.data_source(settings.data, base, builders.cache_dir(settings.runtime, base))
    split_options = builders.split_options(settings.data)
    fingerprint = data_fingerprint(source, split_options)
    raw = source.read()
    texts, labels = _rows(raw, split_options, split)
    labels, mapping = map_classes(raw.class_names, labels, clf.classes, clf.id)
    metrics = clf.score(texts, labels)
    same = fingerprint == (clf.record or {}).get("data", {}).get("fingerprint")
    cautions = []
    if not same and split != "all" and settings.data.name == clf.config.get("data", {}).get("name"):
        # The same kind of source, read or split otherwise: its held-out rows may be rows the run trained on.
        cautions.append(f"the data settings differ from the run's, so the {split} split is not the run's own: if "
                        "this is the data the run trained on, some of these rows may be rows it trained on "
                        "(without data overrides, rnnsweep-evaluate scores the run's own test split)")
    counts = np.bincount(labels, minlength=len(clf.classes))
    run_record = clf.record or {}
    run_data = run_record.get("data") or {}
    record = {
        "kind": KIND,
        "run": {
            "id": clf.id,
            "model_dir": str(clf.directory),
            "data_fingerprint": run_data.get("fingerprint"),
            "test/acc": (run_record.get("metrics") or {}).get("test/acc"),
        },
        "data": {
            "name": settings.data.name,
            "config": to_plain(settings.data),
            "fingerprint": fingerprint,
            "same_as_run": same,
            "split": split,
            "n": len(texts),
            "class_counts": {c: int(n) for c, n in zip(clf.classes, counts)},
            "class_mapping": mapping,
            "dropped_empty": raw.dropped_empty,
            "warnings": raw.warnings + cautions,
        },
        "metrics": {**metrics, "n": len(texts)},
        "overrides": list(overrides),
        "started_at": started,
        "finished_at": _now(),
        "seconds": round(time.perf_counter() - t0, 3),
        "env": {"python": platform.python_version(), "torch": torch.__version__, "rnnsweep": __version__,
                "git_commit": git_commit(), "device": str(clf.device), "threads": torch.get_num_threads()},
    }
    directory = _out_dir(out, base)
    record["path"] = str(store_module.write_json(directory / RECORD_NAME, record))
    return record


EPILOG = """\
RUN is a run id (or a unique prefix) in the run store, a store entry, its model/ directory, or
a sweep's job directory. OVERRIDES choose the data, as on the rnnsweep command line (data=...,
data.KEY=...; runtime.cache_dir=... for downloads); without data=..., the run's own data config is
used (relative paths from the current directory), with any data.KEY=... on top. The data's class
names must be the run's (matched by name).

examples:
  rnnsweep-evaluate 1a2b                                   # its own test split: its record's test/acc
  rnnsweep-evaluate 1a2b data=csv data.train=reviews_2025.csv --split all
  rnnsweep-evaluate 1a2b data.test=other_test.csv          # the run's data settings, another test file
  rnnsweep-evaluate outputs/multirun/2026-11-26_10-00-00/3 data=ag_news --out outputs/eval/agnews

Writes evaluation.json (run, data fingerprint, split, n, counts per class, acc, macro_f1, loss,
time, versions) into outputs/evaluate/<time>/ or --out DIR, and prints the metrics.
"""


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="rnnsweep-evaluate", description="Score a trained rnnsweep run on labelled data.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="run id or prefix, store entry, model or job directory")
    p.add_argument("overrides", metavar="OVERRIDE", nargs="*", help="data=NAME, data.KEY=VALUE, ...")
    p.add_argument("--split", choices=SPLITS, default="test",
                   help="which rows: the pipeline's test (default), val or train split, or all rows read")
    p.add_argument("--store", metavar="DIR", help="the run store to look RUN up in (default: outputs/store)")
    p.add_argument("--out", metavar="DIR", help="where evaluation.json goes (default: outputs/evaluate/<time>)")
    p.add_argument("--batch-size", type=positive_int, metavar="N", help="texts per batch (default: the run's)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, or auto")
    p.add_argument("--version", action="version", version=f"rnnsweep-evaluate {__version__}")
    return p


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: the metrics on stdout; every error one line, exit status 2."""
    parser = _parser()
    args = parser.parse_intermixed_args(argv)  # options may come between RUN and the rest
    run_reporting_errors(parser.prog, lambda: _report(args))


def _report(args: argparse.Namespace) -> None:
    rec = evaluate_run(args.run, args.overrides, split=args.split, store=args.store, out=args.out,
                       device=args.device, batch_size=args.batch_size)
    m, d = rec["metrics"], rec["data"]
    print(f"run {rec['run']['id']} on data={d['name']} ({d['split']} split, {d['n']} rows): "
          f"acc {m['acc']:.4f}, macro-F1 {m['macro_f1']:.4f}, loss {m['loss']:.4f}")
    for warning in d["warnings"]:
        print(f"rnnsweep-evaluate: warning: {warning}", file=sys.stderr)
    if d["same_as_run"] and d["split"] == "test" and rec["run"]["test/acc"] is not None:
        print(f"(the run's own test split: its record says test acc {rec['run']['test/acc']:.4f})")
    print(f"record: {rec['path']}")


if __name__ == "__main__":
    main()

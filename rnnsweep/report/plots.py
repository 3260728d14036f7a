"""Plots a reader would rather look at than read: learning curves, accuracy bars, accuracy vs time."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
# Its first use after an install builds a font cache and says so at INFO ("generated new
# fontManager"): noise in the middle of a sweep's summary.
logging.getLogger("matplotlib").setLevel(logging.WARNING)
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from . import DEFAULT_PLOT_FORMATS as DEFAULT_FORMATS  # noqa: E402
from .aggregate import groups_of  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

# Reproducible files: no creation date, a fixed SVG id salt, no software stamp that changes with
# matplotlib's version.
plt.rcParams["svg.hashsalt"] = "rnnsweep"
_METADATA = {"svg": {"Date": None}, "png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None}}


def _save(fig, out_dir: Path, name: str, formats: tuple[str, ...]) -> list[Path]:
    paths = []
    for ext in formats:
        path = out_dir / f"{name}.{ext}"
        fig.savefig(path, dpi=150 if ext == "png" else None, bbox_inches="tight", metadata=_METADATA[ext])
        paths.append(path)
    plt.close(fig)
    return paths


def learning_curves(runs: pd.DataFrame, histories: dict, keys: list[str], out_dir: Path,
                    formats: tuple[str, ...] = DEFAULT_FORMATS) -> list[Path]:
    """Validation accuracy per epoch: the mean over seeds, with a band from min to max."""
    done = runs[runs["status"] == "completed"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for values, group in groups_of(done, keys):
        curves = [[h["val/acc"] for h in histories[r]] for r in group["run"]]
        length = min(len(c) for c in curves)
        if length == 0:
            continue
        stack = np.array([c[:length] for c in curves]) * 100
        epochs = np.arange(1, length + 1)
        name = ", ".join(values) if keys else "all runs"
        line, = ax.plot(epochs, stack.mean(axis=0), marker="o", ms=3, label=name)
        if len(stack) > 1:
            ax.fill_between(epochs, stack.min(axis=0), stack.max(axis=0), color=line.get_color(), alpha=0.15)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Learning curves (mean over seeds, band: min–max)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              title=", ".join(k.split(":", 1)[1] for k in keys) or None, title_fontsize=7)
    return _save(fig, out_dir, "learning_curves", formats)


def accuracy_bars(agg: pd.DataFrame, keys: list[str], out_dir: Path,
                  formats: tuple[str, ...] = DEFAULT_FORMATS) -> list[Path]:
    labels = [", ".join(str(agg.iloc[i][k]) for k in keys) or "all runs" for i in range(len(agg))]
    means = agg["test/acc:mean"].to_numpy() * 100
    stds = np.nan_to_num(agg["test/acc:std"].to_numpy() * 100)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(agg) + 2), 4.2))
    ax.bar(range(len(agg)), means, yerr=stds, capsize=3, color="#4C72B0")
    ax.set_xticks(range(len(agg)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Test accuracy (mean ± std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out_dir, "test_accuracy", formats)


def accuracy_vs_time(runs: pd.DataFrame, keys: list[str], out_dir: Path,
                     formats: tuple[str, ...] = DEFAULT_FORMATS) -> list[Path]:
    done = runs[runs["status"] == "completed"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for values, group in groups_of(done, keys):
        ax.scatter(group["metric:train/seconds"], group["metric:test/acc"] * 100, s=18,
                   label=", ".join(values) if keys else "all runs")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy versus training time (one point per run)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, out_dir, "accuracy_vs_time", formats)

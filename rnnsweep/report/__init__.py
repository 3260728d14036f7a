"""Result records -> paper tables, plots and a report. Imports nothing from training.

    from rnnsweep.report import build
    report = build(["outputs/multirun/2026-11-26_10-00-00"], out_dir=...)
"""

from __future__ import annotations

__all__ = ["Report", "ReportError", "build", "PLOT_FORMATS", "DEFAULT_PLOT_FORMATS"]

# png for report.md and screens, svg for web pages, pdf for LaTeX (\includegraphics)
PLOT_FORMATS = ("png", "svg", "pdf")
DEFAULT_PLOT_FORMATS = ("png", "svg")


def __getattr__(name: str):
    # pandas (and, for plots, matplotlib) load on first use, so `rnnsweep-report --help` and its
    # argument errors answer at once.
    if name == "ReportError":
        from .records import ReportError

        return ReportError
    if name in __all__:
        from . import builder

        return getattr(builder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

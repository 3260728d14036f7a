"""What rnnsweep's small console commands share (rnnsweep-predict, rnnsweep-evaluate): an argument
parser whose mistakes are one line, and a body whose errors are one line and exit status 2."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage screen
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (argparse names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def run_reporting_errors(prog: str, body: Callable[[], None]) -> None:
    """Run `body`; any error is one line on stderr and exit status 2, never a traceback
    (RNNSWEEP_FULL_ERROR=1 shows it); Ctrl-C exits 130, a closed pipe (`| head`) quietly."""
    try:
        body()
    except BrokenPipeError:  # the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as ex:  # noqa: BLE001
        if os.environ.get("RNNSWEEP_FULL_ERROR") == "1":
            raise
        message = str(ex).strip().splitlines()[0] if str(ex).strip() else ""
        kind = "" if isinstance(ex, (ValueError, OSError)) else f"{type(ex).__name__}: "
        print(f"{prog}: error: {kind}{message or type(ex).__name__}", file=sys.stderr)
        sys.exit(2)

"""Argument types and the parser that reports mistakes in one line (exit status 2)."""

from __future__ import annotations

import argparse
import sys

from rnnlab.argtypes import (  # noqa: F401  (re-exported for the CLI modules)
    fraction,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: what is wrong and where to look."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def fail(message: str, code: int = 2):
    """Print ``rnnlab: error: message`` and exit."""
    print(f"rnnlab: error: {message}", file=sys.stderr)
    raise SystemExit(code)

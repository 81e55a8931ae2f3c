"""Argument types and the parser that reports mistakes in one line (exit status 2)."""

from __future__ import annotations

import argparse
import sys


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: what is wrong and where to look."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _number(kind, name, ok):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {name}, got {text}")
        return value

    parse.__name__ = name  # argparse names the type in its messages
    return parse


positive_int = _number(int, "a positive integer", lambda v: v > 0)
nonnegative_int = _number(int, "an integer >= 0", lambda v: v >= 0)
positive_float = _number(float, "a positive number", lambda v: v > 0 and v != float("inf"))
nonnegative_float = _number(float, "a number >= 0", lambda v: 0 <= v < float("inf"))
fraction = _number(float, "a number in [0, 1)", lambda v: 0 <= v < 1)


def fail(message: str, code: int = 2):
    """Print ``rnnlab: error: message`` and exit."""
    print(f"rnnlab: error: {message}", file=sys.stderr)
    raise SystemExit(code)

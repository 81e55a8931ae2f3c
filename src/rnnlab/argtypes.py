"""Argument types for command-line options: numbers with a range, checked with a message.

They live outside :mod:`rnnlab.cli` so that library modules which describe their own
options (the worked examples in :mod:`rnnlab.examples`) need not import the CLI.
"""

from __future__ import annotations

import argparse


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

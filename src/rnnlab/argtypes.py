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

# A seed is a signed 64-bit integer: torch.manual_seed takes [-2**63, 2**64), and seeds
# are offset upwards (seed + 1, ... for several runs), so the top half is left as headroom.
SEED_RANGE = "an integer from -2**63 to 2**63 - 1"


def valid_seed(value: int) -> bool:
    return -(2**63) <= value < 2**63


random_seed = _number(int, SEED_RANGE, valid_seed)


def directory(text: str) -> str:
    """A directory to write into: an empty name would mean the current directory."""
    if not text:
        raise argparse.ArgumentTypeError("expected a directory name, got an empty string")
    return text

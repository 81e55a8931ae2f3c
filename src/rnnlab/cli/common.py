"""Argument types and the parser that reports mistakes in one line (exit status 2)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from rnnlab.argtypes import (  # noqa: F401  (re-exported for the CLI modules)
    directory,
    fraction,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    random_seed,
)
from rnnlab.errors import UserError


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: what is wrong and where to look."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def output_directory(path: str | Path) -> Path:
    """``path`` made (with its parents) before any work, so an unusable ``--out`` is a
    one-line error at once rather than after a long run."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot use {path} as the output directory: {exc.strerror}") from None
    return path


@contextlib.contextmanager
def new_output_directory(path: str | Path):
    """:func:`output_directory` for a command that writes its results as it goes: should
    the command fail before it wrote anything (out of memory, Ctrl-C, an error), a folder
    it made is removed again rather than left empty."""
    path = Path(path)
    existed = path.exists()
    out = output_directory(path)
    try:
        yield out
    except BaseException:
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def fail(message: str, code: int = 2):
    """Print ``rnnlab: error: message`` and exit."""
    print(f"rnnlab: error: {message}", file=sys.stderr)
    raise SystemExit(code)

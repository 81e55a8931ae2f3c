"""What every worked example shares: the common command-line options (so that
``rnnlab task NAME --help`` reads the same across examples; each example adds its own
beside them) and the results file."""

from __future__ import annotations

import json
from pathlib import Path

from rnnlab.argtypes import directory, fraction, positive_float, positive_int
from rnnlab.training import distributed
from rnnlab.training.schedules import LR_SCHEDULES


def number(group, flag: str, kind, default, help: str, metavar: str = "N", shown=None):
    """A numeric option whose help ends in its default."""
    shown = default if shown is None else shown
    group.add_argument(
        flag, type=kind, default=default, metavar=metavar, help=f"{help} (default: {shown})"
    )


def add_stack_options(
    group,
    cells,
    cell: str,
    hidden: int,
    layers: int,
    dropout: float,
    units: str = "units per layer",
) -> None:
    """``--cell``, ``--hidden``, ``--layers`` and ``--dropout`` of the recurrent stack."""
    group.add_argument(
        "--cell", choices=tuple(cells), default=cell, help=f"recurrent cell (default: {cell})"
    )
    number(group, "--hidden", positive_int, hidden, units)
    number(group, "--layers", positive_int, layers, "stacked recurrent layers")
    number(group, "--dropout", fraction, dropout, "between layers and before the output layer", "X")


def add_optim_options(
    group, lr: float, schedule: str, batch_size: int, schedule_help: str = "learning-rate schedule"
) -> None:
    """``--lr`` (Adam), ``--schedule`` and ``--batch-size``."""
    number(group, "--lr", positive_float, lr, "Adam's learning rate", "X")
    group.add_argument(
        "--schedule",
        choices=LR_SCHEDULES,
        default=schedule,
        help=f"{schedule_help} (default: {schedule})",
    )
    number(group, "--batch-size", positive_int, batch_size, "sequences per update")


def add_output_options(group, out: str, eval_interval: int, threads_help: str) -> None:
    """``--eval-interval``, ``--out``, ``--no-progress`` and ``--threads``."""
    number(group, "--eval-interval", positive_int, eval_interval, "updates between validations")
    group.add_argument(
        "--out", type=directory, default=out, metavar="DIR", help=f"run directory (default: {out})"
    )
    group.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    number(group, "--threads", positive_int, 1, threads_help)


def write_results(out: Path, results: dict) -> Path:
    """Write ``out/results.json``; under torchrun only rank 0 writes."""
    path = out / "results.json"
    if distributed.current().is_main:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return path

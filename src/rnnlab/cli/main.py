"""``rnnlab`` command: dispatches to one small module per command."""

from __future__ import annotations

import os
import re
import sys

import torch

from rnnlab import __version__, allocator
from rnnlab.cli import bench, diagnose, evaluate, sample, task, train
from rnnlab.cli.common import Parser, fail
from rnnlab.errors import UserError

COMMANDS = {
    "train": train,
    "sample": sample,
    "eval": evaluate,
    "task": task,
    "bench": bench,
    "diagnose": diagnose,
}


# What to lower when a command runs out of memory: the options that size its tensors.
MEMORY_OPTIONS = {
    "train": "--hidden, --layers, --embedding, --batch-size or --seq-len",
    "sample": "--length",
    "eval": "--streams",
    "task": "--hidden, --layers or --batch-size",
    "diagnose": "--hidden, --layers, --length or --batch",
    "long-range": "--lengths",
    "speed": "--shapes or --gen-hidden",
}


def out_of_memory(exc: BaseException) -> str | None:
    """For an allocation that failed (torch's CPU allocator, CUDA, Python or numpy), what
    was asked for ("1.6 PB", or "" where the message does not say); else None."""
    text = str(exc)
    if not (
        isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError))
        or (isinstance(exc, RuntimeError) and "can't allocate memory" in text)
    ):
        return None
    found = re.search(r"allocate (\d+) bytes", text)  # torch's CPU allocator
    if found:
        size = float(found.group(1))
        for unit in ("bytes", "kB", "MB", "GB", "TB", "PB", "EB"):
            if size < 1000 or unit == "EB":
                return f"{size:.3g} {unit}"
            size /= 1000
    found = re.search(r"allocate ([\d.]+ ?[KMGTPE]i?B)", text)  # CUDA, numpy
    return found.group(1) if found else ""


def build_parser() -> Parser:
    parser = Parser(prog="rnnlab", description="Recurrent neural networks you can see into.")
    parser.add_argument("--version", action="version", version=f"rnnlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=module.HELP, description=module.HELP))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # named after the subcommand that was given them, not after "rnnlab"
        command = " ".join(
            ["rnnlab", args.command, *([args.bench] if args.command == "bench" else [])]
        )
        parser.exit(
            2,
            f"{command}: error: unrecognized arguments: {' '.join(extra)} "
            f"(see '{command} --help')\n",
        )
    try:
        return COMMANDS[args.command].run(args)
    except UserError as exc:
        fail(str(exc))
    except (RuntimeError, MemoryError) as exc:
        size = out_of_memory(exc)
        if size is None:
            raise
        asked = f"an allocation of {size} failed" if size else "an allocation failed"
        which = args.bench if args.command == "bench" else args.command
        fail(f"out of memory: {asked}; lower {MEMORY_OPTIONS[which]}")
    except BrokenPipeError:  # the reader went away (| head): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # a file or directory the user named that cannot be used
        where = f"{exc.filename}: " if exc.filename else ""
        fail(f"{where}{exc.strerror or exc}")
    except KeyboardInterrupt:
        print("rnnlab: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The ``rnnlab`` program: the C allocator keeps freed memory (:mod:`rnnlab.allocator`;
    here, not in :func:`main`, because it changes the whole process), then :func:`main`."""
    try:
        allocator.configure()
    except UserError as exc:
        fail(str(exc))
    sys.exit(main())

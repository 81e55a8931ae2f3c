"""``rnnlab`` command: dispatches to one small module per command."""

from __future__ import annotations

import os
import sys

from rnnlab import __version__
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
    sys.exit(main())

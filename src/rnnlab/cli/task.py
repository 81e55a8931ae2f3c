"""``rnnlab task NAME [options]``: train, evaluate and report one worked example."""

from __future__ import annotations

import argparse
import contextlib
import os

from rnnlab import examples
from rnnlab.cli.common import Parser
from rnnlab.errors import UserError
from rnnlab.training import distributed

HELP = "train, evaluate and report a worked example (rnnlab task --list)"


def add_arguments(p) -> None:
    p.add_argument("name", nargs="?", metavar="NAME", help="the example to run")
    p.add_argument("--list", action="store_true", help="describe the examples and exit")
    p.add_argument("options", nargs=argparse.REMAINDER, help="the example's own options")


def run(a) -> int:
    if a.list or a.name is None:
        for name in examples.available():
            module = examples.get(name)
            print(f"{name:16s} {module.ARCHITECTURE:14s} {module.DESCRIPTION}")
        if a.name is None and not a.list:
            raise UserError("name a task (see the list above), e.g. rnnlab task addition")
        return 0
    module = examples.get(a.name)
    parser = Parser(prog=f"rnnlab task {a.name}", description=module.DESCRIPTION)
    module.add_arguments(parser)
    options = parser.parse_args(a.options)
    dist = distributed.init_from_environment()  # under torchrun: join the process group
    try:
        if dist.is_main:
            code = module.run(options)
        else:
            with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
                code = module.run(options)  # rank 0 alone reports
    except BaseException:
        distributed.shutdown()
        raise
    distributed.shutdown(together=True)
    if not dist.is_main:
        distributed.exit_worker(code or 0)
    return code

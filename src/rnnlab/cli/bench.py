"""``rnnlab bench long-range|speed [...]``: benchmarks, one subcommand each."""

from __future__ import annotations

import os

import torch

from rnnlab.cli.common import directory, new_output_directory, positive_float, positive_int
from rnnlab.errors import UserError

HELP = "run a benchmark (rnnlab bench long-range --help, rnnlab bench speed --help)"


def _list(text: str | None, option: str, default: tuple) -> tuple:
    """The comma-separated values given to ``option``, or ``default`` where it was not
    given; a list with no value in it is refused (it would otherwise mean "all")."""
    if text is None:
        return tuple(default)
    values = tuple(part.strip() for part in text.split(",") if part.strip())
    if not values:
        raise UserError(f"{option} needs at least one value; got {text!r}")
    return values


def _ints(text: str | None, option: str, default: tuple) -> tuple[int, ...]:
    """:func:`_list` of whole numbers."""
    values = _list(text, option, default)
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise UserError(f"{option} takes whole numbers separated by commas; got {text!r}") from None


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    lr = sub.add_parser(
        "long-range",
        help="the pathological long-range tasks (Hochreiter 1997, Pascanu 2013)",
        description="Train every (task, length, method, seed) cell until its test error is "
        "under the task's threshold or the budget is spent; write results.json and results.md.",
    )
    lr.add_argument("--tasks", help="comma-separated task names (default: temporal-order,adding)")
    lr.add_argument("--lengths", help="comma-separated lengths (default: 50,100)")
    lr.add_argument(
        "--methods",
        help="comma-separated methods: sgd, sgd-c, sgd-cr (each may end in /sigmoid, /tanh, "
        "/smart), lstm-adam, gru-adam, irnn (default: sgd,sgd-c,sgd-cr,lstm-adam)",
    )
    lr.add_argument("--seeds", type=positive_int, help="seeds per cell (default: 2)")
    lr.add_argument(
        "--budget",
        default="quick",
        help="quick (3,000 updates per cell), paper (250,000) or a number of updates "
        "(default: quick)",
    )
    lr.add_argument(
        "--eval-interval",
        type=positive_int,
        help="updates between test checks (default: the budget's: 250 for quick, 1,000 for paper, "
        "else a quarter of it, at most 250)",
    )
    lr.add_argument("--max-time", type=positive_float, help="seconds per cell (default: none)")
    lr.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    lr.add_argument(
        "--out",
        type=directory,
        default="runs/bench-long-range",
        help="output directory (default: %(default)s)",
    )
    lr.add_argument("--list", action="store_true", help="list tasks and methods and exit")
    lr.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_speed_arguments(sub)


def _add_speed_arguments(sub) -> None:
    sp = sub.add_parser(
        "speed",
        help="rnnlab vs torch.nn on the CPU: training steps, variants, generation, the limit",
        description="Time rnnlab against torch.nn in one process, interleaving the "
        "contenders and taking medians; print ratios (rnnlab time / competitor time) and "
        "write results.json and results.md.  Shapes (batch x steps x input x hidden x "
        "layers): 1 = 50x50x65x128x2, 2 = 64x100x65x512x2, 3 = 1x200x65x256x1, "
        "4 = 32x100x128x256x1, 5 = 16x100x256x256x2.",
    )
    sp.add_argument(
        "--sections",
        help="comma-separated: training, variants, generation, precision, limit (default: all)",
    )
    sp.add_argument(
        "--shapes",
        help="comma-separated shape numbers 1-5 or custom NxTxIxHxL (default: all five; "
        "variants run on the first)",
    )
    sp.add_argument(
        "--repeats", type=positive_int, help="interleaved runs per contender (default: 5)"
    )
    sp.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test: 1 repeat, 40 generated characters, small peak matmuls (the "
        "figures are noise)",
    )
    sp.add_argument(
        "--threads",
        type=positive_int,
        help="torch threads for training and the matmul peak (default: the machine's CPUs)",
    )
    sp.add_argument(
        "--gen-threads",
        type=positive_int,
        help="threads for generation, batch 1, for torch and for rnnlab's compiled loop alike "
        "(default: the machine's CPUs)",
    )
    sp.add_argument(
        "--gen-hidden", help="comma-separated hidden sizes to generate with (default: 128,256,512)"
    )
    sp.add_argument(
        "--gen-chars",
        type=positive_int,
        help="characters generated per timed run (default: 400)",
    )
    sp.add_argument(
        "--out",
        type=directory,
        default="runs/bench-speed",
        help="output directory (default: %(default)s)",
    )
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(a) -> int:
    return {"long-range": run_long_range, "speed": run_speed}[a.bench](a)


def run_speed(a) -> int:
    from rnnlab.bench.speed import GEN_HIDDEN, SECTIONS, Settings, markdown, parse_shapes
    from rnnlab.bench.speed import run_speed as run_bench

    try:
        settings = Settings(
            sections=_list(a.sections, "--sections", SECTIONS),
            shapes=parse_shapes(a.shapes),
            repeats=a.repeats or (1 if a.quick else 5),
            gen_threads=a.gen_threads or (os.cpu_count() or 1),
            gen_hidden=_ints(a.gen_hidden, "--gen-hidden", GEN_HIDDEN),
            gen_chars=a.gen_chars or (40 if a.quick else 400),
        )
        if a.quick:
            settings.peak_sizes = (256, 512)
            settings.lm_shape = (4, 20, 32, 2)
        if a.threads:
            settings.threads = a.threads
        if any(h < 1 for h in settings.gen_hidden):
            raise ValueError("--gen-hidden takes positive sizes")
        settings.check()
    except ValueError as exc:
        raise UserError(f"bench speed: {exc}") from None
    with new_output_directory(a.out) as out:
        results = run_bench(settings, out, progress=not a.no_progress)
    print(markdown(results), end="")
    print(f"results: {out / 'results.json'}, {out / 'results.md'}")
    return 0


def run_long_range(a) -> int:
    from rnnlab.bench.long_range import METHODS, QUICK_GRID, Grid, markdown_table, parse_budget
    from rnnlab.tasks import TASKS

    if a.list:
        print("tasks:   " + ", ".join(TASKS))
        print("methods: " + ", ".join(METHODS) + " (sgd methods: /sigmoid, /tanh, /smart)")
        return 0
    try:
        max_updates, interval = parse_budget(a.budget)
    except ValueError as exc:
        raise UserError(f"{exc}") from None
    grid = Grid(
        tasks=_list(a.tasks, "--tasks", QUICK_GRID["tasks"]),
        lengths=_ints(a.lengths, "--lengths", QUICK_GRID["lengths"]),
        methods=_list(a.methods, "--methods", QUICK_GRID["methods"]),
        seeds=a.seeds or QUICK_GRID["seeds"],
        max_updates=max_updates,
        eval_interval=a.eval_interval or interval,
        max_time=a.max_time,
    )
    try:
        grid.check()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    torch.set_num_threads(a.threads)
    from rnnlab.bench.long_range import run_grid

    with new_output_directory(a.out) as out:
        rows = run_grid(grid, out, progress=not a.no_progress)
    print(markdown_table(rows), end="")
    print(f"results: {out / 'results.json'}, {out / 'results.md'}")
    return 0

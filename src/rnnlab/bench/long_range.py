"""The long-range dependency benchmark: tasks x lengths x methods x seeds.

Each cell of the grid trains one model (a recurrent layer and a linear readout) with
:class:`rnnlab.training.Trainer` on fresh batches of a task from :mod:`rnnlab.tasks`,
checks the error on the task's test set every ``eval_interval`` updates and stops as
soon as it is under the task's threshold (1% for Pascanu's tasks).  After each cell the
results JSON and the Markdown table are rewritten, so an interrupted grid loses at most
one cell and a rerun with the same output skips the cells already done.

Methods (``METHODS``; the recurrent part of ``sgd*`` methods may take ``/sigmoid``,
``/tanh`` or ``/smart``, the three initialisations of Pascanu et al. Fig. 7):

``sgd``        Pascanu-form RNN, 50 units, SGD lr 0.01, batch 20, no clipping
``sgd-c``      the same, clipping the gradient's norm at 1
``sgd-cr``     the same plus the regulariser Omega, weight 2 (released code; paper: 4)
``lstm-adam``  LSTM, 50 units, forget-gate bias 3, Adam lr 2e-3, clip 1
``gru-adam``   GRU, 50 units, Adam lr 2e-3, clip 1

The LSTM's forget-gate bias starts at 3 (sigma(3) = 0.95): Hochreiter & Schmidhuber's 1997
LSTM had no forget gate (a constant 1), and Gers et al. (2000) start the forget gate open.
With torch's default bias (about 0, so the cell state halves at every step) the LSTM stayed
at chance on temporal order, L = 50, for 3,000 updates (2 seeds; bias 1: 50% error after
2,000), while bias 3 solved it in 500 updates; docs/long-range.md has the figures.
``irnn``       ReLU Elman RNN with identity recurrence (Le et al. 2015), SGD lr 0.01, clip 1
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

import rnnlab
from rnnlab.errors import UserError
from rnnlab.init import Init
from rnnlab.tasks import TASKS, Batch, Task, make_task
from rnnlab.training.config import OptimConfig, OutputConfig, TrainConfig
from rnnlab.training.trainer import Trainer

INITS = {  # Pascanu et al. (2013), section 4.1
    "sigmoid": ("sigmoid", Init("normal", std=0.01), 0.01),
    "tanh": ("tanh", Init("normal", std=0.1), 0.1),
    "smart": ("tanh", Init("spectral", radius=0.95, connections=15, std=0.01), 0.01),
}


@dataclass(frozen=True)
class Method:
    """How to build and train one model."""

    cell: str  # pascanu, lstm, gru, irnn
    optimizer: str = "sgd"
    lr: float = 0.01
    clip: float = 0.0
    omega: float = 0.0
    init: str = "smart"
    forget_bias: float | None = None  # lstm: initial forget-gate bias (None: torch's init)
    hidden: int = 50
    batch_size: int = 20


METHODS = {
    "sgd": Method("pascanu"),
    "sgd-c": Method("pascanu", clip=1.0),
    "sgd-cr": Method("pascanu", clip=1.0, omega=2.0),
    "lstm-adam": Method("lstm", "adam", 2e-3, clip=1.0, forget_bias=3.0),
    "gru-adam": Method("gru", "adam", 2e-3, clip=1.0),
    "irnn": Method("irnn", "sgd", 0.01, clip=1.0),
}

# updates per cell and updates between test-set checks
BUDGETS = {"quick": (3000, 250), "paper": (250_000, 1000)}
QUICK_GRID = {
    "tasks": ["temporal-order", "adding"],
    "lengths": [50, 100],
    "methods": ["sgd", "sgd-c", "sgd-cr", "lstm-adam"],
    "seeds": 2,
}


def parse_method(spec: str) -> Method:
    """``sgd-cr``, ``sgd-c/sigmoid``, ``lstm-adam``, ... -> :class:`Method`."""
    name, _, init = spec.partition("/")
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; methods: {', '.join(METHODS)}")
    method = METHODS[name]
    if init:
        if method.cell != "pascanu" or init not in INITS:
            raise ValueError(f"{spec!r}: /{init} applies to sgd methods: /{', /'.join(INITS)}")
        method = replace(method, init=init)
    return method


def parse_budget(text: str) -> tuple[int, int]:
    """``quick``, ``paper`` or a number of updates -> (max updates, eval interval)."""
    if text in BUDGETS:
        return BUDGETS[text]
    try:
        updates = int(text)
    except ValueError:
        raise ValueError(
            f"budget must be quick, paper or a number of updates; got {text!r}"
        ) from None
    if updates < 1:
        raise ValueError(f"budget must be positive; got {updates}")
    return updates, max(1, min(250, updates // 4))


class BenchModel(nn.Module):
    """A recurrent layer (``self.rnn``, as the Trainer's regulariser expects) and a readout
    at the last step (regression, classification) or at every step (tagging, multilabel)."""

    def __init__(self, task: Task, method: Method):
        super().__init__()
        I, H, K = task.input_size, method.hidden, task.output_size
        self.kind = task.kind
        readout_std = None
        if method.cell == "pascanu":
            sigma, init, readout_std = INITS[method.init]
            self.rnn = rnnlab.PascanuRNN(I, H, sigma=sigma, init=init)
        elif method.cell == "irnn":
            self.rnn = rnnlab.RNN(I, H, nonlinearity="relu", init=Init("identity", std=0.001))
        elif method.cell == "lstm":
            self.rnn = rnnlab.LSTM(I, H, forget_bias=method.forget_bias)
        elif method.cell == "gru":
            self.rnn = rnnlab.GRU(I, H)
        else:
            raise ValueError(f"unknown cell {method.cell!r}")
        self.readout = nn.Linear(H, K)
        if readout_std is not None:  # Pascanu et al. initialise W_out like W_in
            nn.init.normal_(self.readout.weight, 0.0, readout_std)
            nn.init.zeros_(self.readout.bias)

    def forward(self, batch: Batch) -> torch.Tensor:
        outputs, _ = self.rnn(batch.inputs, lengths=batch.lengths)
        if self.kind in ("tagging", "multilabel"):
            return self.readout(outputs)
        if batch.lengths is None:
            last = outputs[-1]
        else:
            last = outputs[batch.lengths - 1, torch.arange(batch.size)]
        pred = self.readout(last)
        return pred.squeeze(-1) if self.kind == "regression" else pred


@torch.no_grad()
def test_error(model: BenchModel, task: Task, size: int | None = None) -> tuple[float, float]:
    """(error rate, mean loss) on the first ``size`` sequences of the fixed test set."""
    was_training = model.training
    model.eval()
    wrong = total = 0
    loss = 0.0
    for batch in task.test_batches(size=size):
        pred = model(batch)
        wrong += int((~task.correct(pred, batch)).sum())
        loss += float(task.loss(pred, batch)) * batch.size
        total += batch.size
    model.train(was_training)
    return wrong / total, loss / total


class StreamingTask:
    """The Trainer's task protocol over a generator: a fresh batch every update, drawn from
    a seeded ``torch.Generator`` whose state is saved for resumption.

    ``evaluate`` first checks the first 1,000 test sequences and, when those pass, the
    whole test set; once under the threshold it records ``solved_at`` and calls
    ``on_solved`` (the benchmark uses it to stop the Trainer)."""

    unit = "sequence"
    has_validation = True
    updates_per_epoch = 1

    def __init__(self, task: Task, batch_size: int, seed: int, on_solved=None):
        self.task, self.batch_size = task, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.on_solved = on_solved
        self.step = 0
        self.solved_at: int | None = None
        self.last_error: float | None = None
        self.history: list[tuple[int, float]] = []

    @property
    def tokens_per_update(self) -> int:
        return self.batch_size

    def training_loss(self, model) -> torch.Tensor:
        self.step += 1
        batch = self.task.sample(self.batch_size, self.generator)
        return self.task.loss(model(batch), batch)

    def evaluate(self, model) -> dict[str, float]:
        error, loss = test_error(model, self.task, size=min(1000, self.task.test_size))
        if error < self.task.threshold and self.task.test_size > 1000:
            error, loss = test_error(model, self.task)
        self.last_error = error
        self.history.append((self.step, error))
        if error < self.task.threshold and self.solved_at is None:
            self.solved_at = self.step
            if self.on_solved is not None:
                self.on_solved()
        return {"val_loss": loss, "error": error}

    def state_dict(self) -> tuple[dict, dict]:
        return {"generator": self.generator.get_state()}, {"step": self.step}

    def load_state_dict(self, tensors: dict, meta: dict) -> None:
        self.generator.set_state(tensors["generator"])
        self.step = meta["step"]


def run_cell(
    task_name: str,
    length: int,
    method_name: str,
    seed: int,
    max_updates: int,
    eval_interval: int,
    out: Path,
    max_time: float | None = None,
) -> dict:
    """Train one model; return its row of the results table."""
    method = parse_method(method_name)
    task = make_task(task_name, length)
    torch.manual_seed(seed)
    model = BenchModel(task, method)
    stream = StreamingTask(task, method.batch_size, seed=10_007 * seed + length)
    config = TrainConfig(
        optim=OptimConfig(
            optimizer=method.optimizer,
            lr=method.lr,
            clip=method.clip,
            batch_size=method.batch_size,
            max_steps=max_updates,
            max_time=max_time,
            pascanu_alpha=method.omega,
        ),
        output=OutputConfig(
            out=str(out / "cells" / f"{task_name}-{length}-{method_name.replace('/', '_')}-{seed}"),
            eval_interval=eval_interval,
            sample_length=0,
            seed=seed,
            progress=False,
            tensorboard=False,
        ),
    )
    trainer = Trainer(model, stream, config, checkpointer=lambda *a, **k: None, log=lambda m: None)
    stream.on_solved = lambda: setattr(trainer, "stop_requested", True)
    start = time.perf_counter()
    result = trainer.run()
    return {
        "task": task_name,
        "length": length,
        "method": method_name,
        "seed": seed,
        "solved": stream.solved_at is not None,
        "updates_to_success": stream.solved_at,
        "updates": result.steps,
        "test_error": stream.last_error,
        "seconds": round(time.perf_counter() - start, 1),
        "skipped_updates": result.skipped_updates,
        "history": stream.history,
    }


def cell_key(row: dict) -> tuple:
    return (row["task"], row["length"], row["method"], row["seed"])


SETTINGS = ("max_updates", "eval_interval", "max_time")  # what makes two cells' rows comparable


def _settings_text(settings: dict) -> str:
    return ", ".join(f"{k} {settings.get(k)}" for k in SETTINGS)


def summarize(rows: list[dict]) -> list[dict]:
    """One line per (task, length, method): success rate and median updates to success."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["length"], row["method"]), []).append(row)
    lines = []
    for (task, length, method), group in groups.items():
        solved = sorted(r["updates_to_success"] for r in group if r["solved"])
        errors = [r["test_error"] for r in group if r["test_error"] is not None]
        lines.append(
            {
                "task": task,
                "length": length,
                "method": method,
                "seeds": len(group),
                "solved": len(solved),
                "median_updates": solved[len(solved) // 2] if solved else None,
                "best_error": min(errors) if errors else None,
                "final_errors": errors,
                "max_updates": max(r["updates"] for r in group),
            }
        )
    return lines


def markdown_table(rows: list[dict]) -> str:
    head = (
        "| task | length | method | success | updates to success (median) "
        "| test error at the end, per seed | updates run (max) |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    body = ""
    for s in summarize(rows):
        updates = "-" if s["median_updates"] is None else f"{s['median_updates']:,}"
        error = ", ".join(f"{100 * e:.1f}%" for e in s["final_errors"]) or "-"
        body += (
            f"| {s['task']} | {s['length']} | {s['method']} | {s['solved']}/{s['seeds']} "
            f"| {updates} | {error} | {s['max_updates']:,} |\n"
        )
    return head + body


@dataclass(frozen=True)
class Grid:
    tasks: tuple[str, ...]
    lengths: tuple[int, ...]
    methods: tuple[str, ...]
    seeds: int
    max_updates: int
    eval_interval: int
    max_time: float | None = None  # per cell, seconds

    def task_lengths(self, task: str) -> tuple[int, ...]:
        """The lengths ``task`` runs at: 0 alone for a task that sets its own (Reber),
        where every length would be the same cell under another label."""
        cls = TASKS.get(task)
        return self.lengths if cls is None or cls.uses_length else (0,)

    def cells(self):
        for task in self.tasks:
            for length in self.task_lengths(task):
                for method in self.methods:
                    for seed in range(self.seeds):
                        yield task, length, method, seed

    def check(self) -> None:
        for task in self.tasks:
            for length in self.task_lengths(task):
                make_task(task, length)  # raises ValueError on a bad name or length
        for method in self.methods:
            parse_method(method)


def run_grid(grid: Grid, out: Path, progress: bool = True, log=print) -> list[dict]:
    """Run every cell not already in ``out/results.json``; rewrite it and ``results.md``
    after each cell.  Returns all rows.  The cells already there must have been trained
    with the grid's budget (:data:`SETTINGS`), else a UserError says so."""
    grid.check()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    stored = json.loads(path.read_text()) if path.exists() else {"rows": []}
    rows = stored["rows"]
    wanted = {k: getattr(grid, k) for k in SETTINGS}
    earlier = {k: stored.get("grid", {}).get(k) for k in SETTINGS}  # files before "settings"
    for row in rows:
        have = row.get("settings", earlier)
        if have != wanted:
            raise UserError(
                f"{path} holds cells trained with {_settings_text(have)}; this grid asks for "
                f"{_settings_text(wanted)}, and the two would not compare: give another --out, "
                "or the same budget to add cells to it"
            )
    done = {cell_key(r) for r in rows}
    todo = [c for c in grid.cells() if c not in done]
    if done:
        log(f"{len(done)} cells already in {path}; {len(todo)} to run")
    bar = tqdm(todo, disable=None if progress else True, unit="cell", dynamic_ncols=True)
    for task, length, method, seed in bar:
        bar.set_description(f"{task} L={length} {method} seed {seed}")
        row = run_cell(
            task, length, method, seed, grid.max_updates, grid.eval_interval, out, grid.max_time
        )
        row["settings"] = wanted
        rows.append(row)
        outcome = f"solved at {row['updates_to_success']}" if row["solved"] else "not solved"
        err = row["test_error"]
        err_text = "n/a" if err is None or math.isnan(err) else f"{100 * err:.1f}%"
        tqdm.write(
            f"{task} L={length} {method} seed {seed}: {outcome} "
            f"(test error {err_text}, {row['updates']} updates, {row['seconds']} s)"
        )
        write_results(out, grid, rows)
    return rows


def write_results(out: Path, grid: Grid, rows: list[dict]) -> None:
    """Rows in the grid's order (cells of other grids in the same file after them)."""
    order = {cell: i for i, cell in enumerate(grid.cells())}
    rows.sort(key=lambda r: order.get(cell_key(r), len(order)))
    data = {"grid": asdict(grid), "rows": rows, "summary": summarize(rows)}
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(out / "results.json")
    (out / "results.md").write_text(markdown_table(rows))

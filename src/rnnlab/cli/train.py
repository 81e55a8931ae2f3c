"""``rnnlab train``: train a language model on a text file or the bundled corpus.

Settings come from the defaults, then ``--config FILE.toml`` (or a preset name), then the
flags given on the command line; ``--resume RUN_DIR`` starts from that run's saved
configuration instead and continues its ``last/`` checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import fields
from pathlib import Path

from rnnlab.cells.elman import NONLINEARITIES
from rnnlab.cli.common import (
    directory,
    fraction,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    random_seed,
)
from rnnlab.data.vocab import KINDS
from rnnlab.errors import UserError
from rnnlab.layers import BACKENDS
from rnnlab.models import CELLS
from rnnlab.training import distributed, train
from rnnlab.training.checkpoint import load_checkpoint, resolve_last, resolve_run
from rnnlab.training.clipping import CLIP_MODES
from rnnlab.training.config import GROUPS, OPTIMIZERS, TrainConfig, load_config, preset_names
from rnnlab.training.precision import PRECISIONS
from rnnlab.training.schedules import (
    LR_SCHEDULES,
    TEACHER_SCHEDULES,
    TF_K_DEFAULTS,
    TeacherForcing,
)
from rnnlab.training.trainer import sample_text

HELP = "train a language model (default: the bundled Tiny Shakespeare)"

# flag, (group, field), argparse options, help. Defaults are read from the dataclasses.
FLAGS = [
    (
        "--data",
        ("data", "path"),
        dict(metavar="FILE"),
        "UTF-8 text file",
    ),
    ("--tokens", ("data", "tokens"), dict(choices=KINDS), "token unit"),
    (
        "--vocab-size",
        ("data", "vocab_size"),
        dict(type=positive_int, metavar="N"),
        "cap on a word vocabulary, <unk> included",
    ),
    (
        "--val-fraction",
        ("data", "val_fraction"),
        dict(type=fraction, metavar="X"),
        "last part of the text held out for validation",
    ),
    (
        "--val-streams",
        ("data", "val_streams"),
        dict(type=positive_int, metavar="N"),
        "validation scores the held-out text as N contiguous streams carrying state",
    ),
    ("--cell", ("model", "cell"), dict(choices=CELLS), "recurrent cell"),
    (
        "--nonlinearity",
        ("model", "nonlinearity"),
        dict(choices=NONLINEARITIES),
        "activation of the rnn, pascanu and jordan cells",
    ),
    (
        "--hidden-recurrence",
        ("model", "hidden_recurrence"),
        dict(action=argparse.BooleanOptionalAction),
        "jordan cell: also feed h_{t-1} back (hidden and output recurrence)",
    ),
    ("--hidden", ("model", "hidden_size"), dict(type=positive_int, metavar="N"), "units per layer"),
    (
        "--layers",
        ("model", "num_layers"),
        dict(type=positive_int, metavar="N"),
        "stacked recurrent layers",
    ),
    (
        "--embedding",
        ("model", "embedding_dim"),
        dict(type=nonnegative_int, metavar="N"),
        "embedding size; 0 feeds one-hot vectors",
    ),
    (
        "--dropout",
        ("model", "dropout"),
        dict(type=fraction, metavar="X"),
        "dropout between layers and before the output",
    ),
    (
        "--weight-drop",
        ("model", "weight_drop"),
        dict(type=fraction, metavar="X"),
        "DropConnect on the recurrent weights W_hh in training (AWD-LSTM)",
    ),
    (
        "--backend",
        ("model", "backend"),
        dict(choices=BACKENDS),
        "auto: the fastest path for the cell and device (torch.nn's kernel for the plain "
        "LSTM, numba elsewhere on the CPU); numba: compiled CPU steps; fused: "
        "hand-derived BPTT in PyTorch; torch: torch.nn's kernel; reference: autograd",
    ),
    (
        "--dtype",
        ("model", "dtype"),
        dict(choices=("float32", "float64")),
        "parameter precision (float64 for exact comparisons)",
    ),
    ("--optimizer", ("optim", "optimizer"), dict(choices=OPTIMIZERS), "optimiser"),
    ("--lr", ("optim", "lr"), dict(type=positive_float, metavar="X"), "learning rate"),
    (
        "--momentum",
        ("optim", "momentum"),
        dict(type=nonnegative_float, metavar="X"),
        "momentum (sgd, rmsprop)",
    ),
    ("--nesterov", ("optim", "nesterov"), dict(action="store_true"), "Nesterov momentum (sgd)"),
    (
        "--weight-decay",
        ("optim", "weight_decay"),
        dict(type=nonnegative_float, metavar="X"),
        "the optimiser's weight decay (decoupled for adamw)",
    ),
    (
        "--l1",
        ("optim", "l1"),
        dict(type=nonnegative_float, metavar="X"),
        "L1 penalty on weight matrices, added to the loss",
    ),
    (
        "--l2",
        ("optim", "l2"),
        dict(type=nonnegative_float, metavar="X"),
        "L2 penalty on weight matrices, added to the loss",
    ),
    (
        "--clip",
        ("optim", "clip"),
        dict(type=nonnegative_float, metavar="X"),
        "clipping threshold; 0 disables",
    ),
    (
        "--clip-mode",
        ("optim", "clip_mode"),
        dict(choices=CLIP_MODES),
        "norm: rescale the global norm; value: clamp each element",
    ),
    (
        "--batch-size",
        ("optim", "batch_size"),
        dict(type=positive_int, metavar="N"),
        "parallel streams per batch",
    ),
    (
        "--seq-len",
        ("optim", "seq_len"),
        dict(type=positive_int, metavar="N"),
        "k1: steps run between updates",
    ),
    (
        "--bptt",
        ("optim", "bptt"),
        dict(type=nonnegative_int, metavar="N"),
        "k2 >= k1: steps the gradient flows back; 0 means --seq-len",
    ),
    (
        "--max-steps",
        ("optim", "max_steps"),
        dict(type=positive_int, metavar="N"),
        "stop after N updates",
    ),
    (
        "--max-time",
        ("optim", "max_time"),
        dict(type=positive_float, metavar="S"),
        "stop after S seconds (given --max-steps alone: no time limit)",
    ),
    (
        "--max-nonfinite",
        ("optim", "max_nonfinite"),
        dict(type=positive_int, metavar="N"),
        "stop after N updates in a row with non-finite loss or gradient",
    ),
    (
        "--pascanu-alpha",
        ("optim", "pascanu_alpha"),
        dict(type=nonnegative_float, metavar="X"),
        "weight of the Pascanu vanishing-gradient regulariser (rnn/pascanu cells, 1 layer)",
    ),
    (
        "--pascanu-decay",
        ("optim", "pascanu_decay"),
        dict(type=nonnegative_float, metavar="N"),
        "divide the regulariser weight by 1 + step / N; 0: constant",
    ),
    (
        "--precision",
        ("optim", "precision"),
        dict(choices=PRECISIONS),
        "float32; bfloat16: the forward pass under autocast, weights and evaluation in "
        "float32; auto: bfloat16 on a GPU that supports it, or a CPU with AMX or where a "
        "bfloat16 product measures at least 1.3x faster than float32",
    ),
    (
        "--ema",
        ("optim", "ema"),
        dict(type=fraction, metavar="D"),
        "validate, sample and keep as best/ a moving average of the weights, decay D (0: off)",
    ),
    ("--schedule", ("schedule", "schedule"), dict(choices=LR_SCHEDULES), "learning-rate schedule"),
    (
        "--warmup",
        ("schedule", "warmup"),
        dict(type=nonnegative_int, metavar="N"),
        "updates of linear warm-up",
    ),
    (
        "--lr-step",
        ("schedule", "step_size"),
        dict(type=positive_int, metavar="N"),
        "updates between decays (step schedule)",
    ),
    (
        "--lr-gamma",
        ("schedule", "gamma"),
        dict(type=positive_float, metavar="X"),
        "decay factor (step, plateau)",
    ),
    (
        "--lr-patience",
        ("schedule", "patience"),
        dict(type=positive_int, metavar="N"),
        "validations without improvement before a decay (plateau)",
    ),
    (
        "--min-lr",
        ("schedule", "min_lr"),
        dict(type=nonnegative_float, metavar="X"),
        "floor of the learning rate (cosine, plateau)",
    ),
    (
        "--teacher-forcing",
        ("teacher", "schedule"),
        dict(choices=TEACHER_SCHEDULES),
        "jordan cell: probability of feeding the true previous token, by update",
    ),
    (
        "--tf-k",
        ("teacher", "k"),
        dict(type=positive_float, metavar="X"),
        "k of the linear (start), exponential (base) or inverse_sigmoid schedule",
    ),
    (
        "--tf-c",
        ("teacher", "c"),
        dict(type=nonnegative_float, metavar="X"),
        "slope of the linear schedule, per update",
    ),
    (
        "--tf-min",
        ("teacher", "min_p"),
        dict(type=fraction, metavar="X"),
        "floor of the teacher-forcing probability",
    ),
    (
        "--out",
        ("output", "out"),
        dict(type=directory, metavar="DIR"),
        "run directory: new, empty, or an earlier run's (replaced)",
    ),
    (
        "--eval-interval",
        ("output", "eval_interval"),
        dict(type=positive_int, metavar="N"),
        "updates between validations",
    ),
    (
        "--checkpoint-interval",
        ("output", "checkpoint_interval"),
        dict(type=nonnegative_int, metavar="N"),
        "updates between saves of last/; 0: at validations",
    ),
    (
        "--monitor-interval",
        ("output", "monitor_interval"),
        dict(type=nonnegative_int, metavar="N"),
        "every N updates log gradient flow through time and spectral radii; 0: never",
    ),
    (
        "--early-stop",
        ("output", "early_stop"),
        dict(type=nonnegative_int, metavar="N"),
        "stop after N validations without improvement; 0: never",
    ),
    (
        "--sample-length",
        ("output", "sample_length"),
        dict(type=nonnegative_int, metavar="N"),
        "tokens sampled at each validation (the sample after training: twice as many; 0: none)",
    ),
    (
        "--seed",
        ("output", "seed"),
        dict(type=random_seed, metavar="N"),
        "seeds data order, initialisation, dropout and samples",
    ),
]
GROUP_TITLES = {
    "data": "data",
    "model": "model",
    "optim": "optimisation",
    "schedule": "learning-rate schedule",
    "teacher": "teacher forcing (jordan cell)",
    "output": "output",
}


def _default(group: str, name: str):
    for f in fields(GROUPS[group]):
        if f.name == name:
            return TrainConfig().__getattribute__(group).__getattribute__(name)
    raise KeyError(name)


def _shown(group: str, name: str, default) -> str:
    """A default as ``--help`` shows it."""
    if (group, name) == ("data", "path") and default is None:
        return "the bundled Tiny Shakespeare"
    if (group, name) == ("teacher", "k") and default is None:  # each schedule has its own
        return ", ".join(f"{k:g} ({schedule})" for schedule, k in TF_K_DEFAULTS.items())
    return str(default)


def add_arguments(p) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help=f"TOML file or preset ({', '.join(preset_names())}); flags override it",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue that run (or RUN_DIR/last) in place from its last/ checkpoint (flags "
        "override its config)",
    )
    groups = {g: p.add_argument_group(t) for g, t in GROUP_TITLES.items()}
    for flag, (group, name), options, text in FLAGS:
        default = _default(group, name)
        shown = "" if options.get("action") else f" (default: {_shown(group, name, default)})"
        groups[group].add_argument(
            flag,
            dest=f"{group}.{name}",
            default=argparse.SUPPRESS,
            help=text + shown.replace("%", "%%"),
            **options,
        )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument(
        "--no-tensorboard",
        action="store_true",
        help="do not log to TensorBoard even if it is installed",
    )


def overrides_from_args(a) -> dict[str, dict]:
    """{group: {field: value}} for exactly the flags given on the command line."""
    changes: dict[str, dict] = {}
    for key, value in vars(a).items():
        if "." in key:
            group, name = key.split(".", 1)
            changes.setdefault(group, {})[name] = value
    if a.no_progress:
        changes.setdefault("output", {})["progress"] = False
    if a.no_tensorboard:
        changes.setdefault("output", {})["tensorboard"] = False
    optim = changes.get("optim", {})
    if "max_steps" in optim and "max_time" not in optim:
        optim["max_time"] = None  # --max-steps alone means: run exactly that many updates
    return changes


def config_from_args(a) -> TrainConfig:
    """The run's configuration; with ``--resume``, ``output.out`` is the run's directory."""
    changes = overrides_from_args(a)
    flags = {(group, name) for group, values in changes.items() for name in values}
    if a.resume is None:
        config = load_config(a.config, changes)
        refuse_inapplicable(config, flags)
        return config
    if a.config is not None:
        raise UserError("--resume continues a run with its saved config; drop --config")
    run = resolve_run(a.resume)
    out = changes.get("output", {}).get("out")
    if out is not None and Path(out).resolve() != run.resolve():
        raise UserError(
            f"--resume continues {run} in place; drop --out {out} (to branch the run, copy "
            "its directory and resume the copy)"
        )
    _, _, saved, _ = load_checkpoint(resolve_last(run))
    changes.setdefault("output", {})["out"] = str(run)
    try:
        config = saved.updated(changes)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, UserError):
            raise
        raise UserError(f"invalid configuration: {exc}") from None
    refuse_inapplicable(config, flags, only_flags=True)  # the saved settings stay as they were
    return config


def ignored_settings(config: TrainConfig) -> dict[tuple[str, str], str]:
    """{(group, field): where it applies} for the settings that the configuration's cell or
    optimiser ignores."""
    cell, optimizer = config.model.cell, config.optim.optimizer
    ignored = {}
    if cell not in ("rnn", "pascanu", "jordan"):
        ignored["model", "nonlinearity"] = (
            f"--cell rnn, pascanu or jordan; --cell {cell} has its own gates"
        )
    if cell != "jordan":
        ignored["model", "hidden_recurrence"] = (
            f"--cell jordan; --cell {cell} always feeds h_{{t-1}} back"
        )
        for f in fields(TeacherForcing):
            ignored["teacher", f.name] = (
                f"--cell jordan, the one cell that feeds its output back; not --cell {cell}"
            )
    if optimizer not in ("sgd", "rmsprop"):
        ignored["optim", "momentum"] = (
            f"--optimizer sgd or rmsprop; --optimizer {optimizer} keeps its own moment estimates"
        )
    return ignored


def refuse_inapplicable(config: TrainConfig, flags: set, only_flags: bool = False) -> None:
    """A setting moved from its default that the chosen cell or optimiser would ignore is
    refused, not ignored (as diagnose refuses --nonlinearity for a gated cell); defaults
    pass. ``only_flags``: check only the settings given as ``flags``."""
    flag_of = {key: flag for flag, key, _, _ in FLAGS}
    for (group, name), where in ignored_settings(config).items():
        value = getattr(getattr(config, group), name)
        if value == _default(group, name) or (only_flags and (group, name) not in flags):
            continue
        if (group, name) in flags:
            given = flag_of[group, name] + ("" if isinstance(value, bool) else f" {value}")
        else:  # from the --config file
            given = f"[{group}] {name} = {json.dumps(value)}"
        raise UserError(f"{given} applies to {where}")


def run(a) -> int:
    config = config_from_args(a)
    resume = config.output.out if a.resume is not None else None
    dist = distributed.init_from_environment()  # under torchrun: join the process group
    try:
        result = train(config, resume=resume, handle_signals=True, refuse_finished=True)
    except BaseException:
        distributed.shutdown()
        raise
    distributed.shutdown(together=not result.interrupted)
    if not dist.is_main:
        distributed.exit_worker(130 if result.interrupted else 0)
    unit = "char" if result.vocab.kind == "char" else "word"
    print(
        f"trained {result.steps} step{'s' * (result.steps != 1)} in {result.train_seconds:.0f} s "
        f"({result.tokens_per_second:,.0f} {unit}s/s); stopped by {result.stop_reason}"
    )
    if result.best_val_loss is not None:
        print(
            f"best validation loss: {result.best_val_loss:.4f} nats/{unit} "
            f"({result.best_val_loss / math.log(2):.4f} bits/{unit})"
        )
    print(f"checkpoints: {result.out / 'best'} and {result.out / 'last'}")
    if result.interrupted:
        return 130
    if result.steps and config.output.sample_length > 0:
        model, vocab, _, _ = load_checkpoint(result.out / "best")
        print(f"--- sample from {result.out / 'best'} ---")
        print(sample_text(model, vocab, 2 * config.output.sample_length, seed=config.output.seed))
    return 0

"""``rnnlab diagnose``: see vanishing and exploding gradients in a model, on the error
surface of seed 004, and in the experiments the seeds describe.

Three forms::

    rnnlab diagnose [CHECKPOINT] [--cell C] [--length T] [--out DIR]   a model
    rnnlab diagnose surface [--out DIR]                                the one-unit surface
    rnnlab diagnose report NAME [--out DIR]                            an experiment

Without a CHECKPOINT the model is a fresh (untrained) language model of the given shape
on the same text, so ``rnnlab diagnose --cell lstm`` and ``rnnlab diagnose runs/latest``
compare before and after training.  (A checkpoint that must be called ``surface`` or
``report`` can be given as ``./surface``.)
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from rnnlab.cells.elman import NONLINEARITIES
from rnnlab.cli.common import directory, output_directory, positive_int, random_seed
from rnnlab.data import Vocabulary, load_text, split_train_val
from rnnlab.errors import UserError
from rnnlab.models import CELLS, LanguageModel, ModelConfig

HELP = "measure gradient flow through time: a model, the error surface, or an experiment"
SUBCOMMANDS = ("surface", "report")
DIAGNOSABLE = tuple(c for c in CELLS if c != "jordan")
UNSUPPORTED_JORDAN = (
    "diagnose does not measure the jordan language model (its output recurrence is fed the "
    "true previous token); a JordanRNN layer can be measured from Python"
)


def add_arguments(p) -> None:
    from rnnlab.analysis.reports import REPORTS

    p.add_argument(
        "target",
        nargs="?",
        metavar="CHECKPOINT | surface | report",
        help="a run directory or checkpoint (default: a fresh model); 'surface' draws the "
        "one-unit error surface; 'report NAME' runs an experiment",
    )
    p.add_argument(
        "name",
        nargs="?",
        metavar="NAME",
        help=f"with 'report': one of {', '.join(REPORTS)}, or all",
    )
    g = p.add_argument_group("the model (without a checkpoint: a fresh language model)")
    g.add_argument(
        "--cell", choices=DIAGNOSABLE, help="recurrent cell of a fresh model (default: lstm)"
    )
    g.add_argument(
        "--nonlinearity", choices=NONLINEARITIES, help="activation of a fresh rnn (default: tanh)"
    )
    g.add_argument(
        "--hidden", type=positive_int, metavar="N", help="units per layer (default: 256)"
    )
    g.add_argument("--layers", type=positive_int, metavar="N", help="layers (default: 2)")
    g.add_argument(
        "--data",
        metavar="FILE",
        help="text the sequences are cut from (default: "
        "the checkpoint's training text, or Tiny Shakespeare)",
    )
    m = p.add_argument_group("the measurement")
    m.add_argument(
        "--length",
        type=int,
        default=100,
        metavar="T",
        help="steps of each sequence; gradients are followed back T steps (default: 100)",
    )
    m.add_argument(
        "--batch",
        type=positive_int,
        default=8,
        metavar="N",
        help="sequences averaged over (default: 8)",
    )
    m.add_argument("--seed", type=random_seed, default=0, metavar="N", help="seed (default: 0)")
    m.add_argument(
        "--seeds",
        type=positive_int,
        default=3,
        metavar="N",
        help="with 'report': train each configuration from N seeds, --seed, --seed + 1, ... "
        "(default: 3)",
    )
    m.add_argument(
        "--out",
        type=directory,
        metavar="DIR",
        help="where plots and JSON go (default: runs/diagnose/model, runs/diagnose/surface "
        "or runs/diagnose/NAME)",
    )
    m.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        metavar="N",
        help="torch intra-op threads; the step-by-step unrolling runs fastest on one (default: 1)",
    )
    m.add_argument("--no-progress", action="store_true", help="hide progress bars of reports")


MODEL_FLAGS = ("cell", "nonlinearity", "hidden", "layers", "data")  # None unless given
MEASURE_DEFAULTS = {"length": 100, "batch": 8}


def _refuse_unused(a) -> None:
    """Options the chosen form of diagnose would ignore are refused, not ignored."""

    def given(names: list[str]) -> str:
        return ", ".join("--" + n for n in names)

    if a.target in SUBCOMMANDS:
        unused = [f for f in MODEL_FLAGS if getattr(a, f) is not None]
        unused += [f for f, default in MEASURE_DEFAULTS.items() if getattr(a, f) != default]
        if unused:
            what = (
                "draws its fixed one-unit network"
                if a.target == "surface"
                else "trains its own configurations"
            )
            raise UserError(
                f"{given(unused)}: 'diagnose {a.target}' {what}; these options describe the "
                "model of 'diagnose [CHECKPOINT]'"
            )
    if a.target != "report" and a.seeds != 3:
        raise UserError("--seeds applies to 'diagnose report' only")
    fresh = a.target is None
    if fresh and a.nonlinearity is not None and (a.cell or "lstm") not in ("rnn", "pascanu"):
        raise UserError(
            f"--nonlinearity applies to --cell rnn or pascanu; --cell {a.cell or 'lstm'} has "
            "its own gates"
        )


def run(a) -> int:
    torch.set_num_threads(a.threads)
    _refuse_unused(a)
    if a.target == "surface":
        if a.name is not None:
            raise UserError(f"'diagnose surface' takes no further argument; got {a.name!r}")
        return run_surface(a)
    if a.target == "report":
        return run_report(a)
    if a.name is not None:
        raise UserError(
            f"unexpected argument {a.name!r}: give one CHECKPOINT, 'surface' or 'report NAME'"
        )
    return run_model(a)


def run_surface(a) -> int:
    from rnnlab.analysis.reports import surface_report

    out = output_directory(a.out or "runs/diagnose/surface")
    report = surface_report(out)
    print(report.markdown())
    return 0


def run_report(a) -> int:
    from rnnlab.analysis.reports import REPORTS, run_reports

    names = list(REPORTS) if a.name == "all" else [a.name]
    if a.name is None or any(n not in REPORTS for n in names):
        given = "nothing" if a.name is None else repr(a.name)
        raise UserError(
            f"'diagnose report' needs a report name: one of {', '.join(REPORTS)} or all; "
            f"got {given}"
        )
    base = output_directory(a.out) if a.out else None
    runs = run_reports(names, base, seed=a.seed, progress=not a.no_progress, seeds=a.seeds)
    for report in runs:
        print(report.markdown())
        print()
    return 0


# -- a model ------------------------------------------------------------------------------------


def _check_length(length: int) -> int:
    if length < 1:
        raise UserError(f"--length must be a positive number of steps; got {length}")
    return length


def load_model(a):
    """(model, vocab, text, title) from a checkpoint, or a fresh model."""
    if a.target is not None:
        shape = [f for f in ("cell", "nonlinearity", "hidden", "layers") if getattr(a, f)]
        if shape:
            flags = ", ".join("--" + f for f in shape)
            raise UserError(f"{flags} shape a fresh model; a checkpoint has its own shape")
        from rnnlab.training.checkpoint import load_checkpoint

        if not Path(a.target).exists():
            raise UserError(f"checkpoint not found: {a.target}")
        model, vocab, config, info = load_checkpoint(a.target)
        if getattr(model, "head", True) is None:
            raise UserError(UNSUPPORTED_JORDAN)
        text = load_text(a.data if a.data else config.data.path)
        step = info.get("step")
        title = f"{Path(a.target).name} ({config.model.cell}" + (
            f", step {step})" if step is not None else ")"
        )
        return model, vocab, text, title, config.data.val_fraction
    text = load_text(a.data)
    vocab = Vocabulary.from_text(text)
    torch.manual_seed(a.seed)
    cell = a.cell or "lstm"
    try:
        config = ModelConfig(
            vocab_size=len(vocab),
            cell=cell,
            hidden_size=a.hidden or 256,
            num_layers=a.layers or 2,
            nonlinearity=a.nonlinearity or "tanh",
        )
    except ValueError as exc:
        raise UserError(f"cannot build that model: {exc}") from None
    model = LanguageModel(config).eval()
    cell = config.cell if config.cell != "rnn" else f"rnn-{config.nonlinearity}"
    title = f"fresh {cell} {config.num_layers}x{config.hidden_size}"
    return model, vocab, text, title, 0.1


def sample_windows(ids: torch.Tensor, batch: int, length: int, seed: int) -> torch.Tensor:
    """``batch`` windows of ``length + 1`` tokens at seeded random offsets: (N, T+1)."""
    if len(ids) < length + 1:
        raise UserError(
            f"the text has {len(ids)} tokens; --length {length} needs at least {length + 1}"
        )
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - length, (batch,), generator=g)
    return torch.stack([ids[s : s + length + 1] for s in starts.tolist()])


def run_model(a) -> int:
    from rnnlab.analysis.diagnosis import diagnose

    length = _check_length(a.length)
    model, vocab, text, title, val_fraction = load_model(a)
    missing = vocab.unknown(text) if vocab.kind == "char" else []
    if missing:
        listed = ", ".join(repr(c) for c in missing[:20])
        raise UserError(f"the text has characters outside the model's vocabulary: {listed}")
    ids = torch.tensor(vocab.encode(text), dtype=torch.long)
    held_out = split_train_val(ids, val_fraction)[1] if val_fraction > 0 else ids
    source = held_out if len(held_out) > length else ids
    windows = sample_windows(source, a.batch, length, a.seed)
    out = output_directory(a.out or "runs/diagnose/model")
    start = time.perf_counter()
    d = diagnose(model, windows, out=out, title=title)
    seconds = time.perf_counter() - start
    print(
        f"{title}: {a.batch} sequence{'s' * (a.batch != 1)} of {length} tokens; loss at the "
        "last step "
        f"(log-rate: slope of ln‖dE/dh_k‖ per step back in time; negative = vanishing)"
    )
    print()
    print(d.table())
    print()
    for name, pm in d.power.items():
        change = "grows" if pm.growth > 1 else "shrinks"
        block = (  # gated cells: the block of W_hh that feeds the candidate state
            f" (the candidate block {name.rsplit('.', 1)[1]} of the gated cell)"
            if "." in name
            else ""
        )
        print(
            f"power method on W_hh {name}{block}: ‖h_t‖ {change} {pm.growth:.4f}x per step; "
            f"spectral radius {pm.radius:.4f}"
        )
    print(f"wrote {len(d.files)} files to {out}/ in {seconds:.1f} s")
    return 0

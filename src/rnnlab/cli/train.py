"""``rnnlab train``: train a language model on a text file or the bundled corpus."""

from __future__ import annotations

import math
import signal

from rnnlab.cells.elman import NONLINEARITIES
from rnnlab.cli.common import (
    fraction,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)
from rnnlab.data.vocab import KINDS
from rnnlab.layers import BACKENDS
from rnnlab.models import CELLS, ModelConfig
from rnnlab.training import DataConfig, OptimConfig, OutputConfig, TrainConfig, train
from rnnlab.training.checkpoint import load_checkpoint
from rnnlab.training.config import OPTIMIZERS
from rnnlab.training.trainer import sample_text

HELP = "train a language model (default: the bundled Tiny Shakespeare)"


def add_arguments(p) -> None:
    d, m, o, out = DataConfig(), ModelConfig(vocab_size=0), OptimConfig(), OutputConfig()
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="FILE", help="UTF-8 text file (default: Tiny Shakespeare)")
    g.add_argument(
        "--tokens", choices=KINDS, default=d.tokens, help="token unit (default: %(default)s)"
    )
    g.add_argument(
        "--vocab-size",
        type=positive_int,
        metavar="N",
        default=d.vocab_size,
        help="cap on a word vocabulary, <unk> included (default: %(default)s)",
    )
    g.add_argument(
        "--val-fraction",
        type=fraction,
        metavar="X",
        default=d.val_fraction,
        help="last part of the text held out for validation (default: %(default)s)",
    )
    g = p.add_argument_group("model")
    g.add_argument(
        "--cell", choices=CELLS, default=m.cell, help="recurrent cell (default: %(default)s)"
    )
    g.add_argument(
        "--nonlinearity",
        choices=NONLINEARITIES,
        default=m.nonlinearity,
        help="activation of the rnn cell (default: %(default)s)",
    )
    g.add_argument(
        "--hidden",
        type=positive_int,
        metavar="N",
        default=m.hidden_size,
        help="units per layer (default: %(default)s)",
    )
    g.add_argument(
        "--layers",
        type=positive_int,
        metavar="N",
        default=m.num_layers,
        help="stacked recurrent layers (default: %(default)s)",
    )
    g.add_argument(
        "--embedding",
        type=nonnegative_int,
        metavar="N",
        default=m.embedding_dim,
        help="embedding size; 0 feeds one-hot vectors (default: %(default)s)",
    )
    g.add_argument(
        "--dropout",
        type=fraction,
        metavar="X",
        default=m.dropout,
        help="dropout between layers and before the output (default: %(default)s)",
    )
    g.add_argument(
        "--backend",
        choices=BACKENDS,
        default=m.backend,
        help="fused: hand-derived BPTT; reference: autograd (default: %(default)s)",
    )
    g = p.add_argument_group("optimisation")
    g.add_argument(
        "--optimizer", choices=OPTIMIZERS, default=o.optimizer, help="(default: %(default)s)"
    )
    g.add_argument(
        "--lr",
        type=positive_float,
        metavar="X",
        default=o.lr,
        help="learning rate (default: %(default)s)",
    )
    g.add_argument(
        "--momentum",
        type=nonnegative_float,
        metavar="X",
        default=o.momentum,
        help="SGD momentum (default: %(default)s)",
    )
    g.add_argument(
        "--weight-decay",
        type=nonnegative_float,
        metavar="X",
        default=o.weight_decay,
        help="L2 weight decay (default: %(default)s)",
    )
    g.add_argument(
        "--clip",
        type=nonnegative_float,
        metavar="X",
        default=o.clip,
        help="clip the gradient's global norm to this; 0 disables (default: %(default)s)",
    )
    g.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="N",
        default=o.batch_size,
        help="parallel streams per batch (default: %(default)s)",
    )
    g.add_argument(
        "--seq-len",
        type=positive_int,
        metavar="N",
        default=o.seq_len,
        help="steps per chunk; gradients flow back this far (default: %(default)s)",
    )
    g.add_argument(
        "--max-steps",
        type=positive_int,
        metavar="N",
        default=None,
        help="stop after this many updates (default: none)",
    )
    g.add_argument(
        "--max-time",
        type=positive_float,
        metavar="S",
        default=None,
        help=f"stop after this many seconds (default: {o.max_time:g} unless --max-steps is given)",
    )
    g = p.add_argument_group("output")
    g.add_argument(
        "--out",
        default=out.out,
        metavar="DIR",
        help="run directory for checkpoints and metrics (default: %(default)s)",
    )
    g.add_argument(
        "--eval-interval",
        type=positive_int,
        metavar="N",
        default=out.eval_interval,
        help="updates between validations (default: %(default)s)",
    )
    g.add_argument(
        "--sample-length",
        type=nonnegative_int,
        metavar="N",
        default=out.sample_length,
        help="characters sampled at each validation (default: %(default)s)",
    )
    g.add_argument(
        "--seed", type=int, metavar="N", default=out.seed, help="random seed (default: %(default)s)"
    )
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def config_from_args(a) -> TrainConfig:
    max_time = a.max_time
    if max_time is None and a.max_steps is None:
        max_time = OptimConfig().max_time
    return TrainConfig(
        data=DataConfig(a.data, a.tokens, a.vocab_size, a.val_fraction),
        model=ModelConfig(
            0, a.cell, a.hidden, a.layers, a.embedding, a.dropout, a.nonlinearity, a.backend
        ),
        optim=OptimConfig(
            a.optimizer,
            a.lr,
            a.momentum,
            a.weight_decay,
            a.clip,
            a.batch_size,
            a.seq_len,
            a.max_steps,
            max_time,
        ),
        output=OutputConfig(a.out, a.eval_interval, a.sample_length, a.seed, not a.no_progress),
    )


def run(a) -> int:
    # Ctrl-C must reach the loop as KeyboardInterrupt (which saves a checkpoint) even when
    # the process was started with SIGINT ignored, as background jobs of a shell are.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    result = train(config_from_args(a))
    unit = "char" if result.vocab.kind == "char" else "word"
    print(
        f"trained {result.steps} steps in {result.train_seconds:.0f} s "
        f"({result.tokens_per_second:,.0f} {unit}s/s)"
    )
    if result.best_val_loss is not None:
        print(
            f"best validation loss: {result.best_val_loss:.4f} nats/{unit} "
            f"({result.best_val_loss / math.log(2):.4f} bits/{unit})"
        )
    print(f"checkpoints: {result.out / 'best'} and {result.out / 'last'}")
    if result.interrupted:
        return 130
    if result.steps:
        model, vocab, _, _ = load_checkpoint(result.out / "best")
        print(f"--- sample from {result.out / 'best'} ---")
        print(sample_text(model, vocab, max(a.sample_length, 200) * 2, seed=a.seed))
    return 0

"""``rnnlab sample``: generate text from a trained checkpoint."""

from __future__ import annotations

import sys

import torch

from rnnlab.backends import GENERATE_BACKENDS, choose_generate_backend, compile_notice
from rnnlab.cli.common import nonnegative_int, positive_float, random_seed
from rnnlab.errors import UserError
from rnnlab.training.checkpoint import load_checkpoint

HELP = "generate text from a checkpoint (a run directory or its best/ or last/)"


def add_arguments(p) -> None:
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="run directory or checkpoint")
    p.add_argument(
        "--prime",
        default="",
        metavar="TEXT",
        help="text that sets the state before sampling (default: a newline)",
    )
    p.add_argument(
        "--length",
        type=nonnegative_int,
        metavar="N",
        default=500,
        help="tokens to generate (default: %(default)s)",
    )
    p.add_argument(
        "--temperature",
        type=positive_float,
        metavar="X",
        default=0.8,
        help="divide the logits by this; lower is more conservative (default: %(default)s)",
    )
    p.add_argument(
        "--greedy",
        action="store_true",
        help="take the most likely token each step (the MAP estimate)",
    )
    p.add_argument(
        "--seed", type=random_seed, metavar="N", default=None, help="seed for reproducible samples"
    )
    p.add_argument(
        "--backend",
        choices=GENERATE_BACKENDS,
        default="auto",
        help="numba: a compiled loop over all the tokens; torch: the plain path, one "
        "layer.step() per token; auto: numba where installed and supported (default: "
        "%(default)s). Both give the same text for the same --seed. The choice is logged on "
        "stderr",
    )


def run(a) -> int:
    model, vocab, _, _ = load_checkpoint(a.checkpoint)
    if a.prime:
        missing = vocab.unknown(a.prime)
        if missing:
            listed = ", ".join(repr(c) for c in missing)
            raise UserError(f"--prime has characters outside the vocabulary: {listed}")
        prime = vocab.encode(a.prime)
        if not prime:
            raise UserError("--prime holds no tokens")
        shown = a.prime
    else:
        prime = [vocab.index.get("\n", 0)]
        shown = ""
    try:
        choice = choose_generate_backend(model, a.backend)
    except ValueError as exc:
        raise UserError(f"--backend {a.backend}: {exc}") from None
    print(f"rnnlab: sampling with backend {choice}", file=sys.stderr)
    generator = torch.Generator()
    generator.manual_seed(a.seed if a.seed is not None else torch.seed())
    if choice.name == "numba":  # compile (or load) first: the notice times that alone
        from rnnlab.backends import numba_generate

        notice = compile_notice(lambda line: print(line, file=sys.stderr), "sampling")
        try:
            numba_generate.prepare(model)
        finally:
            if notice is not None:
                notice.cancel()
    try:
        out = model.generate(
            prime, a.length, a.temperature, a.greedy, generator, backend=choice.name
        )
    except ValueError as exc:  # logits not finite: a diverged checkpoint
        raise UserError(str(exc)) from None
    text = vocab.decode(out)
    joiner = " " if vocab.kind == "word" and shown and text else ""
    print(shown + joiner + text)
    return 0

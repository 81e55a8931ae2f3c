"""Encoder-decoder on generated data: add two numbers written as characters
(``rnnlab task addition``).

"535+61" -> "596": the encoder reads the sum character by character, the decoder writes
the result most significant digit first, so it must have worked out every carry before
it writes the first digit.  Each operand is drawn uniformly from 0 .. 10**digits - 1
(``--digits``, default 3), written without leading zeros.

Held out: the test and validation pairs are drawn first, as *unordered* pairs {a, b}
(so neither "535+61" nor "61+535" of a test pair is ever trained on), and the training
examples are drawn from the remaining ordered pairs, all with the run's ``--seed``.
"""

from __future__ import annotations

import random

import torch

from rnnlab.argtypes import positive_int
from rnnlab.errors import UserError
from rnnlab.examples._seq_common import (
    CharVocab,
    Defaults,
    Example,
    add_common_arguments,
    run_seq2seq,
)

NAME = "addition"
ARCHITECTURE = "seq2seq"
DESCRIPTION = (
    "add two numbers written as characters ('535+61' -> '596', up to 3 digits each); "
    "encoder-decoder, exact match greedy and beam"
)
KIND = "seq2seq-addition"
DEFAULTS = Defaults(
    out="runs/addition",
    hidden=64,
    embedding=32,
    bidirectional=True,
    attention="luong",
    batch_size=128,
    lr=0.01,
    max_steps=3000,
    max_time=600.0,
    eval_interval=500,
    train_size=100_000,
    val_size=1000,
    test_size=2000,
)


def add_arguments(p) -> None:
    def data(group):
        group.add_argument(
            "--digits",
            type=positive_int,
            default=3,
            metavar="N",
            help="largest number of digits of each operand (default: 3)",
        )

    add_common_arguments(p, DEFAULTS, data)


def make_data(digits: int, train_size: int, val_size: int, test_size: int, seed: int):
    """(train, val, test) lists of (a, b) pairs; test and val disjoint from train as
    unordered pairs, drawn with ``seed``."""
    top = 10**digits
    unordered = top * (top + 1) // 2
    if val_size + test_size > unordered // 2:
        raise UserError(
            f"--val-size + --test-size must be at most {unordered // 2} for {digits} "
            f"digit{'s' * (digits != 1)}"
        )
    rng = random.Random(seed)
    held, held_out = set(), []
    while len(held_out) < val_size + test_size:
        a, b = rng.randrange(top), rng.randrange(top)
        key = (min(a, b), max(a, b))
        if key not in held:
            held.add(key)
            held_out.append((a, b))
    free = top * top - sum(1 if a == b else 2 for a, b in held)
    if train_size > free:
        raise UserError(
            f"--train-size must be at most {free} for {digits} digit{'s' * (digits != 1)}"
        )
    seen, train = set(), []
    while len(train) < train_size:
        a, b = rng.randrange(top), rng.randrange(top)
        if (min(a, b), max(a, b)) not in held and (a, b) not in seen:
            seen.add((a, b))
            train.append((a, b))
    return train, held_out[:val_size], held_out[val_size:]


def examples(pairs, vocab: CharVocab) -> list[Example]:
    out = []
    for a, b in pairs:
        text = f"{a}+{b}"
        out.append(
            Example(torch.tensor(vocab.encode(text)), torch.tensor(vocab.encode(str(a + b))), text)
        )
    return out


def run(args) -> int:
    train, val, test = make_data(
        args.digits, args.train_size, args.val_size, args.test_size, args.seed
    )

    def operand_lengths(i: int) -> str:
        a, b = test[i]
        return f"{len(str(a))}+{len(str(b))} digits"

    run_seq2seq(
        args,
        CharVocab("+0123456789"),
        (train, val, test),
        examples,
        KIND,
        max_length=args.digits + 3,
        group=("operand lengths", operand_lengths),
        spec_extra={"digits": args.digits},
        settings_extra={"digits": args.digits},
    )
    return 0

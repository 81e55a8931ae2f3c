"""``rnnlab eval``: validation loss of a checkpoint, in nats and bits per token."""

from __future__ import annotations

import math

import torch

from rnnlab.cli.common import positive_int
from rnnlab.data import load_text, split_train_val
from rnnlab.data.batching import eval_streams
from rnnlab.errors import UserError
from rnnlab.training import evaluate
from rnnlab.training.checkpoint import load_checkpoint

HELP = "print a checkpoint's validation loss (nats and bits per character)"


def add_arguments(p) -> None:
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="run directory or checkpoint")
    p.add_argument(
        "--data",
        metavar="FILE",
        help="score this whole file instead of the training text's validation part",
    )
    p.add_argument(
        "--streams",
        type=positive_int,
        metavar="N",
        help="score the text as N contiguous streams, each from a zero state (default: the "
        "run's val_streams; 1 gives every token all the text before it)",
    )


def run(a) -> int:
    model, vocab, config, _ = load_checkpoint(a.checkpoint)
    if a.data is not None:
        text = load_text(a.data)
        what = a.data
    elif config.data.val_fraction == 0:
        raise UserError(
            f"{a.checkpoint} was trained with --val-fraction 0: it held out no validation "
            "text; score a text with --data FILE"
        )
    else:
        text = load_text(config.data.path)
        what = (
            f"the last {config.data.val_fraction:.0%} of {config.data.path or 'Tiny Shakespeare'}"
        )
    missing = vocab.unknown(text)
    if missing:
        listed = ", ".join(repr(c) for c in missing[:20])
        raise UserError(f"the text has characters outside the model's vocabulary: {listed}")
    ids = torch.tensor(vocab.encode(text), dtype=torch.long)
    if a.data is None:
        ids = split_train_val(ids, config.data.val_fraction)[1]
    if len(ids) < 2:
        raise UserError(f"too little text to evaluate in {what}: {len(ids)} tokens")
    asked = a.streams if a.streams is not None else config.data.val_streams
    loss = evaluate(model, ids, asked, config.optim.seq_len)
    streams = eval_streams(len(ids), asked, config.optim.seq_len)
    unit = "char" if vocab.kind == "char" else "word"
    plural = "" if streams == 1 else "s"
    fewer = (
        ""
        if streams == asked
        else f", fewer than the {asked} asked for: one per {config.optim.seq_len} {unit}s"
    )
    print(f"data: {what} ({len(ids):,} {unit}s, scored as {streams} stream{plural}{fewer})")
    print(f"validation loss: {loss:.4f} nats/{unit} ({loss / math.log(2):.4f} bits/{unit})")
    return 0

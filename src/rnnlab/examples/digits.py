"""Many-to-one on images read as sequences: scikit-learn's 8x8 digits (``rnnlab task digits``).

The 1,797 handwritten digits of ``sklearn.datasets.load_digits`` (8x8 pixels, values 0 to
16) are read as sequences, ``--read rows`` (8 steps of the 8 pixels of a row, top to
bottom) or ``--read pixels`` (64 steps of one pixel, row by row: the 8x8 version of
pixel-by-pixel MNIST, where the decision needs what was seen up to 63 steps earlier).
scikit-learn ships the data, so no download is needed (``pip install 'rnnlab[datasets]'``).

Protocol: a fixed stratified 20% of the images (seed 0, the same for every run) is the
test set; ``--val-fraction`` of the rest, drawn with the run's seed, is validation; the
pixels are standardised with the training part's statistics; the checkpoint with the
lowest validation loss is scored once on the test set.
"""

from __future__ import annotations

import torch

from rnnlab.examples import require
from rnnlab.examples._supervised_common import (
    Defaults,
    run_classification,
    stratified_split,
)
from rnnlab.examples._supervised_common import add_arguments as add_common_arguments

NAME = "digits"
ARCHITECTURE = "many-to-one"
DESCRIPTION = (
    "scikit-learn's 8x8 handwritten digits read as sequences: 8 rows of 8 pixels, or "
    "pixel by pixel (64 steps); sequence classifier"
)
READS = ("rows", "pixels")
MAX_STEPS = {"rows": 1500, "pixels": 3000}
TEST_FRACTION = 0.2
DEFAULTS = Defaults(
    out="runs/digits",
    hidden=64,
    bidirectional=False,
    pooling="last",
    dropout=0.1,
    lr=3e-3,
    batch_size=32,
    max_steps="1500 with --read rows, 3000 with --read pixels",
    eval_interval=100,
)


def add_arguments(p) -> None:
    p.add_argument(
        "--read",
        choices=READS,
        default="rows",
        help="rows: 8 steps of 8 pixels; pixels: 64 steps of 1 pixel (default: rows)",
    )
    add_common_arguments(p, DEFAULTS)


def load_digits(read: str = "rows"):
    """``(train, test, classes)``: lists of ((T, F) float32, digit) pairs, T x F = 8 x 8 or
    64 x 1; the test part is a fixed stratified 20%."""
    require("sklearn", "datasets")
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)  # (1797, 8, 8)
    if read == "pixels":
        images = images.reshape(len(images), 64, 1)
    labels = [int(y) for y in digits.target]
    train_idx, test_idx = stratified_split(labels, TEST_FRACTION, seed=0)
    train = [(images[i], labels[i]) for i in train_idx]
    test = [(images[i], labels[i]) for i in test_idx]
    return train, test, [str(d) for d in range(10)]


def run(args) -> int:
    if args.max_steps is None:
        args.max_steps = MAX_STEPS[args.read]
    data = load_digits(args.read)
    title = f"digits read by {args.read}"
    return run_classification(args, NAME, title, data, {"read": args.read})

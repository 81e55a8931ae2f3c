"""Many-to-one on real data: who said the vowel? (``rnnlab task japanese-vowels``)

JapaneseVowels (Kudo, Toyama and Shimbo 1999; UCI): nine male speakers uttered the
Japanese vowels /ae/ in succession; each utterance is a sequence of 7 to 29 frames of 12
LPC cepstral coefficients, and the label is the speaker.  There are 270 training
utterances (30 per speaker) and 370 test utterances.  The copy bundled in the ``aeon``
package is read (``pip install 'rnnlab[datasets]'``), so no download is needed.

Protocol: the model trains on all 270 training utterances (``--val-fraction 0``) for a
fixed 600 updates, with features standardised by the mean and standard deviation of the
training frames, and the last weights are evaluated once on the 370 test utterances.  A
validation split of 27 utterances (3 per speaker) proved too small to pick checkpoints
by: its loss is noisy, and 5-fold cross-validation on the training utterances scored the
same with or without it.  ``--val-fraction 0.1`` restores checkpoint picking.

The defaults (a bidirectional LSTM of 128 units per direction, mean pooling, dropout 0.3,
zoneout 0.1, Gaussian input noise 0.2, Adam 3e-3 with a cosine schedule, batch 16) were
chosen by 3-fold cross-validation on the training utterances; label smoothing 0.1 was then
added because it cut the errors of 5-fold cross-validation on the training utterances from
9 to 4 of 270.  Neither choice looked at the test set.  Weight averaging (``--average``),
time warping (``--time-warp``) and stronger input noise did not help in that
cross-validation and are off.  Measured with ``rnnlab task japanese-vowels --seeds 5``
(seeds 1-5): 97.35% ± 0.35 test accuracy (97.03 to 97.84), against 97.24% ± 0.52 with the
previous defaults (checkpoint picked on 27 held-out utterances, no label smoothing); the
gain seen in cross-validation did not carry over to the test set, and the 98% of the
issue is not reached.

A second round of 5-fold cross-validation on the training utterances, two seeds per fold
(540 held-out predictions), found nothing better than these defaults (12 errors): zoneout
0.2 (8 errors on one seed per fold, against 4), ``--pooling mean-max`` (16),
``--pooling attention`` (20), ``--feature-dropout 0.1`` (16), two layers of 96 units per
direction (17), so the defaults stay as they are.
"""

from __future__ import annotations

import torch

from rnnlab.examples import require
from rnnlab.examples._supervised_common import (
    Defaults,
    run_classification,
)
from rnnlab.examples._supervised_common import add_arguments as add_common_arguments

NAME = "japanese-vowels"
ARCHITECTURE = "many-to-one"
DESCRIPTION = (
    "speaker recognition: 9 speakers, 12 cepstral features per frame, 7-29 frames "
    "(aeon's JapaneseVowels); sequence classifier, test accuracy over seeds"
)
DEFAULTS = Defaults(
    out="runs/japanese-vowels",
    hidden=128,
    bidirectional=True,
    pooling="mean",
    dropout=0.3,
    zoneout=0.1,
    noise=0.2,
    lr=3e-3,
    batch_size=16,
    max_steps=600,
    eval_interval=25,
    val_fraction=0.0,
    average=0.0,
    label_smoothing=0.1,
    time_warp=0.0,
    feature_dropout=0.0,
)


def add_arguments(p) -> None:
    add_common_arguments(p, DEFAULTS)


def load_japanese_vowels():
    """``(train, test, classes)``: lists of (frames (T, 12) float32, class index) pairs and
    the speaker labels ('1' to '9')."""
    require("aeon")
    from aeon.datasets import load_classification

    data = {}
    for split in ("train", "test"):
        X, y = load_classification("JapaneseVowels", split=split)
        data[split] = (X, [str(label) for label in y])
    classes = sorted(set(data["train"][1]), key=lambda c: (len(c), c))
    index = {c: i for i, c in enumerate(classes)}

    def pairs(split):
        X, y = data[split]
        return [
            (torch.tensor(x.T, dtype=torch.float32), index[label])
            for x, label in zip(X, y, strict=True)
        ]

    return pairs("train"), pairs("test"), classes


def run(args) -> int:
    return run_classification(args, NAME, "JapaneseVowels", load_japanese_vowels())

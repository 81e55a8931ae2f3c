"""One-to-many on real data: write out the English word for a handwritten digit
(``rnnlab task digit-words``).

scikit-learn's 8x8 digits (1,797 images of 64 grey levels 0..16, from the UCI optical
recognition of handwritten digits set; bundled with scikit-learn, no download:
``pip install 'rnnlab[datasets]'``).  The image, scaled to [0, 1], is the fixed-size
input that sets the generator's initial state (seed 003's one-to-many); the network then
writes the digit's name character by character ("s", "e", "v", "e", "n", <eos>).

Held out: a stratified split drawn with the run's ``--seed``: 20% of the images of every
digit are the test set, 10% the validation set (best checkpoint), the rest train.  The
figure is exact match: the whole word right, ``<eos>`` in the right place.
"""

from __future__ import annotations

import random

import torch

from rnnlab.examples import require
from rnnlab.examples._seq_common import (
    CharVocab,
    Defaults,
    Example,
    add_common_arguments,
    decoding_settings,
    shower,
    train_and_test,
    train_config,
)
from rnnlab.models.generator import ConditionalGenerator, GeneratorConfig

NAME = "digit-words"
ARCHITECTURE = "one-to-many"
DESCRIPTION = (
    "write the English word for the digit in an 8x8 image ('seven'; scikit-learn's "
    "digits); conditional generator, exact match on held-out images"
)
KIND = "conditional-generator-digit-words"
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DEFAULTS = Defaults(
    out="runs/digit-words",
    hidden=128,
    embedding=16,
    attention=None,
    dropout=0.2,
    batch_size=64,
    lr=3e-3,
    max_steps=1000,
    max_time=300.0,
    eval_interval=100,
)
TEST_FRACTION, VAL_FRACTION = 0.2, 0.1


def add_arguments(p) -> None:
    add_common_arguments(p, DEFAULTS)


def load_digits():
    """(images (1797, 64) in [0, 1], labels) from scikit-learn."""
    require("sklearn")  # the error names the extra to install
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    return images, [int(y) for y in digits.target]


def split(labels: list[int], seed: int) -> tuple[list[int], list[int], list[int]]:
    """Stratified (train, val, test) indices, drawn with ``seed``."""
    rng = random.Random(seed)
    train, val, test = [], [], []
    for digit in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == digit]
        rng.shuffle(members)
        n_test = round(len(members) * TEST_FRACTION)
        n_val = round(len(members) * VAL_FRACTION)
        test += members[:n_test]
        val += members[n_test : n_test + n_val]
        train += members[n_test + n_val :]
    return sorted(train), sorted(val), sorted(test)


def build(spec: dict) -> ConditionalGenerator:
    return ConditionalGenerator(GeneratorConfig(**spec["model"]))


def run(args) -> int:
    images, labels = load_digits()
    vocab = CharVocab.from_texts(WORDS)

    def example(i: int) -> Example:
        word = WORDS[labels[i]]
        return Example(images[i], torch.tensor(vocab.encode(word)), f"image {i} ({labels[i]})")

    train, val, test = split(labels, args.seed)
    data = {
        "train": [example(i) for i in train],
        "val": [example(i) for i in val],
        "test": [example(i) for i in test],
    }
    model_config = GeneratorConfig(
        input_size=images.shape[1],
        vocab_size=len(vocab),
        cell=args.cell,
        hidden_size=args.hidden,
        num_layers=args.layers,
        embedding_dim=args.embedding,
        dropout=args.dropout,
    )
    spec = {"model": model_config.to_json(), "vocab": vocab.to_json(), "words": list(WORDS)}
    example_settings = decoding_settings(
        model_config, args, test_fraction=TEST_FRACTION, val_fraction=VAL_FRACTION
    )
    config = train_config(args, example_settings)
    torch.manual_seed(args.seed)
    model = ConditionalGenerator(model_config)

    longest = max(len(w) for w in WORDS)
    train_and_test(
        model,
        build,
        KIND,
        spec,
        data,
        config,
        args,
        max_length=longest + 2,
        show=shower(vocab),
        group=("digit", lambda i: WORDS[labels[test[i]]]),
    )
    return 0

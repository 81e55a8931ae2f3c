"""What every long-range task shares: the batch layout, the four kinds of target, losses.

Layout: **time-major**.  ``inputs`` is (T, N, I) float32; sequences shorter than T are
padded at the end with zeros and ``lengths`` (N,) says where each ends (None when every
sequence has length T).  Targets depend on the task's ``kind``:

``regression``      (N,) float, read from the last step of each sequence.
``classification``  (N,) long class index, read from the last step.
``tagging``         (T, N) long, one class per step; ``IGNORE`` (-100) where not scored.
``multilabel``      (T, N, K) float in {0, 1}: the set of allowed next symbols (Reber);
                    padded steps are all-zero and left out by ``lengths``.

Predictions have the same shape, with classes as a last dimension of logits:
(N,) for regression, (N, K) for classification, (T, N, K) for tagging and multilabel.
``task.correct(pred, batch) -> bool (N,)`` applies the task's published criterion.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

IGNORE = -100
KINDS = ("regression", "classification", "tagging", "multilabel")


@dataclass
class Batch:
    inputs: Tensor  # (T, N, I)
    targets: Tensor  # see the module docstring
    lengths: Tensor | None = None  # (N,) long, None: all T

    @property
    def size(self) -> int:
        return self.inputs.shape[1]


def one_hot(symbols: Tensor, classes: int) -> Tensor:
    return F.one_hot(symbols, classes).float()


def step_mask(batch: Batch) -> Tensor:
    """(T, N) bool: True on real (not padded) steps."""
    T, N = batch.inputs.shape[:2]
    if batch.lengths is None:
        return torch.ones(T, N, dtype=torch.bool)
    return torch.arange(T).unsqueeze(1) < batch.lengths.unsqueeze(0)


def pad(sequences: list[Tensor]) -> tuple[Tensor, Tensor | None]:
    """Stack (T_i, ...) tensors into (T, N, ...) zero-padded at the end, and their lengths."""
    lengths = torch.tensor([len(s) for s in sequences])
    out = torch.nn.utils.rnn.pad_sequence(sequences)
    return out, (None if int(lengths.min()) == out.shape[0] else lengths)


class Task:
    """A seeded generator of one task.  Subclasses set the attributes and ``sample``.

    ``length``: the task's length parameter (T or L of the paper).  ``test_size``: the
    fixed test set's size (Pascanu et al.: 10,000; Hochreiter & Schmidhuber: 2,560).
    ``threshold``: the test error rate below which the task counts as solved.
    ``uses_length``: False where the task sets its own lengths (the Reber grammar).
    """

    name = "task"
    uses_length = True
    kind = "regression"
    input_size = 1
    output_size = 1
    test_size = 10_000
    threshold = 0.01  # Pascanu et al.: under 1% error on the test set
    TEST_SEED = 1_000_003  # the fixed test set is drawn with this seed (plus the length)

    def __init__(self, length: int):
        if length < 1:
            raise ValueError(f"length must be positive; got {length}")
        self.length = length

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        raise NotImplementedError

    def test_batches(self, chunk: int = 1000, size: int | None = None) -> Iterator[Batch]:
        """The fixed test set, in chunks (drawn afresh each time, from a fixed seed)."""
        size = self.test_size if size is None else size
        generator = torch.Generator().manual_seed(self.TEST_SEED + self.length)
        for start in range(0, size, chunk):
            yield self.sample(min(chunk, size - start), generator)

    # -- loss and criterion, by kind --------------------------------------------------
    def loss(self, pred: Tensor, batch: Batch) -> Tensor:
        if self.kind == "regression":
            return F.mse_loss(pred, batch.targets)
        if self.kind == "classification":
            return F.cross_entropy(pred, batch.targets)
        if self.kind == "tagging":
            return F.cross_entropy(pred.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE)
        mask = step_mask(batch).unsqueeze(-1).expand_as(pred)
        return F.binary_cross_entropy_with_logits(pred[mask], batch.targets[mask])

    def correct(self, pred: Tensor, batch: Batch) -> Tensor:
        """bool (N,): which sequences meet the task's success criterion."""
        if self.kind == "classification":
            return pred.argmax(-1) == batch.targets
        if self.kind == "tagging":
            ok = (pred.argmax(-1) == batch.targets) | (batch.targets == IGNORE)
            return ok.all(0)
        if self.kind == "multilabel":
            ok = ((pred > 0) == (batch.targets > 0.5)).all(-1) | ~step_mask(batch)
            return ok.all(0)
        raise NotImplementedError  # regression tasks state their own tolerance

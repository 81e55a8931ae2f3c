"""The adding and multiplication problems.

**Hochreiter & Schmidhuber (1997), experiment 4** (:class:`HochreiterAdding`).  Each step
is a pair (value ~ U[-1, 1], marker in {-1, 0, 1}); each sequence has its own length,
uniform in [T, T + T/10].  One pair among the first 10 and another among the first
T/2 - 1 are marked 1 (X1, X2); the first and last markers are -1 (if the first pair was
the one picked, its value counts as 0).  Target 0.5 + (X1 + X2) / 4; a sequence is
correct if the absolute error is below 0.04.  Test set 2,560 sequences.

**Pascanu, Mikolov & Bengio (2013), released code** (:class:`PascanuAdding`).  Two
channels: marker (two-hot) and value ~ U[0, 1].  One length per batch,
l = L + randint(0.1 L); first marker in [0, 0.1 l), second in [0.1 l, 0.5 l).  Target
the mean of the two marked values (``target="mean"``); ``target="sum"`` is Le, Jaitly &
Hinton (2015), for which always predicting 1 scores MSE 1/6 (about 0.167).  Correct if
the squared error is below 0.04.  ``per_sequence_length=True`` draws a length per
sequence instead (the test set always does: its sequences are independent draws).

**Multiplication** (:class:`Multiplication`): Pascanu's adding with the product as target.

Layout: inputs (T, N, 2) time-major, channel 0 = value, channel 1 = marker (Hochreiter)
or channel 0 = marker, channel 1 = value (Pascanu's code); targets (N,).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnlab.tasks.base import Batch, Task, pad


def _randint(low: int, high, n: int, generator) -> Tensor:
    """Uniform integers in [low, high) with a per-row ``high`` (int or (n,) tensor)."""
    high = torch.as_tensor(high).expand(n)
    return low + (torch.rand(n, generator=generator) * (high - low)).long()


class HochreiterAdding(Task):
    name = "adding-hochreiter"
    kind = "regression"
    input_size = 2
    output_size = 1
    test_size = 2560
    tolerance = 0.04

    def __init__(self, length: int):
        if length < 24:
            raise ValueError(f"Hochreiter's adding problem needs T >= 24; got {length}")
        super().__init__(length)

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        T = self.length
        lengths = _randint(T, T + T // 10 + 1, n, generator)
        first = _randint(0, 10, n, generator)
        second = _randint(0, T // 2 - 2, n, generator)  # [0, T/2 - 1) without `first`
        second = second + (second >= first).long()
        sequences, targets = [], []
        for i in range(n):
            length = int(lengths[i])
            values = torch.rand(length, generator=generator) * 2 - 1
            markers = torch.zeros(length)
            markers[first[i]] = markers[second[i]] = 1.0
            markers[0] = markers[-1] = -1.0
            x1 = 0.0 if first[i] == 0 else float(values[first[i]])
            x2 = 0.0 if second[i] == 0 else float(values[second[i]])
            sequences.append(torch.stack([values, markers], -1))
            targets.append(0.5 + (x1 + x2) / 4)
        inputs, lens = pad(sequences)
        return Batch(inputs, torch.tensor(targets), lens)

    def correct(self, pred: Tensor, batch: Batch) -> Tensor:
        return (pred - batch.targets).abs() < self.tolerance


class PascanuAdding(Task):
    name = "adding"
    kind = "regression"
    input_size = 2
    output_size = 1
    tolerance = 0.04  # on the squared error

    def __init__(self, length: int, target: str = "mean", per_sequence_length: bool = False):
        if length < 10:
            raise ValueError(f"the adding problem needs L >= 10; got {length}")
        if target not in ("mean", "sum"):
            raise ValueError(f"target must be 'mean' or 'sum'; got {target!r}")
        super().__init__(length)
        self.target = target
        self.per_sequence_length = per_sequence_length

    def combine(self, v0: Tensor, v1: Tensor) -> Tensor:
        return (v0 + v1) / 2 if self.target == "mean" else v0 + v1

    def _one_length(self, n: int, generator, l: int) -> tuple[Tensor, Tensor]:
        p0 = _randint(0, max(int(0.1 * l), 1), n, generator)
        p1 = _randint(max(int(0.1 * l), 1), int(0.5 * l), n, generator)
        inputs = torch.zeros(l, n, 2)
        inputs[:, :, 1] = torch.rand(l, n, generator=generator)
        cols = torch.arange(n)
        inputs[p0, cols, 0] = 1.0
        inputs[p1, cols, 0] = 1.0
        return inputs, self.combine(inputs[p0, cols, 1], inputs[p1, cols, 1])

    def sample(self, n: int, generator: torch.Generator, per_sequence: bool | None = None):
        L = self.length
        per_sequence = self.per_sequence_length if per_sequence is None else per_sequence
        if not per_sequence:
            l = L + int(torch.randint(int(0.1 * L), (1,), generator=generator))
            inputs, targets = self._one_length(n, generator, l)
            return Batch(inputs, targets)
        ls = _randint(L, L + int(0.1 * L), n, generator).tolist()
        parts = [self._one_length(1, generator, l) for l in ls]
        inputs, lengths = pad([x[:, 0] for x, _ in parts])
        return Batch(inputs, torch.cat([t for _, t in parts]), lengths)

    def test_batches(self, chunk: int = 1000, size: int | None = None):
        size = self.test_size if size is None else size
        generator = torch.Generator().manual_seed(self.TEST_SEED + self.length)
        for start in range(0, size, chunk):
            yield self.sample(min(chunk, size - start), generator, per_sequence=True)

    def correct(self, pred: Tensor, batch: Batch) -> Tensor:
        return (pred - batch.targets) ** 2 < self.tolerance


class LeAdding(PascanuAdding):
    """Le et al. (2015): the target is the sum of the two marked values."""

    name = "adding-sum"

    def __init__(self, length: int, per_sequence_length: bool = False):
        super().__init__(length, "sum", per_sequence_length)


class Multiplication(PascanuAdding):
    name = "multiplication"

    def __init__(self, length: int, per_sequence_length: bool = False):
        super().__init__(length, "mean", per_sequence_length)

    def combine(self, v0: Tensor, v1: Tensor) -> Tensor:
        return v0 * v1

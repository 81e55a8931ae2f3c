"""The random permutation problem (Hochreiter & Schmidhuber 1997; Pascanu et al. 2013).

Sequences of L one-hot symbols over 100 channels: the first symbol is 0 or 1, the rest
are uniform over 2..99.  At the last step the network predicts the first symbol (a
2-class choice among 100 outputs, as in Pascanu's code).

Layout: inputs (L, N, 100) time-major, targets (N,) in {0, 1}.
"""

from __future__ import annotations

import torch

from rnnlab.tasks.base import Batch, Task, one_hot


class RandomPermutation(Task):
    name = "permutation"
    kind = "classification"
    input_size = 100
    output_size = 100

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        symbols = torch.randint(2, 100, (self.length, n), generator=generator)
        symbols[0] = torch.randint(2, (n,), generator=generator)
        return Batch(one_hot(symbols, 100), symbols[0].clone())

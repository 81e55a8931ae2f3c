"""The temporal order problem, 2 and 3 relevant symbols.

**Pascanu et al. (2013), released code** (``variant="pascanu"``, the default).  Sequences
of exactly L steps, 6 one-hot channels: the relevant symbols A/B on channels 0-1,
distractors on channels 2-5 everywhere else.  2 symbols: at a position in
[0.1 L, 0.2 L) and one in [0.5 L, 0.6 L); class = v0 + 2 v1 (4 classes).  3 symbols
(``bits=3``): positions in [0.1, 0.2), [0.3, 0.4), [0.6, 0.7) of L; class
v0 + 2 v1 + 4 v2 (8 classes).  The class is read from the last step.

**Hochreiter & Schmidhuber (1997), experiments 6a/6b** (``variant="hochreiter"``).  8
one-hot channels (X, Y, a, b, c, d, B, E); each sequence has its own length in
[L, L + L/10] (the paper: L = 100); it starts with B and ends with E; X/Y at
t1 in [0.1 L, 0.2 L] and t2 in [0.5 L, 0.6 L] (6a), or at [0.1, 0.2], [0.33, 0.43],
[0.66, 0.76] of L (6b, ``bits=3``); a, b, c, d elsewhere.  Test set 2,560.

Layout: inputs (T, N, 6 or 8) time-major, targets (N,) class indices.
"""

from __future__ import annotations

import torch

from rnnlab.tasks.base import Batch, Task, one_hot, pad

SPANS = {
    ("pascanu", 2): ((0.1, 0.2), (0.5, 0.6)),
    ("pascanu", 3): ((0.1, 0.2), (0.3, 0.4), (0.6, 0.7)),
    ("hochreiter", 2): ((0.1, 0.2), (0.5, 0.6)),
    ("hochreiter", 3): ((0.1, 0.2), (0.33, 0.43), (0.66, 0.76)),
}


class TemporalOrder(Task):
    name = "temporal-order"
    kind = "classification"

    def __init__(self, length: int, bits: int = 2, variant: str = "pascanu"):
        if bits not in (2, 3):
            raise ValueError(f"bits must be 2 or 3; got {bits}")
        if variant not in ("pascanu", "hochreiter"):
            raise ValueError(f"variant must be 'pascanu' or 'hochreiter'; got {variant!r}")
        if length < 20:
            raise ValueError(f"the temporal order problem needs L >= 20; got {length}")
        super().__init__(length)
        self.bits, self.variant = bits, variant
        self.spans = SPANS[(variant, bits)]
        self.output_size = 2**bits
        self.input_size = 6 if variant == "pascanu" else 8
        if variant == "hochreiter":
            self.test_size = 2560
        if bits == 3:
            self.name = "temporal-order-3"

    def positions(self, n: int, generator) -> torch.Tensor:
        """(bits, N) positions of the relevant symbols."""
        L, rows = self.length, []
        for lo, hi in self.spans:
            a, b = int(lo * L), int(hi * L) + (self.variant == "hochreiter")  # closed: [a, b]
            rows.append(torch.randint(a, b, (n,), generator=generator))
        return torch.stack(rows)

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        pos = self.positions(n, generator)
        values = torch.randint(2, (self.bits, n), generator=generator)
        targets = sum(values[k] << k for k in range(self.bits))
        if self.variant == "pascanu":
            symbols = torch.randint(2, 6, (self.length, n), generator=generator)
            for k in range(self.bits):
                symbols[pos[k], torch.arange(n)] = values[k]
            return Batch(one_hot(symbols, 6), targets)
        L = self.length
        lengths = torch.randint(L, L + L // 10 + 1, (n,), generator=generator)
        sequences = []
        for i in range(n):
            s = torch.randint(2, 6, (int(lengths[i]),), generator=generator)  # a, b, c, d
            s[0], s[-1] = 6, 7  # B ... E
            for k in range(self.bits):
                s[pos[k, i]] = values[k, i]  # X = 0, Y = 1
            sequences.append(one_hot(s, 8))
        inputs, lens = pad(sequences)
        return Batch(inputs, targets, lens)

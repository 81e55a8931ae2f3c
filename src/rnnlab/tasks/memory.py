"""Recall tasks scored at every step: noiseless memorisation and copy memory.

**Noiseless memorisation** (Martens & Sutskever 2011, as in Pascanu et al. 2013).  A pattern
of 10 positions, each one of 5 values, is shown first; then blanks; a trigger at step
L + 9 asks for the pattern, which must be written out over the 10 steps that follow.
Inputs have 7 channels (5 values, blank, trigger), outputs 6 (5 values, blank); every
step has a target (blank before the recall), and a sequence is wrong if any step is
wrong.  Total length L + 20.

**Copy memory** (Arjovsky, Shah & Bengio 2016).  10 symbols from 1..8, then L - 1 blanks
(0), the delimiter 9, then 10 blanks; the network writes blanks until the delimiter's
step has passed and then the 10 symbols.  Inputs 10 one-hot channels, outputs 9 classes;
total length L + 20.  A constant-blank predictor scores 10 log 8 / (L + 20) nats.

Layout: inputs (T, N, I) time-major, targets (T, N) class indices.
"""

from __future__ import annotations

import torch

from rnnlab.tasks.base import Batch, Task, one_hot

PATTERN = 10


class NoiselessMemorization(Task):
    name = "memorization"
    kind = "tagging"
    input_size = 7
    output_size = 6
    VALUES, BLANK, TRIGGER = 5, 5, 6

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        T = self.length + 2 * PATTERN
        pattern = torch.randint(self.VALUES, (PATTERN, n), generator=generator)
        inputs = torch.full((T, n), self.BLANK)
        inputs[:PATTERN] = pattern
        inputs[T - PATTERN - 1] = self.TRIGGER
        targets = torch.full((T, n), self.BLANK)
        targets[T - PATTERN :] = pattern
        return Batch(one_hot(inputs, 7), targets)


class CopyMemory(Task):
    name = "copy"
    kind = "tagging"
    input_size = 10
    output_size = 9
    BLANK, DELIMITER = 0, 9

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        T = self.length + 2 * PATTERN
        data = torch.randint(1, 9, (PATTERN, n), generator=generator)
        inputs = torch.zeros(T, n, dtype=torch.long)
        inputs[:PATTERN] = data
        inputs[T - PATTERN - 1] = self.DELIMITER
        targets = torch.zeros(T, n, dtype=torch.long)
        targets[T - PATTERN :] = data
        return Batch(one_hot(inputs, 10), targets)

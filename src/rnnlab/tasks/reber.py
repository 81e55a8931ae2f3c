"""The embedded Reber grammar (Hochreiter & Schmidhuber 1997, experiment 1, Table 1).

A Reber string: B, a walk through the graph below (each branch taken with probability
1/2), E.  The embedded grammar wraps one as  B T <reber> T E  or  B P <reber> P E:
the second-to-last symbol repeats the second, across the whole inner string.

    Reber graph (state: symbol -> next state)
    0: B -> 1        1: T -> 2, P -> 3    2: S -> 2, X -> 4    3: T -> 3, V -> 5
    4: X -> 3, S -> 6    5: P -> 4, V -> 6    6: E -> end

At every step the network sees the current symbol (7 one-hot channels, BTSXPVE) and
predicts the set of symbols that may come next (7 sigmoid outputs, multi-hot target).
A string is correct when every output is on the right side of 0.5 at every step; the
task is solved when every test string is correct.  Hochreiter: 256 training and 256
test strings, drawn once.

Layout: inputs (T, N, 7) time-major (T = string length - 1), targets (T, N, 7),
``lengths`` (N,).
"""

from __future__ import annotations

import random

import torch

from rnnlab.tasks.base import Batch, Task, one_hot, pad

SYMBOLS = "BTSXPVE"
INDEX = {s: i for i, s in enumerate(SYMBOLS)}
GRAPH = {
    0: {"B": 1},
    1: {"T": 2, "P": 3},
    2: {"S": 2, "X": 4},
    3: {"T": 3, "V": 5},
    4: {"X": 3, "S": 6},
    5: {"P": 4, "V": 6},
    6: {"E": None},
}


def reber_string(rng: random.Random) -> str:
    out, state = [], 0
    while state is not None:
        symbol = rng.choice(sorted(GRAPH[state]))
        out.append(symbol)
        state = GRAPH[state][symbol]
    return "".join(out)


def embedded_reber_string(rng: random.Random) -> str:
    side = rng.choice("TP")
    return "B" + side + reber_string(rng) + side + "E"


def reber_successors(prefix: str) -> set[str] | None:
    """The symbols that may follow ``prefix`` in a Reber string (None: not a prefix)."""
    state = 0
    for symbol in prefix:
        if state is None or symbol not in GRAPH[state]:
            return None
        state = GRAPH[state][symbol]
    return set() if state is None else set(GRAPH[state])


def embedded_successors(prefix: str) -> set[str] | None:
    """The symbols that may follow ``prefix`` in an embedded Reber string."""
    if prefix == "":
        return {"B"}
    if prefix[0] != "B":
        return None
    if len(prefix) == 1:
        return {"T", "P"}
    side = prefix[1]
    if side not in "TP":
        return None
    inner = prefix[2:]
    # the inner string is complete once it ends with E
    end = inner.find("E")
    if end == -1:
        return reber_successors(inner)
    if reber_successors(inner[: end + 1]) != set():
        return None
    rest = inner[end + 1 :]
    return {"": {side}, side: {"E"}, side + "E": set()}.get(rest)


def accepts(string: str) -> bool:
    """Whether ``string`` is an embedded Reber string."""
    return (
        all(
            embedded_successors(string[:i]) and string[i] in embedded_successors(string[:i])
            for i in range(len(string))
        )
        and embedded_successors(string) == set()
    )


def encode(strings: list[str]) -> Batch:
    inputs, targets = [], []
    for s in strings:
        x = torch.tensor([INDEX[c] for c in s[:-1]])
        y = torch.zeros(len(s) - 1, len(SYMBOLS))
        for i in range(1, len(s)):
            for c in embedded_successors(s[:i]):
                y[i - 1, INDEX[c]] = 1.0
        inputs.append(one_hot(x, len(SYMBOLS)))
        targets.append(y)
    x, lengths = pad(inputs)
    y, _ = pad(targets)
    return Batch(x, y, lengths)


class EmbeddedReber(Task):
    """``length`` is unused (the grammar sets it); training draws from a fixed set."""

    name = "reber"
    uses_length = False
    kind = "multilabel"
    input_size = len(SYMBOLS)
    output_size = len(SYMBOLS)
    test_size = 256
    threshold = 1e-9  # every test string correct
    train_size = 256

    def __init__(self, length: int = 0, seed: int = 0):
        self.length = length
        rng = random.Random(seed)
        self.train_strings = [embedded_reber_string(rng) for _ in range(self.train_size)]
        rng = random.Random(self.TEST_SEED)
        self.test_strings = [embedded_reber_string(rng) for _ in range(self.test_size)]

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        index = torch.randint(len(self.train_strings), (n,), generator=generator)
        return encode([self.train_strings[i] for i in index.tolist()])

    def test_batches(self, chunk: int = 1000, size: int | None = None):
        strings = self.test_strings[: size or self.test_size]
        for start in range(0, len(strings), chunk):
            yield encode(strings[start : start + chunk])

"""Generators for the long-range dependency suite (Hochreiter & Schmidhuber 1997;
Pascanu, Mikolov & Bengio 2013; Le et al. 2015; Arjovsky et al. 2016).

Each task is seeded by the ``torch.Generator`` given to ``sample(n, generator)``, returns
time-major :class:`Batch` es (see :mod:`rnnlab.tasks.base`), has a fixed test set
(``test_batches()``) and its paper's success criterion (``correct(pred, batch)``)::

    >>> import torch
    >>> from rnnlab.tasks import make_task
    >>> task = make_task("adding", 100)
    >>> batch = task.sample(20, torch.Generator().manual_seed(0))
    >>> batch.inputs.shape[1:], batch.targets.shape
    (torch.Size([20, 2]), torch.Size([20]))
"""

from __future__ import annotations

from rnnlab.tasks.adding import HochreiterAdding, LeAdding, Multiplication, PascanuAdding
from rnnlab.tasks.base import IGNORE, Batch, Task
from rnnlab.tasks.memory import CopyMemory, NoiselessMemorization
from rnnlab.tasks.permutation import RandomPermutation
from rnnlab.tasks.reber import EmbeddedReber
from rnnlab.tasks.temporal_order import TemporalOrder

TASKS = {
    "adding": PascanuAdding,
    "adding-sum": LeAdding,
    "adding-hochreiter": HochreiterAdding,
    "multiplication": Multiplication,
    "temporal-order": TemporalOrder,
    "temporal-order-3": lambda length: TemporalOrder(length, bits=3),
    "temporal-order-6a": lambda length: TemporalOrder(length, variant="hochreiter"),
    "temporal-order-6b": lambda length: TemporalOrder(length, bits=3, variant="hochreiter"),
    "permutation": RandomPermutation,
    "memorization": NoiselessMemorization,
    "copy": CopyMemory,
    "reber": EmbeddedReber,
}


def make_task(name: str, length: int) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    task = TASKS[name](length)
    task.name = name
    return task


__all__ = [
    "IGNORE",
    "TASKS",
    "Batch",
    "CopyMemory",
    "EmbeddedReber",
    "HochreiterAdding",
    "LeAdding",
    "Multiplication",
    "NoiselessMemorization",
    "PascanuAdding",
    "RandomPermutation",
    "Task",
    "TemporalOrder",
    "make_task",
]

"""Supervised tasks over independent sequences: classification, tagging, generation, seq2seq.

Unlike language modelling over streams (:mod:`rnnlab.training.streams`), each example is
a whole sequence (or a pair of them): every update draws a minibatch of examples, runs the
model from a fresh state and backpropagates through the whole sequences (full BPTT).
Examples are shuffled once per epoch with a generator seeded by (seed, epoch), so the data
order is reproducible and a resumed run continues with the same batches.

The model-specific parts are three functions given by the caller::

    collate(examples) -> batch                 # tensors, lengths, ...
    loss_fn(model, batch) -> Tensor            # mean loss of the batch
    metrics_fn(model, examples) -> dict        # {"val_loss": ..., "accuracy": ...}, no grad
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch


class BatchLoss(torch.nn.Module):
    """``forward(batch) = loss_fn(model, batch)``: what DistributedDataParallel wraps, so
    that a loss computed through any method of the model is synchronised across ranks."""

    def __init__(self, model: torch.nn.Module, loss_fn: Callable):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch):
        return self.loss_fn(self.model, batch)


class SupervisedTask:
    """Shuffled minibatches of whole examples, for :class:`rnnlab.training.Trainer`."""

    unit = "sequence"

    def __init__(
        self,
        train: Sequence,
        val: Sequence,
        batch_size: int,
        collate: Callable,
        loss_fn: Callable,
        metrics_fn: Callable,
        seed: int = 0,
        report_fn: Callable | None = None,
        loss_unit: str = "sequence",
    ):
        if len(train) == 0:
            raise ValueError("the training set is empty")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive; got {batch_size}")
        self.train, self.val = train, val
        self.batch_size = batch_size
        self.collate, self.loss_fn, self.metrics_fn = collate, loss_fn, metrics_fn
        self.report_fn = report_fn
        self.loss_unit = loss_unit  # what loss_fn averages over, for the log lines
        self.seed = seed
        self.epoch, self.position = 0, 0
        self.dist = None

    def shard(self, dist) -> None:
        """Distributed: each rank takes every world_size-th example of the global batch."""
        if self.batch_size % dist.world_size:
            dist.shard(self.batch_size)  # raises the divisibility error
        self.dist = dist

    @property
    def updates_per_epoch(self) -> int:
        return math.ceil(len(self.train) / self.batch_size)

    @property
    def tokens_per_update(self) -> float:
        """Sequences per update, on average over an epoch (the last batch of an epoch
        takes what is left; a batch larger than the training set takes all of it)."""
        return len(self.train) / self.updates_per_epoch

    @property
    def note(self) -> str | None:
        """A line for the log where the batch is larger than the training set."""
        if self.batch_size <= len(self.train):
            return None
        return (
            f"note: the batch size ({self.batch_size:,}) is larger than the training set "
            f"({len(self.train):,} sequences): every update takes all of them"
        )

    @property
    def has_validation(self) -> bool:
        return len(self.val) > 0

    def order(self, epoch: int) -> torch.Tensor:
        # Taken modulo 2**64 (as torch maps a negative seed) so that any 64-bit seed works.
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**64)
        return torch.randperm(len(self.train), generator=generator)

    def next_batch(self):
        if self.position >= self.updates_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        start = self.position * self.batch_size
        index = self.order(self.epoch)[start : start + self.batch_size]
        if self.dist is not None:
            index = index[self.dist.rank :: self.dist.world_size]
        self.position += 1
        return self.collate([self.train[i] for i in index.tolist()])

    def loss_module(self, model) -> torch.nn.Module:
        """The module a distributed run wraps in DistributedDataParallel."""
        return BatchLoss(model, self.loss_fn)

    def training_loss(self, model) -> torch.Tensor:
        """``model``: the model, or (distributed) the DDP-wrapped :meth:`loss_module`."""
        batch = self.next_batch()
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            return model(batch)
        return self.loss_fn(model, batch)

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            metrics = self.metrics_fn(model, self.val)
        finally:
            model.train(was_training)
        if "val_loss" not in metrics:
            raise ValueError("metrics_fn must return a dict with 'val_loss'")
        return metrics

    def report(self, model, step: int) -> str | None:
        return self.report_fn(model, step) if self.report_fn is not None else None

    def state_dict(self) -> tuple[dict, dict]:
        return {}, {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, tensors: dict, meta: dict) -> None:
        self.epoch, self.position = meta["epoch"], meta["position"]

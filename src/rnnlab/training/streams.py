r"""Language modelling over token streams with truncated BPTT(k1, k2) (Williams & Peng 1990).

The training text is laid out as B parallel streams (see :mod:`rnnlab.data.batching`).
Every update moves k1 steps further along the streams and backpropagates k2 >= k1 steps:

* update number c predicts the targets of steps [e - k1, e), with e = (c + 1) k1;
* it runs the model over the window [s, e), s = max(0, e - k2), starting from the state at
  step s, detached — so the gradient reaches back exactly k2 steps (fewer at the start);
* the loss is the mean cross entropy over the last k1 steps of the window only.

k1 = k2 = T is the char-rnn scheme of seeds 002/003 (one chunk per update, the state carried
and detached between chunks).  For k2 > k1 the window is run as two calls split at the next
update's window start s' = e + k1 - k2, and the state there is kept (detached) for the next
update; the gradient still flows through both calls.

All state handling lives in this class: carried between updates (``carried``), detached at
the window start, reset to zero at the start of each epoch; validation (:meth:`evaluate`)
starts from a zero state of its own and leaves the training state untouched.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnlab.data import StreamBatches, eval_chunks


def detach_state(state):
    """Cut the graph at a window start (truncated BPTT) but keep the values."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def _as_tensors(state) -> list[Tensor]:
    if state is None:
        return []
    return list(state) if isinstance(state, tuple) else [state]


class StreamTask:
    """Next-token prediction over B streams, one truncated-BPTT(k1, k2) window per update."""

    def __init__(
        self,
        train_ids: Tensor,
        val_ids: Tensor,
        batch_size: int,
        k1: int,
        k2: int,
        vocab=None,
        sample_length: int = 0,
        val_streams: int = 8,
    ):
        if k2 < k1:
            raise ValueError(f"k2 must be >= k1; got k1={k1}, k2={k2}")
        self.batches = StreamBatches(train_ids, batch_size, k1)
        self.val_ids = val_ids
        self.vocab, self.sample_length = vocab, sample_length
        self.val_streams = val_streams
        self.unit = "word" if vocab is not None and vocab.kind == "word" else "char"
        self.batch_size, self.k1, self.k2 = batch_size, k1, k2
        self.dist = None  # set by shard(): this process's share of the streams
        self.position = 0  # the next update's chunk number within the epoch
        self.epoch = 0
        self.carried = None  # detached state at the next window's start (None: zeros)

    @property
    def tokens_per_update(self) -> int:
        return self.batch_size * self.k1

    @property
    def updates_per_epoch(self) -> int:
        return len(self.batches)

    @property
    def has_validation(self) -> bool:
        return len(self.val_ids) >= 2

    def shard(self, dist) -> None:
        """Keep this rank's contiguous share of the B streams (B must divide evenly)."""
        rows = dist.shard(self.batch_size)
        self.batches.inputs = self.batches.inputs[rows]
        self.batches.targets = self.batches.targets[rows]
        self.dist, self.rows = dist, rows

    def monitor_batch(self, sequences: int = 8) -> tuple[Tensor, Tensor]:
        """A few streams of the latest window, for the gradient-flow monitor."""
        s, _, e = self.window(max(self.position - 1, 0))
        inputs, targets = self.batches.inputs, self.batches.targets
        return inputs[:sequences, s:e], targets[:sequences, s:e]

    def window(self, c: int) -> tuple[int, int, int]:
        """(s, s_next, e) of update c: its window [s, e) and the next window's start."""
        e = (c + 1) * self.k1
        s = max(0, e - self.k2)
        s_next = min(max(0, e + self.k1 - self.k2), e)
        return s, s_next, e

    def training_loss(self, model) -> Tensor:
        """Run the next window and return the mean cross entropy over its last k1 steps."""
        if self.position == len(self.batches):  # epoch boundary: streams restart, so does state
            self.position, self.epoch, self.carried = 0, self.epoch + 1, None
        s, s_next, e = self.window(self.position)
        inputs, targets = self.batches.inputs, self.batches.targets
        state, logits = self.carried, []
        for a, b in ((s, s_next), (s_next, e)):
            if b > a:
                out, _, state = model(inputs[:, a:b], state)
                logits.append(out)
            if b == s_next:
                next_carried = detach_state(state) if s_next > 0 else None
        logits = torch.cat(logits, dim=1)[:, -self.k1 :]
        y = targets[:, e - self.k1 : e]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
        )
        self.carried = next_carried
        self.position += 1
        return loss

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        """Mean cross entropy (nats per token) over the validation tokens, scored as
        ``val_streams`` streams, each from a zero state."""
        loss = evaluate_stream(model, self.val_ids, self.val_streams, self.k1, self.dist)
        return {"val_loss": loss}

    def report(self, model, step: int) -> str | None:
        """A short sample primed with a newline, shown at each validation."""
        if not self.sample_length or self.vocab is None:
            return None
        prime = [self.vocab.index.get("\n", 0)]
        generator = torch.Generator().manual_seed(step)
        ids = model.generate(prime, self.sample_length, temperature=0.8, generator=generator)
        return f"--- sample at step {step} ---\n{self.vocab.decode(ids)}\n---"

    # -- resumption ----------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, Tensor], dict]:
        """Position and carried state of all B streams (gathered from every rank)."""
        parts = _as_tensors(self.carried)
        if self.dist is not None and self.dist.enabled:
            flag = self.dist.any(self.carried is not None)
            if flag and not parts:
                raise RuntimeError("ranks disagree on whether a state is carried")
            parts = [torch.cat(self.dist.gather(t), dim=1) for t in parts]
        tensors = {f"carried.{i}": t.contiguous() for i, t in enumerate(parts)}
        meta = {
            "position": self.position,
            "epoch": self.epoch,
            "carried": "none"
            if self.carried is None
            else ("tuple" if isinstance(self.carried, tuple) else "tensor"),
        }
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, Tensor], meta: dict) -> None:
        self.position, self.epoch = meta["position"], meta["epoch"]
        parts = [tensors[f"carried.{i}"] for i in range(len(tensors))]
        if self.dist is not None:  # this rank's streams of the saved global state
            parts = [t[:, self.rows] for t in parts]
        kind = meta["carried"]
        self.carried = None if kind == "none" else (tuple(parts) if kind == "tuple" else parts[0])


@torch.no_grad()
def evaluate_stream(model, ids: Tensor, streams: int, seq_len: int, dist=None) -> float:
    """Mean cross entropy (nats per token) over ``ids`` cut into ``streams`` contiguous
    streams, each from a zero state, carrying state across chunks of ``seq_len`` tokens.
    A text shorter than ``streams * seq_len`` gets fewer streams, one per ``seq_len``
    tokens; otherwise the chunk length does not change the result.  Each stream's first
    tokens, seen with little context, raise it a little (see ``DataConfig``).

    Distributed, each rank scores every ``world_size``-th stream and the sums are reduced,
    so the result equals the one-process figure."""
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    for x, y in eval_chunks(ids, streams, seq_len):
        if dist is not None and dist.enabled:
            x, y = x[dist.rank :: dist.world_size], y[dist.rank :: dist.world_size]
            if len(x) == 0:
                continue
        logits, _, state = model(x, state)
        total += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"
        ).item()
        count += y.numel()
    model.train(was_training)
    if dist is not None and dist.enabled:
        total, count = dist.sum(total, count)
    return total / count

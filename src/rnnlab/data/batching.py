"""Cutting a token stream into batches for truncated BPTT (seeds 002, 003).

The text is laid out as B parallel streams (rows), each a contiguous piece of the text,
and read left to right in chunks of T steps.  Chunk k of row b continues exactly where
chunk k-1 of row b stopped, so the recurrent state left by one chunk is the right initial
state for the next: the trainer carries it across chunks and detaches it, so gradients
flow back at most T steps.

>>> import torch
>>> ids = torch.arange(21)
>>> batches = StreamBatches(ids, batch_size=2, seq_len=4)
>>> len(batches), batches.stream_length
(2, 10)
>>> x, y = batches[0]
>>> x.tolist(), y.tolist()
([[0, 1, 2, 3], [10, 11, 12, 13]], [[1, 2, 3, 4], [11, 12, 13, 14]])
"""

from __future__ import annotations

from torch import Tensor


def split_train_val(ids: Tensor, val_fraction: float = 0.1) -> tuple[Tensor, Tensor]:
    """The first ``1 - val_fraction`` of the tokens train; the last part validates."""
    n_val = int(round(len(ids) * val_fraction))
    return ids[: len(ids) - n_val], ids[len(ids) - n_val :]


def min_tokens(batch_size: int, seq_len: int) -> int:
    """Fewest tokens that fill one batch of chunks: B streams of T inputs, plus a target."""
    return batch_size * seq_len + 1


class StreamBatches:
    """Training chunks: ``batches[k] -> (inputs, targets)``, each (B, T), ragged end dropped."""

    def __init__(self, ids: Tensor, batch_size: int, seq_len: int):
        if len(ids) < min_tokens(batch_size, seq_len):
            raise ValueError(
                f"{len(ids)} tokens cannot fill one batch of {batch_size} streams x {seq_len} "
                f"steps; at least {min_tokens(batch_size, seq_len)} are needed"
            )
        self.batch_size, self.seq_len = batch_size, seq_len
        self.stream_length = (len(ids) - 1) // batch_size
        n = batch_size * self.stream_length
        self.inputs = ids[:n].view(batch_size, -1)
        self.targets = ids[1 : n + 1].view(batch_size, -1)

    def __len__(self) -> int:
        return self.stream_length // self.seq_len

    def __getitem__(self, k: int) -> tuple[Tensor, Tensor]:
        if not 0 <= k < len(self):
            raise IndexError(k)
        s = slice(k * self.seq_len, (k + 1) * self.seq_len)
        return self.inputs[:, s], self.targets[:, s]


def eval_streams(tokens: int, batch_size: int, seq_len: int) -> int:
    """How many streams :func:`eval_chunks` cuts ``tokens`` tokens into: ``batch_size``,
    or one per ``seq_len`` tokens of a shorter text, at least one."""
    return max(1, min(batch_size, (tokens - 1) // seq_len))


def eval_chunks(ids: Tensor, batch_size: int, seq_len: int):
    """Chunks covering (nearly) every token once, for evaluation; the last may be short.

    Uses at most ``batch_size`` streams, fewer for a short text, so any text of two or
    more tokens can be scored; at most ``streams - 1`` trailing tokens are left out.
    """
    if len(ids) < 2:
        raise ValueError("evaluation needs at least 2 tokens")
    streams = eval_streams(len(ids), batch_size, seq_len)
    length = (len(ids) - 1) // streams
    n = streams * length
    inputs, targets = ids[:n].view(streams, -1), ids[1 : n + 1].view(streams, -1)
    for start in range(0, length, seq_len):
        yield inputs[:, start : start + seq_len], targets[:, start : start + seq_len]

r"""Many-to-many, aligned: one label for every input step (seed 003's frame-level video
classification).

::

    x_1      x_2      x_3            x_T
     │        │        │              │
    [→] ───> [→] ───> [→] ── ... ──> [→]     forward pass:  sees x_1..x_t
    [←] <─── [←] <─── [←] <─ ... ─── [←]     backward pass: sees x_t..x_T
     │        │        │              │
   linear   linear   linear         linear   on [h→_t; h←_t]
     │        │        │              │
    y_1      y_2      y_3            y_T     tag logits (N, T, C)

The tag of a step may depend on what comes after it (a character is upper case because
the line turns out to be a speaker's name), so the tagger is **bidirectional by default**:
each step's output concatenates the forward direction's state (the past and present) and
the backward direction's (the present and future).  ``bidirectional=False`` gives the
causal tagger, which sees only x_1..x_t.

Input is batch first, (N, T, F) features or (N, T) token ids with ``vocab_size`` > 0 (see
:class:`rnnlab.models.classifier.EncoderConfig`); ``lengths`` (N,) marks real steps.

>>> import torch
>>> from rnnlab.models.tagger import SequenceTagger, TaggerConfig
>>> model = SequenceTagger(TaggerConfig(input_size=8, vocab_size=30, num_tags=2, hidden_size=16))
>>> ids, lengths = torch.randint(30, (3, 10)), torch.tensor([10, 4, 7])
>>> tuple(model(ids, lengths).shape)                   # logits (N, T, C)
(3, 10, 2)
>>> tags = torch.randint(2, (3, 10))
>>> model.loss(ids, tags, lengths).dim()               # mean over the real steps only
0
>>> model.predict(ids, lengths)[1, 4:].tolist()        # padded steps are tagged -1
[-1, -1, -1, -1, -1, -1]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.models.classifier import EncoderConfig, SequenceEncoder, step_mask


@dataclass(frozen=True, kw_only=True)
class TaggerConfig(EncoderConfig):
    """An :class:`EncoderConfig` plus num_tags C; bidirectional by default."""

    num_tags: int
    bidirectional: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.num_tags < 2:
            raise ValueError(f"num_tags must be at least 2; got {self.num_tags}")


class SequenceTagger(nn.Module):
    """One tag per step: ``forward(x, lengths=None) -> logits (N, T, C)``.

    ``loss(x, tags, lengths=None)``: cross entropy in nats averaged over the real steps of
    all sequences (tags (N, T); values at padded steps are ignored);
    ``predict(x, lengths=None)``: (N, T) most likely tags, -1 at padded steps.
    """

    def __init__(self, config: TaggerConfig):
        super().__init__()
        self.config = config
        self.encoder = SequenceEncoder(config, type(self).__name__)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(self.encoder.output_size, config.num_tags)

    def forward(self, x: Tensor, lengths=None) -> Tensor:
        outputs, _ = self.encoder(x, lengths)
        return self.head(self.drop(outputs))

    def loss(self, x: Tensor, tags: Tensor, lengths=None) -> Tensor:
        logits = self(x, lengths)
        N, T, C = logits.shape
        mask = step_mask(lengths, N, T, logits.device)
        return F.cross_entropy(logits[mask], tags[mask])

    @torch.no_grad()
    def predict(self, x: Tensor, lengths=None) -> Tensor:
        logits = self(x, lengths)
        N, T, _ = logits.shape
        mask = step_mask(lengths, N, T, logits.device)
        return logits.argmax(-1).masked_fill(~mask, -1)


__all__ = ["SequenceTagger", "TaggerConfig"]

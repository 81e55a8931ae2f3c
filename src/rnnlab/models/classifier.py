r"""Many-to-one: read a whole sequence, then decide once (seed 003's sentiment example).

::

    x_1 ──> [RNN] ──> [RNN] ──> ... ──> [RNN] ──> h_T ──> linear ──> logits (N, C)
              │         │                 │
              h_1       h_2      ...      h_T     (pooling="mean" / "max" / ...: over all h_t)

The recurrent stack reads the (N, T, F) input; the **summary** of the sequence is

* ``pooling="last"`` (the default, seed 003): the top layer's final hidden state, taken
  at each sequence's own last real step.  A bidirectional stack concatenates the forward
  direction's final state (after step T) with the backward direction's (after step 1,
  having read the sequence from the end): :math:`s = [\overrightarrow{h}_T;
  \overleftarrow{h}_1]`;
* ``pooling="mean"``: :math:`s = \frac1T \sum_t y_t`, the mean of the top layer's outputs
  over the real steps;
* ``pooling="max"``: the element-wise maximum of the outputs over the real steps;
* ``pooling="mean-max"``: the two concatenated, :math:`s = [\text{mean}_t\, y_t;
  \max_t y_t]` (2DH features);
* ``pooling="attention"``: a learned weighted mean, :math:`s = \sum_t a_t y_t` with
  :math:`a = \text{softmax}_t(w^\top y_t + b)` over the real steps, one score vector w
  (DH) and bias b in the model (the ``attention`` linear layer).

A linear head maps s to class logits (:class:`SequenceClassifier`, cross-entropy loss) or
to real values (:class:`SequenceRegressor`, mean squared error).  Variable lengths are the
normal case: pass ``lengths`` (N,), and padded steps change nothing.

Input is batch first, (N, T, F) features with F = ``input_size``, or (N, T) token ids when
``vocab_size`` > 0 (they are embedded into ``input_size`` features first).

>>> import torch
>>> from rnnlab.models.classifier import ClassifierConfig, SequenceClassifier
>>> config = ClassifierConfig(input_size=12, num_classes=9, hidden_size=16, bidirectional=True)
>>> model = SequenceClassifier(config)
>>> x, lengths = torch.randn(4, 29, 12), torch.tensor([29, 7, 15, 20])
>>> tuple(model(x, lengths).shape)                     # logits (N, C)
(4, 9)
>>> model.loss(x, torch.tensor([0, 3, 8, 1]), lengths).dim()   # mean cross entropy
0
>>> model.predict(x, lengths).tolist() == model(x, lengths).argmax(1).tolist()
True
>>> model(torch.randn(4, 29, 13))  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: SequenceClassifier expects input_size=12 features per step, ...; got shape (4, 29, 13)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.layers import BACKENDS, GRU, LSTM, RNN

ENCODER_CELLS = ("lstm", "gru", "rnn")
POOLINGS = ("last", "mean", "max", "mean-max", "attention")


@dataclass(frozen=True, kw_only=True)
class EncoderConfig:
    """The recurrent part shared by the classifier, the regressor and the tagger.

    input_size: features per step F (with ``vocab_size`` > 0: the embedding size).
    vocab_size: 0 for real-valued input (N, T, F); otherwise the input is token ids (N, T)
        in [0, vocab_size), embedded into ``input_size`` features.
    cell: ``lstm``, ``gru`` or ``rnn`` (Elman, tanh).
    hidden_size: units per layer and direction H.
    num_layers: stacked recurrent layers.
    bidirectional: a forward and a backward pass per layer, outputs concatenated (2H).
    dropout: between recurrent layers and on the features the head reads.
    zoneout: lstm only: probability that a unit keeps its previous h and c at a step in
        training (Krueger et al. 2017; evaluation uses the expectation), a regulariser.
    backend: ``auto`` (the fastest exact path: PyTorch's kernel for the plain LSTM on the
        CPU, the compiled steps for GRU and Elman), ``fused`` (hand-derived BPTT), ``numba``
        (the compiled steps), ``torch`` (torch.nn's kernel) or ``reference`` (autograd
        through steps); see rnnlab.backends.training.
    """

    input_size: int
    vocab_size: int = 0
    cell: str = "lstm"
    hidden_size: int = 64
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    zoneout: float = 0.0
    backend: str = "auto"

    def __post_init__(self):
        for name in ("input_size", "hidden_size", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)}")
        if self.vocab_size < 0:
            raise ValueError(
                f"vocab_size must be >= 0 (0: real-valued input); got {self.vocab_size}"
            )
        if self.cell not in ENCODER_CELLS:
            raise ValueError(f"cell must be one of {', '.join(ENCODER_CELLS)}; got {self.cell!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {self.backend!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")
        if not 0.0 <= self.zoneout < 1.0:
            raise ValueError(f"zoneout must be in [0, 1); got {self.zoneout}")
        if self.zoneout and self.cell != "lstm":
            raise ValueError(f"zoneout needs cell='lstm'; got {self.cell!r}")

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict):
        return cls(**data)


@dataclass(frozen=True, kw_only=True)
class ClassifierConfig(EncoderConfig):
    """An :class:`EncoderConfig` plus num_classes C and pooling (one of :data:`POOLINGS`,
    as the module docstring describes)."""

    num_classes: int
    pooling: str = "last"

    def __post_init__(self):
        super().__post_init__()
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2; got {self.num_classes}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}; got {self.pooling!r}")


@dataclass(frozen=True, kw_only=True)
class RegressorConfig(EncoderConfig):
    """An :class:`EncoderConfig` plus output_size (real values per sequence) and pooling."""

    output_size: int = 1
    pooling: str = "last"

    def __post_init__(self):
        super().__post_init__()
        if self.output_size < 1:
            raise ValueError(f"output_size must be positive; got {self.output_size}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}; got {self.pooling!r}")


def step_mask(lengths: Tensor | None, N: int, T: int, device=None) -> Tensor:
    """(N, T) bool, True on real steps (all True when ``lengths`` is None)."""
    if lengths is None:
        return torch.ones(N, T, dtype=torch.bool, device=device)
    lengths = torch.as_tensor(lengths, device=device)
    return torch.arange(T, device=device).unsqueeze(0) < lengths.unsqueeze(1)


class SequenceEncoder(nn.Module):
    """(Embedding ->) recurrent stack, batch first.

    ``forward(x, lengths=None) -> (outputs (N, T, D*H), final h (D*num_layers, N, H))``;
    ``summary(x, lengths, pooling) -> (N, D*H)``.  ``owner`` names the model in errors.
    """

    def __init__(self, config: EncoderConfig, owner: str = "SequenceEncoder"):
        super().__init__()
        self.config, self.owner = config, owner
        c = config
        self.embedding = nn.Embedding(c.vocab_size, c.input_size) if c.vocab_size else None
        layer = {"lstm": LSTM, "gru": GRU, "rnn": RNN}[c.cell]
        options = {"zoneout": c.zoneout} if c.zoneout else {}
        self.rnn = layer(
            c.input_size,
            c.hidden_size,
            num_layers=c.num_layers,
            dropout=c.dropout,
            bidirectional=c.bidirectional,
            batch_first=True,
            backend=c.backend,
            **options,
        )

    @property
    def output_size(self) -> int:
        return self.config.num_directions * self.config.hidden_size

    def check_input(self, x: Tensor) -> None:
        c = self.config
        if c.vocab_size:
            if x.dim() != 2 or x.dtype.is_floating_point:
                raise ValueError(
                    f"{self.owner} expects token ids (N, T) (vocab_size={c.vocab_size}); "
                    f"got {x.dtype} of shape {tuple(x.shape)}"
                )
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= c.vocab_size):
                raise ValueError(
                    f"{self.owner}: token ids must be in [0, {c.vocab_size}); "
                    f"got [{int(x.min())}, {int(x.max())}]"
                )
        elif x.dim() != 3 or x.shape[-1] != c.input_size:
            raise ValueError(
                f"{self.owner} expects input_size={c.input_size} features per step, input "
                f"(N, T, {c.input_size}); got shape {tuple(x.shape)}"
            )

    def forward(self, x: Tensor, lengths=None) -> tuple[Tensor, Tensor]:
        self.check_input(x)
        if self.embedding is not None:
            x = self.embedding(x)
        outputs, state = self.rnn(x, lengths=lengths)
        h = state[0] if isinstance(state, tuple) else state
        return outputs, h

    def summary(
        self, x: Tensor, lengths=None, pooling: str = "last", score: nn.Module | None = None
    ) -> Tensor:
        """One vector per sequence, (N, D*H) (``mean-max``: (N, 2*D*H)), as the module
        docstring describes; ``attention`` needs ``score``, the (D*H -> 1) linear layer."""
        outputs, h = self(x, lengths)
        N, T, _ = outputs.shape
        if pooling == "last":
            D = self.config.num_directions
            return h[-D:].transpose(0, 1).reshape(N, -1)  # [forward final; backward final]
        mask = step_mask(lengths, N, T, outputs.device).unsqueeze(-1)
        if pooling == "mean":
            return masked_mean(outputs, mask)
        if pooling == "max":
            return masked_max(outputs, mask)
        if pooling == "mean-max":
            return torch.cat([masked_mean(outputs, mask), masked_max(outputs, mask)], -1)
        if pooling == "attention":
            if score is None:
                raise ValueError("pooling='attention' needs score, a linear layer D*H -> 1")
            weights = score(outputs).masked_fill(~mask, float("-inf")).softmax(1)  # (N, T, 1)
            return (weights * outputs).sum(1)
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")


def masked_mean(outputs: Tensor, mask: Tensor) -> Tensor:
    """Mean of (N, T, K) ``outputs`` over the steps where ``mask`` (N, T, 1) is True."""
    return (outputs * mask).sum(1) / mask.sum(1).to(outputs.dtype)


def masked_max(outputs: Tensor, mask: Tensor) -> Tensor:
    """Element-wise maximum of (N, T, K) ``outputs`` over the steps where ``mask`` is True."""
    return outputs.masked_fill(~mask, float("-inf")).amax(1)


def summary_size(config: EncoderConfig, pooling: str) -> int:
    """Features of the summary vector that ``pooling`` makes from ``config``'s encoder."""
    size = config.num_directions * config.hidden_size
    return 2 * size if pooling == "mean-max" else size


class _SummaryHead(nn.Module):
    """Encoder -> one summary vector per sequence -> dropout -> linear: the many-to-one
    wiring both :class:`SequenceClassifier` and :class:`SequenceRegressor` use."""

    def __init__(self, config: EncoderConfig, out_features: int):
        super().__init__()
        self.config = config
        self.encoder = SequenceEncoder(config, type(self).__name__)
        if config.pooling == "attention":
            self.attention = nn.Linear(self.encoder.output_size, 1)  # a score per step
        else:
            self.attention = None
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(summary_size(config, config.pooling), out_features)

    def encode(self, x: Tensor, lengths=None) -> Tensor:
        """The summary the head reads, one vector per sequence: (N, D*H), or (N, 2*D*H)
        with ``mean-max`` pooling."""
        return self.encoder.summary(x, lengths, self.config.pooling, self.attention)

    def forward(self, x: Tensor, lengths=None) -> Tensor:
        return self.head(self.drop(self.encode(x, lengths)))


class SequenceClassifier(_SummaryHead):
    """Sequence -> class: ``forward(x, lengths=None) -> logits (N, C)``.

    ``loss(x, targets, lengths=None)``: mean cross entropy in nats, targets (N,) class ids;
    ``predict(x, lengths=None)``: (N,) most likely classes, without gradients;
    ``encode(x, lengths=None)``: the (N, D*H) summary the decision is made from (2*D*H
    with ``mean-max`` pooling).
    """

    def __init__(self, config: ClassifierConfig):
        super().__init__(config, config.num_classes)

    def loss(self, x: Tensor, targets: Tensor, lengths=None) -> Tensor:
        return F.cross_entropy(self(x, lengths), targets)

    @torch.no_grad()
    def predict(self, x: Tensor, lengths=None) -> Tensor:
        return self(x, lengths).argmax(-1)


class SequenceRegressor(_SummaryHead):
    """Sequence -> real values: ``forward(x, lengths=None) -> (N, output_size)``.

    ``loss(x, targets, lengths=None)``: mean squared error, targets (N, output_size) or (N,)
    when output_size is 1; ``predict`` is ``forward`` without gradients; ``encode`` as in
    :class:`SequenceClassifier`.
    """

    def __init__(self, config: RegressorConfig):
        super().__init__(config, config.output_size)

    def loss(self, x: Tensor, targets: Tensor, lengths=None) -> Tensor:
        y = self(x, lengths)
        if targets.dim() == 1:
            targets = targets.unsqueeze(-1)
        return F.mse_loss(y, targets.to(y.dtype))

    @torch.no_grad()
    def predict(self, x: Tensor, lengths=None) -> Tensor:
        return self(x, lengths)


__all__ = [
    "ClassifierConfig",
    "EncoderConfig",
    "RegressorConfig",
    "SequenceClassifier",
    "SequenceEncoder",
    "SequenceRegressor",
    "POOLINGS",
    "step_mask",
    "summary_size",
]

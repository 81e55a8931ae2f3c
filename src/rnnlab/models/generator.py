r"""One-to-many: a fixed-size vector starts a recurrent decoder that writes a token sequence.

Seed 003's one-to-many wiring: "use that fixed size input to initialize the hidden state
and then let the network propagate and evolve the hidden state forward".  A conditioning
vector :math:`x` (an image, a class, a sentence encoding) sets the initial state of every
layer, :math:`h_0 = \tanh(W_0 x + b_0)` (and :math:`c_0` the same way for an LSTM), and the
decoder then runs one step per output token, fed the previous token:

.. code-block:: text

    x ──tanh(W0 x + b0)──> h0 ──> [RNN] ──> [RNN] ──> [RNN] ──> [RNN]
                                    ^  │      ^  │      ^  │      ^  │
                                 <bos> ▼      s  ▼      e  ▼      v  ▼  ...
                                       s      e         v      e        <eos>

so that :math:`p(y_t \mid y_{<t}, x) = \mathrm{softmax}(U h_t + b)` with
:math:`h_t = f(E y_{t-1}, h_{t-1})` and :math:`y_0 = \langle bos \rangle`.  The output
ends with the end-of-sequence token ``<eos>``, so its length is the network's to choose.

This module also holds the decoding half that :mod:`rnnlab.models.seq2seq` reuses:

* **training** (:func:`decoder_logits`): with teacher forcing the decoder is fed the true
  previous token (seeds 000/001); with scheduled sampling (Bengio et al. 2015) it is fed,
  per step and per sequence, the true previous token with probability
  ``teacher_probability`` and otherwise its own most likely previous token (the argmax of
  its previous output, held constant for the gradient).  The trainer sets
  ``model.teacher_probability`` before every update from ``TrainConfig.teacher``;
  evaluation (``model.eval()``) always uses teacher forcing for the loss, and generation
  always runs freely.
* **decoding**: :func:`greedy_decode` (the most likely token at every step) and
  :func:`beam_search` (batched; width ``beam``; finished hypotheses ranked by
  :math:`\log P(Y \mid x) / lp(Y)` with the length penalty of Wu et al. (2016),
  :func:`length_penalty`: :math:`lp(Y) = ((5 + |Y|) / 6)^\alpha`, where :math:`|Y|`
  counts the output tokens **including** ``<eos>``; :math:`\alpha = 0`, the default,
  ranks by log probability alone; a larger :math:`\alpha` (Wu et al. used 0.2 to 1)
  favours longer outputs).

Both decoders drive a *step function* ``step(tokens (B,), state) -> (log_probs (B, V),
state)`` whose ``state`` is a tuple of tensors with the batch on dimension 0, so beam
search can copy and reorder hypotheses with ``index_select``.

>>> import torch
>>> from rnnlab.models.generator import ConditionalGenerator, GeneratorConfig
>>> model = ConditionalGenerator(GeneratorConfig(input_size=4, vocab_size=7, hidden_size=8))
>>> features, targets = torch.randn(3, 4), torch.tensor([[4, 5, 2], [6, 2, 0], [2, 0, 0]])
>>> logits, loss = model(features, targets)
>>> tuple(logits.shape), loss.dim()
((3, 3, 7), 0)
>>> outputs = model.generate(features, max_length=5, beam=2)
>>> len(outputs), all(len(o) <= 5 for o in outputs)
(3, True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.layers import GRU, LSTM, RNN

LAYERS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}
PAD, BOS, EOS = 0, 1, 2

State = tuple[Tensor, ...]  # batch on dimension 0
StepFn = Callable[[Tensor, State], tuple[Tensor, State]]


# -- checks -------------------------------------------------------------------------------------


def check_decoding(beam: int, max_length: int) -> None:
    """Beam width and maximum length must be positive integers."""
    if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
        raise ValueError(f"beam width must be an integer >= 1; got {beam!r}")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be an integer >= 1; got {max_length!r}")


def check_features(features, size: int, what: str = "features") -> Tensor:
    """A float tensor (N, size) (or one vector (size,)); names the expected size if not."""
    if not isinstance(features, Tensor):
        features = torch.as_tensor(features, dtype=torch.float32)
    if not features.dtype.is_floating_point:
        raise ValueError(f"{what} must be floating point; got dtype {features.dtype}")
    if features.dim() == 1:
        features = features.unsqueeze(0)
    if features.dim() != 2 or features.shape[-1] != size:
        raise ValueError(
            f"{what} must have shape (batch, {size}): this model expects feature size {size}; "
            f"got shape {tuple(features.shape)}"
        )
    return features


def check_targets(targets: Tensor, vocab_size: int, batch: int) -> Tensor:
    if not isinstance(targets, Tensor) or targets.dtype not in (torch.int64, torch.int32):
        raise ValueError("targets must be an integer tensor (batch, time) of token ids")
    if targets.dim() != 2 or targets.shape[0] != batch:
        raise ValueError(f"targets must have shape ({batch}, time); got {tuple(targets.shape)}")
    if targets.numel() and (targets.min() < 0 or targets.max() >= vocab_size):
        raise ValueError(f"target ids must be in [0, {vocab_size}); got {targets.max().item()}")
    return targets.long()


# -- recurrent state: layer layout (L, B, H) <-> batch first (B, L, H) -----------------------------


def to_layer(state: State):
    """A batch-first state tuple as the layer takes it: (L, B, H), a tuple only for LSTMs."""
    parts = tuple(s.transpose(0, 1).contiguous() for s in state)
    return parts if len(parts) > 1 else parts[0]


def from_layer(final) -> State:
    """A layer's final state as a batch-first tuple."""
    final = final if isinstance(final, tuple) else (final,)
    return tuple(s.transpose(0, 1) for s in final)


def make_layer(cell: str, input_size: int, hidden_size: int, num_layers: int, **kwargs):
    if cell not in LAYERS:
        raise ValueError(f"cell must be one of {', '.join(LAYERS)}; got {cell!r}")
    return LAYERS[cell](input_size, hidden_size, num_layers, batch_first=True, **kwargs)


def state_count(cell: str) -> int:
    return 2 if cell == "lstm" else 1


# -- training: teacher forcing and scheduled sampling --------------------------------------------


def shift_right(targets: Tensor, bos: int = BOS) -> Tensor:
    """Decoder inputs for ``targets`` (N, T): <bos> then the targets but the last."""
    return torch.cat([targets.new_full((targets.shape[0], 1), bos), targets[:, :-1]], 1)


def sequence_loss(logits: Tensor, targets: Tensor, pad: int = PAD) -> Tensor:
    """Mean cross entropy (nats) over the real target tokens (``<eos>`` included, pads not)."""
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=pad
    )


def decoder_logits(step, state: State, inputs: Tensor, teacher_probability: float) -> Tensor:
    """Run ``step(tokens, state) -> (logits, state)`` over ``inputs`` (N, T), logits (N, T, V).

    At step t > 0 each sequence is fed its true input ``inputs[:, t]`` with probability
    ``teacher_probability``, else the argmax of its own previous logits (scheduled
    sampling; the choice itself carries no gradient).  Probability 1 is teacher forcing."""
    N, T = inputs.shape
    token, logits = inputs[:, 0], []
    for t in range(T):
        if t > 0 and teacher_probability < 1.0:
            own = logits[-1].detach().argmax(-1)
            keep = torch.rand(N, device=inputs.device) < teacher_probability
            token = torch.where(keep, inputs[:, t], own)
        elif t > 0:
            token = inputs[:, t]
        out, state = step(token, state)
        logits.append(out)
    return torch.stack(logits, 1)


# -- decoding --------------------------------------------------------------------------------------


def length_penalty(length, alpha: float):
    """Wu et al. (2016): ((5 + length) / 6) ** alpha; a hypothesis scores log P / lp."""
    return ((5.0 + length) / 6.0) ** alpha


def select(state: State, index: Tensor) -> State:
    return tuple(s.index_select(0, index) for s in state)


def expand(state: State, k: int) -> State:
    """Each row repeated ``k`` times in place: row n becomes rows n*k .. n*k+k-1."""
    return tuple(s.repeat_interleave(k, 0) for s in state)


def _strip(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


@torch.no_grad()
def greedy_decode(
    step: StepFn, state: State, batch: int, *, bos: int, eos: int, max_length: int
) -> tuple[list[list[int]], list[float]]:
    """The most likely token at every step until ``<eos>`` or ``max_length`` tokens.

    Returns the token lists (``<eos>`` removed) and their log probabilities (the ``<eos>``
    step included when it was reached)."""
    check_decoding(1, max_length)
    device = state[0].device
    tokens = torch.full((batch,), bos, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    score = torch.zeros(batch, dtype=torch.float64, device=device)
    history = []
    for _ in range(max_length):
        log_probs, state = step(tokens, state)
        best, tokens = log_probs.max(-1)
        score += torch.where(finished, 0.0, best.double())
        tokens = torch.where(finished, eos, tokens)
        history.append(tokens)
        finished |= tokens == eos
        if bool(finished.all()):
            break
    rows = torch.stack(history, 1).tolist()
    return [_strip(r, eos) for r in rows], score.tolist()


@torch.no_grad()
def beam_search(
    step: StepFn,
    state: State,
    batch: int,
    *,
    bos: int,
    eos: int,
    max_length: int,
    beam: int,
    alpha: float = 0.0,
) -> tuple[list[list[int]], list[float]]:
    """Batched beam search of width ``beam`` for ``batch`` inputs.

    ``state`` holds one row per input; ``step`` is called on ``batch * beam`` rows (input n
    owns rows n*beam .. n*beam+beam-1; anything else the step needs per row, such as the
    encoder's outputs, the caller repeats the same way).  At each step the ``2 * beam``
    best extensions of the live hypotheses (by log probability) are taken: those that end
    in ``<eos>`` and rank within the first ``beam`` are finished, and the best ``beam``
    others stay live.  Each input keeps its ``beam`` best finished hypotheses, ranked by
    ``log P / length_penalty(|Y|, alpha)`` with |Y| counting ``<eos>``, and is done once it
    has ``beam`` of them and its best live hypothesis, normalised at its current length,
    cannot beat the worst (exact for ``alpha=0``, where scores only fall; a heuristic
    otherwise).  At ``max_length`` the live hypotheses compete as they are.  The answer is
    the best finished hypothesis.  With ``beam=1`` this is :func:`greedy_decode`.

    Returns the token lists (``<eos>`` removed) and their log probabilities."""
    check_decoding(beam, max_length)
    N, K = batch, beam
    device = state[0].device
    state = expand(state, K)
    tokens = torch.full((N * K,), bos, dtype=torch.long, device=device)
    scores = torch.full((N, K), float("-inf"), dtype=torch.float64, device=device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    history = torch.zeros(N, K, 0, dtype=torch.long, device=device)
    finished: list[list[tuple[float, float, list[int]]]] = [[] for _ in range(N)]
    done = [False] * N
    offsets = torch.arange(N, device=device).unsqueeze(1) * K
    for t in range(max_length):
        log_probs, state = step(tokens, state)
        V = log_probs.shape[-1]
        candidates = (scores.unsqueeze(2) + log_probs.view(N, K, V).double()).view(N, K * V)
        top, index = candidates.topk(min(2 * K, K * V), dim=1)
        origin, token = index // V, index % V
        is_eos = token == eos
        for n, j in (is_eos[:, :K] & torch.isfinite(top[:, :K])).nonzero().tolist():
            if not done[n]:
                path = history[n, origin[n, j]].tolist()
                norm = _normalised(top[n, j], t + 1, alpha)
                _keep_best(finished[n], (norm, float(top[n, j]), path), K)
        # the live beams: the first K extensions that do not end in <eos> (at most K of 2K do)
        rank = is_eos.long() * (2 * K) + torch.arange(top.shape[1], device=device)
        keep = rank.argsort(dim=1)[:, :K]
        origin, token = origin.gather(1, keep), token.gather(1, keep)
        scores = top.gather(1, keep)
        parents = history.gather(1, origin.unsqueeze(2).expand(-1, -1, history.shape[2]))
        history = torch.cat([parents, token.unsqueeze(2)], 2)
        if t == max_length - 1:  # out of length: the live hypotheses compete unfinished
            for n in (n for n in range(N) if not done[n]):
                for j in range(K):
                    if bool(torch.isfinite(scores[n, j])):
                        norm = _normalised(scores[n, j], max_length, alpha)
                        path = history[n, j].tolist()
                        _keep_best(finished[n], (norm, float(scores[n, j]), path), K)
            break
        best_live = (scores[:, 0] / length_penalty(t + 1, alpha)).tolist()
        for n in range(N):
            f = finished[n]
            done[n] = done[n] or (len(f) >= K and best_live[n] <= f[-1][0])
        if all(done):
            break
        state = select(state, (offsets + origin).view(-1))
        tokens = token.view(-1)
    best = [f[0] if f else (0.0, float("-inf"), []) for f in finished]
    return [_strip(b[2], eos) for b in best], [b[1] for b in best]


def _keep_best(finished: list, hypothesis: tuple, k: int) -> None:
    """Add ``(normalised, log P, tokens)``; keep the ``k`` best, best first."""
    finished.append(hypothesis)
    finished.sort(key=lambda h: h[0], reverse=True)
    del finished[k:]


def _normalised(score: Tensor, length: int, alpha: float) -> float:
    return float(score) / length_penalty(length, alpha)


def log_softmax_step(step: StepFn) -> StepFn:
    """Wrap a step that returns logits into one that returns log probabilities."""

    def wrapped(tokens, state):
        logits, state = step(tokens, state)
        return torch.log_softmax(logits.float(), -1), state

    return wrapped


# -- the model -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratorConfig:
    """Shape of a conditional generator. Saved in every checkpoint as JSON.

    input_size: size of the conditioning vector. vocab_size: output tokens, the specials
    <pad>, <bos>, <eos> included. cell: ``lstm``, ``gru`` or ``rnn`` (Elman, tanh).
    hidden_size: units per layer. num_layers: stacked layers (each gets its own initial
    state from the vector). embedding_dim: size of the previous-token embedding.
    dropout: between layers and before the output layer. pad_id, bos_id, eos_id: the
    special tokens' ids."""

    input_size: int
    vocab_size: int
    cell: str = "lstm"
    hidden_size: int = 128
    num_layers: int = 1
    embedding_dim: int = 32
    dropout: float = 0.0
    pad_id: int = PAD
    bos_id: int = BOS
    eos_id: int = EOS

    def __post_init__(self):
        for name in ("input_size", "vocab_size", "hidden_size", "num_layers", "embedding_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)}")
        if self.cell not in LAYERS:
            raise ValueError(f"cell must be one of {', '.join(LAYERS)}; got {self.cell!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")
        for name in ("pad_id", "bos_id", "eos_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name} must be a token id below vocab_size={self.vocab_size}")

    def to_json(self) -> dict:
        return asdict(self)


class ConditionalGenerator(nn.Module):
    """A vector in, a token sequence out: ``forward(features, targets) -> (logits, loss)``,
    ``generate(features, max_length, beam=1, length_penalty=0.0) -> list of token lists``.

    ``features``: (N, input_size) floats.  ``targets``: (N, T) ids, each sequence ending in
    ``<eos>`` and padded with ``<pad>``; logits (N, T, V); the loss is the mean cross
    entropy per real target token, in nats.
    """

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = c = config
        self.states = state_count(c.cell)
        self.init_state = nn.Linear(c.input_size, self.states * c.num_layers * c.hidden_size)
        self.embedding = nn.Embedding(c.vocab_size, c.embedding_dim)
        self.rnn = make_layer(
            c.cell, c.embedding_dim, c.hidden_size, c.num_layers, dropout=c.dropout
        )
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.hidden_size, c.vocab_size)
        self.teacher_probability = 1.0  # set by the trainer from TrainConfig.teacher

    def initial_state(self, features: Tensor) -> State:
        """h0 (and c0) of every layer: tanh(W0 x + b0), batch first (N, L, H) each."""
        c = self.config
        x = check_features(features, c.input_size).to(self.init_state.weight.dtype)
        s = torch.tanh(self.init_state(x)).view(x.shape[0], self.states, c.num_layers, -1)
        return tuple(s[:, k] for k in range(self.states))

    def step(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        """One decoding step: previous tokens (B,) -> logits (B, V) and the new state."""
        out, final = self.rnn(self.embedding(tokens).unsqueeze(1), to_layer(state))
        return self.head(self.drop(out[:, 0])), from_layer(final)

    def forward(self, features: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        state = self.initial_state(features)
        targets = check_targets(targets, self.config.vocab_size, state[0].shape[0])
        inputs = shift_right(targets, self.config.bos_id)
        p = self.teacher_probability if self.training else 1.0
        if p >= 1.0:  # teacher forcing: the whole target in one call of the layer
            out, _ = self.rnn(self.embedding(inputs), to_layer(state))
            logits = self.head(self.drop(out))
        else:
            logits = decoder_logits(self.step, state, inputs, p)
        return logits, sequence_loss(logits, targets, self.config.pad_id)

    @torch.no_grad()
    def generate(
        self,
        features: Tensor,
        max_length: int = 20,
        beam: int = 1,
        length_penalty: float = 0.0,
        return_scores: bool = False,
    ):
        """Free-running decoding: greedy with ``beam=1``, else beam search (module doc).

        Returns one token list per row of ``features`` (``<eos>`` removed), and their log
        probabilities if ``return_scores``."""
        check_decoding(beam, max_length)
        was_training = self.training
        self.eval()
        try:
            state = self.initial_state(features)
            c, step = self.config, log_softmax_step(self.step)
            kwargs = dict(bos=c.bos_id, eos=c.eos_id, max_length=max_length)
            if beam == 1:
                seqs, scores = greedy_decode(step, state, state[0].shape[0], **kwargs)
            else:
                seqs, scores = beam_search(
                    step, state, state[0].shape[0], beam=beam, alpha=length_penalty, **kwargs
                )
        finally:
            self.train(was_training)
        return (seqs, scores) if return_scores else seqs

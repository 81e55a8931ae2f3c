r"""Encoder-decoder (sequence to sequence): many-to-one, then one-to-many.

Seed 002 encodes a sentence into one vector by running an RNN over it and keeping the
state after the last word, then "hooks up two RNNs end to end": the second one translates
from that vector.  Seed 003 names the wiring "a combination of many-to-one and
one-to-many".  Here:

.. code-block:: text

    source  5   3   5   +   6   1
            │   │   │   │   │   │
    encoder [E]─[E]─[E]─[E]─[E]─[E]──> final state ──bridge──> decoder initial state
            │   │   │   │   │   │      (= encode(): the sentence vector of seed 002)
            └───┴───┴───┴───┴───┴──> memory h_1..h_S (attention only)
                                              │ context c_t
    decoder                  <bos>──[D]──[D]──[D]──[D]
                                     │5   │9   │6   │<eos>

* **Encoder**: token embedding (or, with ``source_vocab_size=0``, sequences of feature
  vectors of size ``input_size``) -> an rnnlab ``LSTM``/``GRU``/``RNN`` stack, optionally
  bidirectional, over variable lengths (each sequence's final state is taken at its own
  last step).  :meth:`Seq2Seq.encode` returns the top layer's final hidden state (forward
  and backward concatenated): one vector per sequence.
* **Bridge**: unidirectional, the encoder's final state of each layer starts the same
  decoder layer; bidirectional, :math:`s_0 = \tanh(W_b [\overrightarrow{h}; \overleftarrow{h}]
  + b_b)` per layer (and the same for the LSTM cell state).
* **Decoder** (:mod:`rnnlab.models.generator`'s decoding half), one of three wirings:

  ``none``      :math:`s_t = f(E y_{t-1}, s_{t-1})`, :math:`p(y_t) = \mathrm{softmax}(U s_t)`;
                the encoder reaches the decoder only through :math:`s_0`.
  ``bahdanau``  additive attention (Bahdanau et al. 2015), computed from the previous state:
                :math:`e_{t,j} = v^\top \tanh(W_q s_{t-1} + W_k h_j)`,
                :math:`\alpha_t = \mathrm{softmax}(e_t)`, :math:`c_t = \sum_j \alpha_{t,j} h_j`,
                :math:`s_t = f([E y_{t-1}; c_t], s_{t-1})`,
                :math:`p(y_t) = \mathrm{softmax}(U [s_t; c_t])`.
  ``luong``     multiplicative ("general") global attention (Luong et al. 2015), computed
                from the current state: :math:`e_{t,j} = s_t^\top W_a h_j`,
                :math:`\tilde s_t = \tanh(W_c [c_t; s_t])`,
                :math:`p(y_t) = \mathrm{softmax}(U \tilde s_t)`, with input feeding:
                :math:`s_t = f([E y_{t-1}; \tilde s_{t-1}], s_{t-1})`, :math:`\tilde s_0 = 0`.

  Without attention, teacher-forced training runs the decoder over the whole target in one
  call of the layer; with attention the context (Bahdanau) or the attentional vector fed
  back (Luong) depends on the previous step, so the decoder runs one step at a time.

  Padded source positions get no attention.  Training uses teacher forcing or scheduled
  sampling (``teacher_probability``, set by the trainer); generation is greedy or beam
  search with the length penalty of Wu et al. (see :mod:`rnnlab.models.generator`).

>>> import torch
>>> from rnnlab.models.seq2seq import Seq2Seq, Seq2SeqConfig
>>> config = Seq2SeqConfig(source_vocab_size=9, target_vocab_size=7, hidden_size=8,
...                        bidirectional=True, attention="bahdanau")
>>> model = Seq2Seq(config)
>>> source = [[3, 4, 5], [6, 7]]                       # token ids, any lengths
>>> tuple(model.encode(source).shape)                  # one vector per sequence
(2, 16)
>>> logits, loss = model(source, torch.tensor([[4, 5, 2], [6, 2, 0]]))
>>> tuple(logits.shape)
(2, 3, 7)
>>> len(model.generate(source, max_length=4, beam=3))
2
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from rnnlab.models.generator import (
    BOS,
    EOS,
    LAYERS,
    PAD,
    State,
    beam_search,
    check_decoding,
    check_targets,
    decoder_logits,
    from_layer,
    greedy_decode,
    log_softmax_step,
    make_layer,
    sequence_loss,
    shift_right,
    state_count,
    to_layer,
)

ATTENTIONS = ("none", "bahdanau", "luong")


# -- attention ---------------------------------------------------------------------------------


@dataclass
class Memory:
    """The encoder's outputs for attention: ``outputs`` (B, S, M), their projection
    ``keys`` (B, S, K) computed once per source, and ``mask`` (B, S), True on real steps."""

    outputs: Tensor
    keys: Tensor | None
    mask: Tensor

    def repeat(self, k: int) -> Memory:
        """Each row repeated ``k`` times (for beam search's ``batch * beam`` rows)."""
        keys = None if self.keys is None else self.keys.repeat_interleave(k, 0)
        return Memory(self.outputs.repeat_interleave(k, 0), keys, self.mask.repeat_interleave(k, 0))


def attend(scores: Tensor, memory: Memory) -> Tensor:
    """Softmax of ``scores`` (B, T, S) over the real source steps; context (B, T, M)."""
    scores = scores.masked_fill(~memory.mask.unsqueeze(1), float("-inf"))
    return torch.softmax(scores, -1) @ memory.outputs


class AdditiveAttention(nn.Module):
    """Bahdanau's score e_j = v^T tanh(W_q q + W_k h_j); the keys W_k h_j + b are cached."""

    def __init__(self, query_size: int, memory_size: int, attention_size: int):
        super().__init__()
        self.query = nn.Linear(query_size, attention_size, bias=False)
        self.key = nn.Linear(memory_size, attention_size)
        self.v = nn.Linear(attention_size, 1, bias=False)

    def keys(self, outputs: Tensor) -> Tensor:
        return self.key(outputs)

    def forward(self, query: Tensor, memory: Memory) -> Tensor:
        """``query`` (B, T, Q) -> context (B, T, M)."""
        hidden = torch.tanh(self.query(query).unsqueeze(2) + memory.keys.unsqueeze(1))
        return attend(self.v(hidden).squeeze(-1), memory)


class MultiplicativeAttention(nn.Module):
    """Luong's "general" score e_j = q^T W_a h_j; the keys W_a h_j are cached."""

    def __init__(self, query_size: int, memory_size: int):
        super().__init__()
        self.weight = nn.Linear(memory_size, query_size, bias=False)

    def keys(self, outputs: Tensor) -> Tensor:
        return self.weight(outputs)

    def forward(self, query: Tensor, memory: Memory) -> Tensor:
        return attend(query @ memory.keys.transpose(1, 2), memory)


# -- decoders: one class per wiring ---------------------------------------------------------------


class PlainDecoder(nn.Module):
    """No attention: s_t = f(E y_{t-1}, s_{t-1}), logits U s_t."""

    def __init__(self, config: Seq2SeqConfig, memory_size: int, input_extra=0, head_extra=0):
        super().__init__()
        c = config
        self.embedding = nn.Embedding(c.target_vocab_size, c.embedding_dim)
        self.rnn = make_layer(
            c.cell, c.embedding_dim + input_extra, c.hidden_size, c.num_layers, dropout=c.dropout
        )
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.hidden_size + head_extra, c.target_vocab_size)

    def keys(self, outputs: Tensor) -> Tensor | None:
        return None

    def initial(self, state: State) -> State:
        """The decoding state from the recurrent one (wirings that carry more add it)."""
        return state

    def step(self, tokens: Tensor, state: State, memory: Memory) -> tuple[Tensor, State]:
        """Previous tokens (B,) -> logits (B, V) and the next state."""
        out, final = self.rnn(self.embedding(tokens).unsqueeze(1), to_layer(state))
        return self.head(self.drop(out[:, 0])), from_layer(final)

    def forward(self, inputs: Tensor, state: State, memory: Memory) -> Tensor:
        """Teacher forcing over the whole target (N, T) in one call of the layer."""
        out, _ = self.rnn(self.embedding(inputs), to_layer(state))
        return self.head(self.drop(out))


class LuongDecoder(PlainDecoder):
    """Input feeding: s_t = f([E y_{t-1}; s~_{t-1}], s_{t-1}); c_t from s_t;
    s~_t = tanh(W_c [c_t; s_t]); logits U s~_t.  The state carries s~_t (zeros at first)."""

    def __init__(self, config: Seq2SeqConfig, memory_size: int):
        H = config.hidden_size
        super().__init__(config, memory_size, input_extra=H)
        self.attention = MultiplicativeAttention(H, memory_size)
        self.combine = nn.Linear(memory_size + H, H)

    def keys(self, outputs: Tensor) -> Tensor:
        return self.attention.keys(outputs)

    def initial(self, state: State) -> State:
        return (*state, state[0].new_zeros(state[0].shape[0], 1, self.combine.out_features))

    def step(self, tokens: Tensor, state: State, memory: Memory) -> tuple[Tensor, State]:
        *recurrent, feed = state
        x = torch.cat([self.embedding(tokens).unsqueeze(1), feed], -1)
        out, final = self.rnn(x, to_layer(tuple(recurrent)))
        context = self.attention(out, memory)
        attentional = torch.tanh(self.combine(torch.cat([context, out], -1)))
        return self.head(self.drop(attentional))[:, 0], (*from_layer(final), attentional)

    def forward(self, inputs: Tensor, state: State, memory: Memory) -> Tensor:
        """s~_{t-1} feeds step t: one step at a time."""
        return decoder_logits(lambda t, s: self.step(t, s, memory), state, inputs, 1.0)


class BahdanauDecoder(PlainDecoder):
    """c_t from s_{t-1}; s_t = f([E y_{t-1}; c_t], s_{t-1}); logits U [s_t; c_t]."""

    def __init__(self, config: Seq2SeqConfig, memory_size: int):
        super().__init__(config, memory_size, input_extra=memory_size, head_extra=memory_size)
        H = config.hidden_size
        self.attention = AdditiveAttention(H, memory_size, H)

    def keys(self, outputs: Tensor) -> Tensor:
        return self.attention.keys(outputs)

    def step(self, tokens: Tensor, state: State, memory: Memory) -> tuple[Tensor, State]:
        query = state[0][:, -1:]  # the top layer's previous hidden state (B, 1, H)
        context = self.attention(query, memory)
        x = torch.cat([self.embedding(tokens).unsqueeze(1), context], -1)
        out, final = self.rnn(x, to_layer(state))
        logits = self.head(self.drop(torch.cat([out, context], -1)))
        return logits[:, 0], from_layer(final)

    def forward(self, inputs: Tensor, state: State, memory: Memory) -> Tensor:
        """The context depends on the previous state: one step at a time."""
        return decoder_logits(lambda t, s: self.step(t, s, memory), state, inputs, 1.0)


DECODERS = {"none": PlainDecoder, "bahdanau": BahdanauDecoder, "luong": LuongDecoder}


# -- the model -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seq2SeqConfig:
    """Shape of an encoder-decoder. Saved in every checkpoint as JSON.

    source_vocab_size: source tokens (0: the source is a sequence of feature vectors of
    size ``input_size``). target_vocab_size: target tokens, <pad>, <bos>, <eos> included.
    input_size: feature size of a vector source (source_vocab_size 0). cell: ``lstm``,
    ``gru`` or ``rnn``, for both halves. hidden_size: units per layer of each half.
    num_layers: stacked layers of each half. embedding_dim: token embedding size.
    bidirectional: a bidirectional encoder. attention: ``none``, ``bahdanau`` (additive)
    or ``luong`` (multiplicative). dropout: between layers and before the output layer.
    pad_id, bos_id, eos_id: the special tokens' ids (source padding uses pad_id too)."""

    source_vocab_size: int
    target_vocab_size: int
    input_size: int = 0
    cell: str = "lstm"
    hidden_size: int = 128
    num_layers: int = 1
    embedding_dim: int = 32
    bidirectional: bool = False
    attention: str = "none"
    dropout: float = 0.0
    pad_id: int = PAD
    bos_id: int = BOS
    eos_id: int = EOS

    def __post_init__(self):
        for name in ("target_vocab_size", "hidden_size", "num_layers", "embedding_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)}")
        if self.source_vocab_size < 0 or self.input_size < 0:
            raise ValueError("source_vocab_size and input_size must be >= 0")
        if (self.source_vocab_size > 0) == (self.input_size > 0):
            raise ValueError(
                "set exactly one of source_vocab_size (token sources) and input_size "
                f"(feature-vector sources); got {self.source_vocab_size} and {self.input_size}"
            )
        if self.cell not in LAYERS:
            raise ValueError(f"cell must be one of {', '.join(LAYERS)}; got {self.cell!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(
                f"attention must be one of {', '.join(ATTENTIONS)}; got {self.attention!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")
        for name in ("pad_id", "bos_id", "eos_id"):
            if not 0 <= getattr(self, name) < self.target_vocab_size:
                raise ValueError(f"{name} must be a token id below target_vocab_size")

    def to_json(self) -> dict:
        return asdict(self)


class Seq2Seq(nn.Module):
    """``encode(sources) -> vectors``; ``forward(sources, targets) -> (logits, loss)``;
    ``generate(sources, max_length, beam=1, length_penalty=0.0) -> list of token lists``.

    ``sources``: token ids as a list of lists or an (N, S) integer tensor (``lengths``
    given, or counted as the non-<pad> tokens), or with ``source_vocab_size=0`` feature
    vectors as a list of (S_i, input_size) tensors or an (N, S, input_size) tensor (with
    ``lengths``, or full length).  ``targets``: (N, T) ids ending in ``<eos>``, padded with
    ``<pad>``.  Logits (N, T, V); the loss is the mean cross entropy per real target token.
    """

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = c = config
        self.states = state_count(c.cell)
        directions = 2 if c.bidirectional else 1
        self.embedding = (
            nn.Embedding(c.source_vocab_size, c.embedding_dim, padding_idx=c.pad_id)
            if c.source_vocab_size
            else None
        )
        self.encoder = make_layer(
            c.cell,
            c.embedding_dim if self.embedding is not None else c.input_size,
            c.hidden_size,
            c.num_layers,
            dropout=c.dropout,
            bidirectional=c.bidirectional,
        )
        self.bridge = (
            nn.ModuleList(nn.Linear(2 * c.hidden_size, c.hidden_size) for _ in range(self.states))
            if c.bidirectional
            else None
        )
        self.memory_size = directions * c.hidden_size
        self.decoder = DECODERS[c.attention](c, self.memory_size)
        self.teacher_probability = 1.0  # set by the trainer from TrainConfig.teacher

    # -- the encoder ----------------------------------------------------------------------
    def prepare_source(self, sources, lengths=None) -> tuple[Tensor, Tensor]:
        """Sources as one padded batch (N, S) of ids or (N, S, I) of floats, and lengths."""
        c, device = self.config, self.encoder.weight_ih_l0.device
        if isinstance(sources, (list, tuple)):
            if not sources:
                raise ValueError("sources must hold at least one sequence")
            seqs = [torch.as_tensor(s) for s in sources]
            if lengths is None:
                lengths = [len(s) for s in seqs]
            if any(len(s) == 0 for s in seqs):
                raise ValueError("every source sequence needs at least one step")
            fill = c.pad_id if not seqs[0].dtype.is_floating_point else 0.0
            sources = nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=fill)
        if not isinstance(sources, Tensor):
            raise ValueError(f"sources must be a tensor or a list of sequences; got {sources!r}")
        if self.embedding is not None:
            if sources.dtype.is_floating_point or sources.dim() != 2:
                raise ValueError(
                    f"this model reads token ids (N, S) from a vocabulary of "
                    f"{c.source_vocab_size}; got a {sources.dtype} tensor of shape "
                    f"{tuple(sources.shape)}"
                )
            if sources.numel() and (sources.min() < 0 or sources.max() >= c.source_vocab_size):
                raise ValueError(
                    f"source ids must be in [0, {c.source_vocab_size}); "
                    f"got {sources.min().item()}..{sources.max().item()}"
                )
            if lengths is None:
                lengths = (sources != c.pad_id).sum(1)
            sources = sources.long()
        else:
            if sources.dim() == 2 and sources.dtype.is_floating_point:
                sources = sources.unsqueeze(0)  # one sequence (S, I)
            if sources.dim() != 3 or sources.shape[-1] != c.input_size:
                raise ValueError(
                    f"sources must be feature vectors of size {c.input_size}: this model "
                    f"expects (N, S, {c.input_size}); got shape {tuple(sources.shape)}"
                )
            if not sources.dtype.is_floating_point:
                raise ValueError(f"feature sources must be floating point; got {sources.dtype}")
            sources = sources.to(self.encoder.weight_ih_l0.dtype)
            if lengths is None:
                lengths = torch.full((sources.shape[0],), sources.shape[1])
        lengths = torch.as_tensor(lengths, dtype=torch.long).cpu()
        if lengths.shape != (sources.shape[0],) or (lengths < 1).any():
            raise ValueError(
                f"lengths must give a positive length for each of the {sources.shape[0]} "
                f"sources; got {lengths.tolist()}"
            )
        return sources.to(device), lengths

    def _encode(self, sources: Tensor, lengths: Tensor):
        """(outputs (N, S, D*H), final layer state, mask (N, S))."""
        x = self.embedding(sources) if self.embedding is not None else sources
        outputs, final = self.encoder(x, lengths=lengths)
        steps = torch.arange(outputs.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
        return outputs, final, steps.to(outputs.device)

    def encode(self, sources, lengths=None) -> Tensor:
        """One vector per source sequence (N, D*H): the top layer's final hidden state, the
        forward and backward directions concatenated (seed 002's sentence encoding).  Call
        it under ``torch.no_grad()`` for inference."""
        sources, lengths = self.prepare_source(sources, lengths)
        _, final, _ = self._encode(sources, lengths)
        h = final[0] if isinstance(final, tuple) else final  # (D*L, N, H)
        D = 2 if self.config.bidirectional else 1
        return torch.cat(list(h[-D:]), -1)

    def initial_state(self, final) -> State:
        """The decoder's initial state (batch first, (N, L, H) each) from the encoder's."""
        L, H = self.config.num_layers, self.config.hidden_size
        parts = final if isinstance(final, tuple) else (final,)
        if self.bridge is None:
            return tuple(s.transpose(0, 1) for s in parts)
        out = []
        for s, bridge in zip(parts, self.bridge, strict=True):
            both = s.view(L, 2, -1, H).permute(2, 0, 1, 3).reshape(-1, L, 2 * H)
            out.append(torch.tanh(bridge(both)))
        return tuple(out)

    def start(self, sources, lengths=None) -> tuple[State, Memory]:
        """Encode: the decoder's initial state and the memory it attends to."""
        sources, lengths = self.prepare_source(sources, lengths)
        outputs, final, mask = self._encode(sources, lengths)
        state = self.decoder.initial(self.initial_state(final))
        return state, Memory(outputs, self.decoder.keys(outputs), mask)

    # -- the decoder ------------------------------------------------------------------------
    def forward(self, sources, targets: Tensor, lengths=None) -> tuple[Tensor, Tensor]:
        state, memory = self.start(sources, lengths)
        c = self.config
        targets = check_targets(targets, c.target_vocab_size, state[0].shape[0])
        targets = targets.to(state[0].device)
        inputs = shift_right(targets, c.bos_id)
        p = self.teacher_probability if self.training else 1.0
        if p >= 1.0:
            logits = self.decoder(inputs, state, memory)
        else:
            logits = decoder_logits(lambda t, s: self.decoder.step(t, s, memory), state, inputs, p)
        return logits, sequence_loss(logits, targets, c.pad_id)

    @torch.no_grad()
    def generate(
        self,
        sources,
        lengths=None,
        max_length: int = 50,
        beam: int = 1,
        length_penalty: float = 0.0,
        return_scores: bool = False,
    ):
        """Free-running decoding: greedy with ``beam=1``, else beam search with the length
        penalty ((5 + |Y|) / 6) ** length_penalty (|Y| counts <eos>).  Returns one token
        list per source (``<eos>`` removed), and their log probabilities if asked."""
        check_decoding(beam, max_length)
        was_training = self.training
        self.eval()
        try:
            state, memory = self.start(sources, lengths)
            c, N = self.config, state[0].shape[0]
            kwargs = dict(bos=c.bos_id, eos=c.eos_id, max_length=max_length)
            if beam > 1:
                memory = memory.repeat(beam)
            step = log_softmax_step(lambda t, s: self.decoder.step(t, s, memory))
            if beam == 1:
                seqs, scores = greedy_decode(step, state, N, **kwargs)
            else:
                seqs, scores = beam_search(
                    step, state, N, beam=beam, alpha=length_penalty, **kwargs
                )
        finally:
            self.train(was_training)
        return (seqs, scores) if return_scores else seqs


__all__ = [
    "ATTENTIONS",
    "AdditiveAttention",
    "BahdanauDecoder",
    "LuongDecoder",
    "Memory",
    "MultiplicativeAttention",
    "PlainDecoder",
    "Seq2Seq",
    "Seq2SeqConfig",
]

r"""Recurrent language model: tokens -> embedding -> recurrent stack -> linear -> softmax.

Seed 000's language model: a token :math:`x_t` (one-hot) is embedded as :math:`e_t = E x_t`
(or fed as the one-hot vector itself, as in seed 002's "hello" example, with
``embedding_dim=0``), the recurrent stack turns the embeddings into hidden states
:math:`h_t`, and the output layer gives :math:`\hat y_t = \mathrm{softmax}(U h_t + b)`, the
distribution of the next token.  The loss is the cross entropy
:math:`-\log \hat y_t[x_{t+1}]`, summed over steps and divided by the number of
predicted tokens: nats per token.

>>> import torch
>>> from rnnlab.models import LanguageModel, ModelConfig
>>> model = LanguageModel(ModelConfig(vocab_size=10, hidden_size=16, num_layers=2))
>>> idx = torch.randint(10, (3, 7))
>>> logits, loss, state = model(idx, targets=idx)
>>> tuple(logits.shape), loss.dim(), tuple(state[0].shape)
((3, 7, 10), 0, (2, 3, 16))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.backends import choose_generate_backend, nonfinite_message, race_noise
from rnnlab.cells.elman import NONLINEARITIES
from rnnlab.dropout import Dropout
from rnnlab.layers import BACKENDS, GRU, LSTM, RNN, JordanRNN, PascanuRNN

CELLS = ("lstm", "gru", "rnn", "pascanu", "jordan")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a language model. Saved in every checkpoint as JSON.

    vocab_size: number of tokens (0 in a training config: set from the vocabulary).
    cell: ``lstm``, ``gru``, ``rnn`` (Elman), ``pascanu`` (seed 004's form; ``nonlinearity``
        tanh or sigmoid) or ``jordan`` (output recurrence: the previous output, one-hot of
        the true previous token under teacher forcing, feeds the next step; one layer).
    hidden_size: units per recurrent layer.
    num_layers: recurrent layers stacked (seed 003's deep RNN).
    embedding_dim: size of the token embedding; 0 feeds one-hot vectors.
    dropout: dropout between recurrent layers and before the output layer.
    weight_drop: DropConnect on the recurrent matrices W_hh in training, one mask per
        forward call (AWD-LSTM's weight drop; not for the jordan cell).
    nonlinearity: activation of the rnn, pascanu and jordan cells (tanh, sigmoid, relu).
    hidden_recurrence: jordan only: also feed h_{t-1} back (hidden and output recurrence).
    dtype: ``float32`` or ``float64`` (for exact comparisons).
    backend: ``auto`` (the fastest exact path: PyTorch's kernel for the plain LSTM on the
        CPU, the compiled steps for GRU and Elman), ``fused`` (hand-derived BPTT), ``numba``
        (the compiled steps), ``torch`` (torch.nn's kernel) or ``reference`` (autograd
        through steps); see rnnlab.backends.training.
    """

    vocab_size: int
    cell: str = "lstm"
    hidden_size: int = 256
    num_layers: int = 2
    embedding_dim: int = 64
    dropout: float = 0.0
    weight_drop: float = 0.0
    nonlinearity: str = "tanh"
    backend: str = "auto"
    hidden_recurrence: bool = False
    dtype: str = "float32"

    def __post_init__(self):
        if self.vocab_size < 0:
            raise ValueError(f"vocab_size must be >= 0 (0: from the data); got {self.vocab_size}")
        for name in ("hidden_size", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)}")
        if self.embedding_dim < 0:
            raise ValueError(f"embedding_dim must be >= 0; got {self.embedding_dim}")
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}; got {self.cell!r}")
        if self.nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")
        if not 0.0 <= self.weight_drop < 1.0:
            raise ValueError(f"weight_drop must be in [0, 1); got {self.weight_drop}")
        if self.cell == "jordan" and self.weight_drop:
            raise ValueError("the jordan cell has no weight_drop: set it to 0")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64; got {self.dtype!r}")
        if self.cell == "pascanu" and self.nonlinearity == "relu":
            raise ValueError("the pascanu cell takes nonlinearity tanh or sigmoid")
        if self.cell == "jordan" and self.num_layers != 1:
            raise ValueError("the jordan cell is one layer: set num_layers to 1")

    def to_json(self) -> dict:
        return asdict(self)


class LanguageModel(nn.Module):
    """Next-token model; ``forward(idx, state=None, targets=None) -> (logits, loss, state)``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        V, E, H = config.vocab_size, config.embedding_dim, config.hidden_size
        if V < 1:
            raise ValueError("config.vocab_size must be set (>= 1) to build a model")
        self.embedding = nn.Embedding(V, E) if E > 0 else None
        kwargs = dict(
            num_layers=config.num_layers,
            dropout=config.dropout,
            weight_drop=config.weight_drop,
            backend=config.backend,
        )
        self.teacher_probability = 1.0  # jordan only: set by the trainer's schedule
        if config.cell == "lstm":
            self.rnn = LSTM(E or V, H, **kwargs)
        elif config.cell == "gru":
            self.rnn = GRU(E or V, H, **kwargs)
        elif config.cell == "pascanu":
            self.rnn = PascanuRNN(E or V, H, sigma=config.nonlinearity, **kwargs)
        elif config.cell == "jordan":
            # The fed-back output is the logits; the teacher is the one-hot true token.
            self.rnn = JordanRNN(
                E or V,
                H,
                V,
                nonlinearity=config.nonlinearity,
                hidden_recurrence=config.hidden_recurrence,
                backend=config.backend,
            )
        else:
            self.rnn = RNN(E or V, H, nonlinearity=config.nonlinearity, **kwargs)
        self.drop = Dropout(config.dropout)  # rnnlab.dropout: a cheaper mask on the CPU
        self.head = None if config.cell == "jordan" else nn.Linear(H, V)
        self.to(getattr(torch, config.dtype))

    def _inputs(self, idx_tm: Tensor) -> Tensor:
        if self.embedding is not None:
            return self.embedding(idx_tm)
        return F.one_hot(idx_tm, self.config.vocab_size).to(self.rnn.weight_ih_l0.dtype)

    def forward(self, idx: Tensor, state=None, targets: Tensor | None = None):
        """``idx`` and ``targets``: (N, T) token ids. Returns logits (N, T, V), the mean
        cross entropy in nats (None without targets) and the final recurrent state."""
        if idx.dim() != 2:
            raise ValueError(f"idx must be (batch, time); got shape {tuple(idx.shape)}")
        x = self._inputs(idx.t())  # time-major (T, N, E) keeps each step contiguous
        if self.head is None:
            logits, state = self._jordan(idx.t(), x, state)
        else:
            hs, state = self.rnn(x, state)
            logits = self.head(self.drop(hs))
        logits = logits.transpose(0, 1)  # (N, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss, state

    def _jordan(self, idx_tm: Tensor, x: Tensor, state):
        """Output recurrence: the true previous token of step t is the input token x_t, so
        the teacher is its one-hot vector.  In training the model is fed the truth with
        probability ``teacher_probability`` (scheduled sampling), else its own logits; in
        evaluation and generation it is fed the true (or sampled) token."""
        teacher = F.one_hot(idx_tm, self.config.vocab_size).to(x.dtype)
        mask = None
        if self.training and self.teacher_probability < 1.0:
            mask = torch.rand(idx_tm.shape, device=x.device) < self.teacher_probability
        return self.rnn(x, state, teacher=teacher, teacher_mask=mask)

    @torch.no_grad()
    def generate(
        self,
        prime: list[int],
        length: int,
        temperature: float = 1.0,
        greedy: bool = False,
        generator: torch.Generator | None = None,
        backend: str = "auto",
    ) -> list[int]:
        """Prime the state with ``prime`` (token ids, at least one), then draw ``length``
        tokens one at a time from softmax(logits / temperature), or the argmax if
        ``greedy`` (seed 003's sampling).  Returns the new tokens only.

        ``backend``: ``torch`` (the plain path below), ``numba`` (a compiled loop over all
        the tokens, :mod:`rnnlab.backends.numba_generate`) or ``auto`` (numba where it is
        installed and supports the model; :func:`rnnlab.backends.choose_generate_backend`
        says which and why).  Both draw the same random numbers (:func:`race_noise`), one
        row of Exp(1) per token; the token is argmax p_v / q_v, which is how
        ``torch.multinomial(p, 1)`` samples, so the plain path keeps its samples.
        """
        if isinstance(prime, torch.Tensor):
            prime = prime.flatten().tolist()
        if len(prime) == 0:
            raise ValueError("prime must hold at least one token")
        V = self.config.vocab_size
        bad = [t for t in prime if not isinstance(t, (int, np.integer)) or not 0 <= t < V]
        if bad:  # the compiled loop indexes its tables with these ids unchecked
            raise ValueError(f"prime token ids must be integers in [0, {V}); got {bad[0]!r}")
        if length < 0:
            raise ValueError(f"length must be >= 0; got {length}")
        if not greedy and temperature <= 0:
            raise ValueError(f"temperature must be positive; got {temperature}")
        choice = choose_generate_backend(self, backend)  # ValueError for a bad name
        device = self.rnn.weight_ih_l0.device
        noise = None if greedy else race_noise(length, V, generator, device)
        if choice.name == "numba":
            from rnnlab.backends import numba_generate

            return numba_generate.generate(self, prime, length, temperature, noise)
        was_training = self.training
        self.eval()
        try:
            return self._generate_plain(prime, length, temperature, noise)
        finally:
            self.train(was_training)

    def _generate_plain(self, prime, length, temperature, noise) -> list[int]:
        """The plain path: one fused pass over the prime, then ``layer.step()`` per token."""
        device = self.rnn.weight_ih_l0.device
        logits, _, state = self(torch.tensor([prime], device=device))  # fused pass over the prime
        last = logits[0, -1]
        params = self.rnn.step_parameters()
        races = (row for chunk in noise for row in chunk) if noise is not None else None
        out = []
        for i in range(length):
            if i:
                last, state = self._step(out[-1], state, params)
            if not torch.isfinite(last).all():  # greedy too: argmax of a NaN is no answer
                raise ValueError(nonfinite_message(i))
            if races is None:
                token = int(last.argmax())
            else:
                probs = torch.softmax(last.double() / temperature, dim=-1)
                token = int((probs / next(races)).argmax())  # = torch.multinomial(probs, 1)
            out.append(token)
        return out

    def _step(self, token: int, state, params):
        """Logits of the next token after ``token``: one lean step of every layer."""
        index = torch.tensor([token], device=self.rnn.weight_ih_l0.device)
        x = self._inputs(index)
        if self.head is None:  # jordan: feed the token just emitted as the previous output
            teacher = F.one_hot(index, self.config.vocab_size).to(x.dtype)
            y, state = self.rnn.step(x, state, params, teacher=teacher)
            return y[0], state
        h, state = self.rnn.step(x, state, params)
        return self.head(h)[0], state

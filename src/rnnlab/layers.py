"""Sequence layers: stacks of recurrent cells, shaped and named like ``torch.nn``.

``RNN`` (Elman) and ``LSTM`` take the constructor arguments and inputs of their
``torch.nn`` namesakes and hold parameters under the same names (``weight_ih_l0``,
``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``, ...), so a ``state_dict`` moves
between rnnlab and ``torch.nn`` unchanged.

Each layer of the stack runs its whole sequence through one cell-family function; the
``backend`` argument picks which:

* ``"fused"`` (default): the ``torch.autograd.Function`` of the cell file, whose forward
  runs the whole sequence and whose backward is BPTT written by hand;
* ``"reference"``: the cell's reference step in a Python loop; autograd differentiates it.

Shapes (``batch_first=False``): input (T, N, I) -> output (T, N, H); with
``batch_first=True`` input and output are (N, T, .).  A 2-D input (T, I) is an unbatched
sequence.  States are always (num_layers, N, H), as in ``torch.nn``.

>>> import torch
>>> from rnnlab import LSTM
>>> lstm = LSTM(input_size=3, hidden_size=5, num_layers=2, batch_first=True)
>>> out, (h, c) = lstm(torch.randn(4, 7, 3))
>>> tuple(out.shape), tuple(h.shape), tuple(c.shape)
((4, 7, 5), (2, 4, 5), (2, 4, 5))
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rnnlab.cells.elman import check_nonlinearity, elman_sequence, elman_sequence_reference
from rnnlab.cells.lstm import lstm_sequence, lstm_sequence_reference

BACKENDS = ("fused", "reference")


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return value


class _Stack(nn.Module):
    """Common plumbing of a stack of recurrent layers: parameters, shapes, dropout.

    A subclass sets ``gate_count`` (rows of W per hidden unit), ``state_count`` (tensors
    in the state: 1 for h, 2 for (h, c)) and implements ``_run_layer``.
    """

    gate_count = 1
    state_count = 1

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        backend: str = "fused",
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.input_size = _check_positive_int("input_size", input_size)
        self.hidden_size = _check_positive_int("hidden_size", hidden_size)
        self.num_layers = _check_positive_int("num_layers", num_layers)
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.backend = backend
        factory = {"device": device, "dtype": dtype}
        rows = self.gate_count * hidden_size
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size
            w_ih = nn.Parameter(torch.empty(rows, layer_input, **factory))
            w_hh = nn.Parameter(torch.empty(rows, hidden_size, **factory))
            self.register_parameter(f"weight_ih_l{layer}", w_ih)
            self.register_parameter(f"weight_hh_l{layer}", w_hh)
            if self.bias:
                self.register_parameter(
                    f"bias_ih_l{layer}", nn.Parameter(torch.empty(rows, **factory))
                )
                self.register_parameter(
                    f"bias_hh_l{layer}", nn.Parameter(torch.empty(rows, **factory))
                )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn's rule: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def layer_parameters(self, layer: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """``(weight_ih, weight_hh, bias_ih, bias_hh)`` of one layer (biases None if off)."""
        get = lambda name: getattr(self, f"{name}_l{layer}", None)  # noqa: E731
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        return s + f", backend={self.backend!r}"

    # -- shapes ---------------------------------------------------------------------------
    def _check_input(self, input: Tensor) -> tuple[Tensor, bool]:
        """Return the input as time-major (T, N, I) and whether it came unbatched."""
        if not isinstance(input, Tensor):
            raise ValueError(f"input must be a Tensor; got {type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ValueError(
                f"input must be 3-D ({'N, T' if self.batch_first else 'T, N'}, input_size) "
                f"or 2-D (T, input_size) for one sequence; got shape {tuple(input.shape)}"
            )
        if input.shape[-1] != self.input_size:
            raise ValueError(
                f"input feature size must be input_size={self.input_size}; "
                f"got shape {tuple(input.shape)}"
            )
        if input.dtype != self.weight_ih_l0.dtype:
            raise ValueError(
                f"input dtype {input.dtype} does not match the parameters' "
                f"{self.weight_ih_l0.dtype}"
            )
        unbatched = input.dim() == 2
        if unbatched:
            input = input.unsqueeze(1)
        elif self.batch_first:
            input = input.transpose(0, 1)
        if input.shape[0] == 0:
            raise ValueError("input must have at least one time step; got length 0")
        return input, unbatched

    def _check_state(self, state, batch: int, unbatched: bool, like: Tensor) -> list[Tensor]:
        """Validate the initial state and return it as a list of (L, N, H) tensors."""
        L, H = self.num_layers, self.hidden_size
        if state is None:
            zeros = like.new_zeros(L, batch, H)
            return [zeros] * self.state_count
        parts = [state] if isinstance(state, Tensor) else list(state)
        if len(parts) != self.state_count:
            raise ValueError(
                f"state must be {'a tensor h' if self.state_count == 1 else 'a tuple (h, c)'}; "
                f"got {len(parts)} tensors"
            )
        expected = (L, H) if unbatched else (L, batch, H)
        out = []
        for name, s in zip("hc", parts, strict=False):
            if tuple(s.shape) != expected:
                raise ValueError(
                    f"state {name} must have shape {expected} (num_layers, "
                    f"{'' if unbatched else 'batch, '}hidden_size); got {tuple(s.shape)}"
                )
            if s.dtype != like.dtype:
                raise ValueError(
                    f"state {name} dtype {s.dtype} does not match the input's {like.dtype}"
                )
            out.append(s.unsqueeze(1) if unbatched else s)
        return out

    # -- the stack ------------------------------------------------------------------------
    def forward(self, input: Tensor, state=None):
        x, unbatched = self._check_input(input)
        states = self._check_state(state, x.shape[1], unbatched, x)
        finals = [[] for _ in range(self.state_count)]
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout and self.training:
                x = nn.functional.dropout(x, self.dropout, training=True)
            layer_state = tuple(s[layer] for s in states)
            x, final = self._run_layer(x, layer_state, self.layer_parameters(layer))
            for k, f in enumerate(final):
                finals[k].append(f)
        finals = [torch.stack(f) for f in finals]
        if unbatched:
            x, finals = x.squeeze(1), [f.squeeze(1) for f in finals]
        elif self.batch_first:
            x = x.transpose(0, 1)
        return x, (finals[0] if self.state_count == 1 else tuple(finals))

    def _run_layer(self, x: Tensor, state: tuple[Tensor, ...], params) -> tuple[Tensor, tuple]:
        raise NotImplementedError


class RNN(_Stack):
    r"""Elman RNN stack: :math:`h_t = \phi(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})`.

    Arguments as ``torch.nn.RNN``; ``nonlinearity`` may be ``"tanh"`` (default),
    ``"relu"`` or ``"sigmoid"`` (the last one ``torch.nn`` lacks).
    Returns ``(output, h_n)`` with ``h_n`` of shape (num_layers, N, H).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", **kwargs):
        self.nonlinearity = check_nonlinearity(nonlinearity)
        super().__init__(input_size, hidden_size, num_layers, **kwargs)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", nonlinearity={self.nonlinearity!r}"

    def _run_layer(self, x, state, params):
        run = elman_sequence if self.backend == "fused" else elman_sequence_reference
        hs = run(x, state[0], *params, self.nonlinearity)
        return hs, (hs[-1],)


class LSTM(_Stack):
    r"""LSTM stack with ``torch.nn.LSTM``'s gates (i, f, g, o), layout and names.

    Returns ``(output, (h_n, c_n))``, each state of shape (num_layers, N, H).
    The equations and the hand-derived backward are in :mod:`rnnlab.cells.lstm`.
    """

    gate_count = 4
    state_count = 2

    def _run_layer(self, x, state, params):
        run = lstm_sequence if self.backend == "fused" else lstm_sequence_reference
        hs, cs = run(x, state[0], state[1], *params)
        return hs, (hs[-1], cs[-1])

"""Sequence layers: stacks of recurrent cells, shaped and named like ``torch.nn``.

``RNN`` (Elman), ``LSTM`` and ``GRU`` take the constructor arguments and inputs of their
``torch.nn`` namesakes and hold parameters under the same names (``weight_ih_l0``,
``weight_hh_l0_reverse``, ``weight_hr_l1``, ...), so a ``state_dict`` moves between rnnlab
and ``torch.nn`` unchanged; ``from_torch`` and ``to_torch`` convert whole modules.

What the driver adds around a cell's whole-sequence function:

* **stacking** (``num_layers``), with dropout on the outputs of every layer but the last;
* **weight drop** (``weight_drop``): DropConnect on each recurrent matrix W_hh in training,
  one mask per forward call (:meth:`_Stack.run_parameters`), for every backend;
* **bidirectional** layers: a forward pass and a pass over the reversed sequence, outputs
  concatenated as ``[forward, backward]``; states indexed ``layer * 2 + direction``;
* **variable lengths** (``lengths=``, ``mask=`` or a ``PackedSequence``): padded steps
  neither change the state nor receive gradient; each sequence's final state is the state
  at its own last real step; the reverse direction starts at each sequence's own last real
  step.  The batch is sorted by length and cut into time segments in which the set of live
  sequences is constant; each segment is one call of the cell's fused function over the
  live rows, so every cell family gets lengths without code of its own.

Each layer's ``backend`` picks the path of every layer and direction: ``"fused"`` (the
cell's ``torch.autograd.Function`` with hand-derived BPTT), ``"reference"`` (the reference
step in a Python loop, differentiated by autograd), ``"torch"`` (PyTorch's own kernel, as
``torch.nn`` runs it, on the layer's parameters; only where ``torch.nn`` has the same
function) or ``"auto"`` (default: the fastest of these that computes the same function;
the rule and the measurements behind it are in :mod:`rnnlab.backends.training`).
``repr`` shows the choice (``backend='auto' -> 'torch'``) and :meth:`backend_choice`
returns it with its reason.

Shapes (``batch_first=False``): input (T, N, I) -> output (T, N, D*H_out), D = 2 if
bidirectional else 1; with ``batch_first=True`` input and output are (N, T, .).  A 2-D input
(T, I) is one unbatched sequence.  States are (D*num_layers, N, H) as in ``torch.nn``.

>>> import torch
>>> from rnnlab import LSTM
>>> lstm = LSTM(input_size=3, hidden_size=5, num_layers=2, batch_first=True)
>>> out, (h, c) = lstm(torch.randn(4, 7, 3))
>>> tuple(out.shape), tuple(h.shape), tuple(c.shape)
((4, 7, 5), (2, 4, 5), (2, 4, 5))
>>> bi = LSTM(3, 5, bidirectional=True)
>>> out, (h, c) = bi(torch.randn(7, 4, 3), lengths=[7, 3, 5, 1])
>>> tuple(out.shape), tuple(h.shape), bool((out[3:, 1] == 0).all())  # padding stays zero
((7, 4, 10), (2, 4, 5), True)
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnlab.backends import BackendChoice
from rnnlab.backends.torch_native import run_direction as torch_run_direction
from rnnlab.backends.training import TRAINING_BACKENDS, choose_training_backend, torch_counterpart
from rnnlab.cells.elman import (
    check_nonlinearity,
    elman_sequence,
    elman_sequence_reference,
    elman_step,
)
from rnnlab.cells.gru import check_gru_form, gru_sequence, gru_sequence_reference, gru_step
from rnnlab.cells.jordan import (
    check_output,
    jordan_sequence,
    jordan_sequence_reference,
    jordan_step,
)
from rnnlab.cells.lstm import (
    init_forget_bias,
    lstm_ext_sequence,
    lstm_ext_sequence_reference,
    lstm_ext_step,
    lstm_sequence,
    lstm_sequence_reference,
    lstm_step,
)
from rnnlab.cells.pascanu import (
    check_sigma,
    pascanu_sequence,
    pascanu_sequence_reference,
    pascanu_step,
)
from rnnlab.dropout import bernoulli_mask, dropout
from rnnlab.init import Init, apply_init

BACKENDS = TRAINING_BACKENDS  # ("auto", "fused", "reference", "torch", "numba")
logger = logging.getLogger("rnnlab")


def autocast_dtype(x: Tensor) -> torch.dtype | None:
    """The lower-precision dtype of the ``torch.autocast`` region in force on ``x``'s
    device, or None outside one."""
    device = x.device.type
    if device in ("cpu", "cuda") and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return None


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return value


# -- lengths and reversal ---------------------------------------------------------------------


def lengths_from_mask(mask: Tensor, time_dim: int, steps: int | None = None,
                      batch: int | None = None) -> Tensor:  # fmt: skip
    """Lengths from a boolean mask whose True entries form a prefix of each sequence;
    with ``steps`` and ``batch``, the mask must match the input's (T, N)."""
    mask = torch.as_tensor(mask).bool()
    if mask.dim() != 2:
        raise ValueError(f"mask must be 2-D (time and batch); got shape {tuple(mask.shape)}")
    m = mask if time_dim == 0 else mask.t()
    if steps is not None and tuple(m.shape) != (steps, batch):
        want = (steps, batch) if time_dim == 0 else (batch, steps)
        raise ValueError(
            f"mask must have the input's shape {want} ({'time' if time_dim == 0 else 'batch'}"
            f" first); got {tuple(mask.shape)}"
        )
    lengths = m.sum(0)
    prefix = torch.arange(m.shape[0], device=m.device).unsqueeze(1) < lengths.to(m.device)
    if not torch.equal(prefix, m):
        raise ValueError("mask must be True on a prefix of each sequence (padding at the end)")
    return lengths


def check_lengths(lengths, batch: int, steps: int, enforce_sorted: bool = False) -> Tensor:
    """Validate ``lengths`` (N,) of ints in [1, steps]; returned as a CPU int64 tensor."""
    lengths = torch.as_tensor(lengths)
    if lengths.dim() == 0:
        lengths = lengths.unsqueeze(0)
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be integers; got dtype {lengths.dtype}")
    lengths = lengths.to("cpu", torch.int64)
    if tuple(lengths.shape) != (batch,):
        raise ValueError(
            f"lengths must have shape ({batch},), one per sequence; got {tuple(lengths.shape)}"
        )
    if (lengths < 1).any():
        raise ValueError(f"lengths must be positive; got {lengths.tolist()}")
    if (lengths > steps).any():
        raise ValueError(
            f"lengths must not exceed the sequence length {steps}; got max {int(lengths.max())}"
        )
    if enforce_sorted and (lengths[1:] > lengths[:-1]).any():
        raise ValueError(
            f"lengths must be sorted in decreasing order when enforce_sorted=True; "
            f"got {lengths.tolist()}"
        )
    return lengths


def reverse_time(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence of ``x`` (T, N, ...) within its own length; padding stays put."""
    if lengths is None:
        return x.flip(0)
    T, N = x.shape[:2]
    t = torch.arange(T, device=x.device).unsqueeze(1)
    L = lengths.to(x.device).unsqueeze(0)
    index = torch.where(t < L, L - 1 - t, t)
    index = index.view(T, N, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(0, index)


def run_segments(run, x, state, lengths, steps=None, rows=None):
    """Run ``run(x, state, steps, rows) -> (out, final)`` over variable-length sequences.

    ``steps``: dict of per-step tensors (T, N, ...) cut like ``x``; ``rows``: dict of
    per-sequence tensors (N, ...).  With ``lengths`` None this is one call.  Otherwise the
    batch is sorted by length and each time segment where the live set is constant is one
    call over the live rows; finished rows keep their state, padded outputs are zero.
    """
    steps, rows = steps or {}, rows or {}
    if lengths is None:
        return run(x, state, steps, rows)
    T, N = x.shape[:2]
    order = torch.argsort(lengths, descending=True, stable=True).to(x.device)
    inverse = torch.argsort(order)
    sorted_lengths = lengths[order.cpu()].tolist()
    x = x[:, order]
    state = tuple(s[order] for s in state)
    steps = {k: v[:, order] for k, v in steps.items()}
    rows = {k: v[order] for k, v in rows.items()}
    outs, t0 = [], 0
    for end in sorted(set(sorted_lengths)):
        live = sum(1 for n in sorted_lengths if n >= end)
        seg_out, final = run(
            x[t0:end, :live],
            tuple(s[:live] for s in state),
            {k: v[t0:end, :live] for k, v in steps.items()},
            {k: v[:live] for k, v in rows.items()},
        )
        state = tuple(torch.cat([f, s[live:]]) for f, s in zip(final, state, strict=True))
        if live < N:
            seg_out = torch.cat(
                [seg_out, seg_out.new_zeros(end - t0, N - live, *seg_out.shape[2:])], 1
            )
        outs.append(seg_out)
        t0 = end
    if t0 < T:
        outs.append(outs[-1].new_zeros(T - t0, *outs[-1].shape[1:]))
    out = torch.cat(outs)[:, inverse]
    return out, tuple(s[inverse] for s in state)


# -- the stack ----------------------------------------------------------------------------------


def _weights(p: dict) -> tuple:
    """``(weight_ih, weight_hh, bias_ih, bias_hh)`` of a parameter dict (biases may be None)."""
    return p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh")


class _Stack(nn.Module):
    """Common plumbing of a stack of recurrent layers: parameters, shapes, directions, lengths.

    A subclass sets ``gate_count`` (rows of W per hidden unit) and ``state_names``, may add
    parameters through ``_parameter_shapes``, and implements ``_run_direction``.
    """

    gate_count = 1
    state_names: tuple[str, ...] = ("h",)
    torch_class: type[nn.Module] | None = None
    cell_kind: str | None = None  # "lstm", "gru" or "rnn": may have a torch.nn kernel

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        backend: str = "auto",
        weight_drop: float = 0.0,
        init: str | Init = "uniform",
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.input_size = _check_positive_int("input_size", input_size)
        self.hidden_size = _check_positive_int("hidden_size", hidden_size)
        self.num_layers = _check_positive_int("num_layers", num_layers)
        if isinstance(dropout, bool) or not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout!r}")
        if isinstance(weight_drop, bool) or not 0.0 <= float(weight_drop) < 1.0:
            raise ValueError(f"weight_drop must be in [0, 1); got {weight_drop!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        self.bias = bool(bias)
        self.weight_drop = float(weight_drop)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.backend = backend
        self.init = Init(init) if isinstance(init, str) else init
        self._logged_choices: set[BackendChoice] = set()
        self._empty_batch = False  # set by each call (_check_input)
        choose_training_backend(self)  # "torch" without a torch.nn kernel fails here
        factory = {"device": device, "dtype": dtype}
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else self.num_directions * self.output_size
            for suffix in self.suffixes:
                for name, shape in self._parameter_shapes(layer_input).items():
                    param = nn.Parameter(torch.empty(shape, **factory))
                    self.register_parameter(f"{name}_l{layer}{suffix}", param)
        self.reset_parameters()

    # sizes ------------------------------------------------------------------------------
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def suffixes(self) -> tuple[str, ...]:
        return ("", "_reverse") if self.bidirectional else ("",)

    @property
    def output_size(self) -> int:
        """Features each direction of a layer emits (proj_size for a projected LSTM)."""
        return self.hidden_size

    @property
    def recurrent_size(self) -> int:
        """Size of the h that feeds back into W_hh."""
        return self.output_size

    def state_sizes(self) -> tuple[int, ...]:
        return (self.output_size,) * len(self.state_names)

    def _parameter_shapes(self, layer_input: int) -> dict[str, tuple[int, ...]]:
        """Names (without ``_l{k}``) and shapes of one direction's parameters, in order."""
        rows = self.gate_count * self.hidden_size
        shapes = {"weight_ih": (rows, layer_input), "weight_hh": (rows, self.recurrent_size)}
        if self.bias:
            shapes.update(bias_ih=(rows,), bias_hh=(rows,))
        return shapes

    def reset_parameters(self) -> None:
        """Initialise every layer with ``self.init`` (default: torch.nn's uniform rule)."""
        apply_init(self, self.init)

    def direction_parameters(self, layer: int, suffix: str = "") -> dict[str, Tensor]:
        """The parameters of one layer and direction, by short name (``weight_ih``, ...)."""
        tail = f"_l{layer}{suffix}"
        return {name[: -len(tail)]: p for name, p in self.named_parameters() if name.endswith(tail)}

    def run_parameters(self, layer: int, suffix: str = "") -> dict[str, Tensor]:
        """The parameters one forward call runs with.  In training with ``weight_drop`` p,
        ``weight_hh`` is replaced by DropConnect's W_hh * M / (1 - p), M a Bernoulli(1 - p)
        mask over its entries drawn once per call, so every step and sequence of the call
        sees the same thinned recurrence (the weight-dropped LSTM of Merity et al. 2018,
        AWD-LSTM).  The gradient reaches W_hh through the same mask; evaluation and
        :meth:`step` use W_hh itself, its expectation."""
        p = self.direction_parameters(layer, suffix)
        if self.training and self.weight_drop and "weight_hh" in p:
            p["weight_hh"] = dropout(p["weight_hh"], self.weight_drop)
        return p

    def layer_parameters(self, layer: int):
        """``(weight_ih, weight_hh, bias_ih, bias_hh)`` of one layer's forward direction."""
        p = self.direction_parameters(layer)
        return p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh")

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.weight_drop:
            s += f", weight_drop={self.weight_drop}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.init.scheme != "uniform":
            s += f", init={self.init}"
        s += f", backend={self.backend!r}"
        if self.backend == "auto":
            s += f" -> {self.backend_choice().name!r}"
        return s

    # the path ---------------------------------------------------------------------------
    def backend_choice(self) -> BackendChoice:
        """The path this layer runs now (``fused``, ``reference``, ``torch`` or ``numba``) and why;
        ``auto`` resolves by the layer's configuration and device.  A call on an empty
        batch (N = 0) takes the reference path, which has nothing to compute and returns
        the empty outputs ``torch.nn`` does; the compiled and fused kernels expect rows."""
        if self._empty_batch:
            return BackendChoice("reference", "an empty batch: nothing to compute")
        return choose_training_backend(self)

    def _note_choice(self) -> str:
        """Resolve the path for this call; log it (``rnnlab`` logger, INFO) the first time
        this layer takes it (an LSTM may take two by turns: ``torch`` under autocast,
        ``numba`` outside)."""
        choice = self.backend_choice()
        if choice not in self._logged_choices:
            logger.info("%s: backend %r -> %s", type(self).__name__, self.backend, choice)
            self._logged_choices.add(choice)
        return choice.name

    # inputs -----------------------------------------------------------------------------
    def _check_input(self, input: Tensor) -> tuple[Tensor, bool]:
        """Return the input as time-major (T, N, I) and whether it came unbatched."""
        if not isinstance(input, Tensor):
            raise ValueError(
                f"input must be a Tensor or PackedSequence; got {type(input).__name__}"
            )
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
        dtype = self.weight_ih_l0.dtype
        if input.dtype != dtype:
            if input.dtype != autocast_dtype(input):
                raise ValueError(
                    f"input dtype {input.dtype} does not match the parameters' {dtype}"
                )
            input = input.to(dtype)  # the output of an earlier layer under autocast
        unbatched = input.dim() == 2
        if unbatched:
            input = input.unsqueeze(1)
        elif self.batch_first:
            input = input.transpose(0, 1)
        if input.shape[0] == 0:
            raise ValueError("input must have at least one time step; got length 0")
        self._empty_batch = input.shape[1] == 0  # this call takes the reference path
        return input, unbatched

    def _check_state(self, state, batch: int, unbatched: bool, like: Tensor) -> list[Tensor]:
        """Validate the initial state; return one (D*L, N, size) tensor per state name."""
        count = self.num_directions * self.num_layers
        sizes = self.state_sizes()
        if state is None:
            return [like.new_zeros(count, batch, size) for size in sizes]
        parts = [state] if isinstance(state, Tensor) else list(state)
        if len(parts) != len(sizes):
            want = "a tensor h" if len(sizes) == 1 else f"a tuple ({', '.join(self.state_names)})"
            raise ValueError(f"state must be {want}; got {len(parts)} tensors")
        out = []
        for name, size, s in zip(self.state_names, sizes, parts, strict=True):
            expected = (count, size) if unbatched else (count, batch, size)
            if not isinstance(s, Tensor) or tuple(s.shape) != expected:
                got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
                dims = "num_directions*num_layers, " + ("" if unbatched else "batch, ")
                raise ValueError(f"state {name} must have shape {expected} ({dims}size); got {got}")
            if s.dtype != like.dtype:
                if s.dtype != autocast_dtype(s):
                    raise ValueError(
                        f"state {name} dtype {s.dtype} does not match the input's {like.dtype}"
                    )
                s = s.to(like.dtype)  # a state carried over from a step under autocast
            out.append(s.unsqueeze(1) if unbatched else s)
        return out

    # forward ----------------------------------------------------------------------------
    def forward(self, input, state=None, lengths=None, mask=None, enforce_sorted: bool = False):
        """Run the stack. ``lengths`` (N,) or ``mask`` (same layout as the input's first two
        dims, True on real steps) mark variable-length sequences; a ``PackedSequence`` input
        gives a ``PackedSequence`` output. Returns ``(output, final_state)``."""
        packed = isinstance(input, PackedSequence)
        if packed:
            if lengths is not None or mask is not None:
                raise ValueError("lengths and mask must be None for a PackedSequence input")
            sorted_indices, unsorted_indices = input.sorted_indices, input.unsorted_indices
            batch_sizes = input.batch_sizes
            input, lengths = pad_packed_sequence(input, batch_first=self.batch_first)
        x, unbatched = self._check_input(input)
        T, N = x.shape[:2]
        if mask is not None:
            if lengths is not None:
                raise ValueError("give lengths or mask, not both")
            time_dim = 1 if (self.batch_first and not unbatched) else 0
            lengths = lengths_from_mask(mask, time_dim, T, N)
        if lengths is not None:
            lengths = check_lengths(lengths, N, T, enforce_sorted)
            if int(lengths.min()) == T:
                lengths = None  # every sequence is full length: the plain path
        states = self._check_state(state, N, unbatched, x)
        self._note_choice()
        finals = [[] for _ in states]
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout and self.training:
                x = dropout(x, self.dropout)
            outs = []
            for d, suffix in enumerate(self.suffixes):
                index = layer * self.num_directions + d
                params = self.run_parameters(layer, suffix)
                s0 = tuple(s[index] for s in states)
                xin = x if d == 0 else reverse_time(x, lengths)
                with self._precision_guard(xin) as cast:
                    out, final = self._run_layer(cast(xin), tuple(map(cast, s0)), params, lengths)
                outs.append(out if d == 0 else reverse_time(out, lengths))
                for k, f in enumerate(final):
                    finals[k].append(f)
            x = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        finals = [torch.stack(f) for f in finals]
        if unbatched:
            x, finals = x.squeeze(1), [f.squeeze(1) for f in finals]
        elif self.batch_first:
            x = x.transpose(0, 1)
        final = finals[0] if len(finals) == 1 else tuple(finals)
        if packed:
            x = _repack(x, lengths, batch_sizes, sorted_indices, unsorted_indices, self.batch_first)
        return x, final

    def _precision_guard(self, x: Tensor):
        """Under ``torch.autocast`` only PyTorch's own kernels (the ``torch`` path) run in
        the lower precision.  The hand-derived backward passes of the ``fused`` and
        ``reference`` paths are written for one dtype, so they run in the parameters' dtype
        with autocast off.  A context manager yielding the cast to apply to tensors."""
        if autocast_dtype(x) is None or self.backend_choice().name == "torch":
            return nullcontext(lambda t: t)
        return _FullPrecision(x.device.type, self.weight_ih_l0.dtype)

    def _run_layer(self, x, state, params, lengths):
        """One direction of one layer over (T, N, I), honouring lengths."""
        if lengths is not None and self.backend_choice().name == "torch":
            return self._run_torch(x, state, params, lengths)  # packed: one kernel call
        return run_segments(
            lambda xs, st, _steps, _rows: self._run_direction(xs, st, params), x, state, lengths
        )

    def _run_direction(self, x: Tensor, state: tuple[Tensor, ...], params: dict):
        """Full-length run of one direction: ``(out (T, N, H_out), final state tuple)``."""
        raise NotImplementedError

    def _run_torch(self, x, state, params, lengths=None):
        """One direction through PyTorch's kernel (:mod:`rnnlab.backends.torch_native`)."""
        kernel, _ = torch_counterpart(self)
        return torch_run_direction(kernel, x, state, params, lengths)

    # -- one step at a time (generation) --------------------------------------------------
    def step_parameters(self) -> list[dict[str, Tensor]]:
        """Per-layer parameter dicts for :meth:`step`; look them up once per generation."""
        return [self.direction_parameters(layer) for layer in range(self.num_layers)]

    def step(self, x: Tensor, state=None, params=None, **options):
        """Advance every layer by one time step: x (N, I) -> (output (N, H_out), state).

        The lean path for generation: the cells' reference steps on the weights, no
        lengths, no dropout, no input checks.  ``state`` has the layout of ``forward``'s.
        """
        if self.bidirectional:
            raise ValueError("step() runs forward in time; this layer is bidirectional")
        params = params if params is not None else self.step_parameters()
        sizes = self.state_sizes()
        if state is None:
            layers = [tuple(x.new_zeros(x.shape[0], n) for n in sizes)] * self.num_layers
        else:
            parts = [state] if isinstance(state, Tensor) else list(state)
            layers = [tuple(p[k] for p in parts) for k in range(self.num_layers)]
        new = []
        for k in range(self.num_layers):
            x, layer_state = self._step_layer(x, layers[k], params[k], **options)
            new.append(layer_state)
        finals = [torch.stack([st[i] for st in new]) for i in range(len(sizes))]
        return x, (finals[0] if len(finals) == 1 else tuple(finals))

    def _step_layer(self, x, state, p, **options):
        raise NotImplementedError

    # conversion -------------------------------------------------------------------------
    def _torch_kwargs(self) -> dict:
        return dict(
            input_size=self.input_size,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            bias=self.bias,
            batch_first=self.batch_first,
            dropout=self.dropout,
            bidirectional=self.bidirectional,
        )

    def to_torch(self) -> nn.Module:
        """The equivalent ``torch.nn`` module, holding copies of these weights."""
        if self.torch_class is None:
            raise ValueError(f"{type(self).__name__} has no torch.nn counterpart")
        p = next(self.parameters())
        module = self.torch_class(**self._torch_kwargs(), device=p.device, dtype=p.dtype)
        module.load_state_dict(self.state_dict())
        return module

    @classmethod
    def _kwargs_from_torch(cls, module: nn.Module) -> dict:
        return dict(
            input_size=module.input_size,
            hidden_size=module.hidden_size,
            num_layers=module.num_layers,
            bias=module.bias,
            batch_first=module.batch_first,
            dropout=float(module.dropout),
            bidirectional=module.bidirectional,
        )

    @classmethod
    def from_torch(cls, module: nn.Module, **kwargs):
        """An rnnlab layer equal to ``module`` (a ``torch.nn`` RNN/LSTM/GRU), weights copied."""
        if cls.torch_class is None or not isinstance(module, cls.torch_class):
            want = cls.torch_class.__name__ if cls.torch_class else "nothing"
            raise ValueError(
                f"{cls.__name__}.from_torch takes a torch.nn.{want}; got {type(module).__name__}"
            )
        p = next(module.parameters())
        layer = cls(**cls._kwargs_from_torch(module), **kwargs, device=p.device, dtype=p.dtype)
        layer.load_state_dict(module.state_dict())
        return layer


class _FullPrecision:
    """``with`` block with autocast off on ``device``, yielding a cast to ``dtype``."""

    def __init__(self, device: str, dtype: torch.dtype):
        self.off = torch.autocast(device, enabled=False)
        self.dtype = dtype

    def __enter__(self):
        self.off.__enter__()
        return lambda t: t.to(self.dtype)

    def __exit__(self, *exc):
        return self.off.__exit__(*exc)


def _repack(x, lengths, batch_sizes, sorted_indices, unsorted_indices, batch_first):
    """Pack a padded output exactly as torch.nn packs its own (same sort order)."""
    if lengths is None:  # every sequence was full length
        lengths = torch.full((x.shape[0 if batch_first else 1],), x.shape[1 if batch_first else 0])
    if sorted_indices is not None:
        x = x.index_select(0 if batch_first else 1, sorted_indices.to(x.device))
        lengths = lengths[sorted_indices.cpu()]
    data = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=True).data
    return PackedSequence(data, batch_sizes, sorted_indices, unsorted_indices)


class RNN(_Stack):
    r"""Elman RNN stack: :math:`h_t = \phi(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})`.

    Arguments as ``torch.nn.RNN``; ``nonlinearity`` may be ``"tanh"`` (default),
    ``"relu"`` or ``"sigmoid"`` (the last one ``torch.nn`` lacks).
    Returns ``(output, h_n)`` with ``h_n`` of shape (D*num_layers, N, H).
    """

    torch_class = nn.RNN
    cell_kind = "rnn"

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", **kwargs):
        self.nonlinearity = check_nonlinearity(nonlinearity)
        super().__init__(input_size, hidden_size, num_layers, **kwargs)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", nonlinearity={self.nonlinearity!r}"

    def _run_direction(self, x, state, params):
        path = self.backend_choice().name
        if path == "torch":
            return self._run_torch(x, state, params)
        if path == "numba":  # imported here: importing Numba costs a second
            from rnnlab.backends.numba_elman import elman_compiled_sequence as run
        else:
            run = elman_sequence if path == "fused" else elman_sequence_reference
        p = params
        hs = run(x, state[0], *_weights(p), self.nonlinearity)
        return hs, (hs[-1],)

    def _step_layer(self, x, state, p):
        h = elman_step(x, state[0], *_weights(p), self.nonlinearity)
        return h, (h,)

    def _torch_kwargs(self) -> dict:
        if self.nonlinearity == "sigmoid":
            raise ValueError("torch.nn.RNN has no sigmoid nonlinearity; cannot convert")
        return {**super()._torch_kwargs(), "nonlinearity": self.nonlinearity}

    @classmethod
    def _kwargs_from_torch(cls, module) -> dict:
        return {**super()._kwargs_from_torch(module), "nonlinearity": module.nonlinearity}


class LSTM(_Stack):
    r"""LSTM stack with ``torch.nn.LSTM``'s gates (i, f, g, o), layout and names.

    Returns ``(output, (h_n, c_n))``, states of shape (D*num_layers, N, P) and (D*num_layers,
    N, H), P = ``proj_size`` or H.  The equations and the hand-derived backward are in
    :mod:`rnnlab.cells.lstm`.  Options beyond ``torch.nn`` (each off by default):

    * ``proj_size`` (as ``torch.nn.LSTM``): h_t = W_hr (o_t * tanh(c_t)), parameter
      ``weight_hr_l{k}`` (P, H);
    * ``peephole``: the gates see the cell, parameter ``peephole_l{k}`` (3, H) = [w_ci; w_cf;
      w_co];
    * ``layer_norm``: Ba et al.'s LN-LSTM, parameters ``ln_{gamma,beta}_{x,h,c}_l{k}``
      (initialised to 1 and 0);
    * ``forget_bias``: initial forget-gate bias (b_ih_f + b_hh_f); None keeps torch.nn's
      uniform init (1.0 is the common choice);
    * ``recurrent_dropout``: variational dropout on h_{t-1} where it feeds W_hh, one mask per
      sequence and layer (Gal & Ghahramani 2016), in training only;
    * ``zoneout``: probability p (or a pair (p_h, p_c)) that a unit keeps its previous value
      at a step (Krueger et al. 2017); training samples masks, evaluation uses the
      expectation.
    """

    gate_count = 4
    state_names = ("h", "c")
    torch_class = nn.LSTM
    cell_kind = "lstm"

    def __init__(
        self,
        input_size,
        hidden_size,
        num_layers=1,
        proj_size=0,
        peephole=False,
        layer_norm=False,
        forget_bias=None,
        recurrent_dropout=0.0,
        zoneout=0.0,
        **kwargs,
    ):
        hidden_size = _check_positive_int("hidden_size", hidden_size)
        if isinstance(proj_size, bool) or not isinstance(proj_size, int) or proj_size < 0:
            raise ValueError(f"proj_size must be an integer >= 0; got {proj_size!r}")
        if proj_size >= hidden_size:
            raise ValueError(
                f"proj_size must be smaller than hidden_size={hidden_size}; got {proj_size}"
            )
        if not 0.0 <= float(recurrent_dropout) < 1.0:
            raise ValueError(f"recurrent_dropout must be in [0, 1); got {recurrent_dropout!r}")
        zones = tuple(zoneout) if isinstance(zoneout, (tuple, list)) else (zoneout, zoneout)
        if len(zones) != 2 or not all(0.0 <= float(z) < 1.0 for z in zones):
            raise ValueError(f"zoneout must be p or (p_h, p_c), each in [0, 1); got {zoneout!r}")
        self.proj_size = proj_size
        self.peephole = bool(peephole)
        self.layer_norm = bool(layer_norm)
        self.forget_bias = forget_bias
        self.recurrent_dropout = float(recurrent_dropout)
        self.zoneout = (float(zones[0]), float(zones[1]))
        super().__init__(input_size, hidden_size, num_layers, **kwargs)

    @property
    def output_size(self) -> int:
        return self.proj_size or self.hidden_size

    def state_sizes(self) -> tuple[int, ...]:
        return (self.output_size, self.hidden_size)

    @property
    def has_options(self) -> bool:
        """Whether any option beyond plain torch.nn.LSTM (projection aside) is on."""
        return self.peephole or self.layer_norm or self.recurrent_dropout > 0 or any(self.zoneout)

    def _parameter_shapes(self, layer_input: int) -> dict[str, tuple[int, ...]]:
        shapes = super()._parameter_shapes(layer_input)
        H = self.hidden_size
        if self.proj_size:
            shapes["weight_hr"] = (self.proj_size, H)
        if self.peephole:
            shapes["peephole"] = (3, H)
        if self.layer_norm:
            for part, size in (("x", 4 * H), ("h", 4 * H), ("c", H)):
                shapes[f"ln_gamma_{part}"] = (size,)
                shapes[f"ln_beta_{part}"] = (size,)
        return shapes

    @torch.no_grad()
    def reset_parameters(self) -> None:
        super().reset_parameters()
        for name, p in self.named_parameters():
            if name.startswith("ln_gamma"):
                p.fill_(1.0)
            elif name.startswith("ln_beta"):
                p.zero_()
        if self.forget_bias is not None:
            if not self.bias:
                raise ValueError("forget_bias needs bias=True")
            for layer in range(self.num_layers):
                for suffix in self.suffixes:
                    p = self.direction_parameters(layer, suffix)
                    init_forget_bias(p["bias_ih"], p["bias_hh"], float(self.forget_bias))

    def extra_repr(self) -> str:
        s = super().extra_repr()
        for name, off in (
            ("proj_size", 0),
            ("peephole", False),
            ("layer_norm", False),
            ("forget_bias", None),
            ("recurrent_dropout", 0.0),
            ("zoneout", (0.0, 0.0)),
        ):
            if getattr(self, name) != off:
                s += f", {name}={getattr(self, name)}"
        return s

    def _run_layer(self, x, state, params, lengths):
        """Draw this layer's masks (training only), then run it over the lengths."""
        T, N = x.shape[:2]
        rows, steps = {}, {}
        if self.training and self.recurrent_dropout > 0:
            # inverted-dropout mask (0 or 1/keep), drawn as rnnlab.dropout does
            rows["drop"] = dropout(x.new_ones(N, self.output_size), self.recurrent_dropout)
        if self.training and any(self.zoneout):
            zh, zc = self.zoneout
            steps["zone_h"] = bernoulli_mask((T, N, self.output_size), zh, x)
            steps["zone_c"] = bernoulli_mask((T, N, self.hidden_size), zc, x)

        if lengths is not None and self.backend_choice().name == "torch":
            return self._run_torch(x, state, params, lengths)  # packed: one kernel call

        def run(xs, st, step_tensors, row_tensors):
            return self._run_direction(xs, st, params, step_tensors, row_tensors)

        return run_segments(run, x, state, lengths, steps, rows)

    def _run_direction(self, x, state, params, steps=None, rows=None):
        p, steps, rows = params, steps or {}, rows or {}
        path = self.backend_choice().name
        if path == "torch":
            return self._run_torch(x, state, p)
        args = (x, state[0], state[1], *_weights(p))
        if path != "numba" and not self.proj_size and not self.has_options:
            run = lstm_sequence if path == "fused" else lstm_sequence_reference
            hs, cs = run(*args)
            return hs, (hs[-1], cs[-1])
        options = {
            "weight_hr": p.get("weight_hr"),
            "peephole": p.get("peephole"),
            "drop_mask": rows.get("drop"),
        }
        if path == "numba":  # imported here: importing Numba costs a second
            from rnnlab.backends.numba_lstm import lstm_compiled_sequence as run
        else:
            run = lstm_ext_sequence if path == "fused" else lstm_ext_sequence_reference
        ln = None
        if self.layer_norm:
            ln = tuple(p[f"ln_{k}_{part}"] for part in "xhc" for k in ("gamma", "beta"))
        if self.training and any(self.zoneout):
            zoneout = (steps["zone_h"], steps["zone_c"])
        elif any(self.zoneout):
            zoneout = self.zoneout  # evaluation: the expectation
        else:
            zoneout = None
        hs, cs = run(*args, ln=ln, zoneout=zoneout, **options)
        return hs, (hs[-1], cs[-1])

    def _step_layer(self, x, state, p):
        args = (x, state, *_weights(p))
        if not self.proj_size and not self.has_options:
            h, c = lstm_step(*args)
            return h, (h, c)
        ln = None
        if self.layer_norm:
            ln = tuple(p[f"ln_{k}_{part}"] for part in "xhc" for k in ("gamma", "beta"))
        zoneout = self.zoneout if any(self.zoneout) else None  # the evaluation expectation
        h, c = lstm_ext_step(
            *args, weight_hr=p.get("weight_hr"), peephole=p.get("peephole"), ln=ln, zoneout=zoneout
        )
        return h, (h, c)

    def _torch_kwargs(self) -> dict:
        if self.has_options:
            raise ValueError(
                "torch.nn.LSTM has no peephole, layer_norm, recurrent_dropout or "
                "zoneout; cannot convert"
            )
        return {**super()._torch_kwargs(), "proj_size": self.proj_size}

    @classmethod
    def _kwargs_from_torch(cls, module) -> dict:
        return {**super()._kwargs_from_torch(module), "proj_size": module.proj_size}


class GRU(_Stack):
    r"""GRU stack, ``torch.nn.GRU``'s gates (r, z, n), layout and names.

    ``form="torch"`` (default) applies the reset gate after the recurrent matmul, as
    cuDNN and ``torch.nn.GRU`` do; ``form="cho"`` applies it to h_{t-1} before the matmul,
    as Cho et al. (2014) wrote it.  Returns ``(output, h_n)``.  The equations and the
    hand-derived backward are in :mod:`rnnlab.cells.gru`.
    """

    gate_count = 3
    torch_class = nn.GRU
    cell_kind = "gru"

    def __init__(self, input_size, hidden_size, num_layers=1, form="torch", **kwargs):
        self.form = check_gru_form(form)
        super().__init__(input_size, hidden_size, num_layers, **kwargs)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", form={self.form!r}" if self.form != "torch" else "")

    def _run_direction(self, x, state, params):
        path = self.backend_choice().name
        if path == "torch":
            return self._run_torch(x, state, params)
        if path == "numba":  # imported here: importing Numba costs a second
            from rnnlab.backends.numba_gru import gru_compiled_sequence as run
        else:
            run = gru_sequence if path == "fused" else gru_sequence_reference
        p = params
        hs = run(x, state[0], *_weights(p), self.form)
        return hs, (hs[-1],)

    def _step_layer(self, x, state, p):
        h = gru_step(x, state[0], *_weights(p), self.form)
        return h, (h,)

    def _torch_kwargs(self) -> dict:
        if self.form != "torch":
            raise ValueError("torch.nn.GRU computes the 'torch' form only; cannot convert 'cho'")
        return super()._torch_kwargs()


class PascanuRNN(_Stack):
    r"""Pascanu-form simple RNN (seed 004): :math:`x_t = W_{hh} \sigma(x_{t-1}) + W_{ih} u_t + b`.

    The state is the pre-activation :math:`x_t`; the layer emits :math:`\sigma(x_t)`, which
    the next layer (or a readout) reads.  ``sigma`` is ``"tanh"`` or ``"sigmoid"``.
    Parameters per layer: ``weight_ih_l{k}`` (H, I) = W_in, ``weight_hh_l{k}`` (H, H) =
    W_rec and ``bias_l{k}`` (H,).  Returns ``(outputs, x_n)`` with ``x_n`` the final states
    (D*num_layers, N, H).  Equations and backward: :mod:`rnnlab.cells.pascanu`.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, sigma="tanh", **kwargs):
        self.sigma = check_sigma(sigma)
        super().__init__(input_size, hidden_size, num_layers, **kwargs)

    def _parameter_shapes(self, layer_input: int) -> dict[str, tuple[int, ...]]:
        H = self.hidden_size
        shapes = {"weight_ih": (H, layer_input), "weight_hh": (H, H)}
        if self.bias:
            shapes["bias"] = (H,)
        return shapes

    def extra_repr(self) -> str:
        return super().extra_repr() + f", sigma={self.sigma!r}"

    def _run_direction(self, x, state, params):
        path = self.backend_choice().name
        run = pascanu_sequence if path == "fused" else pascanu_sequence_reference
        if path == "numba":  # imported here: importing Numba costs a second
            from rnnlab.backends.numba_pascanu import pascanu_compiled_sequence as run
        xs = run(
            x, state[0], params["weight_ih"], params["weight_hh"], params.get("bias"), self.sigma
        )
        activation = torch.tanh if self.sigma == "tanh" else torch.sigmoid
        return activation(xs), (xs[-1],)

    def _step_layer(self, u, state, p):
        x = pascanu_step(u, state[0], p["weight_ih"], p["weight_hh"], p.get("bias"), self.sigma)
        return (torch.tanh(x) if self.sigma == "tanh" else torch.sigmoid(x)), (x,)


class JordanRNN(_Stack):
    r"""Output recurrence (Jordan network) and hidden-and-output recurrence (seed 001).

    .. math::

        h_t = \phi(W_{ih} x_t + b_{ih} + W_{yh} \tilde y_{t-1}
              [+ W_{hh} h_{t-1} + b_{hh}]), \qquad y_t = g(W_{ho} h_t + b_o)

    where :math:`\tilde y_{t-1}` is the model's own previous output (free running), the
    true previous output from ``teacher`` (teacher forcing), or a per-step choice between
    the two given by ``teacher_mask`` (scheduled sampling).  ``hidden_recurrence=True``
    adds the :math:`W_{hh} h_{t-1}` term.  One layer, one direction.

    ``forward(input, state=None, teacher=None, teacher_mask=None, lengths=None, mask=None)``
    returns ``(ys, state)``: ``ys`` (T, N, O) and the state ``y_n`` (1, N, O), or
    ``(h_n, y_n)`` with hidden recurrence.  ``teacher`` has the layout of ``ys``; its step
    t holds the true output of step t - 1 (``teacher[0]`` is the true initial output).
    ``teacher_mask`` is (T, N) (or (N, T) with ``batch_first``), 1 = feed the truth.
    Equations and backward: :mod:`rnnlab.cells.jordan`.
    """

    def __init__(
        self,
        input_size,
        hidden_size,
        output_size,
        nonlinearity="tanh",
        output="identity",
        hidden_recurrence=False,
        **kwargs,
    ):
        self.output_features = _check_positive_int("output_size", output_size)
        self.nonlinearity = check_nonlinearity(nonlinearity)
        self.output = check_output(output)
        self.hidden_recurrence = bool(hidden_recurrence)
        self.state_names = ("h", "y") if hidden_recurrence else ("y",)
        if (
            kwargs.pop("num_layers", 1) != 1
            or kwargs.get("bidirectional")
            or kwargs.get("dropout")
            or kwargs.get("weight_drop")
        ):
            raise ValueError(
                "JordanRNN is one layer in one direction: num_layers=1, bidirectional=False, "
                "dropout=0, weight_drop=0"
            )
        super().__init__(input_size, hidden_size, 1, **kwargs)

    @property
    def output_size(self) -> int:
        return self.output_features

    def state_sizes(self) -> tuple[int, ...]:
        y = self.output_features
        return (self.hidden_size, y) if self.hidden_recurrence else (y,)

    def _parameter_shapes(self, layer_input: int) -> dict[str, tuple[int, ...]]:
        H, O = self.hidden_size, self.output_features
        shapes = {"weight_ih": (H, layer_input), "weight_yh": (H, O)}
        if self.hidden_recurrence:
            shapes["weight_hh"] = (H, H)
        shapes["weight_ho"] = (O, H)
        if self.bias:
            shapes["bias_ih"] = (H,)
            if self.hidden_recurrence:
                shapes["bias_hh"] = (H,)
            shapes["bias_o"] = (O,)
        return shapes

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", output_size={self.output_features}"
        s += f", nonlinearity={self.nonlinearity!r}, output={self.output!r}"
        return s + (", hidden_recurrence=True" if self.hidden_recurrence else "")

    def forward(self, input, state=None, teacher=None, teacher_mask=None, lengths=None, mask=None):
        if isinstance(input, PackedSequence):
            raise ValueError("JordanRNN takes padded input with lengths=, not a PackedSequence")
        x, unbatched = self._check_input(input)
        T, N = x.shape[:2]
        steps = {}
        if teacher is not None:
            teacher = teacher.unsqueeze(1) if unbatched else teacher
            teacher = teacher.transpose(0, 1) if self.batch_first and not unbatched else teacher
            if tuple(teacher.shape) != (T, N, self.output_features):
                raise ValueError(
                    f"teacher must have the layout of the outputs, {(T, N, self.output_features)} "
                    f"time-major; got {tuple(teacher.shape)}"
                )
            steps["teacher"] = teacher
            if teacher_mask is not None:
                m = torch.as_tensor(teacher_mask, device=x.device)
                m = m.unsqueeze(1) if unbatched else m
                m = m.t() if self.batch_first and not unbatched else m
                if tuple(m.shape) != (T, N):
                    raise ValueError(
                        f"teacher_mask must have shape {(T, N)} time-major; got {tuple(m.shape)}"
                    )
                steps["mask"] = m.to(x.dtype)
        elif teacher_mask is not None:
            raise ValueError("teacher_mask needs a teacher")
        if mask is not None:
            time_dim = 1 if (self.batch_first and not unbatched) else 0
            lengths = lengths_from_mask(mask, time_dim, T, N)
        if lengths is not None:
            lengths = check_lengths(lengths, N, T)
            if int(lengths.min()) == T:
                lengths = None
        states = [s[0] for s in self._check_state(state, N, unbatched, x)]
        self._note_choice()
        params = self.direction_parameters(0)

        def run(xs, st, step_tensors, _rows):
            return self._run_direction(xs, st, params, step_tensors)

        with self._precision_guard(x) as cast:
            steps = {k: cast(v) for k, v in steps.items()}
            ys, final = run_segments(run, x, tuple(states), lengths, steps)
        final = [f.unsqueeze(0) for f in final]
        if unbatched:
            ys, final = ys.squeeze(1), [f.squeeze(1) for f in final]
        elif self.batch_first:
            ys = ys.transpose(0, 1)
        return ys, (final[0] if len(final) == 1 else tuple(final))

    def _run_direction(self, x, state, params, steps=None):
        steps = steps or {}
        path = self.backend_choice().name
        run = jordan_sequence_reference if path == "reference" else jordan_sequence
        extra = {}
        if path == "numba":  # imported here: importing Numba costs a second
            from rnnlab.backends.numba_elman import ElmanRecurrence

            extra["recurrence"] = ElmanRecurrence
        h0, y0 = (state[0], state[1]) if self.hidden_recurrence else (None, state[0])
        p = params
        hs, ys = run(
            x,
            h0,
            y0,
            p["weight_ih"],
            p["weight_yh"],
            p["weight_ho"],
            p.get("bias_ih"),
            p.get("bias_o"),
            weight_hh=p.get("weight_hh"),
            bias_hh=p.get("bias_hh"),
            nonlinearity=self.nonlinearity,
            output=self.output,
            teacher=steps.get("teacher"),
            teacher_mask=steps.get("mask"),
            **extra,
        )
        final = (hs[-1], ys[-1]) if self.hidden_recurrence else (ys[-1],)
        return ys, final

    def _step_layer(self, x, state, p, teacher=None):
        """``teacher`` (N, O): the output to feed (the true or sampled previous output)."""
        h_prev, y_prev = (state[0], state[1]) if self.hidden_recurrence else (None, state[0])
        y_fed = y_prev if teacher is None else teacher
        h, y = jordan_step(
            x,
            (h_prev, y_fed),
            p["weight_ih"],
            p["weight_yh"],
            p["weight_ho"],
            p.get("bias_ih"),
            p.get("bias_o"),
            weight_hh=p.get("weight_hh"),
            bias_hh=p.get("bias_hh"),
            nonlinearity=self.nonlinearity,
            output=self.output,
        )
        return y, ((h, y) if self.hidden_recurrence else (y,))

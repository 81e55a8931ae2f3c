r"""Unrolling a recurrent stack step by step, so that every state is a node of the graph.

The fused layers compute a whole sequence inside one ``torch.autograd.Function``: the
states :math:`h_1..h_T` exist, but autograd cannot be asked for
:math:`\partial E/\partial h_k`.  :func:`unroll` runs the same stack again, one reference
step at a time (the layer's ``_step_layer``: ``elman_step``, ``lstm_step``, ``gru_step``,
``pascanu_step``, ... of :mod:`rnnlab.cells`, on the layer's own parameters), and keeps
every state :math:`s_k` (k = 0..T) of every layer and direction as a tensor in the
graph.  ``torch.autograd.grad`` then gives the exact gradient at any of them.

By default the run is a float64 copy (parameters detached and converted), so measured
gradients of 1e-30 are numbers, not rounding noise, and no ``.grad`` of the model changes.
Dropout is not applied (the analysis describes the network as it is evaluated).

"h" means the first entry of the layer's state: h for the Elman, LSTM and GRU cells, the
pre-activation x of the Pascanu form (seed 004's :math:`\partial E/\partial x_k`).  A layer
without a reference step is run through its own sequence driver one step at a time:
still exact, just slower.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from rnnlab.layers import reverse_time

Step = Callable[[Tensor, tuple[Tensor, ...]], tuple[Tensor, ...]]
OutputStep = Callable[[Tensor, tuple[Tensor, ...]], tuple[Tensor, tuple[Tensor, ...]]]


@dataclass
class UnrolledDirection:
    """One direction of one layer, unrolled: ``states[k]`` is the state tuple after k steps
    (k = 0 is the initial state), each tensor (N, size) and a node of the graph.  Index k
    counts the direction's own steps: for a reverse direction, k = 1 is the last time step."""

    name: str  # "l0", "l1", "l0_reverse", ...
    states: list[tuple[Tensor, ...]]
    inputs: Tensor  # (T, N, I) what the direction read, in its own step order
    step: Step

    @property
    def hs(self) -> list[Tensor]:
        """h_0..h_T (the first entry of each state tuple)."""
        return [s[0] for s in self.states]

    @property
    def steps(self) -> int:
        return len(self.states) - 1


def recurrent_layers(target) -> object:
    """The recurrent stack inside ``target``: the stack itself, or ``target.rnn``."""
    layer = getattr(target, "rnn", target)
    if not hasattr(layer, "direction_parameters") or not hasattr(layer, "suffixes"):
        raise TypeError(
            "expected an rnnlab recurrent layer (rnnlab.RNN, LSTM, GRU, ...) or a model with "
            f"one as .rnn; got {type(target).__name__}"
        )
    return layer


def direction_names(layer) -> list[tuple[int, str, str]]:
    """``(layer index, suffix, name)`` for every layer and direction, in the stack's order."""
    return [
        (i, suffix, f"l{i}{suffix}") for i in range(layer.num_layers) for suffix in layer.suffixes
    ]


def output_step(layer, params: dict[str, Tensor]) -> OutputStep:
    """``(x_t, state) -> (output_t, state_t)`` for one direction of ``layer``.

    Every rnnlab layer has ``_step_layer``, its cells' reference step (``elman_step``,
    ``lstm_step`` or ``lstm_ext_step``, ``gru_step``, ``pascanu_step``, ...) on the given
    parameters.  A layer without one is run through its own sequence driver on a one-step
    sequence: still exact."""
    if hasattr(layer, "_step_layer"):

        def reference(x_t: Tensor, s: tuple[Tensor, ...]):
            out, new = layer._step_layer(x_t, tuple(s), params)
            return out, tuple(new)

        return reference

    def one_step(x_t: Tensor, s: tuple[Tensor, ...]):
        out, final = layer._run_direction(x_t.unsqueeze(0), tuple(s), params)
        return out[0], tuple(final)

    return one_step


def cell_step(layer, params: dict[str, Tensor]) -> Step:
    """The state-only step ``(x_t, state) -> state`` of one direction (for Jacobians)."""
    step = output_step(layer, params)
    return lambda x_t, s: step(x_t, s)[1]


def analysis_parameters(layer, index: int, suffix: str, dtype) -> dict[str, Tensor]:
    """Detached copies (in ``dtype``) of one direction's parameters."""
    params = layer.direction_parameters(index, suffix)
    return {k: v.detach().to(dtype) for k, v in params.items()}


def time_major(layer, x: Tensor) -> Tensor:
    """The layer's input layout (batch_first or not, or one unbatched sequence) as (T, N, I)."""
    if not isinstance(x, Tensor) or x.dim() not in (2, 3):
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"input must be a 2-D or 3-D tensor; got {got}")
    if x.dim() == 2:
        return x.unsqueeze(1)
    return x.transpose(0, 1) if layer.batch_first else x


def initial_states(layer, state, batch: int, dtype, device) -> list[tuple[Tensor, ...]]:
    """One state tuple per layer and direction, as fresh leaves that require grad."""
    count = layer.num_layers * layer.num_directions
    sizes = layer.state_sizes()
    if state is None:
        parts = [torch.zeros(count, batch, size, dtype=dtype, device=device) for size in sizes]
    else:
        parts = [state] if isinstance(state, Tensor) else list(state)
        if len(parts) != len(sizes):
            raise ValueError(f"state must hold {len(sizes)} tensors; got {len(parts)}")
        parts = [p.detach().to(dtype).reshape(count, batch, -1) for p in parts]
    return [tuple(p[i].clone().requires_grad_(True) for p in parts) for i in range(count)]


def unroll(
    layer, x: Tensor, state=None, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, list[UnrolledDirection]]:
    """Run ``layer`` over time-major ``x`` (T, N, I) one reference step at a time.

    Returns the top layer's output (T, N, D*H) and one :class:`UnrolledDirection` per
    layer and direction (names ``l0``, ``l0_reverse``, ``l1``, ...), whose states are all
    graph nodes: ``torch.autograd.grad(E, unrolled[i].hs)`` gives dE/dh_k for k = 0..T.
    """
    T, N = x.shape[:2]
    if T < 1:
        raise ValueError("the sequence must have at least one step")
    x = x.detach().to(dtype)
    starts = initial_states(layer, state, N, dtype, x.device)
    directions: list[UnrolledDirection] = []
    for i in range(layer.num_layers):
        outs = []
        for d, suffix in enumerate(layer.suffixes):
            params = analysis_parameters(layer, i, suffix, dtype)
            step = output_step(layer, params)
            xs = x if d == 0 else reverse_time(x, None)
            states, outputs = [starts[i * layer.num_directions + d]], []
            for x_t in xs:
                out_t, new = step(x_t, states[-1])
                outputs.append(out_t)
                states.append(new)
            out = torch.stack(outputs)
            outs.append(out if d == 0 else reverse_time(out, None))
            directions.append(
                UnrolledDirection(f"l{i}{suffix}", states, xs, cell_step(layer, params))
            )
        x = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return x, directions


# -- what the loss is -----------------------------------------------------------------------

Readout = Callable[[Tensor, int], Tensor]
"""``readout(y_t, t) -> E_t``: the loss at step t (0-based) from the top output y_t (N, F)."""


def linear_readout(features: int, seed: int = 0, dtype=torch.float64, device=None) -> Readout:
    """E_t = mean over the batch of <v, y_t> with v a fixed random unit vector (seeded).

    Its gradient dE_t/dy_t = v / N does not depend on the state, so everything the measured
    gradients do as they travel back comes from the recurrence alone."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(features, generator=g, dtype=torch.float64)
    v = (v / v.norm()).to(dtype=dtype, device=device)
    return lambda y_t, t: (y_t @ v).mean()


def language_model_readout(model, targets: Tensor, dtype=torch.float64) -> Readout:
    """E_t = mean over the batch of the cross entropy (nats) of the model's prediction at
    step t against ``targets[:, t]``: the language model's own loss, one step at a time."""
    if getattr(model, "head", None) is None:
        raise ValueError(
            "this language model has no output layer to read h_t (an output-recurrent "
            "jordan model); measure its recurrent layer with a readout instead"
        )
    weight = model.head.weight.detach().to(dtype)
    bias = model.head.bias.detach().to(dtype) if model.head.bias is not None else None
    targets = targets.detach()

    def readout(y_t: Tensor, t: int) -> Tensor:
        logits = torch.nn.functional.linear(y_t, weight, bias)
        return torch.nn.functional.cross_entropy(logits, targets[:, t])

    return readout


@dataclass
class Setup:
    """What every measurement needs: the stack, its time-major input and the loss."""

    layer: object
    x: Tensor  # (T, N, I)
    readout: Readout


def is_language_model(target) -> bool:
    return hasattr(target, "rnn") and hasattr(target, "head") and hasattr(target, "_inputs")


def prepare(
    target,
    inputs: Tensor,
    targets: Tensor | None = None,
    readout: Readout | None = None,
    dtype=torch.float64,
) -> Setup:
    """Resolve ``target`` (a recurrent stack, or a language model with ``.rnn``) and its
    ``inputs`` into a :class:`Setup`.

    * A stack takes ``inputs`` in its own layout (``batch_first`` or not); the default loss
      is :func:`linear_readout` of the top output.
    * A :class:`~rnnlab.models.LanguageModel` takes token ids (N, T) and ``targets`` (N, T);
      without ``targets`` the ids are split into inputs ``[:, :-1]`` and targets ``[:, 1:]``.
      The loss is the model's cross entropy at each step.
    """
    if is_language_model(target):
        layer = target.rnn
        if inputs.dim() != 2:
            raise ValueError(f"token ids must be (batch, time); got shape {tuple(inputs.shape)}")
        if targets is None:
            if inputs.shape[1] < 2:
                raise ValueError("need at least two tokens per sequence to form targets")
            inputs, targets = inputs[:, :-1], inputs[:, 1:]
        with torch.no_grad():
            x = target._inputs(inputs.t()).detach().to(dtype)
        if readout is None:
            readout = language_model_readout(target, targets, dtype)
        return Setup(layer, x, readout)
    layer = recurrent_layers(target)
    x = time_major(layer, inputs).detach().to(dtype)
    if readout is None:
        readout = linear_readout(layer.num_directions * layer.output_size, dtype=dtype)
    return Setup(layer, x, readout)

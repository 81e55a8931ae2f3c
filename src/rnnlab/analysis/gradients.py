r"""Gradient norm through time: :math:`\lVert \partial E/\partial h_k \rVert` for every step k.

Seed 004, eqs. 3-5: the gradient that reaches the state :math:`h_k` from a loss at step t
is the loss's own gradient pushed back through :math:`t-k` Jacobians,

.. math::

    \frac{\partial E_t}{\partial h_k} = \frac{\partial E_t}{\partial h_t}
        \prod_{t \ge i > k} \frac{\partial h_i}{\partial h_{i-1}}, \qquad
    \frac{\partial E}{\partial h_k} = \sum_{t \ge k} \frac{\partial E_t}{\partial h_k}
    \quad (E = \textstyle\sum_t E_t).

:func:`gradient_norms_through_time` measures :math:`\lVert \partial E/\partial h_k \rVert`
exactly (autograd on the unrolled graph of :mod:`rnnlab.analysis.unroll`, float64) for
k = 0..T in every layer and direction, with ``loss="last"`` (E = E_T, the long-range
signal alone) or ``loss="sum"`` (E = sum of E_t, what training sees).  Over a batch the
norm is taken over all sequences together (E is a mean over the batch).

Summaries (:class:`GradientFlow`):

* ``log_rate``: least-squares slope of :math:`\ln\lVert\partial E/\partial h_k\rVert`
  against the distance :math:`T-k`: the change of the log norm per step back in time.
  Negative: vanishing (the norm shrinks by :math:`e^{\text{rate}}` per step); positive:
  exploding.  Exact zeros (a dead ReLU, the states of a reverse direction that the loss at
  the last step never sees) are left out of the fit, which needs three points.  Indices k
  of a reverse direction count its own steps (k = 1 is the last time step), so use
  ``loss="sum"`` to see its gradient flow.
* ``ratio``: :math:`\lVert\partial E/\partial h_0\rVert / \lVert\partial E/\partial h_T\rVert`.
* ``fraction_vanished``: the fraction of steps k < T whose norm is below ``1e-6`` times the
  norm at the last step.

Example (a 1-layer Elman network with small weights forgets quickly):

>>> import torch, rnnlab
>>> from rnnlab.analysis import gradient_norms_through_time
>>> torch.manual_seed(0) and None
>>> rnn = rnnlab.RNN(3, 16, init=rnnlab.init.Init("spectral", radius=0.5))
>>> flow = gradient_norms_through_time(rnn, torch.randn(30, 4, 3))
>>> flow.norms["l0"].shape, flow.log_rate["l0"] < -0.5
((31,), True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from rnnlab.analysis.unroll import Readout, Setup, prepare, unroll

LOSSES = ("last", "sum")
VANISHED = 1e-6  # a gradient below this fraction of the last step's counts as vanished
TINY = 1e-300  # norms below this (float64 underflow) are left out of log fits


def check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {loss!r}")
    return loss


def fit_log_rate(norms: np.ndarray) -> float:
    """Slope of ln(norm) against the distance T - k (norms indexed by k = 0..T); nan when
    fewer than three norms are positive and finite."""
    norms = np.asarray(norms, dtype=float)
    distance = np.arange(len(norms))[::-1].astype(float)
    ok = np.isfinite(norms) & (norms > TINY)
    if ok.sum() < 3:
        return math.nan
    slope, _ = np.polyfit(distance[ok], np.log(norms[ok]), 1)
    return float(slope)


def fraction_vanished(norms: np.ndarray, threshold: float = VANISHED) -> float:
    """Fraction of the steps k < T with ||dE/dh_k|| < threshold * ||dE/dh_T||."""
    norms = np.asarray(norms, dtype=float)
    if len(norms) < 2:
        return 0.0
    return float(np.mean(norms[:-1] < threshold * norms[-1]))


def _ratio(norms: np.ndarray) -> float:
    return float(norms[0] / norms[-1]) if norms[-1] > 0 else math.nan


@dataclass
class GradientFlow:
    """``norms[name][k]`` = ||dE/dh_k|| for k = 0..T in layer/direction ``name``."""

    loss: str
    norms: dict[str, np.ndarray]
    log_rate: dict[str, float] = field(init=False)
    ratio: dict[str, float] = field(init=False)
    fraction_vanished: dict[str, float] = field(init=False)

    def __post_init__(self):
        self.log_rate = {n: fit_log_rate(v) for n, v in self.norms.items()}
        self.ratio = {n: _ratio(v) for n, v in self.norms.items()}
        self.fraction_vanished = {n: fraction_vanished(v) for n, v in self.norms.items()}

    @property
    def steps(self) -> int:
        return len(next(iter(self.norms.values()))) - 1

    @property
    def distance(self) -> np.ndarray:
        """T - k for k = 0..T: how far back in time each norm sits from the last step."""
        return np.arange(self.steps, -1, -1)

    def to_json(self) -> dict:
        return {
            "loss": self.loss,
            "steps": self.steps,
            "norms": {n: [_finite(x) for x in v] for n, v in self.norms.items()},
            "log_rate": {n: _finite(x) for n, x in self.log_rate.items()},
            "ratio": {n: _finite(x) for n, x in self.ratio.items()},
            "fraction_vanished": self.fraction_vanished,
        }


def _finite(x: float) -> float | None:
    """JSON has no nan or inf: write them as null."""
    x = float(x)
    return x if math.isfinite(x) else None


def total_loss(setup: Setup, output: Tensor, loss: str) -> Tensor:
    """E = E_T (``last``) or sum over t of E_t (``sum``) from the top output (T, N, F)."""
    if check_loss(loss) == "last":
        return setup.readout(output[-1], output.shape[0] - 1)
    return sum(setup.readout(output[t], t) for t in range(output.shape[0]))


def _norms(grads) -> np.ndarray:
    return np.array([0.0 if g is None else float(g.norm()) for g in grads])


@torch.enable_grad()
def gradient_norms_through_time(
    target,
    inputs: Tensor,
    targets: Tensor | None = None,
    loss: str = "last",
    state=None,
    readout: Readout | None = None,
    dtype: torch.dtype = torch.float64,
) -> GradientFlow:
    """||dE/dh_k|| for k = 0..T in every layer and direction of ``target``, exactly.

    ``target``: an rnnlab recurrent layer (inputs in its layout, loss a fixed random linear
    readout unless ``readout`` is given) or a language model (token ids, cross entropy).
    See :func:`rnnlab.analysis.unroll.prepare`.
    """
    check_loss(loss)
    setup = prepare(target, inputs, targets, readout, dtype)
    output, directions = unroll(setup.layer, setup.x, state, dtype)
    E = total_loss(setup, output, loss)
    nodes = [h for d in directions for h in d.hs]
    grads = torch.autograd.grad(E, nodes, allow_unused=True)
    norms, start = {}, 0
    for d in directions:
        norms[d.name] = _norms(grads[start : start + d.steps + 1])
        start += d.steps + 1
    return GradientFlow(loss, norms)


@torch.enable_grad()
def gradient_heatmap(
    target,
    inputs: Tensor,
    targets: Tensor | None = None,
    state=None,
    readout: Readout | None = None,
    dtype: torch.dtype = torch.float64,
) -> dict[str, np.ndarray]:
    """||dE_t/dh_k|| for every loss step t = 1..T and state k = 0..T, per layer/direction.

    Returns ``{name: M}`` with M of shape (T, T+1): ``M[t-1, k]``; entries with k > t are
    nan (a state after step t cannot change E_t)."""
    setup = prepare(target, inputs, targets, readout, dtype)
    output, directions = unroll(setup.layer, setup.x, state, dtype)
    T = output.shape[0]
    losses = torch.stack([setup.readout(output[t], t) for t in range(T)])
    nodes = [h for d in directions for h in d.hs]
    rows = _batched_grads(losses, nodes)  # per node: (T, N, H), row t-1 = dE_t/dh_k
    result, start = {}, 0
    for d in directions:
        m = np.zeros((T, d.steps + 1))
        for k in range(d.steps + 1):
            g = rows[start + k]
            if g is not None:
                m[:, k] = g.flatten(1).norm(dim=1).numpy()
        if d.name.endswith("_reverse"):
            m = m[::-1].copy()  # rows in the direction's own step order
        causal = np.tril(np.ones_like(m), 1).astype(bool)  # row t-1 sees k = 0..t
        result[d.name] = np.where(causal, m, np.nan)
        start += d.steps + 1
    return result


def _batched_grads(losses: Tensor, nodes: list[Tensor]) -> list[Tensor | None]:
    """d losses[t] / d node for every t at once (vmap over the backward pass), with a
    plain loop as the fallback for operations vmap cannot batch."""
    eye = torch.eye(len(losses), dtype=losses.dtype, device=losses.device)
    try:
        return list(
            torch.autograd.grad(
                losses, nodes, eye, retain_graph=True, allow_unused=True, is_grads_batched=True
            )
        )
    except RuntimeError:
        per_t = [
            torch.autograd.grad(e, nodes, retain_graph=True, allow_unused=True) for e in losses
        ]
        out = []
        for i, node in enumerate(nodes):
            parts = [g[i] if g[i] is not None else torch.zeros_like(node) for g in per_t]
            out.append(torch.stack(parts))
        return out

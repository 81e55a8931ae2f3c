r"""Jacobian products :math:`\partial s_t/\partial s_k` along a trajectory (seed 000 eqs. 12-14,
seed 004 eq. 5).

For the Elman cell :math:`h_i = \phi(W_{hh} h_{i-1} + W_{ih} x_i + b)` one step's Jacobian is

.. math::

    J_i = \frac{\partial h_i}{\partial h_{i-1}} = \mathrm{diag}(\phi'(a_i))\, W_{hh}, \qquad
    \frac{\partial h_t}{\partial h_k} = J_t J_{t-1} \cdots J_{k+1}

(seed 004 writes the transpose, for row vectors).  Gated cells carry more than h: the
state s is :math:`[h; c]` for the LSTM (2H values) and h for the GRU, and :math:`J_i` is
the exact Jacobian of the whole state.  Each :math:`J_i` is computed by autograd on one
reference step (all its rows at once, batched over the output units), in float64.

:func:`jacobian_products` chains them backwards from the last step, so that lag m holds
:math:`\partial s_T/\partial s_{T-m}`, and returns its largest singular values (the first
is the spectral norm: how much the most amplified direction grows over m steps).  Its
``log_rate`` is the least-squares slope of the log spectral norm against m; for a linear
network it tends to the log of the spectral radius of W (the power method, seed 004).

>>> import torch, rnnlab
>>> from rnnlab.analysis import jacobian_products
>>> torch.manual_seed(0) and None
>>> lstm = rnnlab.LSTM(2, 8)
>>> jp = jacobian_products(lstm, torch.randn(20, 1, 2))
>>> jp.singular_values.shape  # 20 lags, top 3 singular values of the 16 x 16 products
(20, 3)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from rnnlab.analysis.unroll import Step, prepare, unroll


def state_jacobian(step: Step, x_t: Tensor, state: tuple[Tensor, ...]) -> Tensor:
    """Exact d s_t / d s_{t-1} of one step, for every sequence: (N, S, S), S = total state
    size (the state tuple concatenated, e.g. [h; c]).  Row j, column i: d s_t[j] / d s_{t-1}[i].

    One backward pass: each sequence's state is repeated S times, and copy j receives the
    cotangent e_j, so its input gradient is row j of that sequence's Jacobian (sequences
    and copies never mix inside a step)."""
    sizes = [s.shape[-1] for s in state]
    flat = torch.cat([s.detach() for s in state], dim=-1)
    N, S = flat.shape
    copies = flat.repeat_interleave(S, dim=0).requires_grad_(True)  # row n*S + j = s[n]
    x_copies = x_t.detach().repeat_interleave(S, dim=0)
    out = torch.cat(step(x_copies, tuple(copies.split(sizes, dim=-1))), dim=-1)
    basis = torch.eye(S, dtype=out.dtype, device=out.device).repeat(N, 1)
    (rows,) = torch.autograd.grad(out, copies, basis)
    return rows.view(N, S, S)


@torch.enable_grad()
def step_jacobians(
    target,
    inputs: Tensor,
    targets: Tensor | None = None,
    layer: int = 0,
    direction: str = "",
    state=None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """J_1..J_T of one layer and direction along the trajectory of ``inputs``: (T, N, S, S).

    ``target``, ``inputs`` and ``targets`` as for
    :func:`~rnnlab.analysis.gradient_norms_through_time` (the targets only decide where a
    language model's token ids are cut); ``direction`` is ``""`` or ``"_reverse"``."""
    setup = prepare(target, inputs, targets, dtype=dtype)
    return _step_jacobians(setup.layer, setup.x, layer, direction, state, dtype)


def _step_jacobians(stack, x: Tensor, layer: int, direction: str, state, dtype) -> Tensor:
    _, directions = unroll(stack, x, state, dtype)
    name = f"l{layer}{direction}"
    found = [d for d in directions if d.name == name]
    if not found:
        names = ", ".join(d.name for d in directions)
        raise ValueError(f"no layer/direction {name!r}; this stack has {names}")
    d = found[0]
    return torch.stack([state_jacobian(d.step, d.inputs[k], d.states[k]) for k in range(d.steps)])


@dataclass
class JacobianProducts:
    """Norms of ds_T/ds_{T-m} for one sequence: Frobenius at every lag m = 1..T, the
    ``top`` singular values at ``lags`` (every lag for states up to 128 values; for larger
    states at evenly spaced lags, since each singular value decomposition costs O(S^3))."""

    name: str
    lags: np.ndarray  # (L,) the lags m at which singular values were taken
    singular_values: np.ndarray  # (L, top): largest first
    frobenius: np.ndarray  # (T,) ||ds_T/ds_{T-m}||_F for m = 1..T

    @property
    def spectral_norms(self) -> np.ndarray:
        """||ds_T/ds_{T-m}||_2 at ``lags``."""
        return self.singular_values[:, 0]

    @property
    def log_rate(self) -> float:
        """Slope of ln ||ds_T/ds_{T-m}||_2 against m (per step)."""
        norms = self.spectral_norms
        ok = np.isfinite(norms) & (norms > 1e-300)
        if ok.sum() < 2:
            return math.nan
        return float(np.polyfit(self.lags[ok], np.log(norms[ok]), 1)[0])

    def to_json(self) -> dict:
        def clean(x):
            return float(x) if math.isfinite(x) else None

        return {
            "name": self.name,
            "lags": self.lags.tolist(),
            "singular_values": [[clean(x) for x in row] for row in self.singular_values],
            "frobenius": [clean(x) for x in self.frobenius],
            "log_rate": clean(self.log_rate),
        }


FULL_SVD_STATE = 128  # states up to this size get singular values at every lag
SPACED_LAGS = 32  # otherwise at this many evenly spaced lags


def jacobian_products(
    target,
    inputs: Tensor,
    targets: Tensor | None = None,
    layer: int = 0,
    direction: str = "",
    sequence: int = 0,
    top: int = 3,
    state=None,
    dtype: torch.dtype = torch.float64,
) -> JacobianProducts:
    """Chain the exact step Jacobians of sequence ``sequence`` back from the last step:
    ds_T/ds_{T-m} = J_T J_{T-1} ... J_{T-m+1}, m = 1..T, and measure the products."""
    setup = prepare(target, inputs, targets, dtype=dtype)
    if not 0 <= sequence < setup.x.shape[1]:
        raise ValueError(f"sequence must be in [0, {setup.x.shape[1]}); got {sequence}")
    if state is not None:
        parts = [state] if isinstance(state, Tensor) else list(state)
        state = tuple(p[..., sequence : sequence + 1, :] for p in parts)
    x = setup.x[:, sequence : sequence + 1]
    with torch.enable_grad():
        J = _step_jacobians(setup.layer, x, layer, direction, state, dtype)[:, 0]
    T, S, _ = J.shape
    top = min(top, S)
    if S <= FULL_SVD_STATE:
        lags = np.arange(1, T + 1)
    else:
        lags = np.unique(np.linspace(1, T, min(T, SPACED_LAGS)).round().astype(int))
    wanted = set(lags.tolist())
    product = torch.eye(S, dtype=J.dtype)
    values, frob = [], []
    for m in range(1, T + 1):
        product = product @ J[T - m]  # ds_T/ds_{T-m} = (ds_T/ds_{T-m+1}) J_{T-m+1}
        frob.append(float(torch.linalg.matrix_norm(product)))
        if m in wanted:
            values.append(torch.linalg.svdvals(product)[:top].numpy())
    return JacobianProducts(f"l{layer}{direction}", lags, np.array(values), np.array(frob))

r"""The error surface of the one-unit recurrent network of Pascanu et al. (2013), seed 004.

The network has one hidden unit, no input, a recurrent weight w and a bias b:

.. math::

    x_t = w\,\sigma(x_{t-1}) + b, \qquad x_0 = 0.5, \qquad
    \mathcal{E}_{50} = (\sigma(x_{50}) - 0.7)^2

with :math:`\sigma` the logistic sigmoid (the Pascanu form of :mod:`rnnlab.cells.pascanu`,
written out here for one unit so the analysis does not depend on a layer).

Where it comes from.  For :math:`w > 4` the map :math:`x \mapsto w\sigma(x) + b` can have
two stable fixed points with an unstable one between them.  Along the line of (w, b)
where the start :math:`x_0` sits exactly on the unstable fixed point
(:math:`b = x_0 - w\sigma(x_0)`), an infinitesimal change of w or b decides which
attractor :math:`x_{50}` ends in: the derivative there grows like
:math:`(w\sigma'(x_0))^{50}` and the error jumps.  That line is the *wall* of high
curvature, right beside the valley where :math:`\sigma(x_{50}) = 0.7`.  A gradient step
that lands near the wall meets a gradient thousands of times larger than elsewhere and
is thrown far away; clipping the gradient's norm (Pascanu et al.'s Algorithm 1) bounds the
step, so descent stays in the valley.

>>> import torch
>>> from rnnlab.analysis.surface import one_unit_error
>>> w = torch.tensor(3.0, dtype=torch.float64)  # in the valley: b = logit(0.7) - 0.7 w
>>> float(one_unit_error(w, 0.8473 - 0.7 * w)) < 1e-6
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

X0, TARGET, STEPS = 0.5, 0.7, 50
# The view and the start point of the figure: the wall runs across it, and descent from
# START reaches the wall on its way to the valley.
W_RANGE, B_RANGE = (1.0, 9.0), (-6.0, 3.5)
START = (6.0, -1.5)


def one_unit_run(w: Tensor, b: Tensor, x0: float = X0, steps: int = STEPS) -> Tensor:
    """x_steps of x_t = w sigmoid(x_{t-1}) + b, elementwise over any shape of w and b."""
    x = torch.full(torch.broadcast_shapes(w.shape, b.shape), x0, dtype=w.dtype)
    for _ in range(steps):
        x = w * torch.sigmoid(x) + b
    return x


def one_unit_error(
    w: Tensor, b: Tensor, x0: float = X0, target: float = TARGET, steps: int = STEPS
) -> Tensor:
    """E_steps = (sigmoid(x_steps) - target)^2, elementwise."""
    return (torch.sigmoid(one_unit_run(w, b, x0, steps)) - target) ** 2


def one_unit_gradient(
    w: float, b: float, x0: float = X0, target: float = TARGET, steps: int = STEPS
) -> tuple[float, np.ndarray]:
    """(E, dE/d(w, b)) at one point, by autograd in float64."""
    p = torch.tensor([float(w), float(b)], dtype=torch.float64, requires_grad=True)
    e = one_unit_error(p[0], p[1], x0, target, steps)
    (g,) = torch.autograd.grad(e, p)
    return float(e.detach()), g.numpy()


@dataclass
class Surface:
    w: np.ndarray  # (W,) grid of recurrent weights
    b: np.ndarray  # (B,) grid of biases
    error: np.ndarray  # (B, W): error[j, i] at (w[i], b[j])
    grad_norm: np.ndarray  # (B, W): ||dE/d(w, b)||


def error_surface(
    w_range=W_RANGE, b_range=B_RANGE, resolution: int = 241, steps: int = STEPS
) -> Surface:
    """E_steps and its gradient norm on a resolution x resolution grid (float64)."""
    w = torch.linspace(*w_range, resolution, dtype=torch.float64)
    b = torch.linspace(*b_range, resolution, dtype=torch.float64)
    B, W = torch.meshgrid(b, w, indexing="ij")
    W.requires_grad_(True)
    B.requires_grad_(True)
    e = one_unit_error(W, B, steps=steps)
    gw, gb = torch.autograd.grad(e.sum(), [W, B])
    grad_norm = torch.sqrt(gw**2 + gb**2)
    return Surface(w.numpy(), b.numpy(), e.detach().numpy(), grad_norm.numpy())


@dataclass
class Trajectory:
    points: np.ndarray  # (steps+1, 2): (w, b) after each update
    errors: np.ndarray  # (steps+1,)
    grad_norms: np.ndarray  # (steps,) before clipping
    clip: float | None

    @property
    def clipped_steps(self) -> int:
        return 0 if self.clip is None else int((self.grad_norms > self.clip).sum())

    @property
    def largest_step(self) -> float:
        return float(np.linalg.norm(np.diff(self.points, axis=0), axis=1).max())


def gradient_descent(
    start=START, lr: float = 0.5, updates: int = 200, clip: float | None = None
) -> Trajectory:
    """Plain gradient descent on E_50 from ``start``; ``clip``: rescale any gradient whose
    norm exceeds it to that norm (clipping by norm), None for no clipping."""
    p = np.array(start, dtype=float)
    points, errors, norms = [p.copy()], [], []
    for _ in range(updates):
        e, g = one_unit_gradient(*p)
        errors.append(e)
        n = float(np.linalg.norm(g))
        norms.append(n)
        if clip is not None and n > clip:
            g = g * (clip / n)
        p = p - lr * g
        points.append(p.copy())
    errors.append(one_unit_gradient(*p)[0])
    return Trajectory(np.array(points), np.array(errors), np.array(norms), clip)

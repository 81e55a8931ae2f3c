r"""Pascanu form of the simple RNN: equations, reference step and hand-derived BPTT.

The recurrence of seed 004 (Pascanu, Mikolov & Bengio 2013, eq. 2) keeps the
*pre-activation* as the state and applies the nonlinearity on the way in:

.. math::

    x_t = W_{rec}\,\sigma(x_{t-1}) + W_{in} u_t + b,
    \qquad \sigma \in \{\tanh, \mathrm{sigmoid}\}

for t = 1..T, with :math:`x_0` given (zero, chosen or learned).

Shapes (time-major): ``u``: (T, N, I); ``x0``: (N, H); ``weight_ih`` = :math:`W_{in}`:
(H, I); ``weight_hh`` = :math:`W_{rec}`: (H, H); ``bias`` = :math:`b`: (H,) or ``None``.
Output ``xs``: (T, N, H), ``xs[t-1]`` is :math:`x_t` and ``xs[-1]`` the final state.
The weights keep the ``torch.nn.RNN`` names; there is a single bias.

Relation to the Elman form (``rnnlab.cells.elman``).  Put :math:`h_t = \sigma(x_t)`.  Then
:math:`x_t = W_{in} u_t + b + W_{rec} h_{t-1}` is exactly the Elman pre-activation
:math:`a_t`, and :math:`h_t = \sigma(W_{in} u_t + b + W_{rec} h_{t-1})` is the Elman cell
with ``weight_ih = W_in``, ``weight_hh = W_rec``, ``bias_ih = b``, ``bias_hh = None``,
:math:`\phi = \sigma` and :math:`h_0 = \sigma(x_0)`.  The two forms are one network that
stores its state on different sides of :math:`\sigma`:

* ``sigma(pascanu_sequence(u, x0, W, R, b, s))`` equals
  ``elman_sequence(u, sigma(x0), W, R, b, None, s)``;
* an Elman start :math:`h_0` outside the range of :math:`\sigma` (``h0 = 0`` with the
  sigmoid, say) has no :math:`x_0`, but shifting the inputs by one step still matches:
  with :math:`x_0 := a_1 = W_{in} u_1 + b + W_{rec} h_0`, the Pascanu run over
  :math:`u_2..u_T` gives :math:`x_t = a_{t+1}`, so ``sigma(xs)`` equals ``hs[1:]``.

Gradients agree too, except :math:`\partial E/\partial x_0 = \sigma'(x_0) \odot
\partial E/\partial h_0`.

Backward (seed 004, eqs. 3-5).  Write :math:`\delta_t = \partial E/\partial x_t` for the total
gradient reaching :math:`x_t` (from the loss at step t and through :math:`x_{t+1}`).  Since
:math:`\partial x_t/\partial x_{t-1} = W_{rec}\,\mathrm{diag}(\sigma'(x_{t-1}))`, the
gradient flowing from :math:`x_t` to :math:`x_{t-1}` is
:math:`W_{rec}^\top \delta_t \odot \sigma'(x_{t-1})`:

.. math::

    \delta_t &= \partial E_t/\partial x_t
               + \sigma'(x_t) \odot W_{rec}^\top \delta_{t+1},
               \qquad \delta_{T+1} = 0 \\
    \partial E/\partial W_{rec} &= \textstyle\sum_t \delta_t\, \sigma(x_{t-1})^\top, \quad
    \partial E/\partial W_{in} = \textstyle\sum_t \delta_t u_t^\top, \quad
    \partial E/\partial b = \textstyle\sum_t \delta_t \\
    \partial E/\partial u_t &= W_{in}^\top \delta_t, \qquad
    \partial E/\partial x_0 = \sigma'(x_0) \odot W_{rec}^\top \delta_1

The state is linear in the previous :math:`\sigma(x_{t-1})`, so no :math:`\sigma'(x_t)`
multiplies the loss gradient at step t itself (unlike the Elman :math:`\delta_t`).
:math:`\sigma'` is computed from the saved :math:`s = \sigma(x)`: :math:`1-s^2` for tanh,
:math:`s(1-s)` for the sigmoid.  The three weight gradients are single matmuls over all
steps, taken after the reverse loop.

Memory of the fused forward, kept for backward: ``T*N*H`` values
(:math:`\sigma(x_{t-1})` of every step; the outputs ``xs`` themselves are not needed).

Example:

>>> import torch
>>> from rnnlab.cells.elman import elman_sequence
>>> from rnnlab.cells.pascanu import pascanu_sequence, pascanu_sequence_reference
>>> T, N, I, H = 5, 2, 3, 4
>>> u, x0 = torch.randn(T, N, I), torch.randn(N, H)
>>> w_in, w_rec, b = torch.randn(H, I), torch.randn(H, H), torch.randn(H)
>>> xs = pascanu_sequence(u, x0, w_in, w_rec, b, "sigmoid")
>>> xs.shape
torch.Size([5, 2, 4])
>>> ref = pascanu_sequence_reference(u, x0, w_in, w_rec, b, "sigmoid")
>>> torch.allclose(xs, ref, atol=1e-5)
True
>>> hs = elman_sequence(u, torch.sigmoid(x0), w_in, w_rec, b, None, "sigmoid")
>>> torch.allclose(torch.sigmoid(xs), hs, atol=1e-6)
True
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnnlab.cells.elman import outer_and_sums, step_weight

SIGMAS = ("tanh", "sigmoid")

_SIGMA = {"tanh": torch.tanh, "sigmoid": torch.sigmoid}


def check_sigma(sigma: str) -> str:
    if sigma not in SIGMAS:
        raise ValueError(f"sigma must be one of {', '.join(SIGMAS)}; got {sigma!r}")
    return sigma


def pascanu_step(
    u_t: Tensor,
    x_prev: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias: Tensor | None,
    sigma: str = "tanh",
) -> Tensor:
    """Reference step: x_t = W_rec sigma(x_{t-1}) + W_in u_t + b, plain autograd."""
    x = _SIGMA[sigma](x_prev) @ weight_hh.t() + u_t @ weight_ih.t()
    if bias is not None:
        x = x + bias
    return x


def pascanu_sequence_reference(u, x0, weight_ih, weight_hh, bias, sigma="tanh"):
    """Run :func:`pascanu_step` over time; autograd derives the gradients. Returns xs (T, N, H)."""
    check_sigma(sigma)
    x, xs = x0, []
    for u_t in u:
        x = pascanu_step(u_t, x, weight_ih, weight_hh, bias, sigma)
        xs.append(x)
    return torch.stack(xs)


def _sigma_grad(s: Tensor, sigma: str) -> Tensor:
    """sigma'(x) written in terms of s = sigma(x)."""
    if sigma == "tanh":
        return 1 - s * s
    return s * (1 - s)


class PascanuFunction(torch.autograd.Function):
    """Whole-sequence Pascanu forward with BPTT written by hand (see the module docstring)."""

    @staticmethod
    def forward(ctx, u, x0, weight_ih, weight_hh, bias, sigma):
        T, N, _ = u.shape
        H = weight_hh.shape[0]
        act = _SIGMA[sigma]
        b = bias if bias is not None else u.new_zeros(())
        # Input projections of all steps in one matmul; the bias rides along.
        xs = torch.addmm(b, u.reshape(T * N, -1), weight_ih.t()).view(T, N, H)
        # s_prev[t] = sigma(x_{t-1}) of step t: what W_rec multiplies, and all backward needs.
        s_prev = xs.new_empty(T, N, H)
        act(x0, out=s_prev[0])
        w_rec_t = step_weight(weight_hh)
        for t in range(T):
            # xs[t] already holds W_in u_t + b; add W_rec sigma(x_{t-1}) in place.
            xs[t].addmm_(s_prev[t], w_rec_t)
            if t + 1 < T:
                act(xs[t], out=s_prev[t + 1])
        ctx.sigma = sigma
        ctx.has_bias = bias is not None
        ctx.save_for_backward(u, weight_ih, weight_hh, s_prev)
        return xs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_xs):
        u, weight_ih, weight_hh, s_prev = ctx.saved_tensors
        delta = torch.empty_like(s_prev)  # delta_t = dE/dx_t, total, for every step
        grad_x = torch.zeros_like(s_prev[0])  # sigma'(x_t) * W_rec^T delta_{t+1}
        for t in range(u.shape[0] - 1, -1, -1):
            torch.add(grad_xs[t], grad_x, out=delta[t])
            # Back to x_{t-1}: W_rec^T delta_t, times sigma'(x_{t-1}).
            grad_x = (delta[t] @ weight_hh).mul_(_sigma_grad(s_prev[t], ctx.sigma))
        return pascanu_grads(
            ctx.needs_input_grad, ctx.has_bias, u, weight_ih, s_prev, delta, grad_x
        )


def pascanu_grads(needs, has_bias, u, weight_ih, s_prev, delta, grad_x0, mm=torch.mm):
    """The gradient tuple after the reverse loop, one matmul or sum each, from delta
    (T, N, H) and s_prev[t] = sigma(x_{t-1}); ``grad_x0`` = sigma'(x0) W_rec^T delta_1.
    Shared by the fused and the compiled (:mod:`rnnlab.backends.numba_pascanu`) backward;
    ``mm``: the product (:func:`rnnlab.cells.elman.input_projection`)."""
    T, N, I = u.shape
    H = s_prev.shape[2]
    grad_u = grad_w_ih = grad_w_hh = grad_b = None
    d = delta.view(T * N, H)
    if needs[0]:
        grad_u = mm(d, weight_ih).view(T, N, I)
    if needs[2]:
        grad_w_ih, grad_b = outer_and_sums(u.reshape(T * N, I), d, mm, needs[4] and has_bias)
    if needs[3]:
        grad_w_hh = mm(d.t(), s_prev.view(T * N, H))
    if needs[4] and has_bias and grad_b is None:
        grad_b = d.sum(0)
    return grad_u, grad_x0 if needs[1] else None, grad_w_ih, grad_w_hh, grad_b, None


def pascanu_sequence(u, x0, weight_ih, weight_hh, bias, sigma="tanh"):
    """Fused Pascanu sequence: xs (T, N, H) with hand-derived BPTT as its backward."""
    check_sigma(sigma)
    return PascanuFunction.apply(u, x0, weight_ih, weight_hh, bias, sigma)

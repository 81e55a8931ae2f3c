r"""Elman recurrent network: equations, reference step and hand-derived BPTT.

The cell (seeds 000, 001, 002) keeps one hidden vector and updates it from the
current input and its own previous value:

.. math::

    a_t = W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}
    h_t = \phi(a_t), \qquad \phi \in \{\tanh, \mathrm{sigmoid}, \mathrm{relu}\}

Shapes (time-major, as inside every fused Function of rnnlab):
``x``: (T, N, I); ``h0``: (N, H); ``weight_ih``: (H, I); ``weight_hh``: (H, H);
``bias_ih``, ``bias_hh``: (H,) or ``None``.  Output ``hs``: (T, N, H), ``hs[-1]`` is
the final state.  The parameter names and layout are those of ``torch.nn.RNN``.

Backward (seed 003's vanilla RNN gradients).  Write :math:`g_t = \partial E/\partial h_t`
for the total gradient reaching :math:`h_t` (from the loss at step t and from step t+1).
Going back in time:

.. math::

    g_t &= \partial E_t/\partial h_t + W_{hh}^\top \delta_{t+1} \\
    \delta_t &= g_t \odot \phi'(a_t) \\
    \partial E/\partial W_{hh} &= \textstyle\sum_t \delta_t h_{t-1}^\top, \quad
    \partial E/\partial W_{ih} = \textstyle\sum_t \delta_t x_t^\top, \quad
    \partial E/\partial b = \textstyle\sum_t \delta_t \\
    \partial E/\partial x_t &= W_{ih}^\top \delta_t, \qquad
    \partial E/\partial h_0 = W_{hh}^\top \delta_1

:math:`\phi'` is computed from the saved output: :math:`1-h^2` for tanh,
:math:`h(1-h)` for the sigmoid, :math:`[h>0]` for ReLU.  The three weight gradients
are single matmuls over all steps, taken after the reverse loop.

Memory of the fused forward, kept for backward: ``T*N*H`` values (the outputs).

Example:

>>> import torch
>>> from rnnlab.cells.elman import elman_sequence, elman_sequence_reference
>>> T, N, I, H = 5, 2, 3, 4
>>> x, h0 = torch.randn(T, N, I), torch.zeros(N, H)
>>> w_ih, w_hh, b = torch.randn(H, I), torch.randn(H, H), torch.randn(H)
>>> hs = elman_sequence(x, h0, w_ih, w_hh, b, b, "tanh")
>>> ref = elman_sequence_reference(x, h0, w_ih, w_hh, b, b, "tanh")
>>> torch.allclose(hs, ref, atol=1e-6)
True
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

NONLINEARITIES = ("tanh", "sigmoid", "relu")

_ACTIVATIONS = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu}
_ACTIVATIONS_ = {"tanh": torch.tanh_, "sigmoid": torch.sigmoid_, "relu": torch.relu_}


def check_nonlinearity(nonlinearity: str) -> str:
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(
            f"nonlinearity must be one of {', '.join(NONLINEARITIES)}; got {nonlinearity!r}"
        )
    return nonlinearity


def elman_step(
    x_t: Tensor,
    h_prev: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    nonlinearity: str = "tanh",
) -> Tensor:
    """Reference step: h_t = phi(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), plain autograd."""
    a = x_t @ weight_ih.t() + h_prev @ weight_hh.t()
    if bias_ih is not None:
        a = a + bias_ih
    if bias_hh is not None:
        a = a + bias_hh
    return _ACTIVATIONS[nonlinearity](a)


def elman_sequence_reference(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity="tanh"):
    """Run :func:`elman_step` over time; autograd derives the gradients. Returns hs (T, N, H)."""
    h, hs = h0, []
    for x_t in x:
        h = elman_step(x_t, h, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity)
        hs.append(h)
    return torch.stack(hs)


def _activation_grad(h: Tensor, nonlinearity: str) -> Tensor:
    """phi'(a) written in terms of the output h = phi(a)."""
    if nonlinearity == "tanh":
        return 1 - h * h
    if nonlinearity == "sigmoid":
        return h * (1 - h)
    return (h > 0).to(h.dtype)


def input_projection(
    x: Tensor, weight_ih: Tensor, bias: Tensor | None = None, mm=torch.mm
) -> Tensor:
    """The input side of every step in one matmul: (T, N, G) = x W_ih^T (+ ``bias``).

    With PyTorch's product: x as (TN, I) times a contiguous copy of W_ih^T, the bias added
    after: measured 1.7x faster than ``addmm`` with the transposed view at (2500, 65) x
    (65, 512) on one thread.  Shared by every cell's fused and compiled paths; ``mm`` is
    the product: the compiled paths pass :func:`rnnlab.backends.numba_blas.matmul`, which
    takes W_ih^T as a view (its own transposed copy is quicker than PyTorch's) and the
    bias, added to each tile while it is in cache rather than in a pass of its own."""
    T, N, I = x.shape
    G = weight_ih.shape[0]  # not -1: an empty batch (N = 0) has no size to infer
    if mm is not torch.mm:
        return mm(x.reshape(T * N, I), weight_ih.t(), bias).view(T, N, G)
    out = mm(x.reshape(T * N, I), weight_ih.t().contiguous())
    if bias is not None:
        out.add_(bias)
    return out.view(T, N, G)


def step_weight(weight: Tensor) -> Tensor:
    """W^T as a contiguous (in, out) copy, for the matmul of every step ``h W^T``.

    PyTorch's matmul with the transposed view ``weight.t()`` runs its small per-step
    products 1.1-1.9x slower than with a contiguous copy (measured on one thread: batch 1,
    hidden 256, 4 gates: 31 against 16 µs; batch 50, hidden 128: 76 against 52 µs;
    docs/performance.md); the copy is made once per sequence.  Shared by every cell's
    fused and compiled forward loops."""
    return weight.detach().t().contiguous()


def outer_sum_prev(h0: Tensor, hs: Tensor, d: Tensor, mm=torch.mm) -> Tensor:
    """sum_t h_{t-1}^T d_t, (H, G), with h_{-1} = h0: the recurrent weight gradient's
    sum over time, transposed.  ``d`` (T, N, G) may be a column slice of a larger tensor.
    Two products (h0 with d_0, then hs[:-1] with d_1..d_{T-1}) rather than one over a
    stacked copy of h_{t-1}: the same sums without a (T, N, H) copy.  Shared by the
    Elman, GRU and LSTM backward passes; ``mm`` as :func:`input_projection`'s.  A product
    with an ``outer_sum_prev`` of its own (:func:`rnnlab.backends.numba_blas.matmul`)
    computes the sum itself, in one product over a transposed copy it makes anyway."""
    own = getattr(mm, "outer_sum_prev", None)
    if own is not None:
        return own(h0, hs, d)
    T, N, H = hs.shape
    first = h0.t() @ d[0]  # N rows only: PyTorch's own product
    if T == 1:
        return first
    rest = d[1:].reshape((T - 1) * N, d.shape[2])
    return mm(hs[:-1].reshape((T - 1) * N, H).t(), rest).add_(first)


def outer_and_sums(x: Tensor, d: Tensor, mm=torch.mm, sums: bool = True):
    """``((x^T d)^T, d.sum(0))`` for ``x`` (M, I) and ``d`` (M, G): an input weight's
    gradient (G, I) and its bias's (None without ``sums``).  (x^T d)^T rather than d^T x:
    the same sums, measured 1.4-1.9x faster for these long, thin operands (M = T N rows).
    A product with an ``outer_and_sums`` of its own
    (:func:`rnnlab.backends.numba_blas.matmul`) gives both from one product; ``mm`` as
    :func:`input_projection`'s."""
    own = getattr(mm, "outer_and_sums", None)
    if own is not None and sums:
        product, column_sums = own(x, d)
        return product.t(), column_sums
    return mm(x.t(), d).t(), d.sum(0) if sums else None


def _combined_bias(bias_ih: Tensor | None, bias_hh: Tensor | None, like: Tensor) -> Tensor:
    """b_ih + b_hh (both biases sit outside the nonlinearity, so they act as one)."""
    if bias_ih is None and bias_hh is None:
        return like.new_zeros(())
    if bias_ih is None:
        return bias_hh
    if bias_hh is None:
        return bias_ih
    return bias_ih + bias_hh


class ElmanFunction(torch.autograd.Function):
    """Whole-sequence Elman forward with BPTT written by hand (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, h0, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity):
        T = x.shape[0]
        act_ = _ACTIVATIONS_[nonlinearity]
        bias = _combined_bias(bias_ih, bias_hh, x)
        hs = input_projection(x, weight_ih, bias)  # W_ih x_t + b of every step
        w_hh_t = step_weight(weight_hh)
        h = h0
        for t in range(T):
            # hs[t] already holds W_ih x_t + b; add W_hh h_{t-1} in place, then phi.
            hs[t].addmm_(h, w_hh_t)
            h = act_(hs[t])
        ctx.nonlinearity = nonlinearity
        ctx.has_bias = (bias_ih is not None, bias_hh is not None)
        ctx.save_for_backward(x, h0, weight_ih, weight_hh, hs)
        return hs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs):
        x, h0, weight_ih, weight_hh, hs = ctx.saved_tensors
        T = x.shape[0]
        grad_a = torch.empty_like(hs)  # delta_t for every step
        grad_h = torch.zeros_like(h0)  # W_hh^T delta_{t+1}, flowing back from step t+1
        for t in range(T - 1, -1, -1):
            grad_h = grad_h + grad_hs[t]
            torch.mul(grad_h, _activation_grad(hs[t], ctx.nonlinearity), out=grad_a[t])
            grad_h = grad_a[t] @ weight_hh
        return elman_grads(ctx.needs_input_grad, ctx.has_bias, x, h0, hs, weight_ih, grad_a, grad_h)


def elman_grads(needs, has_bias, x, h0, hs, weight_ih, grad_a, grad_h, mm=torch.mm):
    """The gradient tuple after the reverse loop, one matmul or sum each, from delta
    (``grad_a``, (T, N, H)) and ``grad_h`` = W_hh^T delta_0.  Shared by the fused and
    the compiled (:mod:`rnnlab.backends.numba_elman`) backward; ``mm`` as
    :func:`input_projection`'s."""
    T, N, I = x.shape
    H = hs.shape[2]
    grad_x = grad_h0 = grad_w_ih = grad_w_hh = grad_b_ih = grad_b_hh = None
    delta = grad_a.view(T * N, H)
    if needs[0]:
        grad_x = mm(delta, weight_ih).view(T, N, I)
    if needs[1]:
        grad_h0 = grad_h
    grad_b = None
    if needs[2]:
        grad_w_ih, grad_b = outer_and_sums(x.reshape(T * N, I), delta, mm, any(needs[4:6]))
    if needs[3]:
        grad_w_hh = outer_sum_prev(h0, hs, grad_a, mm).t()
    if any(needs[4:6]):
        grad_b = delta.sum(0) if grad_b is None else grad_b
        grad_b_ih = grad_b if has_bias[0] else None
        grad_b_hh = grad_b if has_bias[1] else None
    return grad_x, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, None


def elman_sequence(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity="tanh"):
    """Fused Elman sequence: hs (T, N, H) with hand-derived BPTT as its backward."""
    check_nonlinearity(nonlinearity)
    return ElmanFunction.apply(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity)

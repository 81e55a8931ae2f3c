r"""Long short-term memory: equations, reference step and hand-derived BPTT.

The gates of seed 001, in ``torch.nn.LSTM``'s order i, f, g, o:

.. math::

    z_t &= W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}
           \quad\text{(4H values, split into } z^i, z^f, z^g, z^o\text{)} \\
    i_t &= \sigma(z^i_t), \quad f_t = \sigma(z^f_t), \quad
    g_t = \tanh(z^g_t), \quad o_t = \sigma(z^o_t) \\
    c_t &= f_t \odot c_{t-1} + i_t \odot g_t \\
    h_t &= o_t \odot \tanh(c_t)

Packed layout (as ``torch.nn.LSTM``): ``weight_ih`` is (4H, I) and ``weight_hh`` is
(4H, H), with rows ``[W_i; W_f; W_g; W_o]``; ``bias_ih`` and ``bias_hh`` are (4H,).
Time-major shapes: ``x`` (T, N, I); ``h0``, ``c0`` (N, H); outputs ``hs``, ``cs``
(T, N, H), whose last rows are the final state.

Backward (seed 001).  Let :math:`\bar h_t = \partial E/\partial h_t` (from the loss at
step t and from step t+1) and :math:`\bar c_t = \partial E/\partial c_t`, which gathers
from two places: through :math:`h_t` and through :math:`c_{t+1}`:

.. math::

    \bar c_t &= \bar h_t \odot o_t \odot (1 - \tanh^2 c_t) + \bar c_{t+1} \odot f_{t+1} \\
    \bar o_t &= \bar h_t \odot \tanh c_t, \quad
    \bar i_t = \bar c_t \odot g_t, \quad
    \bar g_t = \bar c_t \odot i_t, \quad
    \bar f_t = \bar c_t \odot c_{t-1} \\
    \bar z_t &= [\bar i_t\, i_t(1-i_t);\ \bar f_t\, f_t(1-f_t);\
                 \bar g_t (1-g_t^2);\ \bar o_t\, o_t(1-o_t)] \\
    \bar h_{t-1} &\mathrel{+}= W_{hh}^\top \bar z_t, \quad
    \partial E/\partial x_t = W_{ih}^\top \bar z_t

and the weight gradients are summed over time in one matmul each:
:math:`\partial E/\partial W_{hh} = \sum_t \bar z_t h_{t-1}^\top`,
:math:`\partial E/\partial W_{ih} = \sum_t \bar z_t x_t^\top`,
:math:`\partial E/\partial b = \sum_t \bar z_t`.

Memory kept for backward by the fused forward: ``T*N*7H`` values (the four activated
gates, c_t, tanh(c_t) and h_t).

Example:

>>> import torch
>>> from rnnlab.cells.lstm import lstm_sequence, lstm_sequence_reference
>>> T, N, I, H = 5, 2, 3, 4
>>> x, h0, c0 = torch.randn(T, N, I), torch.zeros(N, H), torch.zeros(N, H)
>>> w_ih, w_hh, b = torch.randn(4 * H, I), torch.randn(4 * H, H), torch.randn(4 * H)
>>> hs, cs = lstm_sequence(x, h0, c0, w_ih, w_hh, b, b)
>>> ref_hs, ref_cs = lstm_sequence_reference(x, h0, c0, w_ih, w_hh, b, b)
>>> torch.allclose(hs, ref_hs, atol=1e-6) and torch.allclose(cs, ref_cs, atol=1e-6)
True
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnnlab.cells.elman import _combined_bias


def lstm_step(
    x_t: Tensor,
    state: tuple[Tensor, Tensor],
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Reference step: ``(x_t, (h_{t-1}, c_{t-1})) -> (h_t, c_t)`` with plain autograd."""
    h_prev, c_prev = state
    z = x_t @ weight_ih.t() + h_prev @ weight_hh.t()
    if bias_ih is not None:
        z = z + bias_ih
    if bias_hh is not None:
        z = z + bias_hh
    z_i, z_f, z_g, z_o = z.chunk(4, dim=-1)
    i, f, g, o = torch.sigmoid(z_i), torch.sigmoid(z_f), torch.tanh(z_g), torch.sigmoid(z_o)
    c = f * c_prev + i * g
    h = o * torch.tanh(c)
    return h, c


def lstm_sequence_reference(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh):
    """Run :func:`lstm_step` over time. Returns ``(hs, cs)``, each (T, N, H)."""
    state, hs, cs = (h0, c0), [], []
    for x_t in x:
        state = lstm_step(x_t, state, weight_ih, weight_hh, bias_ih, bias_hh)
        hs.append(state[0])
        cs.append(state[1])
    return torch.stack(hs), torch.stack(cs)


class LSTMFunction(torch.autograd.Function):
    """Whole-sequence LSTM forward with BPTT written by hand (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh):
        T, N, _ = x.shape
        H = weight_hh.shape[1]
        bias = _combined_bias(bias_ih, bias_hh, x)
        # gates[t] starts as W_ih x_t + b (all steps in one matmul) and is turned in place
        # into the activated gates [i, f, g, o] of step t.
        gates = torch.addmm(bias, x.reshape(T * N, -1), weight_ih.t()).view(T, N, 4 * H)
        hs = x.new_empty(T, N, H)
        cs = x.new_empty(T, N, H)
        tanh_cs = x.new_empty(T, N, H)
        w_hh_t = weight_hh.t()
        h, c = h0, c0
        for t in range(T):
            z = gates[t].addmm_(h, w_hh_t)
            torch.sigmoid_(z[:, : 2 * H])
            torch.tanh_(z[:, 2 * H : 3 * H])
            torch.sigmoid_(z[:, 3 * H :])
            i, f, g, o = z.chunk(4, dim=1)
            c = torch.addcmul(f * c, i, g, out=cs[t])
            torch.mul(o, torch.tanh(c, out=tanh_cs[t]), out=hs[t])
            h = hs[t]
        ctx.has_bias = (bias_ih is not None, bias_hh is not None)
        ctx.save_for_backward(x, h0, c0, weight_ih, weight_hh, gates, hs, cs, tanh_cs)
        return hs, cs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs, grad_cs):
        x, h0, c0, weight_ih, weight_hh, gates, hs, cs, tanh_cs = ctx.saved_tensors
        T, N, I = x.shape
        H = hs.shape[2]
        grad_gates = torch.empty_like(gates)  # z-bar of every step, (T, N, 4H)
        grad_h = torch.zeros_like(h0)  # W_hh^T z-bar_{t+1}
        grad_c = torch.zeros_like(c0)  # c-bar_{t+1} * f_{t+1}
        for t in range(T - 1, -1, -1):
            i, f, g, o = gates[t].chunk(4, dim=1)
            c_prev = cs[t - 1] if t > 0 else c0
            grad_h = grad_h + grad_hs[t]
            grad_c = grad_c + grad_cs[t] + grad_h * o * (1 - tanh_cs[t] * tanh_cs[t])
            gi, gf, gg, go = grad_gates[t].chunk(4, dim=1)
            torch.mul(grad_c, g, out=gi).mul_(i * (1 - i))
            torch.mul(grad_c, c_prev, out=gf).mul_(f * (1 - f))
            torch.mul(grad_c, i, out=gg).mul_(1 - g * g)
            torch.mul(grad_h, tanh_cs[t], out=go).mul_(o * (1 - o))
            grad_c = grad_c * f
            grad_h = grad_gates[t] @ weight_hh
        grad_x = grad_h0 = grad_c0 = grad_w_ih = grad_w_hh = grad_b_ih = grad_b_hh = None
        dz = grad_gates.view(T * N, 4 * H)
        if ctx.needs_input_grad[0]:
            grad_x = (dz @ weight_ih).view(T, N, I)
        if ctx.needs_input_grad[1]:
            grad_h0 = grad_h
        if ctx.needs_input_grad[2]:
            grad_c0 = grad_c
        if ctx.needs_input_grad[3]:
            grad_w_ih = dz.t() @ x.reshape(T * N, I)
        if ctx.needs_input_grad[4]:
            h_prev = torch.cat([h0.unsqueeze(0), hs[:-1]]).view(T * N, H)
            grad_w_hh = dz.t() @ h_prev
        if any(ctx.needs_input_grad[5:7]):
            grad_b = dz.sum(0)
            grad_b_ih = grad_b if ctx.has_bias[0] else None
            grad_b_hh = grad_b if ctx.has_bias[1] else None
        return grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh


def lstm_sequence(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh):
    """Fused LSTM sequence: ``(hs, cs)`` with hand-derived BPTT as its backward."""
    return LSTMFunction.apply(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh)

r"""Gated recurrent unit: equations, reference step and hand-derived BPTT, in two forms.

Both forms keep one hidden vector, a reset gate r and an update gate z.  Write the
input side and the recurrent side of the pre-activations separately, because the two
forms differ in where the reset gate meets the recurrent term:

.. math::

    a_t &= W_{ih} x_t + b_{ih}
           \quad\text{(3H values, split into } a^r_t, a^z_t, a^n_t\text{)} \\
    r_t &= \sigma(a^r_t + W_{hr} h_{t-1} + b_{hr}), \qquad
    z_t = \sigma(a^z_t + W_{hz} h_{t-1} + b_{hz}) \\
    n_t &= \tanh(a^n_t + r_t \odot (W_{hn} h_{t-1} + b_{hn}))
           \quad\text{form="torch" (cuDNN, torch.nn.GRU)} \\
    n_t &= \tanh(a^n_t + W_{hn} (r_t \odot h_{t-1}) + b_{hn})
           \quad\text{form="cho" (Cho et al. 2014)} \\
    h_t &= (1 - z_t) \odot n_t + z_t \odot h_{t-1}

The fused forward computes the last line as :math:`n_t + z_t \odot (h_{t-1} - n_t)`,
the same number with one operation fewer.  In the torch form write
:math:`u_t = W_{hn} h_{t-1} + b_{hn}` for the recurrent part of the candidate, which
the reset gate scales; in the cho form write :math:`\rho_t = r_t \odot h_{t-1}` for the
reset state that the recurrent matmul sees.  With ``form="cho"`` the bias
:math:`b_{hn}` is outside the reset gate and acts exactly like :math:`b_{in}`.

Packed layout (as ``torch.nn.GRU``): ``weight_ih`` is (3H, I) and ``weight_hh`` is
(3H, H), with rows ``[W_r; W_z; W_n]``; ``bias_ih`` and ``bias_hh`` are (3H,) or
``None``.  Time-major shapes: ``x`` (T, N, I); ``h0`` (N, H); output ``hs`` (T, N, H),
whose last row is the final state.

Backward.  Let :math:`\bar h_t = \partial E/\partial h_t`, gathered from the loss at
step t and from step t+1.  Through the last line of the forward,

.. math::

    \bar n_t = \bar h_t \odot (1 - z_t), \qquad
    \bar z_t = \bar h_t \odot (h_{t-1} - n_t), \qquad
    \bar h_{t-1} \mathrel{+}= \bar h_t \odot z_t

and through the nonlinearities the pre-activation gradients of the input side are

.. math::

    \delta_t = [\bar r_t \odot r_t(1-r_t);\ \bar z_t \odot z_t(1-z_t);\
               \bar n_t \odot (1-n_t^2)] = [\delta^r_t; \delta^z_t; \delta^n_t]

so that :math:`\partial E/\partial x_t = W_{ih}^\top \delta_t`,
:math:`\partial E/\partial W_{ih} = \sum_t \delta_t x_t^\top` and
:math:`\partial E/\partial b_{ih} = \sum_t \delta_t`.  What remains depends on the form.

*torch form.*  The reset gate multiplies :math:`u_t`, so

.. math::

    \bar r_t &= \delta^n_t \odot u_t \\
    \delta^h_t &= [\delta^r_t;\ \delta^z_t;\ \delta^n_t \odot r_t]
        \quad\text{(gradient of } W_{hh} h_{t-1} + b_{hh}\text{)} \\
    \bar h_{t-1} &= \bar h_t \odot z_t + W_{hh}^\top \delta^h_t \\
    \partial E/\partial W_{hh} &= \textstyle\sum_t \delta^h_t h_{t-1}^\top, \qquad
    \partial E/\partial b_{hh} = \textstyle\sum_t \delta^h_t

*cho form.*  The reset gate multiplies :math:`h_{t-1}` before :math:`W_{hn}`, so the
gradient of the reset state :math:`\rho_t` comes first, and :math:`h_{t-1}` receives
gradient along three paths (the update, the reset state and the r, z matmul):

.. math::

    \bar\rho_t &= W_{hn}^\top \delta^n_t, \qquad
    \bar r_t = \bar\rho_t \odot h_{t-1} \\
    \bar h_{t-1} &= \bar h_t \odot z_t + \bar\rho_t \odot r_t
                   + W_{hr}^\top \delta^r_t + W_{hz}^\top \delta^z_t \\
    \partial E/\partial [W_{hr}; W_{hz}] &= \textstyle\sum_t [\delta^r_t; \delta^z_t]
        h_{t-1}^\top, \qquad
    \partial E/\partial W_{hn} = \textstyle\sum_t \delta^n_t \rho_t^\top, \qquad
    \partial E/\partial b_{hh} = \textstyle\sum_t \delta_t

The reverse time loop computes :math:`\delta_t` (and :math:`\delta^h_t`) for each step;
the weight gradients are summed over time after the loop, one matmul each (two for
:math:`W_{hh}` of the cho form, whose r, z rows and n rows see different inputs).

Memory kept for backward by the fused forward, besides ``x``: ``T*N*5H`` values in the
torch form (the activated gates r, z, n, :math:`u_t` and h_t) and ``T*N*4H`` in the cho
form (r, z, n and h_t; :math:`\rho_t` is recomputed in backward).  Backward's workspace
is ``T*N*4H`` in the torch form (:math:`\delta` and the n block of :math:`\delta^h`,
:math:`\delta^n_t \odot r_t`: its r and z blocks are :math:`\delta`'s, so
:math:`\delta^h` is kept for one step at a time only) and ``T*N*5H`` in the cho form
(:math:`\delta`, :math:`h_{t-1}`, :math:`\rho`).

Example:

>>> import torch
>>> from rnnlab.cells.gru import gru_sequence, gru_sequence_reference
>>> T, N, I, H = 5, 2, 3, 4
>>> x, h0 = torch.randn(T, N, I), torch.zeros(N, H)
>>> w_ih, w_hh, b = torch.randn(3 * H, I), torch.randn(3 * H, H), torch.randn(3 * H)
>>> hs = gru_sequence(x, h0, w_ih, w_hh, b, b)
>>> tuple(hs.shape)
(5, 2, 4)
>>> torch.allclose(hs, gru_sequence_reference(x, h0, w_ih, w_hh, b, b), atol=1e-6)
True
>>> cho = gru_sequence(x, h0, w_ih, w_hh, b, b, form="cho")
>>> torch.allclose(cho, gru_sequence_reference(x, h0, w_ih, w_hh, b, b, "cho"), atol=1e-6)
True
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnnlab.cells.elman import (
    _combined_bias,
    input_projection,
    outer_and_sums,
    outer_sum_prev,
    step_weight,
)

GRU_FORMS = ("torch", "cho")


def check_gru_form(form: str) -> str:
    if form not in GRU_FORMS:
        raise ValueError(f"form must be one of {', '.join(GRU_FORMS)}; got {form!r}")
    return form


def gru_step(
    x_t: Tensor,
    h_prev: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    form: str = "torch",
) -> Tensor:
    """Reference step: ``(x_t, h_{t-1}) -> h_t`` with plain autograd, either form."""
    check_gru_form(form)
    a = x_t @ weight_ih.t()
    if bias_ih is not None:
        a = a + bias_ih
    a_r, a_z, a_n = a.chunk(3, dim=-1)
    w_hr, w_hz, w_hn = weight_hh.chunk(3, dim=0)
    b_hr, b_hz, b_hn = (0.0, 0.0, 0.0) if bias_hh is None else bias_hh.chunk(3)
    r = torch.sigmoid(a_r + h_prev @ w_hr.t() + b_hr)
    z = torch.sigmoid(a_z + h_prev @ w_hz.t() + b_hz)
    if form == "torch":
        n = torch.tanh(a_n + r * (h_prev @ w_hn.t() + b_hn))
    else:
        n = torch.tanh(a_n + (r * h_prev) @ w_hn.t() + b_hn)
    return (1 - z) * n + z * h_prev


def gru_sequence_reference(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, form="torch"):
    """Run :func:`gru_step` over time; autograd derives the gradients. Returns hs (T, N, H)."""
    h, hs = h0, []
    for x_t in x:
        h = gru_step(x_t, h, weight_ih, weight_hh, bias_ih, bias_hh, form)
        hs.append(h)
    return torch.stack(hs)


# ---------------------------------------------------------------------------------------
# Forward passes.  gates[t] starts as a_t = W_ih x_t + b (all steps in one matmul) and is
# turned in place into the activated gates [r, z, n] of step t.
# ---------------------------------------------------------------------------------------


def _forward_torch(x, h0, weight_ih, weight_hh, bias_ih, bias_hh):
    """torch form: one addmm per step gives W_hh h_{t-1} + b_hh for all three gates."""
    T, N, _ = x.shape
    H = weight_hh.shape[1]
    bias = x.new_zeros(()) if bias_ih is None else bias_ih  # b_hh joins W_hh h_{t-1}
    gates = input_projection(x, weight_ih, bias)
    hs = x.new_empty(T, N, H)
    us = x.new_empty(T, N, H)  # u_t = W_hn h_{t-1} + b_hn, needed for r-bar
    recurrent = x.new_empty(N, 3 * H)  # W_hh h_{t-1} + b_hh of the current step
    w_hh_t = step_weight(weight_hh)
    h = h0
    for t in range(T):
        if bias_hh is None:
            torch.mm(h, w_hh_t, out=recurrent)
        else:
            torch.addmm(bias_hh, h, w_hh_t, out=recurrent)
        g = gates[t]
        g[:, : 2 * H].add_(recurrent[:, : 2 * H]).sigmoid_()
        r, z, n = g.chunk(3, dim=1)
        u = us[t].copy_(recurrent[:, 2 * H :])
        n.addcmul_(r, u).tanh_()
        h = torch.sub(h, n, out=hs[t]).mul_(z).add_(n)
    return gates, us, hs


def _forward_cho(x, h0, weight_ih, weight_hh, bias_ih, bias_hh):
    """cho form: b_hh joins b_ih (no bias sits under r); r, z rows and n rows each take a
    matmul per step, since n's needs r_t first."""
    T, N, _ = x.shape
    H = weight_hh.shape[1]
    bias = _combined_bias(bias_ih, bias_hh, x)
    gates = input_projection(x, weight_ih, bias)
    hs = x.new_empty(T, N, H)
    w_hrz_t = step_weight(weight_hh[: 2 * H])
    w_hn_t = step_weight(weight_hh[2 * H :])
    h = h0
    for t in range(T):
        g = gates[t]
        g[:, : 2 * H].addmm_(h, w_hrz_t).sigmoid_()
        r, z, n = g.chunk(3, dim=1)
        n.addmm_(r * h, w_hn_t).tanh_()
        h = torch.sub(h, n, out=hs[t]).mul_(z).add_(n)
    return gates, hs


# ---------------------------------------------------------------------------------------
# Backward passes: reverse time loop for delta_t, then the weight gradients in one go.
# Each returns (grad_x, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh), computing
# only what `needs` (ctx.needs_input_grad[:6]) asks for.
# ---------------------------------------------------------------------------------------


def _update_gate_grads(grad_h, h_prev, z, n, grad_z, grad_n):
    """delta^z and delta^n from h_t = n + z (h_{t-1} - n), written into their slices."""
    torch.mul(grad_h, 1 - z, out=grad_n).mul_(1 - n * n)
    torch.mul(grad_h, h_prev - n, out=grad_z).mul_(z * (1 - z))


def _backward_torch(needs, grad_hs, x, h0, weight_ih, weight_hh, gates, us, hs):
    T = x.shape[0]
    H = hs.shape[2]
    grad_gates = torch.empty_like(gates)  # delta_t of every step, (T, N, 3H)
    grad_n_r = torch.empty_like(hs)  # delta^n_t * r_t of every step, (T, N, H)
    step_h = gates.new_empty(gates.shape[1:])  # delta^h_t of the current step, (N, 3H)
    grad_h = torch.zeros_like(h0)  # h-bar_{t-1} collected from step t
    for t in range(T - 1, -1, -1):
        r, z, n = gates[t].chunk(3, dim=1)
        h_prev = hs[t - 1] if t > 0 else h0
        grad_h = grad_h + grad_hs[t]
        grad_r, grad_z, grad_n = grad_gates[t].chunk(3, dim=1)
        _update_gate_grads(grad_h, h_prev, z, n, grad_z, grad_n)
        torch.mul(grad_n, us[t], out=grad_r).mul_(r * (1 - r))
        step_h[:, : 2 * H] = grad_gates[t, :, : 2 * H]
        torch.mul(grad_n, r, out=grad_n_r[t])
        step_h[:, 2 * H :] = grad_n_r[t]
        grad_h = torch.addmm(grad_h * z, step_h, weight_hh)
    return torch_form_grads(needs, x, h0, hs, weight_ih, grad_gates, grad_n_r, grad_h)


def torch_form_grads(needs, x, h0, hs, weight_ih, grad_gates, grad_n_r, grad_h, mm=torch.mm):
    """The torch form's gradients after the reverse loop, one matmul or sum each:
    ``(grad_x, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh)`` from delta
    (``grad_gates``, (T, N, 3H)) and the n block of delta^h, delta^n * r (``grad_n_r``,
    (T, N, H)): the r and z blocks of delta^h are delta's own, so delta^h is never
    stored whole.  Shared by the fused and the compiled (:mod:`rnnlab.backends.numba_gru`)
    backward; ``mm``: the product (:func:`rnnlab.cells.elman.input_projection`)."""
    T, N, I = x.shape
    H = hs.shape[2]
    delta = grad_gates.view(T * N, 3 * H)
    grad_x = grad_w_ih = grad_w_hh = grad_b_ih = grad_b_hh = None
    if needs[0]:
        grad_x = mm(delta, weight_ih).view(T, N, I)
    if needs[2]:
        grad_w_ih, grad_b_ih = outer_and_sums(x.reshape(T * N, I), delta, mm, needs[4] or needs[5])
    if needs[3]:
        # sum_t delta^h_t h_{t-1}^T in blocks [r, z] and n; h_{t-1} is h0 then hs[:-1]
        # (two products each, rather than a copy of the stacked h_{t-1})
        blocks = (grad_gates[:, :, : 2 * H], grad_n_r)
        grad_w_hh = torch.cat([outer_sum_prev(h0, hs, d, mm).t() for d in blocks])
    if (needs[4] or needs[5]) and grad_b_ih is None:
        grad_b_ih = delta.sum(0)
    if needs[5]:
        grad_b_hh = torch.cat([grad_b_ih[: 2 * H], grad_n_r.sum((0, 1))])
    if not needs[4]:
        grad_b_ih = None
    return grad_x, grad_h, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh


def _backward_cho(needs, grad_hs, x, h0, weight_ih, weight_hh, gates, hs):
    T, H = x.shape[0], hs.shape[2]
    w_hrz, w_hn = weight_hh[: 2 * H], weight_hh[2 * H :]
    grad_gates = torch.empty_like(gates)  # delta_t of every step, (T, N, 3H)
    grad_h = torch.zeros_like(h0)  # h-bar_{t-1} collected from step t
    for t in range(T - 1, -1, -1):
        r, z, n = gates[t].chunk(3, dim=1)
        h_prev = hs[t - 1] if t > 0 else h0
        grad_h = grad_h + grad_hs[t]
        grad_r, grad_z, grad_n = grad_gates[t].chunk(3, dim=1)
        _update_gate_grads(grad_h, h_prev, z, n, grad_z, grad_n)
        grad_rho = grad_n @ w_hn
        torch.mul(grad_rho, h_prev, out=grad_r).mul_(r * (1 - r))
        grad_h = torch.addmm(grad_h * z + grad_rho * r, grad_gates[t, :, : 2 * H], w_hrz)
    return cho_form_grads(needs, x, h0, hs, gates, weight_ih, weight_hh, grad_gates, grad_h)


def cho_form_grads(needs, x, h0, hs, gates, weight_ih, weight_hh, grad_gates, grad_h,
                   mm=torch.mm):  # fmt: skip
    """The Cho form's gradients after the reverse loop, from delta (``grad_gates``,
    (T, N, 3H)) and ``grad_h`` = h0's gradient: ``(grad_x, grad_h0, grad_w_ih, grad_w_hh,
    grad_b, grad_b)`` (b_ih and b_hh act as one bias).  Shared by the fused and the
    compiled (:mod:`rnnlab.backends.numba_gru`) backward; ``mm`` as torch_form_grads'."""
    T, N, I = x.shape
    H = hs.shape[2]
    delta = grad_gates.view(T * N, 3 * H)
    grad_x = grad_w_ih = grad_w_hh = grad_b = None
    if needs[0]:
        grad_x = mm(delta, weight_ih).view(T, N, I)
    if needs[2]:
        grad_w_ih, grad_b = outer_and_sums(x.reshape(T * N, I), delta, mm, needs[4] or needs[5])
    if needs[3]:
        h_prev = torch.cat([h0.unsqueeze(0), hs[:-1]]).view(T * N, H)
        rho = gates[:, :, :H].reshape(T * N, H) * h_prev
        grad_w_hh = torch.cat([mm(delta[:, : 2 * H].t(), h_prev), mm(delta[:, 2 * H :].t(), rho)])
    if (needs[4] or needs[5]) and grad_b is None:
        grad_b = delta.sum(0)
    return grad_x, grad_h, grad_w_ih, grad_w_hh, grad_b, grad_b


class GRUFunction(torch.autograd.Function):
    """Whole-sequence GRU forward with BPTT written by hand (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, h0, weight_ih, weight_hh, bias_ih, bias_hh, form):
        ctx.form = form
        ctx.has_bias = (bias_ih is not None, bias_hh is not None)
        if form == "torch":
            gates, us, hs = _forward_torch(x, h0, weight_ih, weight_hh, bias_ih, bias_hh)
            ctx.save_for_backward(x, h0, weight_ih, weight_hh, gates, us, hs)
        else:
            gates, hs = _forward_cho(x, h0, weight_ih, weight_hh, bias_ih, bias_hh)
            ctx.save_for_backward(x, h0, weight_ih, weight_hh, gates, hs)
        return hs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs):
        needs = ctx.needs_input_grad
        if ctx.form == "torch":
            grads = _backward_torch(needs, grad_hs, *ctx.saved_tensors)
        else:
            grads = _backward_cho(needs, grad_hs, *ctx.saved_tensors)
        grad_x, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh = grads
        grad_h0 = grad_h0 if needs[1] else None
        grad_b_ih = grad_b_ih if ctx.has_bias[0] else None
        grad_b_hh = grad_b_hh if ctx.has_bias[1] else None
        return grad_x, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, None


def gru_sequence(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, form="torch"):
    """Fused GRU sequence: hs (T, N, H) with hand-derived BPTT as its backward."""
    check_gru_form(form)
    return GRUFunction.apply(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, form)

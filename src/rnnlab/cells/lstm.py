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

Extended LSTM
-------------

:func:`lstm_ext_sequence` (fused: :class:`LSTMExtFunction`) and
:func:`lstm_ext_sequence_reference` (:func:`lstm_ext_step` in a loop) take the arguments
above plus five keyword options that ``torch.nn.LSTM`` lacks or limits.  Each is off when
``None``, costs nothing then, and combines freely with the others:

* ``weight_hr`` (P, H): projection, as ``torch.nn.LSTM(proj_size=P)``.  With it h has P
  units and c has H: ``h0`` (N, P), ``c0`` (N, H), ``weight_hh`` (4H, P), outputs
  ``hs`` (T, N, P) and ``cs`` (T, N, H).  Without it P = H.
* ``peephole`` (3, H): the rows :math:`[w_{ci}; w_{cf}; w_{co}]` (Gers & Schmidhuber).
* ``ln``: :class:`LSTMLayerNorm` ``(gamma_x, beta_x, gamma_h, beta_h, gamma_c, beta_c)``,
  the first four (4H,), the last two (H,), or any 6-tuple in that order: layer
  normalisation (Ba et al. 2016).  Each 4H-vector is normalised over all its 4H units
  (not gate by gate), the cell over its H units; :math:`\epsilon` = ``LN_EPS`` = 1e-5.
  ``b_ih + b_hh`` are still added after the normalisations (redundant with the betas,
  kept so the weight layout stays ``torch.nn``'s).
* ``drop_mask`` (N, P), or anything broadcasting to it: the recurrent (variational)
  dropout mask m of Gal & Ghahramani, one per sequence, already scaled by 1/(1-p), applied
  to :math:`h_{t-1}` before :math:`W_{hh}` at every step.  Sample it once per sequence,
  e.g. ``torch.bernoulli(torch.full((N, P), 1 - p)) / (1 - p)``.
* ``zoneout = (zone_h, zone_c)``: :math:`d^h` (T, N, P) and :math:`d^c` (T, N, H), or
  anything broadcasting to those, or a float; either entry may be ``None`` (Krueger et
  al. 2017).  In training pass 0/1 samples (1 = keep the old value, drawn with
  probability p); in evaluation pass the probability itself (e.g. ``zoneout=(0.1, 0.05)``),
  which gives the expectation :math:`h_t = p\,h_{t-1} + (1-p)\,\tilde h_t`.

The masks are constants: no gradient reaches them.  Step t of the extended forward; an
option that is off drops its term (m = 1, :math:`w_c` = 0, LN(v) = v,
:math:`W_{hr}` = identity, d = 0):

.. math::

    r_{t-1} &= m \odot h_{t-1}, \quad a^x_t = W_{ih} x_t, \quad a^h_t = W_{hh} r_{t-1} \\
    z_t &= \mathrm{LN}(a^x_t; \gamma_x, \beta_x) + \mathrm{LN}(a^h_t; \gamma_h, \beta_h)
           + b_{ih} + b_{hh} \\
    i_t &= \sigma(z^i_t + w_{ci} \odot c_{t-1}), \quad
    f_t = \sigma(z^f_t + w_{cf} \odot c_{t-1}), \quad g_t = \tanh(z^g_t) \\
    \tilde c_t &= f_t \odot c_{t-1} + i_t \odot g_t, \quad
    o_t = \sigma(z^o_t + w_{co} \odot \tilde c_t) \\
    y_t &= \tanh(n_t), \quad n_t = \mathrm{LN}(\tilde c_t; \gamma_c, \beta_c), \quad
    u_t = o_t \odot y_t, \quad \tilde h_t = W_{hr} u_t \\
    c_t &= d^c_t \odot c_{t-1} + (1 - d^c_t) \odot \tilde c_t, \quad
    h_t = d^h_t \odot h_{t-1} + (1 - d^h_t) \odot \tilde h_t

with :math:`\mathrm{LN}(v; \gamma, \beta) = \gamma \odot \hat v + \beta`,
:math:`\hat v = (v - \mu)\rho`, :math:`\mu` the mean of v's units and
:math:`\rho = 1/\sqrt{\mathrm{var}(v) + \epsilon}` (biased variance).  As in the zoneout
paper, the output gate's peephole and :math:`\tilde h_t` see the new cell
:math:`\tilde c_t` before zoneout; ``cs`` holds the zoned :math:`c_t`, the carried state.

Backward of the extended LSTM.  :math:`\bar h_t`, :math:`\bar c_t` gather the loss at
step t and what step t+1 sends back.  Through step t, in the code's order:

.. math::

    \bar{\tilde h}_t &= (1 - d^h_t) \odot \bar h_t, \quad
    \bar{\tilde c}_t \leftarrow (1 - d^c_t) \odot \bar c_t, \quad
    \bar u_t = W_{hr}^\top \bar{\tilde h}_t \\
    \bar z^o_t &= \bar u_t \odot y_t \odot o_t (1 - o_t), \quad
    \bar n_t = \bar u_t \odot o_t \odot (1 - y_t^2) \\
    \bar{\tilde c}_t &\mathrel{+}= \mathrm{LN}'(\bar n_t; \gamma_c, \hat c_t, \rho^c_t)
        + w_{co} \odot \bar z^o_t \\
    \bar z^i_t &= \bar{\tilde c}_t \odot g_t \odot i_t (1 - i_t), \quad
    \bar z^f_t = \bar{\tilde c}_t \odot c_{t-1} \odot f_t (1 - f_t), \quad
    \bar z^g_t = \bar{\tilde c}_t \odot i_t \odot (1 - g_t^2) \\
    \bar c_{t-1} &\mathrel{+}= f_t \odot \bar{\tilde c}_t + d^c_t \odot \bar c_t
        + w_{ci} \odot \bar z^i_t + w_{cf} \odot \bar z^f_t \\
    \bar a^h_t &= \mathrm{LN}'(\bar z_t; \gamma_h, \hat a^h_t, \rho^h_t), \quad
    \bar h_{t-1} \mathrel{+}= m \odot (W_{hh}^\top \bar a^h_t) + d^h_t \odot \bar h_t

where the standard layer-norm backward, with :math:`\hat g = \gamma \odot \bar g` and
means over the normalised units, is

.. math::

    \mathrm{LN}'(\bar g; \gamma, \hat v, \rho) =
        \rho \left(\hat g - \mathrm{mean}(\hat g) - \hat v \odot
        \mathrm{mean}(\hat g \odot \hat v)\right).

After the reverse loop, with sums over t and the batch (one matmul or one reduction
each): :math:`\bar a^x_t = \mathrm{LN}'(\bar z_t; \gamma_x, \hat a^x_t, \rho^x_t)`,
:math:`\partial E/\partial x_t = W_{ih}^\top \bar a^x_t`,
:math:`\bar W_{ih} = \sum \bar a^x_t x_t^\top`,
:math:`\bar W_{hh} = \sum \bar a^h_t r_{t-1}^\top`,
:math:`\bar W_{hr} = \sum \bar{\tilde h}_t u_t^\top`,
:math:`\bar b = \bar\beta_x = \bar\beta_h = \sum \bar z_t`,
:math:`\bar\gamma_x = \sum \bar z_t \odot \hat a^x_t`,
:math:`\bar\gamma_h = \sum \bar z_t \odot \hat a^h_t`,
:math:`\bar\gamma_c = \sum \bar n_t \odot \hat c_t`, :math:`\bar\beta_c = \sum \bar n_t`,
:math:`\bar w_{ci} = \sum \bar z^i_t \odot c_{t-1}`,
:math:`\bar w_{cf} = \sum \bar z^f_t \odot c_{t-1}`,
:math:`\bar w_{co} = \sum \bar z^o_t \odot \tilde c_t`.  Without LN,
:math:`\bar a^x = \bar a^h = \bar z`; the x-side layer norm sits outside the recurrence,
so its forward and backward each run once over all steps.

Memory kept for backward by the extended forward: ``T*N*(6H + P)`` values (gates, c_t,
y_t, h_t), plus ``T*N*H`` for :math:`\tilde c_t` with zoneout on c, ``T*N*H`` for
:math:`u_t` with projection, and ``T*N*(9H + 3)`` with LN (the normalised
:math:`\hat a^x_t`, :math:`\hat a^h_t`, :math:`\hat c_t` and their three :math:`\rho`).
The masks are kept as given (a float or a broadcast mask is an expanded view and takes
no memory).  The backward adds ``T*N*9H`` of scratch (activation derivatives and
:math:`\bar z`), ``T*N*5H`` more with LN and ``T*N*P`` with projection.

Forget-gate bias: :func:`init_forget_bias` sets :math:`b^f_{ih} + b^f_{hh}` to a value
(commonly 1), which ``torch.nn.LSTM`` cannot do; the ``rnnlab.LSTM`` layer is to expose it
as ``forget_bias``, whose default ``None`` leaves ``torch.nn``'s uniform init untouched.

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

The extended LSTM with every option on (projection to P = 2 units, evaluation-time
zoneout probabilities), and the forget-gate bias set to 1:

>>> from rnnlab.cells.lstm import (
...     LSTMLayerNorm, init_forget_bias, lstm_ext_sequence, lstm_ext_sequence_reference)
>>> P = 2
>>> w_hh_p, w_hr, b_hh = torch.randn(4 * H, P), torch.randn(P, H), torch.randn(4 * H)
>>> b_ih, b_hh = init_forget_bias(b.clone(), b_hh, value=1.0)
>>> bool((b_ih[H : 2 * H] + b_hh[H : 2 * H] == 1.0).all())
True
>>> ln = LSTMLayerNorm(torch.ones(4 * H), torch.zeros(4 * H), torch.ones(4 * H),
...                    torch.zeros(4 * H), torch.ones(H), torch.zeros(H))
>>> drop_mask = torch.bernoulli(torch.full((N, P), 0.75)) / 0.75
>>> options = dict(weight_hr=w_hr, peephole=torch.randn(3, H), ln=ln,
...                drop_mask=drop_mask, zoneout=(0.1, 0.05))
>>> hs, cs = lstm_ext_sequence(x, torch.zeros(N, P), c0, w_ih, w_hh_p, b_ih, b_hh, **options)
>>> tuple(hs.shape), tuple(cs.shape)
((5, 2, 2), (5, 2, 4))
>>> ref_hs, ref_cs = lstm_ext_sequence_reference(
...     x, torch.zeros(N, P), c0, w_ih, w_hh_p, b_ih, b_hh, **options)
>>> torch.allclose(hs, ref_hs, atol=1e-6) and torch.allclose(cs, ref_cs, atol=1e-6)
True
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnnlab.cells.elman import (
    _combined_bias,
    input_projection,
    outer_and_sums,
    outer_sum_prev,
    step_weight,
)


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
        gates = input_projection(x, weight_ih, bias)
        hs = x.new_empty(T, N, H)
        cs = x.new_empty(T, N, H)
        tanh_cs = x.new_empty(T, N, H)
        w_hh_t = step_weight(weight_hh)
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


# =======================================================================================
# Extended LSTM: projection, peepholes, layer normalisation, recurrent dropout, zoneout.
# =======================================================================================

LN_EPS = 1e-5


class LSTMLayerNorm(NamedTuple):
    """Gains and shifts of the three layer normalisations of the LN-LSTM.

    ``gamma_x``, ``beta_x``, ``gamma_h``, ``beta_h`` are (4H,) and act on the 4H-vectors
    ``W_ih x_t`` and ``W_hh r_{t-1}``; ``gamma_c``, ``beta_c`` are (H,) and act on the cell
    before its tanh.  Any 6-tuple in this order is accepted where an ``LSTMLayerNorm`` is.
    The usual init is gains 1 and shifts 0.
    """

    gamma_x: Tensor
    beta_x: Tensor
    gamma_h: Tensor
    beta_h: Tensor
    gamma_c: Tensor
    beta_c: Tensor


def init_forget_bias(
    bias_ih: Tensor | None, bias_hh: Tensor | None, value: float = 1.0
) -> tuple[Tensor | None, Tensor | None]:
    """Set the forget-gate biases (rows H..2H) in place so that ``b_ih^f + b_hh^f == value``.

    The whole value goes into ``bias_ih``'s slice and ``bias_hh``'s slice is zeroed (into
    ``bias_hh`` when ``bias_ih`` is None).  ``torch.nn.LSTM`` has no such option: every bias
    keeps its U(-1/sqrt(H), 1/sqrt(H)) init.  The ``rnnlab.LSTM`` layer exposes this as
    ``forget_bias``: ``None`` (default) leaves ``torch.nn``'s init untouched, a float calls
    this function.  Returns the two biases.
    """
    if bias_ih is None and bias_hh is None:
        raise ValueError("init_forget_bias needs at least one bias tensor")
    ref = bias_ih if bias_ih is not None else bias_hh
    H = ref.shape[0] // 4
    with torch.no_grad():
        if bias_ih is not None:
            bias_ih[H : 2 * H] = value
            if bias_hh is not None:
                bias_hh[H : 2 * H] = 0.0
        else:
            bias_hh[H : 2 * H] = value
    return bias_ih, bias_hh


def _layer_norm_backward(
    grad_out: Tensor, gamma: Tensor, v_hat: Tensor, rstd: Tensor, out: Tensor | None = None
) -> Tensor:
    """LN'(g; gamma, v_hat, rho) = rho (g_hat - mean(g_hat) - v_hat mean(g_hat v_hat)),
    g_hat = gamma * g: the gradient reaching the input v of gamma * v_hat + beta."""
    return _layer_norm_grads(grad_out, gamma, v_hat, rstd, out=out)[0]


def _layer_norm_grads(
    grad_out: Tensor,
    gamma: Tensor,
    v_hat: Tensor,
    rstd: Tensor,
    out: Tensor | None = None,
    gain: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """``(LN'(g), sum of g * v_hat over the rows or None)``: :func:`_layer_norm_backward`
    and, with ``gain``, the gradient of gamma, in one call of PyTorch's own layer-norm
    backward kernel (4-5x faster than the same formula in separate tensor operations, on
    (2,500 x 512) float32 rows on one thread).

    That kernel takes the layer's input, mean and rstd and normalises again; given v_hat
    itself with mean 0 and rstd 1 it normalises to v_hat exactly (x - 0 and x * 1 are
    exact), so its input gradient is LN'(g) / rho, scaled by rho after."""
    shape = v_hat.shape[:-1] + (1,)
    zeros, ones = v_hat.new_zeros(shape), v_hat.new_ones(shape)
    grad_in, grad_gamma, _ = torch.ops.aten.native_layer_norm_backward(
        grad_out, v_hat, v_hat.shape[-1:], zeros, ones, gamma, None, [True, gain, False]
    )
    return torch.mul(grad_in, rstd, out=out), grad_gamma


def lstm_ext_step(
    x_t: Tensor,
    state: tuple[Tensor, Tensor],
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    *,
    weight_hr: Tensor | None = None,
    peephole: Tensor | None = None,
    ln: LSTMLayerNorm | tuple | None = None,
    drop_mask: Tensor | None = None,
    zoneout: tuple | None = None,
) -> tuple[Tensor, Tensor]:
    """Reference step of the extended LSTM, plain autograd: ``(x_t, (h, c)) -> (h_t, c_t)``.

    ``zoneout`` is ``(zone_h_t, zone_c_t)`` for this one step: tensors broadcastable to
    (N, P) and (N, H), floats, or None.  Every other option as in the module docstring.
    """
    h_prev, c_prev = state
    r = h_prev if drop_mask is None else drop_mask * h_prev
    a_x = x_t @ weight_ih.t()
    a_h = r @ weight_hh.t()
    if ln is not None:
        ln = LSTMLayerNorm(*ln)
        a_x = F.layer_norm(a_x, a_x.shape[-1:], ln.gamma_x, ln.beta_x, LN_EPS)
        a_h = F.layer_norm(a_h, a_h.shape[-1:], ln.gamma_h, ln.beta_h, LN_EPS)
    z = a_x + a_h
    if bias_ih is not None:
        z = z + bias_ih
    if bias_hh is not None:
        z = z + bias_hh
    z_i, z_f, z_g, z_o = z.chunk(4, dim=-1)
    if peephole is not None:
        w_ci, w_cf, w_co = peephole
        z_i = z_i + w_ci * c_prev
        z_f = z_f + w_cf * c_prev
    i, f, g = torch.sigmoid(z_i), torch.sigmoid(z_f), torch.tanh(z_g)
    c_tilde = f * c_prev + i * g
    if peephole is not None:
        z_o = z_o + w_co * c_tilde
    o = torch.sigmoid(z_o)
    n = c_tilde
    if ln is not None:
        n = F.layer_norm(c_tilde, c_tilde.shape[-1:], ln.gamma_c, ln.beta_c, LN_EPS)
    h_tilde = o * torch.tanh(n)
    if weight_hr is not None:
        h_tilde = h_tilde @ weight_hr.t()
    zone_h, zone_c = (None, None) if zoneout is None else zoneout
    h = h_tilde if zone_h is None else zone_h * h_prev + (1 - zone_h) * h_tilde
    c = c_tilde if zone_c is None else zone_c * c_prev + (1 - zone_c) * c_tilde
    return h, c


def _broadcasts_to(shape, target: tuple[int, ...]) -> bool:
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


def _check_ext_args(x, h0, c0, weight_ih, weight_hh, weight_hr, peephole, ln, drop_mask):
    """Shapes of the extended LSTM's arguments; returns (T, N, H, P)."""
    T, N, _ = x.shape
    H, P = c0.shape[-1], h0.shape[-1]
    if weight_ih.shape[0] != 4 * H:
        raise ValueError(f"weight_ih must have 4H = {4 * H} rows; got {tuple(weight_ih.shape)}")
    if tuple(weight_hh.shape) != (4 * H, P):
        raise ValueError(f"weight_hh must be (4H, P) = {(4 * H, P)}; got {tuple(weight_hh.shape)}")
    if weight_hr is None and P != H:
        raise ValueError(f"h0 has {P} units but c0 has {H}: that needs weight_hr (P, H)")
    if weight_hr is not None and tuple(weight_hr.shape) != (P, H):
        raise ValueError(f"weight_hr must be (P, H) = {(P, H)}; got {tuple(weight_hr.shape)}")
    if peephole is not None and tuple(peephole.shape) != (3, H):
        raise ValueError(f"peephole must be (3, H) = {(3, H)}; got {tuple(peephole.shape)}")
    if ln is not None:
        if len(ln) != 6:
            raise ValueError("ln must hold six tensors (gamma_x, beta_x, gamma_h, beta_h, ...)")
        sizes = (4 * H,) * 4 + (H,) * 2
        for name, p, size in zip(LSTMLayerNorm._fields, ln, sizes, strict=True):
            if tuple(p.shape) != (size,):
                raise ValueError(f"ln.{name} must be ({size},); got {tuple(p.shape)}")
    if drop_mask is not None and not _broadcasts_to(drop_mask.shape, (N, P)):
        raise ValueError(f"drop_mask must broadcast to (N, P) = {(N, P)}")
    return T, N, H, P


def _zoneout_tensors(zoneout, T: int, N: int, H: int, P: int, like: Tensor):
    """``zoneout`` -> (zone_h (T, N, P) or None, zone_c (T, N, H) or None), as expanded
    views: a float or a broadcastable tensor costs no memory."""
    if zoneout is None:
        return None, None
    if len(zoneout) != 2:
        raise ValueError("zoneout must be a pair (zone_h, zone_c); either may be None")
    out = []
    for name, zone, size in zip(("zone_h", "zone_c"), zoneout, (P, H), strict=True):
        if zone is None:
            out.append(None)
            continue
        zone = torch.as_tensor(zone, dtype=like.dtype, device=like.device)
        if not _broadcasts_to(zone.shape, (T, N, size)):
            raise ValueError(f"{name} must broadcast to (T, N, {size}); got {tuple(zone.shape)}")
        out.append(zone.expand(T, N, size))
    return tuple(out)


def lstm_ext_sequence_reference(
    x,
    h0,
    c0,
    weight_ih,
    weight_hh,
    bias_ih,
    bias_hh,
    *,
    weight_hr=None,
    peephole=None,
    ln=None,
    drop_mask=None,
    zoneout=None,
):
    """Run :func:`lstm_ext_step` over time. Returns ``(hs, cs)``: (T, N, P) and (T, N, H)."""
    T, N, H, P = _check_ext_args(
        x, h0, c0, weight_ih, weight_hh, weight_hr, peephole, ln, drop_mask
    )
    zone_h, zone_c = _zoneout_tensors(zoneout, T, N, H, P, x)
    options = {"weight_hr": weight_hr, "peephole": peephole, "ln": ln, "drop_mask": drop_mask}
    state, hs, cs = (h0, c0), [], []
    for t in range(T):
        zone_t = (
            None if zone_h is None else zone_h[t],
            None if zone_c is None else zone_c[t],
        )
        state = lstm_ext_step(
            x[t], state, weight_ih, weight_hh, bias_ih, bias_hh, zoneout=zone_t, **options
        )
        hs.append(state[0])
        cs.append(state[1])
    return torch.stack(hs), torch.stack(cs)


def ext_input_gates(x, weight_ih, bias, gamma_x=None, beta_x=None, beta_h=None):
    r"""``(gates, a_x_hats, rstd_x)``: the input side of every step in one matmul.

    ``gates`` (T, N, 4H) is :math:`W_{ih} x_t + b`, or with LN (``gamma_x`` given)
    :math:`\gamma_x \hat a^x_t + \beta_x + \beta_h + b`; ``native_layer_norm`` without
    gain and shift gives the normalised :math:`\hat a^x` (kept for backward, else None)
    and :math:`\rho^x`.  Shared by the fused and the compiled extended LSTM.
    """
    T, N, _ = x.shape
    G = weight_ih.shape[0]
    if gamma_x is None:
        return input_projection(x, weight_ih, bias), None, None
    a_x = input_projection(x, weight_ih).view(T * N, G)
    a_x_hats, _, rstd_x = torch.native_layer_norm(a_x, (G,), None, None, LN_EPS)
    gates = torch.addcmul(beta_x + beta_h + bias, gamma_x, a_x_hats, out=a_x).view(T, N, G)
    return gates, a_x_hats, rstd_x


def ext_parameter_grads(needs, has_bias, inputs, grads, outputs, ln_saved, summed=None,
                        mm=torch.mm):  # fmt: skip
    """The extended LSTM's gradient tuple, after the reverse loop (module docstring: one
    matmul or reduction per gradient).  Shared by the fused and the compiled backward.

    ``inputs``: (x, h0, c0, weight_ih, weight_hh, weight_hr, peephole, drop_mask);
    ``grads``: (grad_gates (T, N, 4H) = z-bar, grad_a_h = a^h-bar (z-bar itself without
    LN), grad_ns = n-bar (LN only), grad_h_tildes (projection only), grad_h, grad_c =
    the gradients of h0 and c0); ``outputs``: (hs, cs, c_tildes, us);
    ``ln_saved``: (gamma_x, gamma_h, gamma_c, a_x_hats, rstd_x, a_h_hats, c_hats);
    ``summed``: what the reverse loop summed already (the compiled path), by name:
    ``"peephole"`` (3, H), and with LN ``"a_x"`` (a^x-bar as (TN, 4H)), ``"gamma_x"``,
    ``"gamma_h"``, ``"gamma_c"``, ``"beta_c"``, ``"bias"``; with LN ``grad_gates`` and
    ``grad_ns`` are then not read.  ``mm``: the product for the matmuls over all steps
    (:func:`rnnlab.cells.elman.input_projection`).
    """
    x, h0, c0, weight_ih, weight_hh, weight_hr, peephole, drop_mask = inputs
    grad_gates, grad_a_h, grad_ns, grad_h_tildes, grad_h, grad_c = grads
    hs, cs, c_tildes, us = outputs
    gamma_x, gamma_h, gamma_c, a_x_hats, rstd_x, a_h_hats, c_hats = ln_saved
    T, N, I = x.shape
    H, P = c0.shape[1], h0.shape[1]
    use_ln = gamma_x is not None
    summed = summed or {}
    grad_gamma_x = grad_gamma_h = grad_gamma_c = grad_beta_c = None
    if "a_x" in summed:
        grad_a_x, grad_b = summed["a_x"], summed["bias"]
        grad_gamma_x, grad_gamma_h = summed["gamma_x"], summed["gamma_h"]
        grad_gamma_c, grad_beta_c = summed["gamma_c"], summed["beta_c"]
    else:
        dz = grad_gates.view(T * N, 4 * H)
        # without LN b's gradient comes with W_ih's below, from one product where mm can
        grad_b = dz.sum(0) if use_ln or not needs[3] else None
        grad_a_x = dz  # a^x-bar: z-bar itself without LN
    if use_ln and "a_x" not in summed:
        grad_a_x, grad_gamma_x = _layer_norm_grads(dz, gamma_x, a_x_hats, rstd_x, gain=True)
        grad_gamma_h = (dz * a_h_hats.view(T * N, 4 * H)).sum(0)
        grad_gamma_c = (grad_ns * c_hats).sum((0, 1))
        grad_beta_c = grad_ns.sum((0, 1))
    grad_x = mm(grad_a_x, weight_ih).view(T, N, I) if needs[0] else None
    grad_w_ih = None
    if needs[3]:  # (x^T a-bar)^T, and b's gradient with it where it is still to come
        grad_w_ih, sums = outer_and_sums(x.reshape(T * N, I), grad_a_x, mm, grad_b is None)
        grad_b = sums if grad_b is None else grad_b
    grad_w_hh = None
    if needs[4]:
        if drop_mask is None:
            grad_w_hh = outer_sum_prev(h0, hs, grad_a_h, mm).t()
        else:
            r_prev = torch.cat([h0.unsqueeze(0), hs[:-1]]) * drop_mask  # r_{t-1} = m h_{t-1}
            grad_w_hh = mm(r_prev.view(T * N, P).t(), grad_a_h.reshape(T * N, 4 * H)).t()
    grad_w_hr = None
    if weight_hr is not None and needs[7]:
        grad_w_hr = mm(grad_h_tildes.view(T * N, P).t(), us.view(T * N, H))
    grad_peephole = summed.get("peephole") if needs[8] else None
    if peephole is not None and needs[8] and grad_peephole is None:
        c_prev = torch.cat([c0.unsqueeze(0), cs[:-1]])
        gi, gf, _, go = grad_gates.chunk(4, dim=2)
        grad_peephole = torch.stack(
            [(gi * c_prev).sum((0, 1)), (gf * c_prev).sum((0, 1)), (go * c_tildes).sum((0, 1))]
        )
    has_b_ih, has_b_hh = has_bias
    return (
        grad_x,
        grad_h if needs[1] else None,
        grad_c if needs[2] else None,
        grad_w_ih,
        grad_w_hh,
        grad_b if has_b_ih and needs[5] else None,
        grad_b if has_b_hh and needs[6] else None,
        grad_w_hr,
        grad_peephole,
        grad_gamma_x,
        grad_b if use_ln else None,  # beta_x: LN(v) = gamma v^ + beta
        grad_gamma_h,
        grad_b if use_ln else None,  # beta_h
        grad_gamma_c,
        grad_beta_c,
        None,  # drop_mask and the zoneout masks are constants
        None,
        None,
    )


class LSTMExtFunction(torch.autograd.Function):
    """Whole-sequence extended LSTM with BPTT written by hand (see the module docstring).

    ``apply(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, peephole,
    gamma_x, beta_x, gamma_h, beta_h, gamma_c, beta_c, drop_mask, zone_h, zone_c)``;
    every argument after ``bias_hh`` may be None (the six LN tensors all or none), the
    zoneout tensors are (T, N, P) and (T, N, H).  The masks get no gradient.
    """

    @staticmethod
    def forward(ctx, x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, *options):
        (weight_hr, peephole, gamma_x, beta_x, gamma_h, beta_h, gamma_c, beta_c,
         drop_mask, zone_h, zone_c) = options  # fmt: skip
        T, N, I = x.shape
        H, P = c0.shape[1], h0.shape[1]
        use_ln = gamma_x is not None
        bias = _combined_bias(bias_ih, bias_hh, x)
        # gates[t] starts as W_ih x_t + b (or its LN), all steps in one matmul, and is
        # turned in place into the activated gates [i, f, g, o] of step t.
        gates, a_x_hats, rstd_x = ext_input_gates(x, weight_ih, bias, gamma_x, beta_x, beta_h)
        a_h_hats = rstd_h = c_hats = rstd_c = None
        if use_ln:
            a_h_hats, rstd_h = x.new_empty(T, N, 4 * H), x.new_empty(T, N, 1)
            c_hats, rstd_c = x.new_empty(T, N, H), x.new_empty(T, N, 1)
        hs = x.new_empty(T, N, P)
        cs = x.new_empty(T, N, H)
        c_tildes = cs if zone_c is None else x.new_empty(T, N, H)  # cell before zoneout
        ys = x.new_empty(T, N, H)  # tanh(LN(c~_t))
        us = None if weight_hr is None else x.new_empty(T, N, H)  # o * y, before W_hr
        h_tilde_buf = None if zone_h is None else x.new_empty(N, P)
        w_hh_t = step_weight(weight_hh)
        w_hr_t = None if weight_hr is None else step_weight(weight_hr)
        h, c = h0, c0
        for t in range(T):
            r = h if drop_mask is None else h * drop_mask
            z = gates[t]
            if use_ln:
                a_h_hat, _, rstd_h[t] = torch.native_layer_norm(
                    r @ w_hh_t, (4 * H,), None, None, LN_EPS
                )
                z.addcmul_(gamma_h, a_h_hat)
                a_h_hats[t] = a_h_hat
            else:
                z.addmm_(r, w_hh_t)
            if peephole is not None:  # z^i += w_ci c_{t-1}, z^f += w_cf c_{t-1}
                z[:, : 2 * H].view(N, 2, H).addcmul_(peephole[:2], c.unsqueeze(1))
            torch.sigmoid_(z[:, : 2 * H])
            torch.tanh_(z[:, 2 * H : 3 * H])
            i, f, g, o = z.chunk(4, dim=1)
            c_tilde = torch.addcmul(f * c, i, g, out=c_tildes[t])
            if peephole is not None:
                o.addcmul_(peephole[2], c_tilde)
            torch.sigmoid_(o)
            if use_ln:
                c_hat, _, rstd_c[t] = torch.native_layer_norm(c_tilde, (H,), None, None, LN_EPS)
                c_hats[t] = c_hat
                y = torch.tanh(torch.addcmul(beta_c, gamma_c, c_hat), out=ys[t])
            else:
                y = torch.tanh(c_tilde, out=ys[t])
            h_tilde = hs[t] if zone_h is None else h_tilde_buf
            if weight_hr is None:
                torch.mul(o, y, out=h_tilde)
            else:
                torch.mm(torch.mul(o, y, out=us[t]), w_hr_t, out=h_tilde)
            # Zoneout: lerp(new, old, d) = d old + (1 - d) new, exact at d = 0 and d = 1.
            c = c_tilde if zone_c is None else torch.lerp(c_tilde, c, zone_c[t], out=cs[t])
            h = h_tilde if zone_h is None else torch.lerp(h_tilde, h, zone_h[t], out=hs[t])
        ctx.has_bias = (bias_ih is not None, bias_hh is not None)
        ctx.save_for_backward(
            *(x, h0, c0, weight_ih, weight_hh, weight_hr, peephole, drop_mask, zone_h, zone_c),
            *(gates, hs, cs, c_tildes, ys, us),
            *(gamma_x, gamma_h, gamma_c),
            *(a_x_hats, rstd_x, a_h_hats, rstd_h, c_hats, rstd_c),
        )
        return hs, cs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs, grad_cs):
        saved = ctx.saved_tensors
        x, h0, c0, weight_ih, weight_hh, weight_hr, peephole, drop_mask, zone_h, zone_c = saved[:10]
        gates, hs, cs, c_tildes, ys, us = saved[10:16]
        gamma_x, gamma_h, gamma_c = saved[16:19]
        a_x_hats, rstd_x, a_h_hats, rstd_h, c_hats, rstd_c = saved[19:]
        T = x.shape[0]
        H = c0.shape[1]
        use_ln = gamma_x is not None
        keep_h = None if zone_h is None else 1 - zone_h
        keep_c = None if zone_c is None else 1 - zone_c
        # Activation derivatives of all steps at once: s(1 - s) for the three sigmoid
        # gates, 1 - g^2 for g, 1 - y^2 for y = tanh(n).
        d_gates = torch.addcmul(gates, gates, gates, value=-1)
        g_all = gates[:, :, 2 * H : 3 * H]
        torch.mul(g_all, g_all, out=d_gates[:, :, 2 * H : 3 * H]).neg_().add_(1)
        d_ys = torch.mul(ys, ys).neg_().add_(1)
        grad_gates = torch.empty_like(gates)  # z-bar of every step, (T, N, 4H)
        grad_a_h = torch.empty_like(gates) if use_ln else grad_gates  # a^h-bar
        grad_ns = torch.empty_like(ys) if use_ln else None  # n-bar, for gamma_c and beta_c
        grad_h_tildes = None if weight_hr is None else torch.empty_like(hs)  # for W_hr
        grad_h = torch.zeros_like(h0)  # from step t+1: d^h h-bar + m W_hh^T a^h-bar
        grad_c = torch.zeros_like(c0)  # from step t+1: d^c c-bar + f c~-bar + peepholes
        for t in range(T - 1, -1, -1):
            i, f, g, o = gates[t].chunk(4, dim=1)
            d_i, d_f, d_g, d_o = d_gates[t].chunk(4, dim=1)
            c_prev = cs[t - 1] if t > 0 else c0
            grad_h = grad_h + grad_hs[t]  # h-bar_t
            grad_c = grad_c + grad_cs[t]  # c-bar_t
            grad_h_tilde = grad_h if zone_h is None else grad_h * keep_h[t]
            grad_c_tilde = grad_c if zone_c is None else grad_c * keep_c[t]
            if weight_hr is None:
                grad_u = grad_h_tilde
            else:
                grad_h_tildes[t] = grad_h_tilde
                grad_u = grad_h_tilde @ weight_hr
            gi, gf, gg, go = grad_gates[t].chunk(4, dim=1)
            torch.mul(grad_u, ys[t], out=go).mul_(d_o)  # z^o-bar
            grad_n = torch.mul(grad_u, o, out=None if grad_ns is None else grad_ns[t])
            grad_n.mul_(d_ys[t])  # n-bar
            if use_ln:
                grad_n = _layer_norm_backward(grad_n, gamma_c, c_hats[t], rstd_c[t])
            grad_c_tilde = grad_c_tilde + grad_n
            if peephole is not None:
                grad_c_tilde.addcmul_(peephole[2], go)
            torch.mul(grad_c_tilde, g, out=gi).mul_(d_i)
            torch.mul(grad_c_tilde, c_prev, out=gf).mul_(d_f)
            torch.mul(grad_c_tilde, i, out=gg).mul_(d_g)
            grad_c_prev = grad_c_tilde * f
            if zone_c is not None:
                grad_c_prev.addcmul_(grad_c, zone_c[t])
            if peephole is not None:
                grad_c_prev.addcmul_(peephole[0], gi).addcmul_(peephole[1], gf)
            if use_ln:
                _layer_norm_backward(grad_gates[t], gamma_h, a_h_hats[t], rstd_h[t], grad_a_h[t])
            grad_r = grad_a_h[t] @ weight_hh
            grad_h_prev = grad_r if drop_mask is None else grad_r.mul_(drop_mask)
            if zone_h is not None:
                grad_h_prev.addcmul_(grad_h, zone_h[t])
            grad_h, grad_c = grad_h_prev, grad_c_prev
        saved_for_grads = (x, h0, c0, weight_ih, weight_hh, weight_hr, peephole, drop_mask)
        return ext_parameter_grads(
            ctx.needs_input_grad,
            ctx.has_bias,
            saved_for_grads,
            (grad_gates, grad_a_h, grad_ns, grad_h_tildes, grad_h, grad_c),
            (hs, cs, c_tildes, us),
            (gamma_x, gamma_h, gamma_c, a_x_hats, rstd_x, a_h_hats, c_hats),
        )


def lstm_ext_sequence(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    *,
    weight_hr: Tensor | None = None,
    peephole: Tensor | None = None,
    ln: LSTMLayerNorm | tuple | None = None,
    drop_mask: Tensor | None = None,
    zoneout: tuple | None = None,
) -> tuple[Tensor, Tensor]:
    """Fused extended LSTM: ``(hs, cs)``, (T, N, P) and (T, N, H), hand-derived BPTT.

    Options, arguments and shapes as in the module docstring; each is off when None.
    """
    T, N, H, P = _check_ext_args(
        x, h0, c0, weight_ih, weight_hh, weight_hr, peephole, ln, drop_mask
    )
    zone_h, zone_c = _zoneout_tensors(zoneout, T, N, H, P, x)
    ln_params = (None,) * 6 if ln is None else tuple(ln)
    options = (weight_hr, peephole, *ln_params, drop_mask, zone_h, zone_c)
    return LSTMExtFunction.apply(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, *options)

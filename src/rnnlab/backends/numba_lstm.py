r"""Compiled training path of the extended LSTM (Numba): ``backend="numba"``.

The equations, the hand-derived backward and the names are those of
:mod:`rnnlab.cells.lstm` (its module docstring, "Extended LSTM"): the projection,
peepholes, layer normalisation, recurrent dropout and zoneout, each off when None, in any
combination.

What changes is how a step runs.  The fused path (:class:`rnnlab.cells.lstm.LSTMExtFunction`)
spends each step in a dozen or more PyTorch calls over (N, 4H) tensors, and at the sizes of
character models their fixed cost, not the arithmetic, is most of the time.  Here a step
is one product and one compiled pass:

* forward: :math:`a^h_t = r_{t-1} W_{hh}^\top` (N x 4H), then one compiled pass
  (:func:`_forward_rows`) that does every element-wise operation of the step, row by
  row, so each row stays in L1 cache: the layer norm of :math:`a^h_t`, peepholes, the
  four gates, the cell, its layer norm and tanh, zoneout, and :math:`r_t = m \odot h_t`
  for the next product;
* backward: one compiled pass (:func:`_backward_rows`) from :math:`\bar h_t, \bar c_t` to
  :math:`\bar z_t` and :math:`\bar a^h_t` (with both layer-norm backwards), then the
  product :math:`\bar a^h_t W_{hh}` for step t - 1.

A batch's whole time loop is one compiled call (:func:`_forward_region_threads`, "a batch
in one call" below): the products are oneDNN's brgemm (float32) or MKL (float64), called
from the compiled code on each thread (:mod:`rnnlab.backends.numba_blas`), and in float32
each thread runs its own sequences through every step.  Where PyTorch exports no such
BLAS the loop stays in Python: ``torch.mm``, then the compiled pass, per step.

A projected layer (``weight_hr``, h = W_hr u) takes a second matmul in each step: the
forward pass stops at :math:`u_t = o_t \odot y_t`, PyTorch computes
:math:`\tilde h_t = u_t W_{hr}^\top`, and :func:`_project_rows` applies zoneout and the
dropout mask; the backward pass starts with :func:`_unproject_rows` (the P values of
:math:`\bar h_t`, :math:`\bar{\tilde h}_t` and the zoneout carry), then
:math:`\bar u_t = \bar{\tilde h}_t W_{hr}` (PyTorch), then the row pass from
:math:`\bar u_t`.

The input side is one matmul for all steps (:func:`rnnlab.cells.elman.input_projection`);
with LN, each step's pass normalises its rows of :math:`a^x_t` and adds the shifts, where
the fused path (:func:`rnnlab.cells.lstm.ext_input_gates`) makes a pass over all steps.
The weight gradients are the fused path's matmuls
(:func:`rnnlab.cells.lstm.ext_parameter_grads`); the gradients that are sums over time of
element-wise products (LN's gains and shifts, the biases with LN, the peepholes) the
reverse loop adds up per sequence as it goes, in the layer's dtype, while the rows are in
cache (float32 sums made the layer-norm LSTM's step 0.96 of its time with float64 ones;
the fused path sums in float32 too), and with LN it computes :math:`\bar a^x_t` there
too.  The tensors kept for backward are the fused path's, so memory is as documented
there.

Arithmetic.  Float64 layers compute in float64 with libm's ``exp`` and ``tanh``, and
equal the reference path to about 1e-14.  For float32 layers the forward pass computes
its gates in float32, with tanh and sigmoid from the float32 rational tanh of
:mod:`rnnlab.backends.numba_math` (within 4.1e-7 of tanh and 2.3e-7 of sigmoid on every
float32 input), which has no calls or branches, so LLVM vectorises each gate loop 16
lanes wide; the backward passes compute in float64 from the stored float32 values (their
constants are float64) and store float32.  Float32 results equal the fused path within
the tests' 2e-5 (1e-4 for the projected layer with every option, whose test data is
ill-conditioned: see the test).  Each row's layer-norm statistics are taken in float64,
in an order LLVM may change (``fastmath`` reassociation on those sums only).  Tests:
``tests/test_numba_lstm.py`` and ``tests/test_backends_training.py``.

Threads: Numba's, as many as PyTorch has (:func:`_parts`).  A batch's rows are split
over them (or, with MKL, each product's columns in fixed chunks, then the rows of the
pass); each row and chunk is computed the same way on any thread, so the results do not
depend on the thread count.  A single sequence (batch 1, no projection) runs its whole
time loop in one compiled call with its own matrix-vector products; there the units are
split instead, one block per thread, and the threads meet once per step inside one
parallel region (see "a whole sequence in one call" below; with LN, whose sums take every
unit, it runs on one thread).  The products over every step (input projection, weight
and input gradients) go through :func:`rnnlab.backends.numba_blas.matmul`.
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np
import torch
from numba import prange
from torch.autograd.function import once_differentiable

from rnnlab.backends.buffers import pooled, workspace, zeros
from rnnlab.backends.numba_blas import (
    CHUNKS,
    NO_BIAS,
    SET_LOCAL,
    _set_local_threads,
    blas,
    claims,
    make_ctl,
    matmul,
    matvec_columns,
    product_block,
    stages_of,
    transposed,
)
from rnnlab.backends.numba_generate import _POOL_PID, _kernel_parallel, threads_usable
from rnnlab.backends.numba_math import (
    _claim,
    _done,
    _kernel,
    _sigmoid_fast,
    _tanh_fast,
    new_sync,
    numba_threads,
)
from rnnlab.cells.elman import _combined_bias, input_projection
from rnnlab.cells.lstm import (
    LN_EPS,
    _check_ext_args,
    _zoneout_tensors,
    ext_parameter_grads,
)

_sums = functools.partial(_kernel, fastmath={"reassoc", "contract"})


# Reductions compile with reassociation (``_sums``, so LLVM may vectorise them); the
# element-wise loops after them without: with it LLVM moved the "/ n" of a mean into the
# loop, one vector division per element, 4x that loop's time.


@_sums
def _mean_and_square(v):
    """(mean of v, sum of (v - mean)^2), in float64."""
    n = v.shape[0]
    s = 0.0
    for j in range(n):
        s += v[j]
    mu = s / n
    q = 0.0
    for j in range(n):
        d = v[j] - mu
        q += d * d
    return mu, q


@_kernel
def _normalise(v, out):
    """``out = (v - mean(v)) * rho`` with ``rho = 1 / sqrt(var(v) + eps)`` (biased
    variance, as ``torch.native_layer_norm``); returns rho."""
    mu, q = _mean_and_square(v)
    rho = 1.0 / math.sqrt(q / v.shape[0] + LN_EPS)
    for j in range(v.shape[0]):
        out[j] = (v[j] - mu) * rho
    return rho


@_sums
def _gain_sums(g, gamma, v_hat, gains, shifts):
    """(sum of g^, sum of g^ v^) with ``g^ = gamma * g``, in float64; and this row's terms
    of gamma's and beta's gradients added in the same read: ``g v^`` to ``gains`` and ``g``
    to ``shifts`` (the per-sequence sums, length 0 to skip)."""
    s = 0.0
    sv = 0.0
    if shifts.shape[0] > 0:
        for j in range(g.shape[0]):
            gains[j] += g[j] * v_hat[j]
            shifts[j] += g[j]
            gh = gamma[j] * g[j]
            s += gh
            sv += gh * v_hat[j]
    elif gains.shape[0] > 0:
        for j in range(g.shape[0]):
            gains[j] += g[j] * v_hat[j]
            gh = gamma[j] * g[j]
            s += gh
            sv += gh * v_hat[j]
    else:
        for j in range(g.shape[0]):
            gh = gamma[j] * g[j]
            s += gh
            sv += gh * v_hat[j]
    return s, sv


@_kernel
def _layer_norm_backward(g, gamma, v_hat, rho, out, gains, shifts):
    """``out = rho (g^ - mean(g^) - v^ mean(g^ v^))``, ``g^ = gamma * g``: the gradient
    reaching v through ``gamma * v^ + beta`` (``rnnlab.cells.lstm._layer_norm_backward``);
    and gamma's and beta's terms as :func:`_gain_sums`."""
    n = g.shape[0]
    s, sv = _gain_sums(g, gamma, v_hat, gains, shifts)
    mean_g = s / n
    mean_gv = sv / n
    for j in range(n):
        out[j] = rho * (gamma[j] * g[j] - mean_g - v_hat[j] * mean_gv)


@_kernel
def _forward_row(z, a_h, c_prev, h_prev, m, peep, gamma_h, gamma_c, beta_c, zone_h, zone_c,
                 c_tilde, c, y, h, r, a_h_hat, c_hat, proj, a_x_hat, gamma_x, shift,
                 lo, hi):  # fmt: skip
    """Units ``lo:hi`` of one row of step t.  ``z`` holds the input side of the gates (with
    LN: a^x_t, not yet normalised, and ``shift`` = beta_x + beta_h + b_ih + b_hh is added
    here) and leaves as the activated [i, f, g, o]; ``a_h`` = r_{t-1} W_hh^T of these units
    only, their four gates one after another (4 (hi - lo) values: the whole row for
    0:H); the options are rows of length 0 when off.  Layer norm takes every unit of the
    row (0:H).  Returns (rho_x, rho_h, rho_c), the layer norms' inverse deviations (0
    without LN).  With a projection (``proj``) ``h`` receives u = o * y and the row stops
    there: h~ = W_hr u needs a matmul first, and :func:`_project_rows` finishes the step.

    Each loop writes one array, which LLVM vectorises (16 float32 lanes); the
    nonlinearities in one loop with the rest ran scalar, 3x slower."""
    H = c_prev.shape[0]
    G = 4 * H
    w = hi - lo
    use_ln = gamma_h.shape[0] > 0
    rho_x = rho_h = rho_c = 0.0
    if use_ln:  # lo:hi = 0:H
        rho_x = _normalise(z, a_x_hat)
        rho_h = _normalise(a_h, a_h_hat)
        for j in range(G):
            z[j] = gamma_x[j] * a_x_hat[j] + shift[j] + gamma_h[j] * a_h_hat[j]
    else:
        for k in range(4):
            zk, ak = z[k * H + lo : k * H + hi], a_h[k * w : (k + 1) * w]
            for j in range(w):
                zk[j] += ak[j]
    z_i, z_f = z[lo:hi], z[H + lo : H + hi]
    z_g, z_o = z[2 * H + lo : 2 * H + hi], z[3 * H + lo : 3 * H + hi]
    c_prev, c_tilde = c_prev[lo:hi], c_tilde[lo:hi]
    if peep.shape[1] > 0:
        w_ci, w_cf = peep[0, lo:hi], peep[1, lo:hi]
        for j in range(w):
            z_i[j] += w_ci[j] * c_prev[j]
            z_f[j] += w_cf[j] * c_prev[j]
    for j in range(w):
        z_i[j] = _sigmoid_fast(z_i[j], z)
    for j in range(w):
        z_f[j] = _sigmoid_fast(z_f[j], z)
    for j in range(w):
        z_g[j] = _tanh_fast(z_g[j], z)
    for j in range(w):
        c_tilde[j] = z_f[j] * c_prev[j] + z_i[j] * z_g[j]
    if peep.shape[1] > 0:
        w_co = peep[2, lo:hi]
        for j in range(w):
            z_o[j] += w_co[j] * c_tilde[j]
    for j in range(w):
        z_o[j] = _sigmoid_fast(z_o[j], z)
    y, h = y[lo:hi], h[lo:hi]
    if use_ln:
        rho_c = _normalise(c_tilde, c_hat)
        for j in range(H):
            y[j] = _tanh_fast(gamma_c[j] * c_hat[j] + beta_c[j], z)
    else:
        for j in range(w):
            y[j] = _tanh_fast(c_tilde[j], z)
    for j in range(w):
        h[j] = z_o[j] * y[j]
    # zoneout, as torch.lerp(new, old, d): exact at d = 0 and d = 1
    if zone_c.shape[0] > 0:
        c, d = c[lo:hi], zone_c[lo:hi]
        for j in range(w):
            c[j] = c_tilde[j] + d[j] * (c_prev[j] - c_tilde[j])
    if not proj:
        _finish_h(h, h_prev[lo:hi], zone_h[lo:hi], m[lo:hi], r[lo:hi])
    return rho_x, rho_h, rho_c


@_kernel
def _finish_h(h, h_prev, zone_h, m, r):
    """h = lerp(h~, h_prev, d^h) in place (``h`` holds h~), then r = m h for the next
    step's matmul."""
    H = h.shape[0]
    if zone_h.shape[0] > 0:
        for j in range(H):
            h[j] = h[j] + zone_h[j] * (h_prev[j] - h[j])
    if m.shape[0] > 0:
        for j in range(H):
            r[j] = m[j] * h[j]
    else:
        for j in range(H):
            r[j] = h[j]


@_kernel
def _forward_rows(t, lo, hi, arrays, opts, ln, a, b):
    """Rows ``lo:hi`` of step t, units ``a:b`` (all units: 0:H): see :func:`_forward_row`,
    which takes ``a_h[n, 4a:4b]``.  ``arrays``: (gates, a_h, h0, c0,
    hs, cs, c_tildes, ys, r, us), ``a_h`` = r_{t-1} W_hh^T, ``us`` (T, N, H) the u_t of a
    projected layer, else (T, N, 0); ``opts``: (m, peep, gamma_h, gamma_c, beta_c, zone_h,
    zone_c); ``ln``: (a_h_hats, rstd_h, c_hats, rstd_c, a_x_hats, rstd_x, gamma_x, shift),
    the last two (4H,)."""
    gates, a_h, h0, c0, hs, cs, c_tildes, ys, r, us = arrays
    m, peep, gamma_h, gamma_c, beta_c, zone_h, zone_c = opts
    a_h_hats, rstd_h, c_hats, rstd_c, a_x_hats, rstd_x, gamma_x, shift = ln
    use_ln = gamma_h.shape[0] > 0
    proj = us.shape[2] > 0
    for n in range(lo, hi):
        c_prev = c0[n] if t == 0 else cs[t - 1, n]
        h_prev = h0[n] if t == 0 else hs[t - 1, n]
        out = us[t, n] if proj else hs[t, n]
        rho_x, rho_h, rho_c = _forward_row(
            gates[t, n], a_h[n, 4 * a : 4 * b], c_prev, h_prev, m[n], peep, gamma_h, gamma_c,
            beta_c,
            zone_h[t, n], zone_c[t, n], c_tildes[t, n], cs[t, n], ys[t, n], out, r[n],
            a_h_hats[t, n], c_hats[t, n], proj, a_x_hats[t, n], gamma_x, shift, a, b,
        )  # fmt: skip
        if use_ln:
            rstd_x[t, n, 0] = rho_x
            rstd_h[t, n, 0] = rho_h
            rstd_c[t, n, 0] = rho_c


@_kernel
def _project_rows(t, lo, hi, arrays, opts):
    """Rows ``lo:hi`` of step t of a projected layer, after h~ = u W_hr^T went into
    ``hs[t]``: zoneout of h and r = m h (:func:`_finish_h`)."""
    h0, hs, r = arrays[2], arrays[4], arrays[8]
    m, zone_h = opts[0], opts[5]
    for n in range(lo, hi):
        h_prev = h0[n] if t == 0 else hs[t - 1, n]
        _finish_h(hs[t, n], h_prev, zone_h[t, n], m[n], r[n])


@_kernel
def _backward_row(z, c_prev, y, grad_hs, grad_cs, grad_r, m, peep, gamma_h, gamma_c,
                  zone_h, zone_c, a_h_hat, rho_h, c_hat, rho_c, carry_h, carry_c,
                  grad_z, grad_a_h, grad_n, c_bar, n_bar, grad_u, a_x_hat, rho_x, gamma_x,
                  grad_a_x, sums, c_tilde, peep_sums, u_row, ct_row, lo, hi):  # fmt: skip
    """Units ``lo:hi`` of one row of step t of the reverse loop (cells/lstm.py, "Backward
    of the extended LSTM"); layer norm and a projection take every unit (0:H).  In:
    ``grad_r`` = W_hh^T a^h-bar_{t+1}, ``carry_h`` = d^h_{t+1} h-bar_{t+1}, ``carry_c`` =
    what c_t gets from step t+1.  Out: ``grad_z`` = z-bar_t, ``grad_a_h`` = a^h-bar_t (LN;
    else it is grad_z), and the carries for step t - 1.  ``grad_n`` (n-bar_t, LN),
    ``c_bar``, ``n_bar``: scratch rows of H values.  ``grad_z`` may be a scratch row too,
    where z-bar is not kept (with LN: ``sums`` takes its sums).

    With a projection ``grad_u`` holds u-bar = W_hr^T h~-bar (from :func:`_unproject_rows`
    and a matmul) and the h-bar arguments are not read; else it has length 0.  With LN
    also ``grad_a_x`` = a^x-bar_t and, added to this sequence's ``sums`` (14H values, the
    layer's dtype), its terms of the sums over time of z-bar a^x-hat (gamma_x), z-bar a^h-hat
    (gamma_h), n-bar c-hat (gamma_c), n-bar (beta_c) and z-bar (the biases and beta_x):
    the parameter gradients without a pass over all steps.  With peepholes, likewise
    ``peep_sums`` (3H values) takes the terms of w_ci's, w_cf's and w_co's gradients,
    z^i-bar c_{t-1}, z^f-bar c_{t-1} and z^o-bar c~_t (``c_tilde``).  ``u_row`` and
    ``ct_row`` are scratch rows for u-bar and c~-bar.

    No loop tests an option: each option's terms have a loop of their own.  A branch on
    an option inside a loop kept LLVM from vectorising it (the option's row may be empty,
    so its load cannot be made unconditional): with the options inside, a plain step of 50
    x 128 units took 66 µs in cache, now 19 µs.  The intermediate values between the loops
    are stored in the layer's dtype, so float32 layers round them to float32."""
    H = c_prev.shape[0]
    w = hi - lo
    use_ln, use_peep, use_m = gamma_h.shape[0] > 0, peep.shape[1] > 0, m.shape[0] > 0
    use_zh, use_zc = zone_h.shape[0] > 0, zone_c.shape[0] > 0
    proj = grad_u.shape[0] > 0
    z_i, z_f = z[lo:hi], z[H + lo : H + hi]
    z_g, z_o = z[2 * H + lo : 2 * H + hi], z[3 * H + lo : 3 * H + hi]
    gz_i, gz_f = grad_z[lo:hi], grad_z[H + lo : H + hi]
    gz_g, gz_o = grad_z[2 * H + lo : 2 * H + hi], grad_z[3 * H + lo : 3 * H + hi]
    c_prev, y, c_tilde = c_prev[lo:hi], y[lo:hi], c_tilde[lo:hi]
    grad_hs, grad_cs, grad_r, grad_u = grad_hs[lo:hi], grad_cs[lo:hi], grad_r[lo:hi], grad_u[lo:hi]
    m, zone_h, zone_c = m[lo:hi], zone_h[lo:hi], zone_c[lo:hi]
    carry_h, carry_c, c_bar, n_bar_u = carry_h[lo:hi], carry_c[lo:hi], c_bar[lo:hi], n_bar[lo:hi]
    u_bar, ct_bar = u_row[lo:hi], ct_row[lo:hi]
    if proj:
        for j in range(w):
            u_bar[j] = grad_u[j]
    else:  # h-bar, then u-bar = h~-bar = (1 - d^h) h-bar and the zoneout carry d^h h-bar
        if use_m:
            for j in range(w):
                u_bar[j] = grad_hs[j] + carry_h[j] + m[j] * grad_r[j]
        else:
            for j in range(w):
                u_bar[j] = grad_hs[j] + carry_h[j] + grad_r[j]
        if use_zh:
            for j in range(w):
                carry_h[j] = zone_h[j] * u_bar[j]
            for j in range(w):
                u_bar[j] = (1.0 - zone_h[j]) * u_bar[j]
        else:
            for j in range(w):
                carry_h[j] = 0.0
    for j in range(w):
        o, yj, ub = z_o[j], y[j], u_bar[j]
        gz_o[j] = ub * yj * o * (1.0 - o)
        n_bar_u[j] = ub * o * (1.0 - yj * yj)
        c_bar[j] = grad_cs[j] + carry_c[j]
    if use_ln:  # sums: gamma_x, gamma_h, gamma_c, beta_c
        G = 4 * H
        for j in range(H):
            grad_n[j] = n_bar[j]
        _layer_norm_backward(
            grad_n,
            gamma_c,
            c_hat,
            rho_c,
            n_bar,
            sums[2 * G : 2 * G + H],
            sums[2 * G + H : 2 * G + 2 * H],
        )
    w_ci, w_cf, w_co = peep[0, lo:hi], peep[1, lo:hi], peep[2, lo:hi]
    # c~-bar: (1 - d^c) c-bar + LN'(n-bar) + w_co z^o-bar
    if use_zc:
        for j in range(w):
            ct_bar[j] = (1.0 - zone_c[j]) * c_bar[j] + n_bar_u[j]
    else:
        for j in range(w):
            ct_bar[j] = c_bar[j] + n_bar_u[j]
    if use_peep:
        for j in range(w):
            ct_bar[j] += w_co[j] * gz_o[j]
    for j in range(w):
        ct, i, f, g = ct_bar[j], z_i[j], z_f[j], z_g[j]
        gz_i[j] = ct * g * i * (1.0 - i)
        gz_f[j] = ct * c_prev[j] * f * (1.0 - f)
        gz_g[j] = ct * i * (1.0 - g * g)
        carry_c[j] = f * ct
    if use_zc:
        for j in range(w):
            carry_c[j] += zone_c[j] * c_bar[j]
    if use_peep:
        sum_i, sum_f = peep_sums[lo:hi], peep_sums[H + lo : H + hi]
        sum_o = peep_sums[2 * H + lo : 2 * H + hi]
        for j in range(w):
            carry_c[j] += w_ci[j] * gz_i[j] + w_cf[j] * gz_f[j]
        for j in range(w):
            sum_i[j] += gz_i[j] * c_prev[j]
            sum_f[j] += gz_f[j] * c_prev[j]
            sum_o[j] += gz_o[j] * c_tilde[j]
    if use_ln:
        G = 4 * H
        none = sums[:0]
        _layer_norm_backward(grad_z, gamma_h, a_h_hat, rho_h, grad_a_h, sums[G : 2 * G], none)
        _layer_norm_backward(grad_z, gamma_x, a_x_hat, rho_x, grad_a_x, sums[:G], sums[10 * H :])


@_kernel
def _backward_rows(t, lo, hi, arrays, opts, ln, scratch, a, b):
    """Rows ``lo:hi`` of step t of the reverse loop, units ``a:b`` (all units: 0:H): see
    :func:`_backward_row`.
    ``arrays``: (gates, c0, cs, ys, grad_hs, grad_cs, grad_r, carry_h, carry_c, grad_gates,
    grad_a_h, c_tildes, grad_u, grad_h_tildes), the last two (N, H) and (T, N, P) with a
    projection, else empty; ``opts`` as :func:`_forward_rows`; ``ln``: (a_h_hats, rstd_h,
    c_hats, rstd_c, a_x_hats, rstd_x, gamma_x, grad_a_xs, sums), ``sums`` (N, K), the dtype
    of the layer,
    K = 14H with LN (:func:`_backward_row`'s ``sums``) + 3H with peepholes (its
    ``peep_sums``); ``grad_gates`` is (T, N, 0) where z-bar is not kept; ``scratch``
    (9H,)."""
    gates, c0, cs, ys, grad_hs, grad_cs, grad_r, carry_h, carry_c, grad_z, grad_a_h = arrays[:11]
    c_tildes, grad_u = arrays[11], arrays[12]
    m, peep, gamma_h, gamma_c, _, zone_h, zone_c = opts
    a_h_hats, rstd_h, c_hats, rstd_c, a_x_hats, rstd_x, gamma_x, grad_a_xs, sums = ln
    use_ln = gamma_h.shape[0] > 0
    keep_z = grad_z.shape[2] > 0
    H = cs.shape[2]
    c_bar, n_bar, grad_n = scratch[:H], scratch[H : 2 * H], scratch[2 * H : 3 * H]
    z_row, u_row, ct_row = scratch[3 * H : 7 * H], scratch[7 * H : 8 * H], scratch[8 * H :]
    ln_part = 14 * H if use_ln else 0
    for n in range(lo, hi):
        c_prev = c0[n] if t == 0 else cs[t - 1, n]
        z_bar = grad_z[t, n] if keep_z else z_row
        rho_x = rstd_x[t, n, 0] if use_ln else 0.0
        rho_h = rstd_h[t, n, 0] if use_ln else 0.0
        rho_c = rstd_c[t, n, 0] if use_ln else 0.0
        _backward_row(
            gates[t, n], c_prev, ys[t, n], grad_hs[t, n], grad_cs[t, n], grad_r[n], m[n],
            peep, gamma_h, gamma_c, zone_h[t, n], zone_c[t, n], a_h_hats[t, n], rho_h,
            c_hats[t, n], rho_c, carry_h[n], carry_c[n], z_bar, grad_a_h[t, n],
            grad_n, c_bar, n_bar, grad_u[n], a_x_hats[t, n], rho_x, gamma_x,
            grad_a_xs[t, n], sums[n, :ln_part], c_tildes[t, n], sums[n, ln_part:], u_row, ct_row,
            a, b,
        )  # fmt: skip


@_kernel
def _unproject_rows(t, lo, hi, arrays, opts):
    """Rows ``lo:hi`` of step t of a projected layer's reverse loop, before u-bar's
    matmul: h-bar_t = h-bar from the loss + carry_h + m W_hh^T a^h-bar_{t+1}, then
    h~-bar = (1 - d^h) h-bar into ``grad_h_tildes[t]`` and carry_h = d^h h-bar (P values
    each).  ``arrays`` as :func:`_backward_rows`."""
    grad_hs, grad_r, carry_h, grad_h_tildes = arrays[4], arrays[6], arrays[7], arrays[13]
    m, zone_h = opts[0], opts[5]
    use_m = m.shape[1] > 0
    use_zh = zone_h.shape[2] > 0
    for n in range(lo, hi):
        e, g, c, out = grad_hs[t, n], grad_r[n], carry_h[n], grad_h_tildes[t, n]
        mn = m[n]
        for j in range(out.shape[0]):
            out[j] = e[j] + c[j] + (mn[j] * g[j] if use_m else g[j])  # h-bar
        if use_zh:
            d = zone_h[t, n]
            for j in range(out.shape[0]):
                c[j] = d[j] * out[j]
            for j in range(out.shape[0]):
                out[j] = (1.0 - d[j]) * out[j]
        else:
            for j in range(out.shape[0]):
                c[j] = 0.0


# One pass of a step over all rows: on this thread, or split into ``parts`` blocks of rows
# over Numba's threads (every row is computed the same way either way, so the results do
# not depend on the thread count).  Two functions, not one with a flag: Numba's cache keys
# on the signature, not on the parallel option.
@_kernel
def _forward_step(t, arrays, opts, ln):
    _forward_rows(t, 0, arrays[0].shape[1], arrays, opts, ln, 0, arrays[5].shape[2])


@_kernel_parallel
def _forward_step_threads(t, arrays, opts, ln, parts):
    N = arrays[0].shape[1]
    for k in prange(parts):
        lo, hi = k * N // parts, (k + 1) * N // parts
        _forward_rows(t, lo, hi, arrays, opts, ln, 0, arrays[5].shape[2])


@_kernel
def _project_step(t, arrays, opts):
    _project_rows(t, 0, arrays[0].shape[1], arrays, opts)


@_kernel_parallel
def _project_step_threads(t, arrays, opts, parts):
    N = arrays[0].shape[1]
    for k in prange(parts):
        _project_rows(t, k * N // parts, (k + 1) * N // parts, arrays, opts)


@_kernel
def _unproject_step(t, arrays, opts):
    _unproject_rows(t, 0, arrays[0].shape[1], arrays, opts)


@_kernel_parallel
def _unproject_step_threads(t, arrays, opts, parts):
    N = arrays[0].shape[1]
    for k in prange(parts):
        _unproject_rows(t, k * N // parts, (k + 1) * N // parts, arrays, opts)


@_kernel
def _backward_step(t, arrays, opts, ln, scratch):
    _backward_rows(t, 0, arrays[0].shape[1], arrays, opts, ln, scratch[0], 0, arrays[2].shape[2])


@_kernel_parallel
def _backward_step_threads(t, arrays, opts, ln, scratch):
    N, parts = arrays[0].shape[1], scratch.shape[0]
    for k in prange(parts):
        lo, hi = k * N // parts, (k + 1) * N // parts
        _backward_rows(t, lo, hi, arrays, opts, ln, scratch[k], 0, arrays[2].shape[2])


# -- a whole sequence in one call, its units split over threads ---------------------------
#
# With one sequence (:data:`SEQUENCE_ROWS`) a step's product is a matrix-vector product and
# PyTorch's per-step call costs more than it, so the whole time loop runs in one compiled
# call.  With threads it is one parallel region: thread p owns the units of block p
# (``lo:hi``) and, in each step, computes their four gates' pre-activations from its own
# copy of their columns of W_hh^T (forward) or their columns of W_hh (backward), then
# their gates; the threads meet once per step (``numba_math._claim``).  Stage 0 stores each
# block's weights; stage s > 0 is a step.  Every unit is computed by the same operations in
# the same order on any number of threads (a product's sum over its inputs does not depend
# on the block's width), so the results do not depend on the thread count.


@_kernel
def _gate_columns(w, lo, hi, out):
    """``out`` (4, H, hi - lo): gate g's columns of W^T for units ``lo:hi``, one C-order
    panel per gate, ``out[g, k, j] = w[g H + lo + j, k]``, ``w`` (4H, H) C order.  Eight
    rows of ``w`` at a time (1 MB: about 170 µs, against 440 µs for PyTorch's transposing
    copy here).  A panel's rows are contiguous, so :func:`matvec_columns` streams it
    (batch 1, hidden 256: 4.6 µs for a block's four panels against 5.7 µs for the same
    columns as one (H, 4 (hi - lo)) matrix)."""
    H = w.shape[1]
    width = hi - lo
    for g in range(4):
        src = w[g * H + lo : g * H + hi]
        panel = out[g]
        j = 0
        while j + 8 <= width:
            r0, r1, r2, r3 = src[j], src[j + 1], src[j + 2], src[j + 3]
            r4, r5, r6, r7 = src[j + 4], src[j + 5], src[j + 6], src[j + 7]
            for k in range(H):
                o = panel[k, j : j + 8]
                o[0], o[1], o[2], o[3] = r0[k], r1[k], r2[k], r3[k]
                o[4], o[5], o[6], o[7] = r4[k], r5[k], r6[k], r7[k]
            j += 8
        while j < width:
            row = src[j]
            for k in range(H):
                panel[k, j] = row[k]
            j += 1


@_kernel
def _unit_columns(w, lo, hi, out):
    """``out`` (4H, hi - lo) = ``w[:, lo:hi]``, C order."""
    for i in range(w.shape[0]):
        src, dst = w[i, lo:hi], out[i]
        for j in range(hi - lo):
            dst[j] = src[j]


@_kernel
def _forward_blocks(p, parts, arrays, opts, ln, w, blocks, r2, sync):
    """Thread ``p``'s share of the forward pass of a whole sequence (see above).  ``w`` =
    W_hh (4H, H); ``blocks`` (4H H,): each block's columns of W_hh^T as four gate panels
    (:func:`_gate_columns`), block ``lo:hi`` at 4H lo; ``r2`` (2, N, H): r_{t-1} in row
    (t + 1) % 2, r_t written to row t % 2 (the other threads may still read r_{t-1} while
    this one writes r_t);
    ``arrays[1]`` (a_h) holds block ``lo:hi``'s products in its columns 4 lo : 4 hi."""
    a_h, cs = arrays[1], arrays[5]
    T, N, H = cs.shape
    for stage in range(T + 1):
        for i in range(parts):
            k = (p + i) % parts  # its own block first
            if not _claim(sync, k, stage, k == p):
                continue
            lo, hi = k * H // parts, (k + 1) * H // parts
            width = hi - lo
            w_t = blocks[4 * H * lo : 4 * H * hi].reshape(4, H, width)
            if stage == 0:
                _gate_columns(w, lo, hi, w_t)
            else:
                t = stage - 1
                for n in range(N):
                    v, row = r2[(t + 1) % 2, n], a_h[n, 4 * lo : 4 * hi]
                    for g in range(4):
                        matvec_columns(w_t[g], v, row[g * width : (g + 1) * width])
                step = arrays[:8] + (r2[t % 2],) + arrays[9:]
                _forward_rows(t, 0, N, step, opts, ln, lo, hi)
            _done(sync, k, stage)


@_kernel
def _forward_sequence(arrays, opts, ln, w, blocks, r2, sync):
    _forward_blocks(0, 1, arrays, opts, ln, w, blocks, r2, sync)


@_kernel_parallel
def _forward_sequence_threads(arrays, opts, ln, w, blocks, r2, sync):
    parts = sync.shape[1]
    for p in prange(parts):
        _forward_blocks(p, parts, arrays, opts, ln, w, blocks, r2, sync)


@_kernel
def _backward_blocks(p, parts, arrays, opts, ln, scratch, w, blocks, sync):
    """Thread ``p``'s share of the reverse loop of a whole sequence (see above): stage s
    in 1..T is step t = T - s, which first takes ``grad_r`` = W_hh^T a^h-bar_{t+1} of its
    units from its block's columns of W_hh (``blocks``, :func:`_unit_columns`; one block
    reads ``w`` itself); stage T + 1 leaves W_hh^T a^h-bar_0 there, for h0's gradient.
    ``scratch``: (1, 9H)."""
    grad_r, grad_a_h, cs = arrays[6], arrays[10], arrays[2]
    T, N, H = cs.shape
    for stage in range(T + 2):
        for i in range(parts):
            k = (p + i) % parts
            if not _claim(sync, k, stage, k == p):
                continue
            lo, hi = k * H // parts, (k + 1) * H // parts
            w_b = w if parts == 1 else blocks[4 * H * lo : 4 * H * hi].reshape(4 * H, hi - lo)
            t = T - stage
            if stage == 0:
                if parts > 1:
                    _unit_columns(w, lo, hi, w_b)
            else:
                if t + 1 < T:
                    for n in range(N):
                        matvec_columns(w_b, grad_a_h[t + 1, n], grad_r[n, lo:hi])
                if t >= 0:
                    _backward_rows(t, 0, N, arrays, opts, ln, scratch[0], lo, hi)
            _done(sync, k, stage)


@_kernel
def _backward_sequence(arrays, opts, ln, scratch, w, blocks, sync):
    _backward_blocks(0, 1, arrays, opts, ln, scratch, w, blocks, sync)


@_kernel_parallel
def _backward_sequence_threads(arrays, opts, ln, scratch, w, blocks, sync):
    parts = sync.shape[1]
    for p in prange(parts):
        _backward_blocks(p, parts, arrays, opts, ln, scratch, w, blocks, sync)


# -- a batch in one call: the products inside the parallel region -------------------------
#
# With several sequences and a BLAS that the compiled code can call
# (:mod:`rnnlab.backends.numba_blas`) the time loop runs in one parallel region too.  In
# float32 (brgemm) each thread takes a block of rows, its sequences, and runs them through
# every step, product and pass, meeting the others only at the end: one claim per block
# (``numba_blas.claims``).  Otherwise (MKL, whose values depend on how a product is cut)
# each step is a few stages: a product cut into column chunks that the threads share,
# then a pass over the rows, one block of rows per thread; the threads meet after each
# stage (``numba_math._claim``).  Neither the rows nor the chunks depend on the thread
# count, so neither do the results.  ``ctl``: ``numba_blas.make_ctl``.


@_kernel
def _forward_phase(t, phase, k, parts, lo, hi, arrays, opts, ln, w_t, w_hr_t, ctl):
    """Phase ``phase`` of step t for block ``k``: ``a_h = r W_hh^T`` (``w_t`` = W_hh^T),
    :func:`_forward_rows`; a projected layer then ``h~_t = u_t W_hr^T`` and
    :func:`_project_rows`."""
    a_h, hs, r, us = arrays[1], arrays[4], arrays[8], arrays[9]
    if phase == 0:
        product_block(ctl, CHUNKS, k, parts, lo, hi, r, w_t, a_h, NO_BIAS)
    elif phase == 1:
        _forward_rows(t, lo, hi, arrays, opts, ln, 0, a_h.shape[1] // 4)
    elif phase == 2:
        product_block(ctl, CHUNKS + 1, k, parts, lo, hi, us[t], w_hr_t, hs[t], NO_BIAS)
    else:
        _project_rows(t, lo, hi, arrays, opts)


@_kernel
def _forward_region_blocks(p, parts, arrays, opts, ln, w_t, w_hr_t, ctl, sync):
    """Thread ``p``'s share of the forward pass of a batch (:func:`_forward_phase`)."""
    T, N = arrays[5].shape[:2]
    per_step = 4 if arrays[9].shape[2] > 0 else 2
    old = _set_local_threads(ctl[SET_LOCAL], 1)
    for stage in range(claims(ctl, per_step, T)):
        for i in range(parts):
            k = (p + i) % parts  # its own block first
            if not _claim(sync, k, stage, k == p):
                continue
            lo, hi = k * N // parts, (k + 1) * N // parts
            for s in stages_of(ctl, stage, per_step, T):
                t, phase = s // per_step, s % per_step
                _forward_phase(t, phase, k, parts, lo, hi, arrays, opts, ln, w_t, w_hr_t, ctl)
            _done(sync, k, stage)
    _set_local_threads(ctl[SET_LOCAL], old)


@_kernel
def _forward_region(arrays, opts, ln, w_t, w_hr_t, ctl, sync):
    _forward_region_blocks(0, 1, arrays, opts, ln, w_t, w_hr_t, ctl, sync)


@_kernel_parallel
def _forward_region_threads(arrays, opts, ln, w_t, w_hr_t, ctl, sync):
    parts = sync.shape[1]
    for p in prange(parts):
        _forward_region_blocks(p, parts, arrays, opts, ln, w_t, w_hr_t, ctl, sync)


@_kernel
def _backward_phase(t, phase, k, parts, lo, hi, arrays, opts, ln, scratch, w, w_hr, ctl):
    """Phase ``phase`` of step t of the reverse loop for block ``k``: a projected layer
    first h~-bar_t (:func:`_unproject_rows`) and ``u-bar = h~-bar_t W_hr``; then
    :func:`_backward_rows` and ``grad_r = a^h-bar_t W_hh`` (``w`` = W_hh), which after
    step 0 is W_hh^T a^h-bar_0, for h0's gradient."""
    grad_r, grad_a_h, grad_u, grad_h_tildes = arrays[6], arrays[10], arrays[12], arrays[13]
    if phase == 0:
        _unproject_rows(t, lo, hi, arrays, opts)
    elif phase == 1:
        product_block(ctl, CHUNKS + 1, k, parts, lo, hi, grad_h_tildes[t], w_hr, grad_u, NO_BIAS)
    elif phase == 2:
        _backward_rows(t, lo, hi, arrays, opts, ln, scratch[k], 0, arrays[2].shape[2])
    else:
        product_block(ctl, CHUNKS, k, parts, lo, hi, grad_a_h[t], w, grad_r, NO_BIAS)


@_kernel
def _backward_region_blocks(p, parts, arrays, opts, ln, scratch, w, w_hr, ctl, sync):
    """Thread ``p``'s share of the reverse loop of a batch (:func:`_backward_phase`), steps
    T-1 .. 0; ``scratch`` (parts, 9H): block k's rows."""
    T, N = arrays[2].shape[:2]
    proj = arrays[12].shape[1] > 0
    per_step = 4 if proj else 2
    old = _set_local_threads(ctl[SET_LOCAL], 1)
    for stage in range(claims(ctl, per_step, T)):
        for i in range(parts):
            k = (p + i) % parts
            if not _claim(sync, k, stage, k == p):
                continue
            lo, hi = k * N // parts, (k + 1) * N // parts
            for s in stages_of(ctl, stage, per_step, T):
                t, phase = T - 1 - s // per_step, (0 if proj else 2) + s % per_step
                _backward_phase(t, phase, k, parts, lo, hi, arrays, opts, ln, scratch, w, w_hr,
                                ctl)  # fmt: skip
            _done(sync, k, stage)
    _set_local_threads(ctl[SET_LOCAL], old)


@_kernel
def _backward_region(arrays, opts, ln, scratch, w, w_hr, ctl, sync):
    _backward_region_blocks(0, 1, arrays, opts, ln, scratch, w, w_hr, ctl, sync)


@_kernel_parallel
def _backward_region_threads(arrays, opts, ln, scratch, w, w_hr, ctl, sync):
    parts = sync.shape[1]
    for p in prange(parts):
        _backward_region_blocks(p, parts, arrays, opts, ln, scratch, w, w_hr, ctl, sync)


def _region_parts(N: int) -> int | None:
    """How many blocks a batch's whole-loop call is split into (:func:`_parts`, one row
    at least each), or None where the loop stays in Python with PyTorch's matmuls: no
    usable BLAS (:func:`rnnlab.backends.numba_blas.blas`), or PyTorch has threads that
    Numba's cannot match (a forked process: then ``torch.mm`` keeps them busy)."""
    if blas() is None or (torch.get_num_threads() > 1 and not threads_usable()):
        return None
    return _parts(N, 1)


def _region_call(single, threaded, parts: int, *args) -> None:
    """Run a whole-loop kernel on ``parts`` blocks: its parallel form (``threaded``) with
    a fresh ``sync`` of ``parts`` blocks, or its one-thread form (``single``)."""
    (threaded if parts > 1 else single)(*args, new_sync(parts))


def _np(tensor, writes: bool = False):
    """A numpy view of ``tensor`` for a compiled pass.  Read-only inputs may be copied to
    make them contiguous; a tensor the pass ``writes`` must be contiguous already (a copy
    would take the writes, and the tensor would never see them)."""
    if writes and not tensor.is_contiguous():
        raise AssertionError("a buffer a compiled pass writes must be contiguous")
    return tensor.detach().contiguous().numpy()


def _out(tensor):
    """:func:`_np` of a buffer that a compiled pass writes (or reads after PyTorch wrote it)."""
    return _np(tensor, writes=True)


def _zeros(like, *shape):
    """A contiguous zero buffer (``zeros_like`` keeps a transposed tensor's strides)."""
    return like.new_zeros(shape)


class LSTMCompiledFunction(torch.autograd.Function):
    """The extended LSTM's forward and hand-derived backward, each step one matmul and one
    compiled pass (a projected layer: two of each).  Arguments as
    :class:`rnnlab.cells.lstm.LSTMExtFunction`."""

    @staticmethod
    def forward(ctx, x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, *options):
        (weight_hr, peephole, gamma_x, beta_x, gamma_h, beta_h, gamma_c, beta_c,
         drop_mask, zone_h, zone_c) = options  # fmt: skip
        T, N, _ = x.shape
        H, P = c0.shape[1], h0.shape[1]
        use_ln, proj = gamma_x is not None, weight_hr is not None
        bias = _combined_bias(bias_ih, bias_hh, x)
        G = 4 * H
        if use_ln:  # a^x_t; its layer norm and the shifts are done in each step's pass
            gates = input_projection(x, weight_ih, mm=matmul)
            shift = beta_x + beta_h if bias is None else beta_x + beta_h + bias
            a_x_hats, rstd_x = pooled((T, N, G), x.dtype), x.new_empty(T, N, 1)
        else:
            gates = input_projection(x, weight_ih, bias, matmul)
            a_x_hats, rstd_x, shift = x.new_empty(T, N, 0), x.new_empty(T, N, 0), x.new_empty(0)
        # (T, N, .) buffers from the pool (backends/buffers.py): no page faults
        hs, cs, ys = (pooled((T, N, k), x.dtype) for k in (P, H, H))
        us = pooled((T, N, H if proj else 0), x.dtype)  # u_t = o_t y_t, before W_hr
        c_tildes = cs if zone_c is None else pooled((T, N, H), x.dtype)
        ln_rows = (G, 1, H, 1) if use_ln else (0, 0, 0, 0)
        a_h_hats, rstd_h, c_hats, rstd_c = (pooled((T, N, k), x.dtype) for k in ln_rows)
        r = h0.detach() if drop_mask is None else h0.detach() * drop_mask
        r = r.contiguous().clone()  # r_{t-1} = m h_{t-1}, written by each step
        a_h = x.new_empty(N, G)  # r_{t-1} W_hh^T
        opts = _option_arrays(gates, T, N, P, drop_mask, peephole, (gamma_h, gamma_c, beta_c),
                              zone_h, zone_c)  # fmt: skip
        arrays = (*map(_out, (gates, a_h)), _np(h0), _np(c0))
        arrays = (*arrays, *map(_out, (hs, cs, c_tildes, ys, r, us)))
        ln = tuple(map(_out, (a_h_hats, rstd_h, c_hats, rstd_c, a_x_hats, rstd_x)))
        ln += (_np(x.new_empty(0) if gamma_x is None else gamma_x), _np(shift))
        whole = N <= SEQUENCE_ROWS and not proj  # the whole sequence in one call
        region = None if whole else _region_parts(N)  # a batch in one call
        looped = not whole and region is None  # a batch step by step, torch.mm between
        if whole:
            r2 = x.new_empty(2, N, P)
            r2[1] = r  # r_{-1}
            sync = _sequence_sync(H, use_ln)
            call = _forward_sequence_threads if sync.shape[1] > 1 else _forward_sequence
            call(arrays, opts, ln, _np(weight_hh), np.empty(G * H, arrays[0].dtype), _out(r2), sync)
        else:
            parts = _parts(N)
            w_hh_t = transposed(weight_hh)
            w_hr_t = transposed(weight_hr) if proj else x.new_empty(H, 0)
        if region is not None:
            ctl = make_ctl(arrays[0].dtype, N, region, G, P)
            _region_call(_forward_region, _forward_region_threads, region,
                         arrays, opts, ln, _np(w_hh_t), _np(w_hr_t), ctl)  # fmt: skip
        for t in range(T if looped else 0):
            torch.mm(r, w_hh_t, out=a_h)
            if parts > 1:
                _forward_step_threads(t, arrays, opts, ln, parts)
            else:
                _forward_step(t, arrays, opts, ln)
            if proj:  # h~_t = u_t W_hr^T, then zoneout and r = m h_t
                torch.mm(us[t], w_hr_t, out=hs[t])
                if parts > 1:
                    _project_step_threads(t, arrays, opts, parts)
                else:
                    _project_step(t, arrays, opts)
        ctx.has_bias = (bias_ih is not None, bias_hh is not None)
        ctx.opts = opts
        ctx.set_materialize_grads(False)  # an unused output's gradient: buffers.zeros
        ctx.save_for_backward(
            *(x, h0, c0, weight_ih, weight_hh, weight_hr, peephole, drop_mask),
            *(gates, hs, cs, c_tildes, ys, us),
            *(gamma_x, gamma_h, gamma_c),
            *(a_x_hats, rstd_x, a_h_hats, rstd_h, c_hats, rstd_c),
        )
        return hs, cs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs, grad_cs):
        saved = ctx.saved_tensors
        x, h0, c0, weight_ih, weight_hh, weight_hr, peephole, drop_mask = saved[:8]
        gates, hs, cs, c_tildes, ys, us = saved[8:14]
        gamma_x, gamma_h, gamma_c = saved[14:17]
        a_x_hats, rstd_x, a_h_hats, rstd_h, c_hats, rstd_c = saved[17:]
        T, N, _ = x.shape
        H, P = c0.shape[1], h0.shape[1]
        use_ln, proj = gamma_x is not None, weight_hr is not None
        # z-bar is a^h-bar without LN; with it, sums takes every gradient made from it
        # the (T, N, 4H) buffers live within this backward only: reused workspaces
        grad_gates = x.new_empty(T, N, 0) if use_ln else workspace(10, gates, T, N, 4 * H)
        grad_a_h = workspace(11, gates, T, N, 4 * H) if use_ln else grad_gates  # a^h-bar
        grad_r = _zeros(h0, N, P)  # W_hh^T a^h-bar_{t+1}
        carry_h = _zeros(h0, N, P)  # d^h_{t+1} h-bar_{t+1}
        carry_c = _zeros(c0, N, H)  # what c_t gets from step t+1
        grad_u = x.new_empty(N, H if proj else 0)  # W_hr^T h~-bar_t (projection)
        grad_h_tildes = x.new_empty(T, N, P if proj else 0)  # h~-bar of every step (W_hr)
        whole = N <= SEQUENCE_ROWS and not proj
        region = None if whole else _region_parts(N)
        parts = _parts(N)
        blocks = 1 if whole else (parts if region is None else region)
        scratch = np.empty((blocks, 9 * H), dtype=_np(gates).dtype)
        # None: an output nobody used, read as zeros
        grad_hs = zeros((T, N, P), x.dtype) if grad_hs is None else _np(grad_hs)
        grad_cs = zeros((T, N, H), x.dtype) if grad_cs is None else _np(grad_cs)
        arrays = (*map(_np, (gates, c0, cs, ys)), grad_hs, grad_cs)
        arrays += tuple(map(_out, (grad_r, carry_h, carry_c, grad_gates, grad_a_h)))
        arrays += (_np(c_tildes),)
        arrays += (_out(grad_u), _out(grad_h_tildes))
        grad_a_xs = workspace(12, gates, T, N, 4 * H) if use_ln else x.new_empty(T, N, 0)  # a^x-bar
        width = (14 * H if use_ln else 0) + (3 * H if peephole is not None else 0)
        sums = np.zeros((N, width), dtype=scratch.dtype)  # per sequence: see _backward_rows
        ln = tuple(map(_np, (a_h_hats, rstd_h, c_hats, rstd_c, a_x_hats, rstd_x)))
        ln += (_np(x.new_empty(0) if gamma_x is None else gamma_x), _out(grad_a_xs), sums)
        if whole:
            sync = _sequence_sync(H, use_ln)
            threads = sync.shape[1] > 1
            call = _backward_sequence_threads if threads else _backward_sequence
            blocks = np.empty(4 * H * H if threads else 0, scratch.dtype)  # one block reads W
            call(arrays, ctx.opts, ln, scratch, _np(weight_hh), blocks, sync)
        elif region is not None:
            ctl = make_ctl(scratch.dtype, N, region, P, H)
            w_hr = _np(weight_hr) if proj else np.empty((0, H), scratch.dtype)
            _region_call(_backward_region, _backward_region_threads, region,
                         arrays, ctx.opts, ln, scratch, _np(weight_hh), w_hr, ctl)  # fmt: skip
        looped = not whole and region is None  # step by step, torch.mm between
        for t in range(T - 1 if looped else -1, -1, -1):
            if proj:  # h~-bar_t, then u-bar_t = h~-bar_t W_hr
                if parts > 1:
                    _unproject_step_threads(t, arrays, ctx.opts, parts)
                else:
                    _unproject_step(t, arrays, ctx.opts)
                torch.mm(grad_h_tildes[t], weight_hr, out=grad_u)
            if parts > 1:
                _backward_step_threads(t, arrays, ctx.opts, ln, scratch)
            else:
                _backward_step(t, arrays, ctx.opts, ln, scratch)
            torch.mm(grad_a_h[t], weight_hh, out=grad_r)
        grad_h = grad_r if drop_mask is None else grad_r * drop_mask
        grad_h = grad_h + carry_h  # h0-bar = m W_hh^T a^h-bar_0 + d^h_0 h-bar_0
        summed = {}  # the gradients the reverse loop summed per sequence
        total = torch.from_numpy(sums).sum(0).to(x.dtype) if sums.shape[1] else None
        if use_ln:
            G = 4 * H
            names = ("gamma_x", "gamma_h", "gamma_c", "beta_c", "bias")
            summed = dict(zip(names, total[: 14 * H].split((G, G, H, H, G)), strict=True))
            summed["a_x"] = grad_a_xs.view(T * N, G)
        if peephole is not None:
            summed["peephole"] = total[-3 * H :].view(3, H)
        return ext_parameter_grads(
            ctx.needs_input_grad,
            ctx.has_bias,
            (x, h0, c0, weight_ih, weight_hh, weight_hr, peephole, drop_mask),
            (
                grad_gates,
                grad_a_h,
                None,  # n-bar: summed
                grad_h_tildes if proj else None,
                grad_h,
                carry_c,
            ),
            (hs, cs, c_tildes, us if proj else None),
            (gamma_x, gamma_h, gamma_c, a_x_hats, rstd_x, a_h_hats, c_hats),
            summed,
            matmul,
        )


SEQUENCE_ROWS = 1  # batch 1: one compiled call per sequence (2 rows measured slower)
MIN_ROWS_PER_THREAD = 8  # below this a thread's share of a step is too small to pay
MIN_UNITS_PER_THREAD = 64  # a whole sequence: the fewest units a thread's block takes


def _parts(size: int, least: int = MIN_ROWS_PER_THREAD) -> int:
    """How many blocks a step is split into (rows of a batch, or units of a whole
    sequence): one per thread of PyTorch's, as far as Numba has threads that may run here
    (``numba_generate.threads_usable``: OpenMP or TBB, and not in a process forked after
    the threads started), each of at least ``least``."""
    threads = min(torch.get_num_threads(), size // least)
    if threads < 2 or not threads_usable():
        return 1
    threads = min(threads, numba_threads())
    _POOL_PID[0] = _POOL_PID[0] or os.getpid()
    return threads


def _sequence_sync(hidden: int, use_ln: bool) -> np.ndarray:
    """The ``sync`` array of a whole-sequence pass: one block per thread
    (:data:`MIN_UNITS_PER_THREAD` units at least), or one block with layer norm, whose
    statistics take every unit of a row."""
    return new_sync(1 if use_ln else _parts(hidden, MIN_UNITS_PER_THREAD))


def _option_arrays(like, T, N, P, drop_mask, peephole, ln_gains, zone_h, zone_c):
    """(m, peep, gamma_h, gamma_c, beta_c, zone_h, zone_c) as numpy arrays for the compiled
    passes, rows of length 0 where an option is off; m is (N, P), P the size of h."""
    dtype = _np(like).dtype
    m = np.empty((N, 0), dtype) if drop_mask is None else _np(drop_mask.expand(N, P))
    peep = np.empty((3, 0), dtype) if peephole is None else _np(peephole)
    if ln_gains[0] is None:
        gains = tuple(np.empty(0, dtype) for _ in range(3))
    else:
        gains = tuple(map(_np, ln_gains))
    zones = (np.empty((T, N, 0), dtype) if z is None else _np(z) for z in (zone_h, zone_c))
    return (m, peep, *gains, *zones)


def lstm_compiled_sequence(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, *, weight_hr=None,
                           peephole=None, ln=None, drop_mask=None, zoneout=None):  # fmt: skip
    """The extended LSTM through the compiled path: ``(hs, cs)``, (T, N, P) and (T, N, H).

    Arguments, shapes and options as :func:`rnnlab.cells.lstm.lstm_ext_sequence`.  CPU
    tensors, float32 or float64.
    """
    if x.device.type != "cpu":
        raise ValueError(f"the numba LSTM path runs on the CPU; the input is on {x.device}")
    args = (x, h0, c0, weight_ih, weight_hh, weight_hr, peephole, ln, drop_mask)
    T, N, H, P = _check_ext_args(*args)
    zone_h, zone_c = _zoneout_tensors(zoneout, T, N, H, P, x)
    ln_params = (None,) * 6 if ln is None else tuple(ln)
    options = (weight_hr, peephole, *ln_params, drop_mask, zone_h, zone_c)
    return LSTMCompiledFunction.apply(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, *options)


__all__ = ["LSTMCompiledFunction", "lstm_compiled_sequence"]

r"""Compiled training path of the GRU, both forms (Numba): ``backend="numba"``.

The equations, the hand-derived backward and the names are those of
:mod:`rnnlab.cells.gru`, torch form (``torch.nn.GRU``'s):
:math:`n_t = \tanh(a^n_t + r_t \odot u_t)` with :math:`u_t = W_{hn} h_{t-1} + b_{hn}`.
The Cho form, :math:`n_t = \tanh(a^n_t + W_{hn} (r_t \odot h_{t-1}))`, puts a second
matmul inside the step, after the reset gate: :class:`GRUChoCompiledFunction` runs each
of its steps as two matmuls, each followed by one compiled pass (the comment above it
gives the split).

As in :mod:`rnnlab.backends.numba_lstm`, each step is one product and one compiled pass
over the step's element-wise work, row by row:

* forward: :math:`W_{hh} h_{t-1} + b_{hh}`, then :func:`_forward_row`: r and z,
  :math:`u_t`, n, and :math:`h_t = n_t + z_t \odot (h_{t-1} - n_t)`;
* backward: :func:`_backward_row` from :math:`\bar h_t` to :math:`\delta_t` and
  :math:`\delta^h_t` (cells/gru.py, "Backward", torch form; only its n block,
  :math:`\delta^n_t \odot r_t`, is kept for every step), then
  :math:`W_{hh}^\top \delta^h_t` for step t - 1.

The whole loop is one compiled call with the products inside it
(:mod:`rnnlab.backends.numba_blas`), or, where PyTorch exports no BLAS for that, a Python
loop with ``torch.mm`` between the passes.  The input side is one product over all steps,
and the weight gradients are :func:`rnnlab.cells.gru.torch_form_grads`, the fused path's own
code (both through :func:`rnnlab.backends.numba_blas.matmul`).  Float32 layers take their
gates from the float32 rational tanh of :mod:`rnnlab.backends.numba_math` (tanh within
4.1e-7, sigmoid within 2.3e-7), float64 layers from libm.  Rows (or MKL's column chunks)
are split over Numba's threads as in the LSTM path
(:func:`rnnlab.backends.numba_lstm._parts`); results do not depend on the thread count.
"""

from __future__ import annotations

import torch
from numba import prange
from torch.autograd.function import once_differentiable

from rnnlab.backends.buffers import pooled, workspace
from rnnlab.backends.numba_blas import (
    CHUNKS,
    NO_BIAS,
    SET_LOCAL,
    _set_local_threads,
    claims,
    make_ctl,
    matmul,
    product_block,
    stages_of,
    transposed,
)
from rnnlab.backends.numba_generate import _kernel_parallel
from rnnlab.backends.numba_lstm import (
    _np,
    _out,
    _parts,
    _region_call,
    _region_parts,
    _zeros,
)
from rnnlab.backends.numba_math import _claim, _done, _kernel, _sigmoid_fast, _tanh_fast
from rnnlab.cells.elman import _combined_bias, input_projection
from rnnlab.cells.gru import cho_form_grads, torch_form_grads


@_kernel
def _forward_row(g, rec, h_prev, u, h):
    """One row of step t.  ``g`` holds a_t = W_ih x_t + b_ih and leaves as [r, z, n];
    ``rec`` = W_hh h_{t-1} + b_hh; out: ``u`` = u_t, ``h`` = h_t.  Each loop writes one
    array, so that LLVM vectorises it (see numba_lstm._forward_row)."""
    H = h.shape[0]
    g_rz, g_r, g_z, g_n = g[: 2 * H], g[:H], g[H : 2 * H], g[2 * H :]
    for j in range(2 * H):
        g_rz[j] = _sigmoid_fast(g_rz[j] + rec[j], g)
    for j in range(H):
        u[j] = rec[2 * H + j]
    for j in range(H):
        g_n[j] = _tanh_fast(g_n[j] + g_r[j] * u[j], g)
    for j in range(H):
        h[j] = g_n[j] + g_z[j] * (h_prev[j] - g_n[j])


@_kernel
def _forward_rows(t, lo, hi, gates, rec, h0, us, hs):
    for n in range(lo, hi):
        h_prev = h0[n] if t == 0 else hs[t - 1, n]
        _forward_row(gates[t, n], rec[n], h_prev, us[t, n], hs[t, n])


@_kernel
def _backward_row(g, u, h_prev, grad_hs, grad_r, carry, delta, grad_n_r, step_h):
    """One row of step t of the reverse loop.  In: ``grad_r`` = W_hh^T delta^h_{t+1},
    ``carry`` = h-bar_{t+1} z_{t+1}.  Out: ``delta`` = delta_t, ``grad_n_r`` = delta^n_t r_t
    (the n block of delta^h_t), ``step_h`` = delta^h_t for this step's matmul, and the
    carry for step t - 1 (``carry`` holds h-bar_t in between).  Each loop writes one
    array, so that LLVM vectorises it (with seven outputs in one loop it did not)."""
    H = h_prev.shape[0]
    r, z, n = g[:H], g[H : 2 * H], g[2 * H :]
    d_r, d_z, d_n = delta[:H], delta[H : 2 * H], delta[2 * H :]
    for j in range(H):
        carry[j] += grad_hs[j] + grad_r[j]  # h-bar_t
    for j in range(H):
        d_n[j] = carry[j] * (1.0 - z[j]) * (1.0 - n[j] * n[j])
    for j in range(H):
        d_z[j] = carry[j] * (h_prev[j] - n[j]) * z[j] * (1.0 - z[j])
    for j in range(H):
        d_r[j] = d_n[j] * u[j] * r[j] * (1.0 - r[j])
    for j in range(H):
        grad_n_r[j] = d_n[j] * r[j]
    for j in range(H):
        carry[j] *= z[j]
    step_rz, d_rz, step_n = step_h[: 2 * H], delta[: 2 * H], step_h[2 * H :]
    for j in range(2 * H):
        step_rz[j] = d_rz[j]
    for j in range(H):
        step_n[j] = grad_n_r[j]


@_kernel
def _backward_rows(t, lo, hi, gates, us, h0, hs, grad_hs, grad_r, carry, delta, grad_n_r,
                   step_h):  # fmt: skip
    for n in range(lo, hi):
        h_prev = h0[n] if t == 0 else hs[t - 1, n]
        _backward_row(gates[t, n], us[t, n], h_prev, grad_hs[t, n], grad_r[n], carry[n],
                      delta[t, n], grad_n_r[t, n], step_h[n])  # fmt: skip


# A step over all rows, serial or in ``parts`` blocks over Numba's threads (see the note
# at numba_lstm._forward_step on why these are separate functions).
@_kernel
def _forward_step(t, gates, rec, h0, us, hs):
    _forward_rows(t, 0, gates.shape[1], gates, rec, h0, us, hs)


@_kernel_parallel
def _forward_step_threads(t, gates, rec, h0, us, hs, parts):
    N = gates.shape[1]
    for k in prange(parts):
        _forward_rows(t, k * N // parts, (k + 1) * N // parts, gates, rec, h0, us, hs)


@_kernel
def _backward_step(t, arrays):
    _backward_rows(t, 0, arrays[0].shape[1], *arrays)


@_kernel_parallel
def _backward_step_threads(t, arrays, parts):
    N = arrays[0].shape[1]
    for k in prange(parts):
        _backward_rows(t, k * N // parts, (k + 1) * N // parts, *arrays)


# The whole loop in one parallel region, the matmuls inside it (numba_lstm, "a batch in one
# call"): per step a product cut into column chunks, then a pass over blocks of rows.
@_kernel
def _forward_region_blocks(p, parts, gates, rec, h0, us, hs, w_t, b_hh, ctl, sync):
    """Thread ``p``'s share of the forward loop: per step ``rec = h_{t-1} W_hh^T + b_hh``,
    then :func:`_forward_rows`."""
    T, N, _ = hs.shape
    old = _set_local_threads(ctl[SET_LOCAL], 1)
    for stage in range(claims(ctl, 2, T)):
        for i in range(parts):
            k = (p + i) % parts  # its own block first
            if not _claim(sync, k, stage, k == p):
                continue
            lo, hi = k * N // parts, (k + 1) * N // parts
            for s in stages_of(ctl, stage, 2, T):
                t = s // 2
                if s % 2 == 0:
                    h = h0 if t == 0 else hs[t - 1]
                    product_block(ctl, CHUNKS, k, parts, lo, hi, h, w_t, rec, b_hh)
                else:
                    _forward_rows(t, lo, hi, gates, rec, h0, us, hs)
            _done(sync, k, stage)
    _set_local_threads(ctl[SET_LOCAL], old)


@_kernel
def _forward_region(gates, rec, h0, us, hs, w_t, b_hh, ctl, sync):
    _forward_region_blocks(0, 1, gates, rec, h0, us, hs, w_t, b_hh, ctl, sync)


@_kernel_parallel
def _forward_region_threads(gates, rec, h0, us, hs, w_t, b_hh, ctl, sync):
    parts = sync.shape[1]
    for p in prange(parts):
        _forward_region_blocks(p, parts, gates, rec, h0, us, hs, w_t, b_hh, ctl, sync)


@_kernel
def _backward_region_blocks(p, parts, arrays, w, ctl, sync):
    """Thread ``p``'s share of the reverse loop: per step t = T-1 .. 0,
    :func:`_backward_rows`, then ``grad_r = delta^h_t W_hh``.  ``arrays`` as
    :func:`_backward_rows` takes them."""
    grad_r, step_h = arrays[5], arrays[9]
    T, N, _ = arrays[3].shape
    old = _set_local_threads(ctl[SET_LOCAL], 1)
    for stage in range(claims(ctl, 2, T)):
        for i in range(parts):
            k = (p + i) % parts
            if not _claim(sync, k, stage, k == p):
                continue
            lo, hi = k * N // parts, (k + 1) * N // parts
            for s in stages_of(ctl, stage, 2, T):
                t = T - 1 - s // 2
                if s % 2 == 0:
                    _backward_rows(t, lo, hi, *arrays)
                else:
                    product_block(ctl, CHUNKS, k, parts, lo, hi, step_h, w, grad_r, NO_BIAS)
            _done(sync, k, stage)
    _set_local_threads(ctl[SET_LOCAL], old)


@_kernel
def _backward_region(arrays, w, ctl, sync):
    _backward_region_blocks(0, 1, arrays, w, ctl, sync)


@_kernel_parallel
def _backward_region_threads(arrays, w, ctl, sync):
    parts = sync.shape[1]
    for p in prange(parts):
        _backward_region_blocks(p, parts, arrays, w, ctl, sync)


class GRUCompiledFunction(torch.autograd.Function):
    """The torch-form GRU's forward and hand-derived backward, each step one matmul and
    one compiled pass.  ``apply(x, h0, weight_ih, weight_hh, bias_ih, bias_hh)``."""

    @staticmethod
    def forward(ctx, x, h0, weight_ih, weight_hh, bias_ih, bias_hh):
        T, N, I = x.shape
        H = weight_hh.shape[1]
        gates = input_projection(x, weight_ih, bias_ih, matmul)  # a_t = W_ih x_t + b_ih
        hs = pooled((T, N, H), x.dtype)  # from the pool (backends/buffers.py)
        us = pooled((T, N, H), x.dtype)  # u_t = W_hn h_{t-1} + b_hn, for r-bar
        rec = x.new_empty(N, 3 * H)  # W_hh h_{t-1} + b_hh of the current step
        arrays = (*map(_out, (gates, rec)), _np(h0), *map(_out, (us, hs)))
        parts = _parts(N)
        w_hh_t = transposed(weight_hh)
        region = _region_parts(N)  # the whole loop in one compiled call
        if region is not None:
            b_hh = x.new_empty(0) if bias_hh is None else bias_hh
            args = (*arrays, _np(w_hh_t), _np(b_hh), make_ctl(arrays[0].dtype, N, region, 3 * H))
            _region_call(_forward_region, _forward_region_threads, region, *args)
        h = h0.detach()
        for t in range(T if region is None else 0):
            if bias_hh is None:
                torch.mm(h, w_hh_t, out=rec)
            else:
                torch.addmm(bias_hh.detach(), h, w_hh_t, out=rec)
            if parts > 1:
                _forward_step_threads(t, *arrays, parts)
            else:
                _forward_step(t, *arrays)
            h = hs[t]
        ctx.has_bias = (bias_ih is not None, bias_hh is not None)
        ctx.save_for_backward(x, h0, weight_ih, weight_hh, gates, us, hs)
        return hs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs):
        x, h0, weight_ih, weight_hh, gates, us, hs = ctx.saved_tensors
        delta = workspace(10, gates, *gates.shape)  # delta_t of every step (a reused workspace)
        grad_n_r = workspace(11, hs, *hs.shape)  # delta^n_t r_t of every step (delta^h's n block)
        step_h = gates.new_empty(gates.shape[1:])  # delta^h_t of the current step
        grad_r = _zeros(h0, *h0.shape)  # W_hh^T delta^h_{t+1}
        carry = _zeros(h0, *h0.shape)  # h-bar_{t+1} z_{t+1}
        arrays = (
            *map(_np, (gates, us, h0, hs, grad_hs)),
            *map(_out, (grad_r, carry, delta, grad_n_r, step_h)),
        )
        parts = _parts(x.shape[1])
        region = _region_parts(x.shape[1])  # the whole loop in one compiled call
        if region is not None:
            ctl = make_ctl(arrays[0].dtype, x.shape[1], region, h0.shape[1])
            _region_call(_backward_region, _backward_region_threads, region,
                         arrays, _np(weight_hh), ctl)  # fmt: skip
        for t in range(x.shape[0] - 1 if region is None else -1, -1, -1):
            if parts > 1:
                _backward_step_threads(t, arrays, parts)
            else:
                _backward_step(t, arrays)
            torch.mm(step_h, weight_hh, out=grad_r)
        needs = ctx.needs_input_grad
        grad_h = carry + grad_r
        grads = torch_form_grads(needs, x, h0, hs, weight_ih, delta, grad_n_r, grad_h, matmul)
        grad_x, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh = grads
        return (
            grad_x,
            grad_h0 if needs[1] else None,
            grad_w_ih,
            grad_w_hh,
            grad_b_ih if ctx.has_bias[0] else None,
            grad_b_hh if ctx.has_bias[1] else None,
        )


# The Cho form: n needs r_t before its matmul, so a step is two matmuls, each followed by
# a compiled pass (cells/gru.py, "cho form"):
#   forward   rec = h W_hrz^T;  [r, z] = sigmoid(a + rec), rho = r h      (pass 1)
#             rec_n = rho W_hn^T;  n = tanh(a_n + rec_n), h_t = n + z (h - n)   (pass 2)
#   backward  h-bar = carry + h-bar_t + g;  delta^z, delta^n              (pass 1)
#             rho-bar = delta^n W_hn;  delta^r = rho-bar h r (1 - r),
#             carry = h-bar z + rho-bar r                                 (pass 2)
#             g = [delta^r, delta^z] W_hrz   (what h_{t-1} gets through the r, z matmul)
@_kernel
def _cho_forward_rows_1(t, lo, hi, gates, rec, h0, hs, rho):
    for n in range(lo, hi):
        h = h0[n] if t == 0 else hs[t - 1, n]
        g, r_, p = gates[t, n], rec[n], rho[n]
        H = h.shape[0]
        g_rz = g[: 2 * H]
        for j in range(2 * H):
            g_rz[j] = _sigmoid_fast(g_rz[j] + r_[j], g)
        for j in range(H):
            p[j] = g[j] * h[j]


@_kernel
def _cho_forward_rows_2(t, lo, hi, gates, rec_n, h0, hs):
    for n in range(lo, hi):
        h = h0[n] if t == 0 else hs[t - 1, n]
        g, r_, out = gates[t, n], rec_n[n], hs[t, n]
        H = h.shape[0]
        z, g_n = g[H : 2 * H], g[2 * H :]
        for j in range(H):
            g_n[j] = _tanh_fast(g_n[j] + r_[j], g)
        for j in range(H):
            out[j] = g_n[j] + z[j] * (h[j] - g_n[j])


@_kernel
def _cho_backward_rows_1(t, lo, hi, gates, h0, hs, grad_hs, g_rz, carry, delta):
    for n in range(lo, hi):
        h = h0[n] if t == 0 else hs[t - 1, n]
        g, e, gr, c, d = gates[t, n], grad_hs[t, n], g_rz[n], carry[n], delta[t, n]
        H = h.shape[0]
        z, n_, d_z, d_n = g[H : 2 * H], g[2 * H :], d[H : 2 * H], d[2 * H :]
        for j in range(H):
            c[j] += e[j] + gr[j]  # h-bar_t
        for j in range(H):
            d_z[j] = c[j] * (h[j] - n_[j]) * z[j] * (1.0 - z[j])
        for j in range(H):
            d_n[j] = c[j] * (1.0 - z[j]) * (1.0 - n_[j] * n_[j])


@_kernel
def _cho_backward_rows_2(t, lo, hi, gates, h0, hs, grad_rho, carry, delta):
    for n in range(lo, hi):
        h = h0[n] if t == 0 else hs[t - 1, n]
        g, p, c, d = gates[t, n], grad_rho[n], carry[n], delta[t, n]
        H = h.shape[0]
        r, z = g[:H], g[H : 2 * H]
        for j in range(H):
            d[j] = p[j] * h[j] * r[j] * (1.0 - r[j])
        for j in range(H):
            c[j] = c[j] * z[j] + p[j] * r[j]


# Each pass over all rows, serial (parts == 1) or split over Numba's threads.
@_kernel
def _cho_forward_1(t, gates, rec, h0, hs, rho):
    _cho_forward_rows_1(t, 0, gates.shape[1], gates, rec, h0, hs, rho)


@_kernel_parallel
def _cho_forward_1_threads(t, gates, rec, h0, hs, rho, parts):
    N = gates.shape[1]
    for k in prange(parts):
        _cho_forward_rows_1(t, k * N // parts, (k + 1) * N // parts, gates, rec, h0, hs, rho)


@_kernel
def _cho_forward_2(t, gates, rec_n, h0, hs):
    _cho_forward_rows_2(t, 0, gates.shape[1], gates, rec_n, h0, hs)


@_kernel_parallel
def _cho_forward_2_threads(t, gates, rec_n, h0, hs, parts):
    N = gates.shape[1]
    for k in prange(parts):
        _cho_forward_rows_2(t, k * N // parts, (k + 1) * N // parts, gates, rec_n, h0, hs)


@_kernel
def _cho_backward_1(t, arrays):
    _cho_backward_rows_1(t, 0, arrays[0].shape[1], *arrays)


@_kernel_parallel
def _cho_backward_1_threads(t, arrays, parts):
    N = arrays[0].shape[1]
    for k in prange(parts):
        _cho_backward_rows_1(t, k * N // parts, (k + 1) * N // parts, *arrays)


@_kernel
def _cho_backward_2(t, arrays):
    _cho_backward_rows_2(t, 0, arrays[0].shape[1], *arrays)


@_kernel_parallel
def _cho_backward_2_threads(t, arrays, parts):
    N = arrays[0].shape[1]
    for k in prange(parts):
        _cho_backward_rows_2(t, k * N // parts, (k + 1) * N // parts, *arrays)


@_kernel
def _cho_forward_phase(t, phase, k, parts, lo, hi, gates, rec, rec_n, h0, hs, rho, w_hrz_t,
                       w_hn_t, ctl):  # fmt: skip
    """Phase ``phase`` of step t of the Cho form's forward loop for block ``k``: ``rec =
    h_{t-1} W_hrz^T``, pass 1, ``rec_n = rho W_hn^T``, pass 2."""
    if phase == 0:
        h = h0 if t == 0 else hs[t - 1]
        product_block(ctl, CHUNKS, k, parts, lo, hi, h, w_hrz_t, rec, NO_BIAS)
    elif phase == 1:
        _cho_forward_rows_1(t, lo, hi, gates, rec, h0, hs, rho)
    elif phase == 2:
        product_block(ctl, CHUNKS + 1, k, parts, lo, hi, rho, w_hn_t, rec_n, NO_BIAS)
    else:
        _cho_forward_rows_2(t, lo, hi, gates, rec_n, h0, hs)


@_kernel
def _cho_forward_region_blocks(p, parts, gates, rec, rec_n, h0, hs, rho, w_hrz_t, w_hn_t, ctl,
                               sync):  # fmt: skip
    """Thread ``p``'s share of the Cho form's forward loop (:func:`_cho_forward_phase`)."""
    T, N, _ = hs.shape
    old = _set_local_threads(ctl[SET_LOCAL], 1)
    for stage in range(claims(ctl, 4, T)):
        for i in range(parts):
            k = (p + i) % parts
            if not _claim(sync, k, stage, k == p):
                continue
            lo, hi = k * N // parts, (k + 1) * N // parts
            for s in stages_of(ctl, stage, 4, T):
                _cho_forward_phase(s // 4, s % 4, k, parts, lo, hi, gates, rec, rec_n, h0, hs,
                                   rho, w_hrz_t, w_hn_t, ctl)  # fmt: skip
            _done(sync, k, stage)
    _set_local_threads(ctl[SET_LOCAL], old)


@_kernel
def _cho_forward_region(gates, rec, rec_n, h0, hs, rho, w_hrz_t, w_hn_t, ctl, sync):
    _cho_forward_region_blocks(0, 1, gates, rec, rec_n, h0, hs, rho, w_hrz_t, w_hn_t, ctl, sync)


@_kernel_parallel
def _cho_forward_region_threads(gates, rec, rec_n, h0, hs, rho, w_hrz_t, w_hn_t, ctl, sync):
    parts = sync.shape[1]
    for p in prange(parts):
        _cho_forward_region_blocks(p, parts, gates, rec, rec_n, h0, hs, rho, w_hrz_t, w_hn_t,
                                   ctl, sync)  # fmt: skip


@_kernel
def _cho_backward_phase(t, phase, k, parts, lo, hi, first, second, w_hrz, w_hn, ctl):
    """Phase ``phase`` of step t of the Cho form's reverse loop for block ``k``: pass 1,
    ``grad_rho = delta^n_t W_hn``, pass 2, ``g_rz = [delta^r_t, delta^z_t] W_hrz``.
    ``first`` and ``second``: the passes' arrays."""
    g_rz, delta, grad_rho = first[4], first[6], second[3]
    H = grad_rho.shape[1]
    if phase == 0:
        _cho_backward_rows_1(t, lo, hi, *first)
    elif phase == 1:
        d_n = delta[t, :, 2 * H :]
        product_block(ctl, CHUNKS, k, parts, lo, hi, d_n, w_hn, grad_rho, NO_BIAS)
    elif phase == 2:
        _cho_backward_rows_2(t, lo, hi, *second)
    else:
        d_rz = delta[t, :, : 2 * H]
        product_block(ctl, CHUNKS + 1, k, parts, lo, hi, d_rz, w_hrz, g_rz, NO_BIAS)


@_kernel
def _cho_backward_region_blocks(p, parts, first, second, w_hrz, w_hn, ctl, sync):
    """Thread ``p``'s share of the Cho form's reverse loop (:func:`_cho_backward_phase`),
    steps T-1 .. 0."""
    T, N, _ = first[6].shape
    old = _set_local_threads(ctl[SET_LOCAL], 1)
    for stage in range(claims(ctl, 4, T)):
        for i in range(parts):
            k = (p + i) % parts
            if not _claim(sync, k, stage, k == p):
                continue
            lo, hi = k * N // parts, (k + 1) * N // parts
            for s in stages_of(ctl, stage, 4, T):
                _cho_backward_phase(T - 1 - s // 4, s % 4, k, parts, lo, hi, first, second,
                                    w_hrz, w_hn, ctl)  # fmt: skip
            _done(sync, k, stage)
    _set_local_threads(ctl[SET_LOCAL], old)


@_kernel
def _cho_backward_region(first, second, w_hrz, w_hn, ctl, sync):
    _cho_backward_region_blocks(0, 1, first, second, w_hrz, w_hn, ctl, sync)


@_kernel_parallel
def _cho_backward_region_threads(first, second, w_hrz, w_hn, ctl, sync):
    parts = sync.shape[1]
    for p in prange(parts):
        _cho_backward_region_blocks(p, parts, first, second, w_hrz, w_hn, ctl, sync)


class GRUChoCompiledFunction(torch.autograd.Function):
    """The Cho-form GRU's forward and hand-derived backward, each step two matmuls, each
    followed by one compiled pass.  ``apply(x, h0, weight_ih, weight_hh, bias_ih,
    bias_hh)``; b_hh joins b_ih, as in the fused path."""

    @staticmethod
    def forward(ctx, x, h0, weight_ih, weight_hh, bias_ih, bias_hh):
        T, N, _ = x.shape
        H = weight_hh.shape[1]
        gates = input_projection(x, weight_ih, _combined_bias(bias_ih, bias_hh, x), matmul)
        hs = pooled((T, N, H), x.dtype)  # from the pool (backends/buffers.py)
        rec, rho, rec_n = x.new_empty(N, 2 * H), x.new_empty(N, H), x.new_empty(N, H)
        g_np, h0_np, hs_np = _out(gates), _np(h0), _out(hs)
        rec_np, rho_np, rec_n_np = _out(rec), _out(rho), _out(rec_n)
        parts = _parts(N)
        w_hrz_t = transposed(weight_hh[: 2 * H])
        w_hn_t = transposed(weight_hh[2 * H :])
        region = _region_parts(N)  # the whole loop in one compiled call
        if region is not None:
            arrays = (g_np, rec_np, rec_n_np, h0_np, hs_np, rho_np, _np(w_hrz_t), _np(w_hn_t))
            ctl = make_ctl(g_np.dtype, N, region, 2 * H, H)
            _region_call(_cho_forward_region, _cho_forward_region_threads, region, *arrays, ctl)
        h = h0.detach()
        for t in range(T if region is None else 0):
            torch.mm(h, w_hrz_t, out=rec)
            if parts > 1:
                _cho_forward_1_threads(t, g_np, rec_np, h0_np, hs_np, rho_np, parts)
            else:
                _cho_forward_1(t, g_np, rec_np, h0_np, hs_np, rho_np)
            torch.mm(rho, w_hn_t, out=rec_n)
            if parts > 1:
                _cho_forward_2_threads(t, g_np, rec_n_np, h0_np, hs_np, parts)
            else:
                _cho_forward_2(t, g_np, rec_n_np, h0_np, hs_np)
            h = hs[t]
        ctx.has_bias = (bias_ih is not None, bias_hh is not None)
        ctx.save_for_backward(x, h0, weight_ih, weight_hh, gates, hs)
        return hs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs):
        x, h0, weight_ih, weight_hh, gates, hs = ctx.saved_tensors
        T, N, _ = x.shape
        H = hs.shape[2]
        w_hrz, w_hn = weight_hh[: 2 * H], weight_hh[2 * H :]
        delta = workspace(10, gates, *gates.shape)  # delta_t of every step (a reused workspace)
        g_rz = _zeros(h0, N, H)  # W_hrz^T [delta^r; delta^z]_{t+1}
        carry = _zeros(h0, N, H)  # h-bar_{t+1} z_{t+1} + rho-bar_{t+1} r_{t+1}
        grad_rho = h0.new_empty(N, H)  # W_hn^T delta^n_t
        common = (_np(gates), _np(h0), _np(hs))
        first = (*common, _np(grad_hs), _out(g_rz), _out(carry), _out(delta))
        second = (*common, _out(grad_rho), _out(carry), _out(delta))
        parts = _parts(N)
        region = _region_parts(N)  # the whole loop in one compiled call
        if region is not None:
            ctl = make_ctl(first[0].dtype, N, region, H, H)
            _region_call(_cho_backward_region, _cho_backward_region_threads, region,
                         first, second, _np(w_hrz), _np(w_hn), ctl)  # fmt: skip
        for t in range(T - 1 if region is None else -1, -1, -1):
            if parts > 1:
                _cho_backward_1_threads(t, first, parts)
            else:
                _cho_backward_1(t, first)
            torch.mm(delta[t, :, 2 * H :], w_hn, out=grad_rho)
            if parts > 1:
                _cho_backward_2_threads(t, second, parts)
            else:
                _cho_backward_2(t, second)
            torch.mm(delta[t, :, : 2 * H], w_hrz, out=g_rz)
        needs = ctx.needs_input_grad
        grad_h = carry + g_rz
        grads = cho_form_grads(needs, x, h0, hs, gates, weight_ih, weight_hh, delta, grad_h, matmul)
        grad_x, grad_h0, grad_w_ih, grad_w_hh, grad_b, _ = grads
        return (
            grad_x,
            grad_h0 if needs[1] else None,
            grad_w_ih,
            grad_w_hh,
            grad_b if ctx.has_bias[0] and needs[4] else None,
            grad_b if ctx.has_bias[1] and needs[5] else None,
        )


def gru_compiled_sequence(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, form="torch"):
    """The GRU through the compiled path, either form: hs (T, N, H).  Arguments as
    :func:`rnnlab.cells.gru.gru_sequence`; CPU tensors, float32 or float64."""
    if form not in ("torch", "cho"):
        raise ValueError(f"form must be 'torch' or 'cho'; got {form!r}")
    if x.device.type != "cpu":
        raise ValueError(f"the numba GRU path runs on the CPU; the input is on {x.device}")
    function = GRUCompiledFunction if form == "torch" else GRUChoCompiledFunction
    return function.apply(x, h0, weight_ih, weight_hh, bias_ih, bias_hh)


__all__ = ["GRUChoCompiledFunction", "GRUCompiledFunction", "gru_compiled_sequence"]

r"""Compiled training path of the Pascanu-form RNN (Numba): ``backend="numba"``.

The equations, the hand-derived backward and the names are those of
:mod:`rnnlab.cells.pascanu`: the state is the pre-activation,

.. math::

    x_t = W_{rec}\,\sigma(x_{t-1}) + W_{in} u_t + b, \qquad
    \delta_t = \partial E_t/\partial x_t + \sigma'(x_t) \odot W_{rec}^\top \delta_{t+1}

with :math:`\sigma'` taken from the saved :math:`s = \sigma(x)` (:math:`1 - s^2` for tanh,
:math:`s(1 - s)` for the sigmoid).  As in :mod:`rnnlab.backends.numba_elman`, each step is
one product and one compiled pass over its rows:

* forward: :math:`r = \sigma(x_{t-1}) W_{rec}^\top`, then :func:`_forward_rows`:
  :math:`x_t = x_t + r` (``xs[t]`` holds :math:`W_{in} u_t + b`) and
  :math:`\sigma(x_t)`, which the next step multiplies and backward keeps;
* backward: :func:`_backward_rows`: :math:`\delta_t = \bar x_t + \sigma'(x_t) \odot g`
  with :math:`g = W_{rec}^\top \delta_{t+1}` from the previous matmul (none at the last
  step), then :math:`g = W_{rec}^\top \delta_t` for step t - 1.

The whole loop is one compiled call with the products inside it
(:mod:`rnnlab.backends.numba_blas`; the numba_lstm module's "a batch in one call"), or,
where PyTorch exports no BLAS for that, a Python loop with ``torch.mm`` between the
passes.

The input projection, the saved tensors (:math:`\sigma(x_{t-1})` of every step) and the
weight gradients are the fused path's.  Float32 layers take tanh and sigmoid from the
float32 rational tanh of :mod:`rnnlab.backends.numba_math` (tanh within 4.1e-7, sigmoid
within 2.3e-7), float64 layers from libm.  Rows (or MKL's column chunks) are split over
Numba's threads as in the LSTM path; results do not depend on the thread count.  Tests:
``tests/test_numba_pascanu.py``.
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
from rnnlab.backends.numba_generate import SIGMOID, TANH, _kernel_parallel
from rnnlab.backends.numba_lstm import _np, _out, _parts, _region_call, _region_parts
from rnnlab.backends.numba_math import _claim, _done, _kernel, _sigmoid_fast, _tanh_fast
from rnnlab.cells.elman import input_projection
from rnnlab.cells.pascanu import check_sigma, pascanu_grads

KINDS = {"tanh": TANH, "sigmoid": SIGMOID}


@_kernel
def _forward_rows(t, lo, hi, kind, xs, s_prev, rec):
    """Rows ``lo:hi`` of step t: x_t = xs[t] + rec, and s_prev[t + 1] = sigma(x_t) unless
    t is the last step.  One loop per array written, so that LLVM vectorises them."""
    last = t + 1 == xs.shape[0]
    for n in range(lo, hi):
        x, r = xs[t, n], rec[n]
        for j in range(x.shape[0]):
            x[j] += r[j]
        if last:
            continue
        s = s_prev[t + 1, n]
        if kind == TANH:
            for j in range(x.shape[0]):
                s[j] = _tanh_fast(x[j], x)
        else:
            for j in range(x.shape[0]):
                s[j] = _sigmoid_fast(x[j], x)


@_kernel
def _backward_rows(t, lo, hi, kind, s_prev, grad_xs, g, delta):
    """Rows ``lo:hi`` of step t of the reverse loop: delta_t = x-bar_t + sigma'(x_t) g,
    ``g`` = W_rec^T delta_{t+1} (no such term at the last step)."""
    last = t + 1 == delta.shape[0]
    for n in range(lo, hi):
        d, e = delta[t, n], grad_xs[t, n]
        if last:
            for j in range(d.shape[0]):
                d[j] = e[j]
            continue
        s, r = s_prev[t + 1, n], g[n]
        if kind == TANH:
            for j in range(d.shape[0]):
                d[j] = e[j] + (1.0 - s[j] * s[j]) * r[j]
        else:
            for j in range(d.shape[0]):
                d[j] = e[j] + s[j] * (1.0 - s[j]) * r[j]


# A step over all rows, serial or in ``parts`` blocks over Numba's threads (see the note
# at numba_lstm._forward_step on why these are separate functions).
@_kernel
def _forward_step(t, kind, xs, s_prev, rec):
    _forward_rows(t, 0, xs.shape[1], kind, xs, s_prev, rec)


@_kernel_parallel
def _forward_step_threads(t, kind, xs, s_prev, rec, parts):
    N = xs.shape[1]
    for k in prange(parts):
        _forward_rows(t, k * N // parts, (k + 1) * N // parts, kind, xs, s_prev, rec)


@_kernel
def _backward_step(t, kind, s_prev, grad_xs, g, delta):
    _backward_rows(t, 0, delta.shape[1], kind, s_prev, grad_xs, g, delta)


@_kernel_parallel
def _backward_step_threads(t, kind, s_prev, grad_xs, g, delta, parts):
    N = delta.shape[1]
    for k in prange(parts):
        lo, hi = k * N // parts, (k + 1) * N // parts
        _backward_rows(t, lo, hi, kind, s_prev, grad_xs, g, delta)


# The whole loop in one parallel region, the matmuls inside it (numba_lstm, "a batch in one
# call"): per step a product cut into column chunks, then a pass over blocks of rows.
@_kernel
def _forward_region_blocks(p, parts, kind, xs, s_prev, rec, w_t, ctl, sync):
    """Thread ``p``'s share of the forward loop: per step ``rec = s_prev[t] W_rec^T``,
    then :func:`_forward_rows`."""
    T, N, _ = xs.shape
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
                    product_block(ctl, CHUNKS, k, parts, lo, hi, s_prev[t], w_t, rec, NO_BIAS)
                else:
                    _forward_rows(t, lo, hi, kind, xs, s_prev, rec)
            _done(sync, k, stage)
    _set_local_threads(ctl[SET_LOCAL], old)


@_kernel
def _forward_region(kind, xs, s_prev, rec, w_t, ctl, sync):
    _forward_region_blocks(0, 1, kind, xs, s_prev, rec, w_t, ctl, sync)


@_kernel_parallel
def _forward_region_threads(kind, xs, s_prev, rec, w_t, ctl, sync):
    parts = sync.shape[1]
    for p in prange(parts):
        _forward_region_blocks(p, parts, kind, xs, s_prev, rec, w_t, ctl, sync)


@_kernel
def _backward_region_blocks(p, parts, kind, s_prev, grad_xs, g, delta, w, ctl, sync):
    """Thread ``p``'s share of the reverse loop: per step t = T-1 .. 0,
    :func:`_backward_rows`, then ``g = delta_t W_rec``."""
    T, N, _ = delta.shape
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
                    _backward_rows(t, lo, hi, kind, s_prev, grad_xs, g, delta)
                else:
                    product_block(ctl, CHUNKS, k, parts, lo, hi, delta[t], w, g, NO_BIAS)
            _done(sync, k, stage)
    _set_local_threads(ctl[SET_LOCAL], old)


@_kernel
def _backward_region(kind, s_prev, grad_xs, g, delta, w, ctl, sync):
    _backward_region_blocks(0, 1, kind, s_prev, grad_xs, g, delta, w, ctl, sync)


@_kernel_parallel
def _backward_region_threads(kind, s_prev, grad_xs, g, delta, w, ctl, sync):
    parts = sync.shape[1]
    for p in prange(parts):
        _backward_region_blocks(p, parts, kind, s_prev, grad_xs, g, delta, w, ctl, sync)


class PascanuCompiledFunction(torch.autograd.Function):
    """The Pascanu form's forward and hand-derived backward, each step one matmul and one
    compiled pass.  ``apply(u, x0, weight_ih, weight_hh, bias, sigma)``."""

    @staticmethod
    def forward(ctx, u, x0, weight_ih, weight_hh, bias, sigma):
        T, N, _ = u.shape
        H = weight_hh.shape[0]
        kind = KINDS[sigma]
        xs = input_projection(u, weight_ih, bias, matmul)  # W_in u_t + b of every step
        # s_prev[t] = sigma(x_{t-1}) of step t: what W_rec multiplies, and all backward needs
        s_prev = pooled((T, N, H), xs.dtype)  # from the pool (backends/buffers.py)
        (torch.tanh if sigma == "tanh" else torch.sigmoid)(x0.detach(), out=s_prev[0])
        rec = xs.new_empty(N, H)  # W_rec sigma(x_{t-1})
        arrays = (_out(xs), _out(s_prev), _out(rec))
        parts = _parts(N)
        w_rec_t = transposed(weight_hh)
        region = _region_parts(N)  # the whole loop in one compiled call
        if region is not None:
            ctl = make_ctl(arrays[0].dtype, N, region, H)
            _region_call(_forward_region, _forward_region_threads, region,
                         kind, *arrays, _np(w_rec_t), ctl)  # fmt: skip
        for t in range(T if region is None else 0):
            torch.mm(s_prev[t], w_rec_t, out=rec)
            if parts > 1:
                _forward_step_threads(t, kind, *arrays, parts)
            else:
                _forward_step(t, kind, *arrays)
        ctx.sigma = sigma
        ctx.has_bias = bias is not None
        ctx.save_for_backward(u, weight_ih, weight_hh, s_prev)
        return xs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_xs):
        u, weight_ih, weight_hh, s_prev = ctx.saved_tensors
        T, N, H = s_prev.shape
        kind = KINDS[ctx.sigma]
        delta = workspace(10, s_prev, *s_prev.shape)  # delta_t = dE/dx_t of every step (reused)
        g = s_prev.new_zeros(N, H)  # W_rec^T delta_{t+1}
        arrays = (_np(s_prev), _np(grad_xs), _out(g), _out(delta))
        parts = _parts(N)
        region = _region_parts(N)  # the whole loop in one compiled call
        if region is not None:
            ctl = make_ctl(arrays[0].dtype, N, region, H)
            _region_call(_backward_region, _backward_region_threads, region,
                         kind, *arrays, _np(weight_hh), ctl)  # fmt: skip
        for t in range(T - 1 if region is None else -1, -1, -1):
            if parts > 1:
                _backward_step_threads(t, kind, *arrays, parts)
            else:
                _backward_step(t, kind, *arrays)
            torch.mm(delta[t], weight_hh, out=g)
        s0 = s_prev[0]  # sigma(x0)
        grad_x0 = g * (1 - s0 * s0 if ctx.sigma == "tanh" else s0 * (1 - s0))
        return pascanu_grads(ctx.needs_input_grad, ctx.has_bias, u, weight_ih, s_prev, delta,
                             grad_x0, matmul)  # fmt: skip


def pascanu_compiled_sequence(u, x0, weight_ih, weight_hh, bias, sigma="tanh"):
    """The Pascanu form through the compiled path: xs (T, N, H).  Arguments as
    :func:`rnnlab.cells.pascanu.pascanu_sequence`; CPU tensors, float32 or float64."""
    check_sigma(sigma)
    if u.device.type != "cpu":
        raise ValueError(f"the numba Pascanu path runs on the CPU; the input is on {u.device}")
    return PascanuCompiledFunction.apply(u, x0, weight_ih, weight_hh, bias, sigma)


__all__ = ["PascanuCompiledFunction", "pascanu_compiled_sequence"]

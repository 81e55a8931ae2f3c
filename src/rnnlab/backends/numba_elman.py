r"""Compiled training path of the Elman layer (Numba): ``backend="numba"``.

The equations and the hand-derived backward are those of :mod:`rnnlab.cells.elman`:
:math:`h_t = \phi(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})`, phi in tanh, sigmoid,
relu, and :math:`\delta_t = (\bar h_t + W_{hh}^\top \delta_{t+1}) \odot \phi'(h_t)` with
:math:`\phi'` written in terms of :math:`h_t`.  As in :mod:`rnnlab.backends.numba_gru`,
each step is one product and one compiled pass over the rows (forward: the activation;
backward: :math:`\delta_t`), and the whole loop is one compiled call with the products
inside it (:mod:`rnnlab.backends.numba_blas`), or, where PyTorch exports no BLAS for that,
a Python loop with ``torch.mm`` between the passes.  The input side is one product over all
steps and the weight gradients are :func:`rnnlab.cells.elman.elman_grads`, the fused path's
own code (both through :func:`rnnlab.backends.numba_blas.matmul`).  Float32 layers take
tanh and sigmoid from the float32 rational tanh of :mod:`rnnlab.backends.numba_math`,
float64 layers from libm.  Rows (or MKL's column chunks) are split over Numba's threads as
in the LSTM path; results do not depend on the thread count.
"""

from __future__ import annotations

import torch
from numba import prange
from torch.autograd.function import once_differentiable

from rnnlab.backends.buffers import workspace
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
from rnnlab.backends.numba_generate import ACTIVATIONS, SIGMOID, TANH, _kernel_parallel
from rnnlab.backends.numba_lstm import _np, _out, _parts, _region_call, _region_parts
from rnnlab.backends.numba_math import _claim, _done, _kernel, _sigmoid_fast, _tanh_fast
from rnnlab.cells.elman import _combined_bias, elman_grads, input_projection

KINDS = ACTIVATIONS  # the generation loop's codes: tanh, sigmoid, relu


@_kernel
def _forward_rows(t, lo, hi, kind, hs, rec):
    """Rows ``lo:hi`` of step t: ``hs[t]`` holds W_ih x_t + b and becomes
    h_t = phi(hs[t] + rec), ``rec`` = W_hh h_{t-1}.  One loop per nonlinearity, each
    writing one array, so that LLVM vectorises it."""
    for n in range(lo, hi):
        h, r = hs[t, n], rec[n]
        if kind == TANH:
            for j in range(h.shape[0]):
                h[j] = _tanh_fast(h[j] + r[j], h)
        elif kind == SIGMOID:
            for j in range(h.shape[0]):
                h[j] = _sigmoid_fast(h[j] + r[j], h)
        else:
            for j in range(h.shape[0]):
                h[j] = max(h[j] + r[j], 0.0)


@_kernel
def _backward_rows(t, lo, hi, kind, hs, grad_hs, grad_r, delta):
    """Rows ``lo:hi`` of step t of the reverse loop: delta_t = (h-bar_t + W_hh^T
    delta_{t+1}) phi'(h_t), ``grad_r`` = W_hh^T delta_{t+1}."""
    for n in range(lo, hi):
        h, g, r, d = hs[t, n], grad_hs[t, n], grad_r[n], delta[t, n]
        if kind == TANH:
            for j in range(h.shape[0]):
                d[j] = (g[j] + r[j]) * (1.0 - h[j] * h[j])
        elif kind == SIGMOID:
            for j in range(h.shape[0]):
                d[j] = (g[j] + r[j]) * h[j] * (1.0 - h[j])
        else:
            for j in range(h.shape[0]):
                d[j] = (g[j] + r[j]) if h[j] > 0.0 else 0.0


# A step over all rows, serial or in ``parts`` blocks over Numba's threads (see the note
# at numba_lstm._forward_step on why these are separate functions).
@_kernel
def _forward_step(t, kind, hs, rec):
    _forward_rows(t, 0, hs.shape[1], kind, hs, rec)


@_kernel_parallel
def _forward_step_threads(t, kind, hs, rec, parts):
    N = hs.shape[1]
    for k in prange(parts):
        _forward_rows(t, k * N // parts, (k + 1) * N // parts, kind, hs, rec)


@_kernel
def _backward_step(t, kind, hs, grad_hs, grad_r, delta):
    _backward_rows(t, 0, hs.shape[1], kind, hs, grad_hs, grad_r, delta)


@_kernel_parallel
def _backward_step_threads(t, kind, hs, grad_hs, grad_r, delta, parts):
    N = hs.shape[1]
    for k in prange(parts):
        lo, hi = k * N // parts, (k + 1) * N // parts
        _backward_rows(t, lo, hi, kind, hs, grad_hs, grad_r, delta)


# The whole loop in one parallel region, the matmuls inside it (numba_lstm, "a batch in one
# call"): per step a product cut into column chunks, then a pass over blocks of rows.
@_kernel
def _forward_region_blocks(p, parts, kind, hs, h0, rec, w_t, ctl, sync):
    """Thread ``p``'s share of :func:`recurrence_forward`: per step ``rec = h_{t-1} W_hh^T``
    (``w_t`` = W_hh^T), then :func:`_forward_rows`."""
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
                    product_block(ctl, CHUNKS, k, parts, lo, hi, h, w_t, rec, NO_BIAS)
                else:
                    _forward_rows(t, lo, hi, kind, hs, rec)
            _done(sync, k, stage)
    _set_local_threads(ctl[SET_LOCAL], old)


@_kernel
def _forward_region(kind, hs, h0, rec, w_t, ctl, sync):
    _forward_region_blocks(0, 1, kind, hs, h0, rec, w_t, ctl, sync)


@_kernel_parallel
def _forward_region_threads(kind, hs, h0, rec, w_t, ctl, sync):
    parts = sync.shape[1]
    for p in prange(parts):
        _forward_region_blocks(p, parts, kind, hs, h0, rec, w_t, ctl, sync)


@_kernel
def _backward_region_blocks(p, parts, kind, hs, grad_hs, grad_r, delta, w, ctl, sync):
    """Thread ``p``'s share of :func:`recurrence_backward`: per step t = T-1 .. 0,
    :func:`_backward_rows`, then ``grad_r = delta_t W_hh``."""
    T, N, _ = hs.shape
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
                    _backward_rows(t, lo, hi, kind, hs, grad_hs, grad_r, delta)
                else:
                    product_block(ctl, CHUNKS, k, parts, lo, hi, delta[t], w, grad_r, NO_BIAS)
            _done(sync, k, stage)
    _set_local_threads(ctl[SET_LOCAL], old)


@_kernel
def _backward_region(kind, hs, grad_hs, grad_r, delta, w, ctl, sync):
    _backward_region_blocks(0, 1, kind, hs, grad_hs, grad_r, delta, w, ctl, sync)


@_kernel_parallel
def _backward_region_threads(kind, hs, grad_hs, grad_r, delta, w, ctl, sync):
    parts = sync.shape[1]
    for p in prange(parts):
        _backward_region_blocks(p, parts, kind, hs, grad_hs, grad_r, delta, w, ctl, sync)


def recurrence_forward(hs, h0, weight_hh, nonlinearity):
    """In place, step by step: ``hs[t]`` (T, N, H) holds the input side of step t and
    becomes h_t = phi(hs[t] + W_hh h_{t-1}), each step one product and one compiled
    pass.  ``hs`` must be contiguous."""
    T, N, H = hs.shape
    kind = KINDS[nonlinearity]
    rec = hs.new_empty(N, H)  # W_hh h_{t-1}
    hs_np, rec_np = _out(hs), _out(rec)
    parts = _parts(N)
    w_hh_t = transposed(weight_hh)
    region = _region_parts(N)
    if region is not None:  # the whole loop in one compiled call
        args = (kind, hs_np, _np(h0), rec_np, _np(w_hh_t), make_ctl(hs_np.dtype, N, region, H))
        _region_call(_forward_region, _forward_region_threads, region, *args)
        return
    h = h0.detach()
    for t in range(T):
        torch.mm(h, w_hh_t, out=rec)
        if parts > 1:
            _forward_step_threads(t, kind, hs_np, rec_np, parts)
        else:
            _forward_step(t, kind, hs_np, rec_np)
        h = hs[t]


def recurrence_backward(hs, grad_hs, weight_hh, nonlinearity, delta):
    """The reverse loop of :func:`recurrence_forward`: ``delta`` (T, N, H, contiguous)
    receives delta_t = (h-bar_t + W_hh^T delta_{t+1}) phi'(h_t) for every step, where
    ``grad_hs`` holds the gradient reaching each h_t from outside the recurrence; returns
    W_hh^T delta_0, the gradient of h0."""
    T, N, _ = hs.shape
    kind = KINDS[nonlinearity]
    grad_r = hs.new_zeros(N, hs.shape[2])  # W_hh^T delta_{t+1}
    arrays = (_np(hs), _np(grad_hs), _out(grad_r), _out(delta))
    parts = _parts(N)
    region = _region_parts(N)
    if region is not None:  # the whole loop in one compiled call
        ctl = make_ctl(arrays[0].dtype, N, region, hs.shape[2])
        _region_call(_backward_region, _backward_region_threads, region,
                     kind, *arrays, _np(weight_hh), ctl)  # fmt: skip
        return grad_r
    for t in range(T - 1, -1, -1):
        if parts > 1:
            _backward_step_threads(t, kind, *arrays, parts)
        else:
            _backward_step(t, kind, *arrays)
        torch.mm(delta[t], weight_hh, out=grad_r)
    return grad_r


class ElmanRecurrence:
    """The compiled hidden recurrence as the Jordan network's fused path takes it
    (``rnnlab.cells.jordan.jordan_sequence(recurrence=...)``): under teacher forcing its
    hidden state follows exactly this loop."""

    forward = staticmethod(recurrence_forward)
    backward = staticmethod(recurrence_backward)


class ElmanCompiledFunction(torch.autograd.Function):
    """The Elman layer's forward and hand-derived backward, each step one matmul and one
    compiled pass.  ``apply(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity)``."""

    @staticmethod
    def forward(ctx, x, h0, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity):
        bias = _combined_bias(bias_ih, bias_hh, x)
        hs = input_projection(x, weight_ih, bias, matmul)  # W_ih x_t + b of every step
        recurrence_forward(hs, h0, weight_hh, nonlinearity)
        ctx.nonlinearity = nonlinearity
        ctx.has_bias = (bias_ih is not None, bias_hh is not None)
        ctx.save_for_backward(x, h0, weight_ih, weight_hh, hs)
        return hs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs):
        x, h0, weight_ih, weight_hh, hs = ctx.saved_tensors
        delta = workspace(10, hs, *hs.shape)  # delta_t of every step (a reused workspace)
        grad_h0 = recurrence_backward(hs, grad_hs, weight_hh, ctx.nonlinearity, delta)
        needs, has_bias = ctx.needs_input_grad, ctx.has_bias
        return elman_grads(needs, has_bias, x, h0, hs, weight_ih, delta, grad_h0, matmul)


def elman_compiled_sequence(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity="tanh"):
    """The Elman layer through the compiled path: hs (T, N, H).  Arguments as
    :func:`rnnlab.cells.elman.elman_sequence`; CPU tensors, float32 or float64."""
    if nonlinearity not in KINDS:
        raise ValueError(f"nonlinearity must be one of {', '.join(KINDS)}; got {nonlinearity!r}")
    if x.device.type != "cpu":
        raise ValueError(f"the numba Elman path runs on the CPU; the input is on {x.device}")
    return ElmanCompiledFunction.apply(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity)


__all__ = ["ElmanCompiledFunction", "ElmanRecurrence", "elman_compiled_sequence"]

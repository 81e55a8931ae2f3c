r"""Compiled generation loop (Numba): prime and sample many tokens without Python per token.

The plain path of :meth:`rnnlab.models.LanguageModel.generate` returns to Python, and to
several PyTorch calls, for every layer of every token; at batch 1 that overhead, not the
arithmetic, is most of its time.  Here one compiled call primes the state and samples a
whole chunk of tokens.  Batch 1, one direction, gate order and weight layout of
``torch.nn``.  For layer k at step t, with input :math:`x` (the embedding of the token
for k = 0, else the output of layer k - 1):

LSTM (``cell="lstm"``, gates i, f, g, o)::

    z   = W_ih x + b_ih + W_hh h_{t-1} + b_hh = [z_i; z_f; z_g; z_o]
    c_t = sigmoid(z_f) * c_{t-1} + sigmoid(z_i) * tanh(z_g)
    h_t = sigmoid(z_o) * tanh(c_t)

GRU (``cell="gru"``, gates r, z, n; a = W_ih x + b_ih, b = W_hh h_{t-1} + b_hh)::

    r = sigmoid(a_r + b_r),  z = sigmoid(a_z + b_z)
    n = tanh(a_n + r * b_n)                              form "torch" (cuDNN)
    n = tanh(a_n + W_hn (r * h_{t-1}) + b_hn)            form "cho"
    h_t = (1 - z) * n + z * h_{t-1}

Elman (``cell="rnn"``): ``h_t = phi(W_ih x + b_ih + W_hh h_{t-1} + b_hh)``, phi in tanh,
sigmoid, relu.  Pascanu form (``cell="pascanu"``): the state is the pre-activation,
``s_t = W_hh sigma(s_{t-1}) + W_ih x + b``, and the layer emits ``sigma(s_t)``.

Output and sampling, after the top layer's output y::

    o = U y + b_U                                          (logits, model dtype)
    greedy:   token = argmax_v o_v                         (first maximum)
    sampling: p = softmax(float64(o) / temperature)
              token = argmax_v p_v / q_v,   q_v ~ Exp(1) i.i.d.

The last line is the exponential race: :math:`P(\arg\max_v p_v / q_v = i) = p_i`, an
exact sample.  ``torch.multinomial(p, 1)`` draws this very way on the CPU, and the noise
q is drawn by the caller with the torch generator (:func:`rnnlab.backends.race_noise`), so
this loop and the plain path give the same tokens for the same seed.  The arithmetic is
the same up to rounding: the order of the sums in the matrix-vector products differs, and
float32 models take tanh and sigmoid from a rational approximation within 2.6e-8 (below
float32 rounding, see :func:`_tanh_rational`).  So float64 models give identical samples
and float32 models can differ where two candidates are within float32 rounding of each
other (rare; see ``docs/performance.md``).

Two shortcuts that change no value beyond rounding.  Layer 0's input projection of every
token, ``W_ih E[v] + b_ih`` (``W_ih[:, v] + b_ih`` for one-hot inputs), is one (V, G H)
table computed once per call, so a step reads one row of it.  Matrices are stored
transposed, (in, out), so a matrix-vector product streams the weights once, row by row,
adding four rows at a time into an output vector that stays in L1 cache; at batch 1 the
step is bound by reading the weights, and this measured as fast as BLAS gemv here
(docs/performance.md).  Gate arithmetic is done in float64: with libm's ``exp`` and
``tanh`` for float64 models, with the branch-free rational tanh for float32 models, which
lets LLVM vectorise each gate loop.

Threads.  The gate columns are stored unit by unit (:func:`column_order`), so the columns
of a block of units are one contiguous range of every weight row, and
:func:`_blocks_of_chunk` gives each thread a block of units: it reads only its share of the
weights and computes its units' gates.  A whole chunk of tokens is one parallel region,
in which the threads meet after each layer (``numba_math._claim``: spinning on shared
counters, about 0.1 µs, where a parallel region per layer cost 4-11 µs).  Every value is
computed by the same operations in the same order as on one thread, so the tokens do not
depend on the thread count; :func:`loop_threads` picks it (all of Numba's threads, at
least :data:`MIN_UNITS_PER_THREAD` units each).
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import time
import weakref
from dataclasses import dataclass

import numba
import numpy as np
import torch

from rnnlab.backends import nonfinite_message
from rnnlab.backends.numba_math import (  # noqa: F401 (_tanh_rational: the tests' handle)
    _claim,
    _done,
    _jit,
    _sigmoid,
    _tanh,
    _tanh_rational,
    numba_threads,
)

LSTM, GRU, GRU_CHO, ELMAN, PASCANU = 0, 1, 2, 3, 4
TANH, SIGMOID, RELU = 0, 1, 2
ACTIVATIONS = {"tanh": TANH, "sigmoid": SIGMOID, "relu": RELU}
MIN_UNITS_PER_THREAD = 64  # measured: 2 threads win at hidden 128 since the chunk is one region
CHUNK = 4096  # tokens sampled per compiled call: bounds the noise buffer (CHUNK x V float64)


# Only explicit ``prange`` loops run in parallel, and two of them are never fused into one
# (the end of a loop is the barrier the Pascanu and Cho forms rely on).
_PARALLEL_PASSES = (
    "comprehension",
    "reduction",
    "inplace_binop",
    "setitem",
    "numpy",
    "stencil",
    "fusion",
    "prange",
)
_PRANGE_ONLY = {name: name == "prange" for name in _PARALLEL_PASSES}


def _jit_parallel(fn, **extra):
    """:func:`_jit` with Numba's parallel loops (``prange``) and nothing else parallel."""
    return _jit(fn, parallel=dict(_PRANGE_ONLY), **extra)


_kernel_parallel = functools.partial(_jit_parallel, refcounts=False)  # views only (_jit)


@_jit
def _activate(a, kind, like):
    if kind == TANH:
        return _tanh(a, like)
    if kind == SIGMOID:
        return _sigmoid(a, like)
    return a if a > 0.0 else 0.0


@functools.partial(_jit, fastmath={"contract"}, refcounts=False)  # views only
def _matvec_t(w_t, v, o):
    """o = w_t^T v: w_t is a block of weight columns stored transposed, (in, width), C order.

    Eight input rows per pass over the output, so ``o`` is loaded and stored once per eight
    rows of weights; each pass is a contiguous, vectorisable loop, with multiply-adds fused
    (``fastmath`` "contract" only: no reassociation, so the order of the sums is fixed).
    The loops run over views from index 0: with an index Numba cannot prove non-negative
    (``lo + j``) it adds a wrap-around test per element, which stopped LLVM vectorising
    (3-7x slower).
    """
    n = v.shape[0]
    m = o.shape[0]
    for j in range(m):
        o[j] = 0.0
    c = 0
    while c + 8 <= n:
        v0, v1, v2, v3 = v[c], v[c + 1], v[c + 2], v[c + 3]
        v4, v5, v6, v7 = v[c + 4], v[c + 5], v[c + 6], v[c + 7]
        w0, w1, w2, w3 = w_t[c], w_t[c + 1], w_t[c + 2], w_t[c + 3]
        w4, w5, w6, w7 = w_t[c + 4], w_t[c + 5], w_t[c + 6], w_t[c + 7]
        for j in range(m):
            low = w0[j] * v0 + w1[j] * v1 + w2[j] * v2 + w3[j] * v3
            o[j] += low + (w4[j] * v4 + w5[j] * v5 + w6[j] * v6 + w7[j] * v7)
        c += 8
    while c < n:
        vc = v[c]
        w = w_t[c]
        for j in range(m):
            o[j] += w[j] * vc
        c += 1


@_jit
def _block(w_b, n_in, a, b):
    """Columns ``a:b`` of a matrix stored blocked (:func:`blocked`), as an (in, b - a)
    C-order view; ``a:b`` must be one of the blocks it was stored in."""
    return w_b[n_in * a : n_in * b].reshape(n_in, b - a)


@_jit
def _product(w_b, v, out, a, b):
    """out[a:b] = (W^T)[:, a:b]^T v for W^T stored blocked, ``a:b`` one of its blocks."""
    _matvec_t(_block(w_b, v.shape[0], a, b), v, out[a:b])


@_jit
def _units_first(cell, act, k, token, table, wih_b, bih, whh_b, bhh, h, ys, gi, gh, tmp, lo, hi):
    """Layer ``k``, units ``lo:hi``, first pass: their columns of the input projection
    (``gi``) and of every recurrent product that needs no other unit's new value (``gh``).

    Columns are unit-major (:func:`column_order`), so units ``lo:hi`` own one contiguous
    range of columns, stored as one block of each matrix (:func:`blocked`).  Pascanu
    form: ``tmp`` = sigma(s_{t-1}) of the units instead (the product W_hh sigma(s_{t-1})
    needs all of them); Cho's GRU: the r, z columns, then ``tmp`` = r * h_{t-1} of the
    units (W_hn (r * h_{t-1}) needs all of them).
    """
    H = h.shape[1]
    hk = h[k]
    ng = gi.shape[0] // H  # gates per unit
    paired = 2 if cell == GRU_CHO else ng  # gates per unit in the unit-major block
    for r in range(2 if cell == GRU_CHO else 1):
        # the unit-major block; for Cho's GRU then the n columns
        a = lo * paired if r == 0 else paired * H + lo
        z = hi * paired if r == 0 else paired * H + hi
        if k == 0:
            for j in range(a, z):
                gi[j] = table[token, j]  # W_ih x + b_ih, looked up
        else:
            _product(wih_b[k - 1], ys[k - 1], gi, a, z)
            for j in range(a, z):
                gi[j] += bih[k, j]
    if cell == PASCANU:
        for j in range(lo, hi):
            tmp[j] = _activate(hk[j], act, h)
        return
    _product(whh_b[k], hk, gh, lo * paired, hi * paired)
    if cell == GRU_CHO:
        b = bhh[k]
        for j in range(lo, hi):
            tmp[j] = _sigmoid(gi[2 * j] + gh[2 * j] + b[2 * j], h) * hk[j]  # r * h_{t-1}


@_jit
def _units_second(cell, act, k, whh_b, bhh, h, c, ys, gi, gh, tmp, hnew, lo, hi):
    """Layer ``k``, units ``lo:hi``, second pass: the products left waiting for ``tmp``
    (Pascanu: W_hh sigma(s_{t-1}); Cho's GRU: W_hn (r * h_{t-1})), then the gates.  The new
    state goes to ``hnew`` (the caller copies it to ``h[k]``: other units may still be
    reading ``h[k]``), the LSTM cell to ``c[k]``, the layer's output to ``ys[k]``.

    One loop per cell, each over views from index 0 with no calls in it for float32
    models (:func:`_tanh_rational`), so that LLVM vectorises it (see :func:`_matvec_t`).
    """
    H = h.shape[1]
    m = hi - lo
    b = bhh[k]
    hp, hn, y = h[k, lo:hi], hnew[lo:hi], ys[k, lo:hi]
    if cell == LSTM:
        a, r, s = gi[4 * lo : 4 * hi], gh[4 * lo : 4 * hi], b[4 * lo : 4 * hi]
        cp = c[k, lo:hi]
        for j in range(m):
            u = 4 * j
            i = _sigmoid(a[u] + r[u] + s[u], h)
            f = _sigmoid(a[u + 1] + r[u + 1] + s[u + 1], h)
            g = _tanh(a[u + 2] + r[u + 2] + s[u + 2], h)
            o = _sigmoid(a[u + 3] + r[u + 3] + s[u + 3], h)
            cp[j] = f * cp[j] + i * g
            hn[j] = o * _tanh(cp[j], h)
            y[j] = hn[j]
    elif cell == GRU:
        a, r, s = gi[3 * lo : 3 * hi], gh[3 * lo : 3 * hi], b[3 * lo : 3 * hi]
        for j in range(m):
            u = 3 * j
            rg = _sigmoid(a[u] + r[u] + s[u], h)
            z = _sigmoid(a[u + 1] + r[u + 1] + s[u + 1], h)
            n = _tanh(a[u + 2] + rg * (r[u + 2] + s[u + 2]), h)
            hn[j] = (1.0 - z) * n + z * hp[j]
            y[j] = hn[j]
    elif cell == GRU_CHO:
        a, r, s = gi[2 * lo : 2 * hi], gh[2 * lo : 2 * hi], b[2 * lo : 2 * hi]
        an, rn, sn = (
            gi[2 * H + lo : 2 * H + hi],
            gh[2 * H + lo : 2 * H + hi],
            b[2 * H + lo : 2 * H + hi],
        )
        _product(whh_b[k], tmp, gh, 2 * H + lo, 2 * H + hi)
        for j in range(m):
            z = _sigmoid(a[2 * j + 1] + r[2 * j + 1] + s[2 * j + 1], h)
            n = _tanh(an[j] + rn[j] + sn[j], h)
            hn[j] = (1.0 - z) * n + z * hp[j]
            y[j] = hn[j]
    elif cell == ELMAN:
        a, r, s = gi[lo:hi], gh[lo:hi], b[lo:hi]
        for j in range(m):
            hn[j] = _activate(a[j] + r[j] + s[j], act, h)
            y[j] = hn[j]
    else:  # PASCANU: s_t = W_hh sigma(s_{t-1}) + (W_ih x + b); emits sigma(s_t)
        _product(whh_b[k], tmp, gh, lo, hi)
        a, r = gi[lo:hi], gh[lo:hi]
        for j in range(m):
            hn[j] = r[j] + a[j]
            y[j] = _activate(hn[j], act, h)


@_jit
def _layer_serial(cell, act, k, token, table, wih_b, bih, whh_b, bhh, h, c, ys, scratch):
    """Advance layer ``k`` by one token on this thread (``scratch``: gi, gh, tmp, hnew)."""
    gi, gh, tmp, hnew = scratch
    H = h.shape[1]
    _units_first(cell, act, k, token, table, wih_b, bih, whh_b, bhh, h, ys, gi, gh, tmp, 0, H)
    _units_second(cell, act, k, whh_b, bhh, h, c, ys, gi, gh, tmp, hnew, 0, H)
    h[k, :] = hnew


@_jit
def _blocks_of_chunk(p, parts, cell, act, table, wih_b, bih, whh_b, bhh, head_t, head_b, h, c,
                     feed, q, temperature, out, scratch, ys, logits, sync, status):  # fmt: skip
    """Thread ``p``'s share of :func:`_generate_chunk` on ``parts`` threads, in one
    parallel region (:func:`_chunk_threads`).

    Block b is units ``b H // parts`` to ``(b + 1) H // parts`` of every layer; each thread
    reads only its block's columns of the weights.  The threads meet after every layer of
    every token (``numba_math._claim``; twice per layer for the Pascanu and Cho forms, whose
    second product needs every unit's first pass), and once more per token, where each
    block copies its units' new states into ``h`` (no thread reads ``h[k]`` again before
    the next token) and block 0 computes the logits and samples.  Every value is computed
    by the same operations in the same order as on one thread, so the tokens are the same.
    ``scratch``: (gi, gh, tmp, hnew), hnew (L, H); ``status[0]``: as the return value of
    :func:`_generate_chunk`."""
    num_layers, H = h.shape
    gi, gh, tmp, hnew = scratch
    V = head_b.shape[0]
    no_noise = np.empty(0, np.float64)
    two = cell == PASCANU or cell == GRU_CHO
    fed = feed.shape[0]
    stage = 0
    for t in range(fed + out.shape[0] - 1):
        token = feed[t] if t < fed else out[t - fed]
        for k in range(num_layers):
            for half in range(2 if two else 1):
                for n in range(parts):
                    b = (p + n) % parts  # its own block first
                    if not _claim(sync, b, stage, b == p):
                        continue
                    lo, hi = b * H // parts, (b + 1) * H // parts
                    if half == 0:
                        _units_first(
                            cell, act, k, token, table, wih_b, bih, whh_b, bhh, h, ys, gi, gh,
                            tmp, lo, hi,
                        )  # fmt: skip
                    if half == 1 or not two:
                        _units_second(
                            cell, act, k, whh_b, bhh, h, c, ys, gi, gh, tmp, hnew[k], lo, hi
                        )
                    _done(sync, b, stage)
                stage += 1
        i = t + 1 - fed  # the token this step's output predicts
        for n in range(parts):
            b = (p + n) % parts
            if not _claim(sync, b, stage, b == p):
                continue
            lo, hi = b * H // parts, (b + 1) * H // parts
            for k in range(num_layers):
                h[k, lo:hi] = hnew[k, lo:hi]
            if b == 0 and i >= 0:
                _matvec_t(head_t, ys[num_layers - 1], logits)
                for v in range(V):
                    logits[v] += head_b[v]
                out[i] = _sample(logits, no_noise if q.shape[0] == 0 else q[i], temperature)
                if out[i] < 0:
                    status[0] = i
            _done(sync, b, stage)
        stage += 1
        if status[0] >= 0:  # every block of the stage is done: its writes are seen
            return


@_jit_parallel
def _chunk_threads(cell, act, table, wih_b, bih, whh_b, bhh, head_t, head_b, h, c, feed, q,
                   temperature, out, scratch, ys, logits, sync, status):  # fmt: skip
    """:func:`_blocks_of_chunk` on ``sync.shape[1]`` threads."""
    parts = sync.shape[1]
    for p in numba.prange(parts):
        _blocks_of_chunk(
            p, parts, cell, act, table, wih_b, bih, whh_b, bhh, head_t, head_b, h, c, feed, q,
            temperature, out, scratch, ys, logits, sync, status,
        )  # fmt: skip


@_jit
def _sample(logits, q_row, temperature):
    """Greedy (argmax of the logits, first maximum) when ``q_row`` is empty, else the
    exponential race over p = softmax(logits / temperature).  -1 if a logit is not finite
    (greedy too: the plain path refuses it the same way)."""
    V = logits.shape[0]
    for v in range(V):
        if not math.isfinite(logits[v]):
            return -1
    token = 0
    if q_row.shape[0] == 0:
        for v in range(1, V):
            if logits[v] > logits[token]:
                token = v
        return token
    top = -np.inf
    for v in range(V):
        top = max(top, float(logits[v]) / temperature)
    total = 0.0
    for v in range(V):
        total += math.exp(float(logits[v]) / temperature - top)
    scale = 1.0 / total
    best = -1.0
    for v in range(V):
        race = math.exp(float(logits[v]) / temperature - top) * scale / q_row[v]
        if race > best:
            token, best = v, race
    return token


@_jit
def _generate_chunk(
    cell,
    act,
    table,
    wih_b,
    bih,
    whh_b,
    bhh,
    head_t,
    head_b,
    h,
    c,
    feed,
    q,
    temperature,
    out,
    parts,
):
    """Feed the tokens ``feed`` (the prime, or the last token sampled), then sample
    ``len(out)`` >= 1 tokens, feeding each back but the last.  Greedy when ``q`` has no
    rows, else row i of ``q`` is token i's noise.  ``parts``: None runs on this thread; a
    number splits each layer's units over that many threads (:func:`_blocks_of_chunk`;
    the same results).  Numba prunes the ``parts is None`` test while compiling, so the
    one-thread loop is compiled without the parallel one (which more than doubles the
    compile time) and each is cached apart.  Returns -1, or the index in ``out`` whose
    logits were not finite (sampling stops there)."""
    num_layers, H = h.shape
    G = bhh.shape[1]
    V = head_b.shape[0]
    ys = np.empty((num_layers, H), h.dtype)  # each layer's output at this token
    logits = np.empty(V, h.dtype)
    if parts is not None:
        status = np.full(1, -1, np.int64)
        scratch = (
            np.empty(G, h.dtype),
            np.empty(G, h.dtype),
            np.empty(H, h.dtype),
            np.empty((num_layers, H), h.dtype),
        )
        sync = np.full((2, parts), -1, np.int64)  # numba_math.new_sync
        _chunk_threads(
            cell, act, table, wih_b, bih, whh_b, bhh, head_t, head_b, h, c, feed, q,
            temperature, out, scratch, ys, logits, sync, status,
        )  # fmt: skip
        return status[0]
    scratch = (
        np.empty(G, h.dtype),
        np.empty(G, h.dtype),
        np.empty(H, h.dtype),
        np.empty(H, h.dtype),
    )
    no_noise = np.empty(0, np.float64)
    fed = feed.shape[0]
    for t in range(fed + out.shape[0] - 1):
        token = feed[t] if t < fed else out[t - fed]
        for k in range(num_layers):
            _layer_serial(cell, act, k, token, table, wih_b, bih, whh_b, bhh, h, c, ys, scratch)
        i = t + 1 - fed  # the token this step's output predicts
        if i < 0:
            continue
        _matvec_t(head_t, ys[num_layers - 1], logits)
        for v in range(V):
            logits[v] += head_b[v]
        out[i] = _sample(logits, no_noise if q.shape[0] == 0 else q[i], temperature)
        if out[i] < 0:
            return i
    return -1


# -- packing a model for the loop ---------------------------------------------------------


@dataclass
class Packed:
    """A language model's weights laid out for :func:`_generate_chunk` (numpy, model dtype).

    ``table`` (V, G H): layer 0's input projection of every token, b_ih included;
    ``wih_b`` (L-1, H G H): W_ih^T of layers 1..L-1 and ``whh_b`` (L, H G H): W_hh^T, each
    stored in the column blocks of ``parts`` threads (:func:`blocked`); ``bih`` (L, G H)
    (row 0 unused); ``bhh`` (L, G H); ``head_t`` (H, V) = U^T; ``head_b`` (V,).
    """

    cell: int
    act: int
    parts: int
    table: np.ndarray
    wih_b: np.ndarray
    bih: np.ndarray
    whh_b: np.ndarray
    bhh: np.ndarray
    head_t: np.ndarray
    head_b: np.ndarray

    def arrays(self) -> tuple:
        return (self.table, self.wih_b, self.bih, self.whh_b, self.bhh, self.head_t, self.head_b)


def unsupported(model) -> str | None:
    """Why this loop cannot run ``model`` (None when it can)."""
    from rnnlab import layers

    rnn = getattr(model, "rnn", None)
    if getattr(model, "head", None) is None:
        return f"cell {model.config.cell!r} (output recurrence) has no compiled loop"
    if not isinstance(rnn, (layers.LSTM, layers.GRU, layers.RNN, layers.PascanuRNN)):
        return f"cell {model.config.cell!r} has no compiled loop"
    if isinstance(rnn, layers.LSTM) and (rnn.proj_size or rnn.has_options):
        return "LSTM options (projection, peepholes, layer norm, dropout, zoneout) run in torch"
    if rnn.bidirectional:
        return "a bidirectional layer cannot generate"
    weight = rnn.weight_ih_l0
    if weight.device.type != "cpu":
        return f"the model is on {weight.device.type}, the compiled loop runs on the CPU"
    if weight.dtype not in (torch.float32, torch.float64):
        return f"dtype {weight.dtype} has no compiled loop"
    return None


def _cell_code(rnn) -> tuple[int, int]:
    from rnnlab import layers

    if isinstance(rnn, layers.LSTM):
        return LSTM, TANH
    if isinstance(rnn, layers.GRU):
        return (GRU if rnn.form == "torch" else GRU_CHO), TANH
    if isinstance(rnn, layers.RNN):
        return ELMAN, ACTIVATIONS[rnn.nonlinearity]
    return PASCANU, ACTIVATIONS[rnn.sigma]


@torch.no_grad()
def pack(model, parts: int = 1) -> Packed:
    """Lay out ``model``'s weights for the loop on ``parts`` threads (copies; the model is
    not changed)."""
    rnn = model.rnn
    layers = rnn.step_parameters()
    first = layers[0]
    G = first["weight_hh"].shape[0]

    def bias(p, name):
        b = p.get(name)
        return torch.zeros(G, dtype=first["weight_hh"].dtype) if b is None else b

    ih_bias = "bias" if "bias" in first else "bias_ih"  # the Pascanu form has one bias
    w_ih0 = first["weight_ih"]
    if model.embedding is not None:
        table = model.embedding.weight @ w_ih0.t()
    else:
        table = w_ih0.t()
    table = table + bias(first, ih_bias)
    H = rnn.hidden_size
    if len(layers) > 1:
        wih_t = torch.stack([p["weight_ih"].t() for p in layers[1:]])
    else:
        wih_t = table.new_zeros(0, H, G)
    head_b = model.head.bias if model.head.bias is not None else table.new_zeros(table.shape[0])

    cell, act = _cell_code(rnn)
    order = torch.as_tensor(column_order(cell, G // H, H))

    def np_(t, columns=True):  # gate columns (the last dimension) in unit-major order
        t = t.detach().cpu()  # a copy always: a view of a parameter would see its updates
        return np.array((t[..., order] if columns else t).numpy(), order="C", copy=True)

    ranges = column_blocks(cell, G // H, H, parts)

    def blocked_(stack):  # (layers, in, G H) -> (layers, in G H), each layer blocked
        w = np_(stack)
        return np.stack([blocked(m, ranges) for m in w]) if len(w) else w.reshape(0, H * G)

    return Packed(
        cell=cell,
        act=act,
        parts=parts,
        table=np_(table),
        wih_b=blocked_(wih_t),
        bih=np_(torch.stack([bias(p, ih_bias) for p in layers])),
        whh_b=blocked_(torch.stack([p["weight_hh"].t() for p in layers])),
        bhh=np_(torch.stack([bias(p, "bias_hh") for p in layers])),
        head_t=np_(model.head.weight.t(), columns=False),
        head_b=np_(head_b, columns=False),
    )


def column_order(cell: int, gates: int, hidden: int) -> np.ndarray:
    """The loop's order of a layer's G H gate columns, as indices into torch's order.

    torch stacks the gates (rows q H + j, gate q of unit j); the loop interleaves them
    unit by unit (column j G + q), so that the columns of a block of units are one
    contiguous range of every weight row: a thread given units ``lo:hi`` streams
    contiguous memory.  Cho's GRU interleaves only r and z (2 j + q) and keeps the n
    columns last (2 H + j): their product waits for r of every unit.

    >>> column_order(LSTM, 4, 2).tolist()
    [0, 2, 4, 6, 1, 3, 5, 7]
    >>> column_order(GRU_CHO, 3, 2).tolist()
    [0, 2, 1, 3, 4, 5]
    """
    paired = 2 if cell == GRU_CHO else gates
    units = np.arange(hidden)
    interleaved = (np.arange(paired)[None, :] * hidden + units[:, None]).reshape(-1)
    rest = np.arange(paired * hidden, gates * hidden)
    return np.concatenate([interleaved, rest])


def column_blocks(cell: int, gates: int, hidden: int, parts: int) -> list[tuple[int, int]]:
    """The column ranges (in :func:`column_order`) that each thread's products read, in
    column order: thread p owns units ``p H // parts`` to ``(p + 1) H // parts``, the same
    split as :func:`_blocks_of_chunk`.  Cho's GRU: the r, z blocks, then the n blocks.

    >>> column_blocks(LSTM, 4, 6, 2)
    [(0, 12), (12, 24)]
    >>> column_blocks(GRU_CHO, 3, 4, 2)
    [(0, 4), (4, 8), (8, 10), (10, 12)]
    """
    units = [(p * hidden // parts, (p + 1) * hidden // parts) for p in range(parts)]
    if cell == GRU_CHO:
        return [(2 * lo, 2 * hi) for lo, hi in units] + [
            (2 * hidden + lo, 2 * hidden + hi) for lo, hi in units
        ]
    return [(gates * lo, gates * hi) for lo, hi in units]


def blocked(w_t: np.ndarray, ranges: list[tuple[int, int]]) -> np.ndarray:
    """Store the columns of ``w_t`` (in, C) block by block: for each range ``a:b`` in
    turn, ``w_t[:, a:b]`` in C order, flattened.  Block ``a:b`` then starts at ``in * a``
    (:func:`_block`), and a thread streams its columns of the matrix as one contiguous
    piece of memory.  With one block this is ``w_t`` itself, flattened.

    Why: split by rows, a thread reading columns ``a:b`` of every row of the (in, C)
    matrix touches a short piece of each row and skips the other threads' pieces; with
    2 threads at hidden 256 those pieces map to half of the cache sets, so a thread's 1.5
    MB did not stay in its 2 MB L2 cache (measured: 29-31 GB/s for both threads strided,
    36-38 GB/s blocked).

    >>> blocked(np.arange(8).reshape(2, 4), [(0, 2), (2, 4)]).tolist()
    [0, 1, 4, 5, 2, 3, 6, 7]
    """
    return np.concatenate([np.ascontiguousarray(w_t[:, a:b]).reshape(-1) for a, b in ranges])


_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def packed_weights(model, parts: int = 1) -> Packed:
    """:func:`pack` for ``parts`` threads, kept per model until a parameter changes (in
    place or replaced) or another thread count is asked for.

    Packing transposes every matrix and computes the (V, G H) table: 60 ms for a 2 x 512
    LSTM here, as long as 40 tokens, so repeated calls reuse it.  A pack is reused only
    while every parameter equals the copy taken when it was made: the version counter
    alone misses updates that do not bump it (``torch.optim.Adam(fused=True)``, writes
    through ``p.data``).  The comparison reads the weights once (about 1 ms for that
    LSTM's 13 MB), so it stays far cheaper than packing again.
    """
    params = [p.detach() for p in model.parameters()]
    key = (parts, *((p.shape, p.dtype, p.device) for p in params))
    cached = _PACKED.get(model)
    if cached is not None and cached[0] == key:
        if all(torch.equal(p, kept) for p, kept in zip(params, cached[1], strict=True)):
            return cached[2]
    packed = pack(model, parts)
    _PACKED[model] = (key, [p.clone() for p in params], packed)
    return packed


def loop_threads(hidden_size: int) -> int:
    """Threads per layer for a model of ``hidden_size`` units: Numba's thread count
    (``NUMBA_NUM_THREADS``, ``numba.set_num_threads``), capped so that each thread has
    at least :data:`MIN_UNITS_PER_THREAD` units (below that a parallel region costs more
    than it saves); 1 where parallel regions are not safe or not cheap
    (:func:`threads_usable`)."""
    threads = min(numba_threads(), hidden_size // MIN_UNITS_PER_THREAD)
    return threads if threads > 1 and threads_usable() else 1


def threads_usable() -> bool:
    """Whether the loop may split layers over threads in this process.

    Not with Numba's own work-queue threading layer (80-100 µs per parallel region
    measured here, against 4-11 µs with OpenMP, and it aborts when two Python threads
    launch regions at once), which Numba falls back to where neither TBB nor OpenMP
    loads.  Not in a process forked from one that already ran the loop's threads: GNU
    OpenMP's pool does not survive ``fork()``, and Numba terminates the child rather than
    hang.
    """
    if numba.config.THREADING_LAYER == "workqueue" or not _pool_layer_loads():
        return False
    return _POOL_PID[0] in (None, os.getpid())


_POOL_PID: list = [None]  # the process that started the loop's thread pool


@functools.lru_cache(maxsize=1)
def _pool_layer_loads() -> bool:
    """Whether Numba's TBB or OpenMP threading layer loads (its preferred ones)."""
    for name in ("tbbpool", "omppool"):
        try:
            importlib.import_module(f"numba.np.ufunc.{name}")
            return True
        except Exception:  # the library is missing (no TBB package, no libgomp)
            continue
    return False


def _loop_parts(hidden: int, threads: int | None) -> int:
    """How many threads the loop splits each layer over (1: this thread); starts Numba's
    threads when more than one."""
    parts = loop_threads(hidden) if threads is None else max(1, min(int(threads), hidden))
    if parts > 1 and not threads_usable():
        parts = 1  # the same tokens, on one thread
    if parts > 1:
        numba_threads()  # starts Numba's threads, keeping PyTorch's OpenMP settings
        _POOL_PID[0] = _POOL_PID[0] or os.getpid()
    return parts


def prepare(model, threads: int | None = None) -> float:
    """Compile (or load from the disk cache) the loop that :func:`generate` will run for
    ``model``, so that a caller can bound a notice to the compilation alone rather than
    to a long generation; returns the seconds it took."""
    dtype = next(model.parameters()).detach().numpy().dtype
    return compile_seconds(dtype, _loop_parts(model.rnn.hidden_size, threads))


def generate(
    model, prime: list[int], length: int, temperature: float, noise, threads: int | None = None
) -> list[int]:
    """Tokens after ``prime`` from the compiled loop.  ``noise``: None for greedy, else an
    iterable of (n, V) float64 tensors of Exp(1) draws (:func:`rnnlab.backends.race_noise`)
    whose rows are consumed one per token.  ``threads``: how many threads share each
    layer's units (default :func:`loop_threads`); the tokens do not depend on it."""
    L, H = model.rnn.num_layers, model.rnn.hidden_size
    parts = _loop_parts(H, threads)
    packed = packed_weights(model, parts)
    dtype = packed.table.dtype
    h = np.zeros((L, H), dtype)
    c = np.zeros((L, H), dtype)
    V = packed.head_b.shape[0]
    chunks = iter(noise) if noise is not None else None
    feed = np.asarray(prime, dtype=np.int64)
    out: list[int] = []
    while len(out) < length:
        if chunks is None:
            n = min(CHUNK, length - len(out))
            q = np.empty((0, V), np.float64)
        else:
            q = next(chunks).numpy()
            n = q.shape[0]
        tokens = np.empty(n, np.int64)
        bad = _generate_chunk(
            packed.cell,
            packed.act,
            *packed.arrays(),
            h,
            c,
            feed,
            q,
            float(temperature),
            tokens,
            parts if parts > 1 else None,
        )
        if bad >= 0:
            raise ValueError(nonfinite_message(len(out) + bad))
        out.extend(tokens.tolist())
        feed = tokens[-1:]
    return out


def compile_seconds(dtype=np.float32, parts: int = 1) -> float:
    """Compile (or load from the cache) the loop for ``dtype``, on one thread or (``parts``
    > 1) split over threads; returns the seconds it took."""
    if parts > 1:
        numba_threads()  # as in generate()
    start = time.perf_counter()
    _generate_chunk(
        LSTM,
        TANH,
        np.zeros((1, 4), dtype),
        np.zeros((0, 4), dtype),
        np.zeros((1, 4), dtype),
        np.zeros((1, 4), dtype),
        np.zeros((1, 4), dtype),
        np.zeros((1, 1), dtype),
        np.zeros(1, dtype),
        np.zeros((1, 1), dtype),
        np.zeros((1, 1), dtype),
        np.zeros(1, np.int64),
        np.ones((1, 1), np.float64),
        1.0,
        np.zeros(1, np.int64),
        parts if parts > 1 else None,
    )
    return time.perf_counter() - start


def cache_stats() -> dict:
    """Numba's cache hits and misses for the loop in this process (by signature)."""
    stats = _generate_chunk.stats
    return {"hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values())}

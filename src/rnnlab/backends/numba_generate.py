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
the same; only the order of the sums in the matrix-vector products differs, so float64
models give identical samples and float32 models can differ where two candidates are
within float32 rounding of each other (rare; see ``docs/performance.md``).

Two shortcuts that change no value beyond rounding.  Layer 0's input projection of every
token, ``W_ih E[v] + b_ih`` (``W_ih[:, v] + b_ih`` for one-hot inputs), is one (V, G H)
table computed once per call, so a step reads one row of it.  Matrices are stored
transposed, (in, out), so a matrix-vector product streams the weights once, row by row,
adding four rows at a time into an output vector that stays in L1 cache; at batch 1 the
step is bound by reading the weights, and this measured as fast as BLAS gemv here
(docs/performance.md).  Gate arithmetic is done in float64 scalars with libm's ``exp``
and ``tanh`` (exact to rounding, no approximations).
"""

from __future__ import annotations

import math
import os
import time
import weakref
from dataclasses import dataclass

import numba
import numpy as np
import torch

from rnnlab.backends import nonfinite_message

LSTM, GRU, GRU_CHO, ELMAN, PASCANU = 0, 1, 2, 3, 4
TANH, SIGMOID, RELU = 0, 1, 2
ACTIVATIONS = {"tanh": TANH, "sigmoid": SIGMOID, "relu": RELU}
CHUNK = 4096  # tokens sampled per compiled call: bounds the noise buffer (CHUNK x V float64)


def _jit(fn):
    """``numba.njit`` with the on-disk cache when a writable cache directory exists.

    Numba looks for a cache directory when the function is decorated (next to this file,
    else the user's cache directory, or ``NUMBA_CACHE_DIR``) and raises if none is
    writable, as in a read-only install with a read-only home: compile in memory then.
    ``RNNLAB_NUMBA_CACHE=0`` turns the cache off.
    """
    options = dict(error_model="numpy")  # x / 0 -> inf, as in torch (q may underflow to 0)
    if os.environ.get("RNNLAB_NUMBA_CACHE", "1") != "0":
        try:
            return numba.njit(cache=True, **options)(fn)
        except Exception:  # no writable cache locator: compile in memory
            pass
    return numba.njit(**options)(fn)


@_jit
def _sigmoid(a):
    return 1.0 / (1.0 + math.exp(-a))


@_jit
def _activate(a, kind):
    if kind == TANH:
        return math.tanh(a)
    if kind == SIGMOID:
        return 1.0 / (1.0 + math.exp(-a))
    return a if a > 0.0 else 0.0


@_jit
def _matvec_t(w_t, v, out, lo, hi):
    """out[lo:hi] = (w_t[:, lo:hi])^T v: w_t is a weight matrix stored transposed (in, out).

    Four input rows per pass over the output, so ``out`` is loaded and stored once per
    four rows of weights; each pass is a contiguous, vectorisable loop.
    """
    n = v.shape[0]
    for j in range(lo, hi):
        out[j] = 0.0
    c = 0
    while c + 4 <= n:
        v0, v1, v2, v3 = v[c], v[c + 1], v[c + 2], v[c + 3]
        w0, w1, w2, w3 = w_t[c], w_t[c + 1], w_t[c + 2], w_t[c + 3]
        for j in range(lo, hi):
            out[j] += w0[j] * v0 + w1[j] * v1 + w2[j] * v2 + w3[j] * v3
        c += 4
    while c < n:
        vc = v[c]
        w = w_t[c]
        for j in range(lo, hi):
            out[j] += w[j] * vc
        c += 1


@_jit
def _step(cell, act, token, table, wih_t, bih, whh_t, bhh, h, c, gi, gh, tmp, y):
    """Advance every layer by one token; the top layer's output is left in ``y``.

    ``h`` (L, H) holds each layer's state (the pre-activation for the Pascanu form),
    ``c`` (L, H) the LSTM cells; ``gi``, ``gh`` (G H,) and ``tmp`` (H,) are scratch.
    """
    num_layers, H = h.shape
    G = gi.shape[0]
    for k in range(num_layers):
        if k == 0:
            gi[:] = table[token]  # W_ih x + b_ih, looked up
        else:
            _matvec_t(wih_t[k - 1], y, gi, 0, G)
            for j in range(G):
                gi[j] += bih[k, j]
        hk, ck, b = h[k], c[k], bhh[k]
        # the recurrent product: W_hh h_{t-1}; W_hh sigma(s_{t-1}) for the Pascanu form;
        # for Cho's GRU only the r and z rows here, the n rows once r is known
        if cell == PASCANU:
            for j in range(H):
                tmp[j] = _activate(hk[j], act)
            _matvec_t(whh_t[k], tmp, gh, 0, G)
        else:
            _matvec_t(whh_t[k], hk, gh, 0, 2 * H if cell == GRU_CHO else G)
        if cell == GRU_CHO:
            for j in range(H):
                r = _sigmoid(gi[j] + gh[j] + b[j])
                gh[j] = r
                tmp[j] = r * hk[j]
            _matvec_t(whh_t[k], tmp, gh, 2 * H, 3 * H)  # W_hn (r * h_{t-1})
        for j in range(H):
            if cell == LSTM:
                i = _sigmoid(gi[j] + gh[j] + b[j])
                f = _sigmoid(gi[H + j] + gh[H + j] + b[H + j])
                g = math.tanh(gi[2 * H + j] + gh[2 * H + j] + b[2 * H + j])
                o = _sigmoid(gi[3 * H + j] + gh[3 * H + j] + b[3 * H + j])
                ck[j] = f * ck[j] + i * g
                hk[j] = o * math.tanh(ck[j])
            elif cell == GRU:
                r = _sigmoid(gi[j] + gh[j] + b[j])
                z = _sigmoid(gi[H + j] + gh[H + j] + b[H + j])
                n = math.tanh(gi[2 * H + j] + r * (gh[2 * H + j] + b[2 * H + j]))
                hk[j] = (1.0 - z) * n + z * hk[j]
            elif cell == GRU_CHO:
                z = _sigmoid(gi[H + j] + gh[H + j] + b[H + j])
                n = math.tanh(gi[2 * H + j] + gh[2 * H + j] + b[2 * H + j])
                hk[j] = (1.0 - z) * n + z * hk[j]
            elif cell == ELMAN:
                hk[j] = _activate(gi[j] + gh[j] + b[j], act)
            else:  # PASCANU: s_t = W_hh sigma(s_{t-1}) + (W_ih x + b); emits sigma(s_t)
                hk[j] = gh[j] + gi[j]
            y[j] = _activate(hk[j], act) if cell == PASCANU else hk[j]


@_jit
def _sample(logits, q_row, temperature):
    """Greedy (argmax of the logits, first maximum) when ``q_row`` is empty, else the
    exponential race over p = softmax(logits / temperature).  -1 if a logit is not finite."""
    V = logits.shape[0]
    token = 0
    if q_row.shape[0] == 0:
        for v in range(1, V):
            if logits[v] > logits[token]:
                token = v
        return token
    top = -np.inf
    for v in range(V):
        if not math.isfinite(logits[v]):
            return -1
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
    cell, act, table, wih_t, bih, whh_t, bhh, head_t, head_b, h, c, feed, q, temperature, out
):
    """Feed the tokens ``feed`` (the prime, or the last token sampled), then sample
    ``len(out)`` >= 1 tokens, feeding each back but the last.  Greedy when ``q`` has no
    rows, else row i of ``q`` is token i's noise.  Returns -1, or the index in ``out``
    whose logits were not finite (sampling stops there)."""
    H = h.shape[1]
    G = bhh.shape[1]
    V = head_b.shape[0]
    gi = np.empty(G, h.dtype)
    gh = np.empty(G, h.dtype)
    tmp = np.empty(H, h.dtype)
    y = np.empty(H, h.dtype)
    logits = np.empty(V, h.dtype)
    no_noise = np.empty(0, np.float64)
    fed = feed.shape[0]
    for t in range(fed + out.shape[0] - 1):
        token = feed[t] if t < fed else out[t - fed]
        _step(cell, act, token, table, wih_t, bih, whh_t, bhh, h, c, gi, gh, tmp, y)
        i = t + 1 - fed  # the token this step's output predicts
        if i < 0:
            continue
        _matvec_t(head_t, y, logits, 0, V)
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
    ``wih_t`` (L-1, H, G H): W_ih^T of layers 1..L-1; ``bih`` (L, G H) (row 0 unused);
    ``whh_t`` (L, H, G H): W_hh^T; ``bhh`` (L, G H); ``head_t`` (H, V) = U^T; ``head_b`` (V,).
    """

    cell: int
    act: int
    table: np.ndarray
    wih_t: np.ndarray
    bih: np.ndarray
    whh_t: np.ndarray
    bhh: np.ndarray
    head_t: np.ndarray
    head_b: np.ndarray

    def arrays(self) -> tuple:
        return (self.table, self.wih_t, self.bih, self.whh_t, self.bhh, self.head_t, self.head_b)


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
def pack(model) -> Packed:
    """Lay out ``model``'s weights for the loop (copies; the model is not changed)."""
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

    def np_(t):
        return np.ascontiguousarray(t.detach().cpu().numpy())

    cell, act = _cell_code(rnn)
    return Packed(
        cell=cell,
        act=act,
        table=np_(table),
        wih_t=np_(wih_t),
        bih=np_(torch.stack([bias(p, ih_bias) for p in layers])),
        whh_t=np_(torch.stack([p["weight_hh"].t() for p in layers])),
        bhh=np_(torch.stack([bias(p, "bias_hh") for p in layers])),
        head_t=np_(model.head.weight.t()),
        head_b=np_(head_b),
    )


_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def packed_weights(model) -> Packed:
    """:func:`pack`, kept per model until a parameter changes (in place or replaced).

    Packing transposes every matrix and computes the (V, G H) table: 60 ms for a 2 x 512
    LSTM here, as long as 40 tokens, so repeated calls reuse it.  The key is each
    parameter's storage and version counter, which every in-place update (an optimiser
    step, ``load_state_dict``, ``copy_``) increments.
    """
    key = tuple((p.data_ptr(), p._version, p.dtype) for p in model.parameters())
    cached = _PACKED.get(model)
    if cached is None or cached[0] != key:
        cached = (key, pack(model))
        _PACKED[model] = cached
    return cached[1]


def generate(model, prime: list[int], length: int, temperature: float, noise) -> list[int]:
    """Tokens after ``prime`` from the compiled loop.  ``noise``: None for greedy, else an
    iterable of (n, V) float64 tensors of Exp(1) draws (:func:`rnnlab.backends.race_noise`)
    whose rows are consumed one per token."""
    packed = packed_weights(model)
    L, H = model.rnn.num_layers, model.rnn.hidden_size
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
            packed.cell, packed.act, *packed.arrays(), h, c, feed, q, float(temperature), tokens
        )
        if bad >= 0:
            raise ValueError(nonfinite_message(len(out) + bad))
        out.extend(tokens.tolist())
        feed = tokens[-1:]
    return out


def compile_seconds(dtype=np.float32) -> float:
    """Compile (or load from the cache) the loop for ``dtype``; returns the seconds it took."""
    start = time.perf_counter()
    f = np.zeros((1, 1, 4), dtype)
    _generate_chunk(
        LSTM,
        TANH,
        np.zeros((1, 4), dtype),
        np.zeros((0, 1, 4), dtype),
        np.zeros((1, 4), dtype),
        f,
        np.zeros((1, 4), dtype),
        np.zeros((1, 1), dtype),
        np.zeros(1, dtype),
        np.zeros((1, 1), dtype),
        np.zeros((1, 1), dtype),
        np.zeros(1, np.int64),
        np.ones((1, 1), np.float64),
        1.0,
        np.zeros(1, np.int64),
    )
    return time.perf_counter() - start


def cache_stats() -> dict:
    """Numba's cache hits and misses for the loop in this process (by signature)."""
    stats = _generate_chunk.stats
    return {"hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values())}

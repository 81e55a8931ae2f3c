"""GRU cell family (``rnnlab.cells.gru``), both forms: naive per-gate forward, fused vs
reference, gradcheck, ``torch.nn.GRU`` parity, chunking, property-based shapes, doctest.

Everything works on the time-major functions directly: ``x`` (T, N, I), ``h0`` (N, H),
packed weights as in ``torch.nn.GRU`` (rows [r; z; n]).
"""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.testing import assert_close

from rnnlab.cells import gru
from rnnlab.cells.gru import (
    GRU_FORMS,
    GRUFunction,
    check_gru_form,
    gru_sequence,
    gru_sequence_reference,
    gru_step,
)

F64 = torch.float64
TIGHT = {"atol": 1e-10, "rtol": 1e-10}
F32_TOL = {"atol": 1e-5, "rtol": 1e-5}
# Which of the two biases exist: both, neither, or only one of them.  The one-sided modes
# matter: in the torch form b_hn sits under the reset gate, b_in does not.
BIAS_MODES = ("both", "none", "ih_only", "hh_only")
NAMES = ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand(gen, *shape, scale=1.0, dtype=F64):
    return ((torch.rand(*shape, generator=gen, dtype=dtype) * 2 - 1) * scale).requires_grad_()


def _params(gen, in_size, hidden, bias_mode="both", scale=0.7):
    """(weight_ih, weight_hh, bias_ih, bias_hh), packed 3H rows, biases None per mode."""
    w_ih = _rand(gen, 3 * hidden, in_size, scale=scale)
    w_hh = _rand(gen, 3 * hidden, hidden, scale=scale)
    b_ih = _rand(gen, 3 * hidden, scale=scale) if bias_mode in ("both", "ih_only") else None
    b_hh = _rand(gen, 3 * hidden, scale=scale) if bias_mode in ("both", "hh_only") else None
    return w_ih, w_hh, b_ih, b_hh


def _grads(loss, tensors):
    """Gradients of ``loss`` w.r.t. every tensor that is not None (None kept in place)."""
    live = [t for t in tensors if t is not None]
    got = iter(torch.autograd.grad(loss, live))
    return [None if t is None else next(got) for t in tensors]


def _weighted_loss(gen, T, N, H, dtype=F64):
    """Random weighted sum of every output; the final state gets an extra weight of its
    own, so the gradient reaching hs[-1] comes from two uses of it."""
    w_out = torch.randn(T, N, H, generator=gen, dtype=dtype)
    w_final = torch.randn(N, H, generator=gen, dtype=dtype)
    return lambda hs: (hs * w_out).sum() + (hs[-1] * w_final).sum()


def _assert_grads_close(got, expected, tol, nonzero=True):
    for name, a, b in zip(NAMES, got, expected, strict=True):
        if b is None:
            assert a is None, name
            continue
        if nonzero:
            assert a.abs().max() > 0, f"gradient of {name} is trivially zero"
        assert_close(a, b, **tol, msg=lambda m, name=name: f"grad {name}: {m}")


# ---------------------------------------------------------------------------------------
# 1. Naive per-gate forward, straight from the equations, against the reference step.
# ---------------------------------------------------------------------------------------


def _sigmoid(a: float) -> float:
    return 1.0 / (1.0 + math.exp(-a))


def _dot(row, vec) -> float:
    return sum(float(w) * float(v) for w, v in zip(row, vec, strict=True))


def _naive_gru_step(x, h, w_ih, w_hh, b_ih, b_hh, form):
    """One unit at a time, each gate from its own weight slice and its own formula."""
    N, H = h.shape
    W_ir, W_iz, W_in = w_ih[:H], w_ih[H : 2 * H], w_ih[2 * H :]
    W_hr, W_hz, W_hn = w_hh[:H], w_hh[H : 2 * H], w_hh[2 * H :]
    zeros = [0.0] * (3 * H)
    b_i = zeros if b_ih is None else [float(v) for v in b_ih]
    b_h = zeros if b_hh is None else [float(v) for v in b_hh]
    b_ir, b_iz, b_in = b_i[:H], b_i[H : 2 * H], b_i[2 * H :]
    b_hr, b_hz, b_hn = b_h[:H], b_h[H : 2 * H], b_h[2 * H :]
    out = torch.empty(N, H, dtype=F64)
    for s in range(N):
        xs, hs = x[s], [float(v) for v in h[s]]
        r = [_sigmoid(_dot(W_ir[j], xs) + b_ir[j] + _dot(W_hr[j], hs) + b_hr[j]) for j in range(H)]
        z = [_sigmoid(_dot(W_iz[j], xs) + b_iz[j] + _dot(W_hz[j], hs) + b_hz[j]) for j in range(H)]
        reset_h = [r[k] * hs[k] for k in range(H)]  # only the cho form uses it
        for j in range(H):
            if form == "torch":
                cand = math.tanh(_dot(W_in[j], xs) + b_in[j] + r[j] * (_dot(W_hn[j], hs) + b_hn[j]))
            else:
                cand = math.tanh(_dot(W_in[j], xs) + b_in[j] + _dot(W_hn[j], reset_h) + b_hn[j])
            out[s, j] = (1 - z[j]) * cand + z[j] * hs[j]
    return out


@pytest.mark.parametrize("bias_mode", BIAS_MODES)
@pytest.mark.parametrize("form", GRU_FORMS)
def test_gru_step_matches_naive_per_gate_formula(form, bias_mode):
    gen = _gen(1)
    N, I, H = 3, 4, 5
    x, h = _rand(gen, N, I, scale=2.0).detach(), _rand(gen, N, H).detach()
    params = [None if p is None else p.detach() for p in _params(gen, I, H, bias_mode, 1.0)]
    expected = _naive_gru_step(x, h, *params, form)
    got = gru_step(x, h, *params, form=form)
    assert got.shape == (N, H) and got.dtype == F64
    assert_close(got, expected, **TIGHT)


def test_naive_forms_differ_on_the_same_data():
    """Guards test 1: the two naive formulas really are different functions."""
    gen = _gen(2)
    x, h = _rand(gen, 2, 3).detach(), _rand(gen, 2, 4).detach()
    params = [p.detach() for p in _params(gen, 3, 4, scale=1.0)]
    diff = _naive_gru_step(x, h, *params, "torch") - _naive_gru_step(x, h, *params, "cho")
    assert diff.abs().max() > 1e-3


@pytest.mark.parametrize("form", GRU_FORMS)
def test_reference_sequence_chains_the_step(form):
    gen = _gen(3)
    T, N, I, H = 4, 2, 3, 3
    x, h0 = _rand(gen, T, N, I), _rand(gen, N, H)
    params = _params(gen, I, H)
    h, hs = h0, []
    for t in range(T):
        h = gru_step(x[t], h, *params, form=form)
        hs.append(h)
    assert_close(gru_sequence_reference(x, h0, *params, form=form), torch.stack(hs), **TIGHT)


def test_unknown_form_is_rejected_everywhere():
    gen = _gen(4)
    x, h0 = _rand(gen, 2, 1, 3), _rand(gen, 1, 4)
    params = _params(gen, 3, 4)
    for form in GRU_FORMS:
        assert check_gru_form(form) == form
    with pytest.raises(ValueError, match="form"):
        check_gru_form("cudnn")
    with pytest.raises(ValueError, match="form"):
        gru_step(x[0], h0, *params, form="Cho")
    with pytest.raises(ValueError, match="form"):
        gru_sequence(x, h0, *params, form="minimal")


# ---------------------------------------------------------------------------------------
# 2. Fused vs reference: values and every gradient, float64, 1e-10.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 7])
@pytest.mark.parametrize("bias_mode", BIAS_MODES)
@pytest.mark.parametrize("form", GRU_FORMS)
def test_fused_matches_reference(form, bias_mode, T):
    gen = _gen(10 + T)
    N, I, H = 3, 4, 5
    x, h0 = _rand(gen, T, N, I, scale=1.5), _rand(gen, N, H)
    params = _params(gen, I, H, bias_mode)
    inputs = [x, h0, *params]
    loss = _weighted_loss(gen, T, N, H)
    fused = gru_sequence(x, h0, *params, form=form)
    ref = gru_sequence_reference(x, h0, *params, form=form)
    assert fused.shape == ref.shape == (T, N, H)
    assert fused.dtype == F64
    assert_close(fused, ref, **TIGHT)
    _assert_grads_close(_grads(loss(fused), inputs), _grads(loss(ref), inputs), TIGHT)


@pytest.mark.parametrize("form", GRU_FORMS)
def test_fused_handles_noncontiguous_input_and_frozen_weights(form):
    """A batch-first input transposed to time-major is a non-contiguous view; weights that
    need no gradient must not disturb the gradients of x and h0."""
    gen = _gen(20)
    T, N, I, H = 6, 3, 4, 5
    x_bf = _rand(gen, N, T, I)
    x = x_bf.transpose(0, 1)
    assert not x.is_contiguous()
    h0 = _rand(gen, N, H)
    params = [p.detach() for p in _params(gen, I, H)]
    loss = _weighted_loss(gen, T, N, H)
    fused = gru_sequence(x, h0, *params, form=form)
    ref = gru_sequence_reference(x, h0, *params, form=form)
    assert_close(fused, ref, **TIGHT)
    for a, b in zip(_grads(loss(fused), [x_bf, h0]), _grads(loss(ref), [x_bf, h0]), strict=True):
        assert_close(a, b, **TIGHT)


# ---------------------------------------------------------------------------------------
# 3. gradcheck of the hand-written backward (float64, small sizes).
# ---------------------------------------------------------------------------------------


def _gradcheck(fn, inputs):
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("bias_mode", ["both", "none", "hh_only"])
@pytest.mark.parametrize("form", GRU_FORMS)
def test_gradcheck(form, bias_mode):
    gen = _gen(30)
    T, N, I, H = 4, 2, 3, 3
    x, h0 = _rand(gen, T, N, I, scale=1.5), _rand(gen, N, H)
    params = _params(gen, I, H, bias_mode, scale=0.9)
    _gradcheck(lambda *a: gru_sequence(*a, form=form), (x, h0, *params))


@pytest.mark.parametrize("form", GRU_FORMS)
def test_gradcheck_function_apply_directly(form):
    gen = _gen(31)
    T, N, I, H = 3, 2, 2, 3
    x, h0 = _rand(gen, T, N, I), _rand(gen, N, H)
    _gradcheck(GRUFunction.apply, (x, h0, *_params(gen, I, H, "ih_only"), form))


# ---------------------------------------------------------------------------------------
# 4. The torch form against torch.nn.GRU loaded with the same weights.
# ---------------------------------------------------------------------------------------


def _nn_gru_case(dtype, bias, seed):
    """An nn.GRU, inputs for it, and copies of its parameters as our function's arguments."""
    gen = _gen(seed)
    T, N, I, H = 6, 3, 4, 5
    torch.manual_seed(seed)
    module = nn.GRU(I, H, num_layers=1, bias=bias, dtype=dtype)
    with torch.no_grad():  # spread the weights wider than the default init
        for p in module.parameters():
            p.mul_(2.0)
    x = torch.randn(T, N, I, generator=gen, dtype=dtype).requires_grad_()
    h0 = (0.5 * torch.randn(N, H, generator=gen, dtype=dtype)).requires_grad_()
    names = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    ours = [
        getattr(module, n).detach().clone().requires_grad_() if bias or "weight" in n else None
        for n in names
    ]
    theirs = [getattr(module, n) if bias or "weight" in n else None for n in names]
    return module, x, h0, ours, theirs, _weighted_loss(gen, T, N, H, dtype)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
def test_torch_form_matches_torch_nn_gru(dtype, bias):
    tol = F32_TOL if dtype == torch.float32 else TIGHT
    module, x, h0, ours, theirs, loss = _nn_gru_case(dtype, bias, seed=40)
    out, h_n = module(x, h0.unsqueeze(0))
    hs = gru_sequence(x, h0, *ours, form="torch")
    assert hs.dtype == dtype
    assert_close(hs, out, **tol)
    assert_close(hs[-1], h_n[0], **tol)
    got = _grads(loss(hs), [x, h0, *ours])
    expected = _grads(loss(out), [x, h0, *theirs])
    _assert_grads_close(got, expected, tol)


def test_cho_form_is_a_different_model_from_torch_nn_gru():
    module, x, h0, ours, theirs, loss = _nn_gru_case(F64, True, seed=41)
    out, _ = module(x, h0.unsqueeze(0))
    cho = gru_sequence(x, h0, *ours, form="cho")
    # Same weights, same inputs: only where the reset gate meets h_{t-1} differs, and
    # that changes both the outputs and the gradients (here of weight_hh).
    assert (cho - out).abs().max() > 1e-2
    g_cho = _grads(loss(cho), [ours[1]])[0]
    g_nn = _grads(loss(out), [theirs[1]])[0]
    assert (g_cho - g_nn).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------
# 5. Chunked processing equals one pass (values and gradients).
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias_mode", ["both", "none"])
@pytest.mark.parametrize("form", GRU_FORMS)
def test_three_chunks_equal_one_pass(form, bias_mode):
    gen = _gen(50)
    chunks = (2, 5, 3)
    T, N, I, H = sum(chunks), 3, 4, 5
    x, h0 = _rand(gen, T, N, I, scale=1.5), _rand(gen, N, H)
    params = _params(gen, I, H, bias_mode)
    inputs = [x, h0, *params]
    loss = _weighted_loss(gen, T, N, H)
    whole = gru_sequence(x, h0, *params, form=form)
    # The state is carried (not detached) from chunk to chunk, so gradients flow back
    # across the boundaries exactly as in the single pass.
    h, pieces = h0, []
    for x_chunk in torch.split(x, chunks):
        hs = gru_sequence(x_chunk, h, *params, form=form)
        h = hs[-1]
        pieces.append(hs)
    chunked = torch.cat(pieces)
    assert_close(chunked, whole, **TIGHT)
    _assert_grads_close(_grads(loss(chunked), inputs), _grads(loss(whole), inputs), TIGHT)


# ---------------------------------------------------------------------------------------
# 6. Property-based: shapes, and fused == reference for any size, form and bias.
# ---------------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(
    T=st.integers(1, 30),
    N=st.integers(1, 6),
    I=st.integers(1, 24),
    H=st.integers(1, 24),
    form=st.sampled_from(GRU_FORMS),
    bias_mode=st.sampled_from(BIAS_MODES),
    seed=st.integers(0, 2**16),
)
def test_fused_matches_reference_for_any_shape(T, N, I, H, form, bias_mode, seed):
    gen = _gen(seed)
    x, h0 = _rand(gen, T, N, I), _rand(gen, N, H)
    params = _params(gen, I, H, bias_mode, scale=1.0 / math.sqrt(H))
    inputs = [x, h0, *params]
    loss = _weighted_loss(gen, T, N, H)
    fused = gru_sequence(x, h0, *params, form=form)
    ref = gru_sequence_reference(x, h0, *params, form=form)
    assert fused.shape == ref.shape == (T, N, H)
    assert_close(fused, ref, **TIGHT)
    g_fused = _grads(loss(fused), inputs)
    g_ref = _grads(loss(ref), inputs)
    for name, a, b, p in zip(NAMES, g_fused, g_ref, inputs, strict=True):
        if p is None:
            assert a is None, name
            continue
        assert a.shape == p.shape, name
        assert_close(a, b, **TIGHT, msg=lambda m, name=name: f"grad {name}: {m}")


# ---------------------------------------------------------------------------------------
# 7. The example in the module docstring runs.
# ---------------------------------------------------------------------------------------


def test_module_docstring_example_runs():
    result = doctest.testmod(gru, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, "rnnlab.cells.gru has no examples"
    assert result.failed == 0

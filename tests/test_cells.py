"""Cell-level tests: naive scalar forward, fused vs reference, gradcheck.

Everything here works on the time-major functions of ``rnnlab.cells`` directly:
``x`` (T, N, I), states (N, H), packed weights as in ``torch.nn``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from rnnlab.cells import (
    ElmanFunction,
    LSTMFunction,
    elman_sequence,
    elman_sequence_reference,
    elman_step,
    lstm_sequence,
    lstm_sequence_reference,
    lstm_step,
)

F64 = torch.float64
TIGHT = {"atol": 1e-10, "rtol": 1e-10}
NONLINEARITIES = ("tanh", "sigmoid", "relu")
# Which of the two biases exist: both, neither, or only one of them.
BIAS_MODES = ("both", "none", "ih_only", "hh_only")
ELMAN_NAMES = ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand(gen, *shape, scale=1.0, dtype=F64):
    return ((torch.rand(*shape, generator=gen, dtype=dtype) * 2 - 1) * scale).requires_grad_()


def _params(gen, rows, in_size, hidden, bias_mode="both", scale=0.7):
    """(weight_ih, weight_hh, bias_ih, bias_hh) with requires_grad, biases None per mode."""
    w_ih = _rand(gen, rows, in_size, scale=scale)
    w_hh = _rand(gen, rows, hidden, scale=scale)
    b_ih = _rand(gen, rows, scale=scale) if bias_mode in ("both", "ih_only") else None
    b_hh = _rand(gen, rows, scale=scale) if bias_mode in ("both", "hh_only") else None
    return w_ih, w_hh, b_ih, b_hh


def _grads(loss, tensors):
    """Gradients of ``loss`` w.r.t. every tensor that is not None (None kept in place)."""
    live = [t for t in tensors if t is not None]
    got = iter(torch.autograd.grad(loss, live))
    return [None if t is None else next(got) for t in tensors]


# ---------------------------------------------------------------------------------------
# 1. Naive scalar forward, straight from the equations, against the reference step.
# ---------------------------------------------------------------------------------------

_SCALAR_PHI = {
    "tanh": math.tanh,
    "sigmoid": lambda a: 1.0 / (1.0 + math.exp(-a)),
    "relu": lambda a: max(a, 0.0),
}


def _sigmoid(a: float) -> float:
    return 1.0 / (1.0 + math.exp(-a))


def _dot(row, vec) -> float:
    return sum(float(w) * float(v) for w, v in zip(row, vec, strict=True))


@pytest.mark.parametrize("bias_mode", BIAS_MODES)
@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_elman_step_matches_naive_scalar_formula(nonlinearity, bias_mode):
    gen = _gen(1)
    N, I, H = 3, 4, 5
    x, h = _rand(gen, N, I, scale=2.0).detach(), _rand(gen, N, H).detach()
    w_ih, w_hh, b_ih, b_hh = (
        None if p is None else p.detach() for p in _params(gen, H, I, H, bias_mode, scale=1.0)
    )
    phi = _SCALAR_PHI[nonlinearity]
    expected = torch.empty(N, H, dtype=F64)
    for n in range(N):
        for j in range(H):
            a = _dot(w_ih[j], x[n]) + _dot(w_hh[j], h[n])
            a += 0.0 if b_ih is None else float(b_ih[j])
            a += 0.0 if b_hh is None else float(b_hh[j])
            expected[n, j] = phi(a)
    got = elman_step(x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity)
    assert got.shape == (N, H) and got.dtype == F64
    assert_close(got, expected, **TIGHT)
    if nonlinearity == "relu":
        # The data must exercise both sides of the kink for this test to mean anything.
        assert (expected == 0).any() and (expected > 0).any()


@pytest.mark.parametrize("bias_mode", BIAS_MODES)
def test_lstm_step_matches_naive_scalar_formula(bias_mode):
    gen = _gen(2)
    N, I, H = 3, 4, 5
    x, h, c = (_rand(gen, N, k, scale=2.0).detach() for k in (I, H, H))
    w_ih, w_hh, b_ih, b_hh = (
        None if p is None else p.detach() for p in _params(gen, 4 * H, I, H, bias_mode, 1.0)
    )

    def gate(k: int, n: int, j: int) -> float:
        """Pre-activation of gate k (0=i, 1=f, 2=g, 3=o) of unit j, from its own slice."""
        row = k * H + j
        z = _dot(w_ih[row], x[n]) + _dot(w_hh[row], h[n])
        z += 0.0 if b_ih is None else float(b_ih[row])
        z += 0.0 if b_hh is None else float(b_hh[row])
        return z

    exp_h = torch.empty(N, H, dtype=F64)
    exp_c = torch.empty(N, H, dtype=F64)
    for n in range(N):
        for j in range(H):
            i_g = _sigmoid(gate(0, n, j))
            f_g = _sigmoid(gate(1, n, j))
            g_g = math.tanh(gate(2, n, j))
            o_g = _sigmoid(gate(3, n, j))
            c_new = f_g * float(c[n, j]) + i_g * g_g
            exp_c[n, j] = c_new
            exp_h[n, j] = o_g * math.tanh(c_new)
    got_h, got_c = lstm_step(x, (h, c), w_ih, w_hh, b_ih, b_hh)
    assert got_h.shape == got_c.shape == (N, H)
    assert_close(got_h, exp_h, **TIGHT)
    assert_close(got_c, exp_c, **TIGHT)


def test_reference_sequences_chain_the_step():
    """The reference sequences are exactly the step applied over time."""
    gen = _gen(3)
    T, N, I, H = 4, 2, 3, 3
    x, h0, c0 = _rand(gen, T, N, I), _rand(gen, N, H), _rand(gen, N, H)
    ep = _params(gen, H, I, H)
    lp = _params(gen, 4 * H, I, H)
    h, state = h0, (h0, c0)
    hs, lhs, lcs = [], [], []
    for t in range(T):
        h = elman_step(x[t], h, *ep, "sigmoid")
        state = lstm_step(x[t], state, *lp)
        hs.append(h)
        lhs.append(state[0])
        lcs.append(state[1])
    assert_close(elman_sequence_reference(x, h0, *ep, "sigmoid"), torch.stack(hs), **TIGHT)
    ref_h, ref_c = lstm_sequence_reference(x, h0, c0, *lp)
    assert_close(ref_h, torch.stack(lhs), **TIGHT)
    assert_close(ref_c, torch.stack(lcs), **TIGHT)


# ---------------------------------------------------------------------------------------
# 2. Fused vs reference: values and every gradient, float64, 1e-10.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 7])
@pytest.mark.parametrize("bias_mode", BIAS_MODES)
@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_elman_fused_matches_reference(nonlinearity, bias_mode, T):
    gen = _gen(10 + T)
    N, I, H = 3, 4, 5
    x, h0 = _rand(gen, T, N, I, scale=1.5), _rand(gen, N, H)
    params = _params(gen, H, I, H, bias_mode)
    inputs = [x, h0, *params]
    # Weighted sum over every output; the final state gets an extra weight of its own,
    # so the gradient reaching hs[-1] comes from two uses of it.
    w_out = torch.randn(T, N, H, generator=gen, dtype=F64)
    w_final = torch.randn(N, H, generator=gen, dtype=F64)

    def loss(hs):
        return (hs * w_out).sum() + (hs[-1] * w_final).sum()

    fused = elman_sequence(x, h0, *params, nonlinearity)
    ref = elman_sequence_reference(x, h0, *params, nonlinearity)
    assert fused.shape == ref.shape == (T, N, H)
    assert fused.dtype == F64
    assert_close(fused, ref, **TIGHT)
    g_fused = _grads(loss(fused), inputs)
    g_ref = _grads(loss(ref), inputs)
    for name, a, b in zip(ELMAN_NAMES, g_fused, g_ref, strict=True):
        if b is None:
            assert a is None, name
            continue
        assert a.abs().max() > 0, f"gradient of {name} is trivially zero"
        assert_close(a, b, **TIGHT, msg=lambda m, name=name: f"grad {name}: {m}")


@pytest.mark.parametrize("T", [1, 7])
@pytest.mark.parametrize("bias_mode", BIAS_MODES)
def test_lstm_fused_matches_reference(bias_mode, T):
    gen = _gen(20 + T)
    N, I, H = 3, 4, 5
    x, h0, c0 = _rand(gen, T, N, I, scale=1.5), _rand(gen, N, H), _rand(gen, N, H)
    params = _params(gen, 4 * H, I, H, bias_mode)
    inputs = [x, h0, c0, *params]
    w_h = torch.randn(T, N, H, generator=gen, dtype=F64)
    w_c = torch.randn(T, N, H, generator=gen, dtype=F64)
    w_hn = torch.randn(N, H, generator=gen, dtype=F64)
    w_cn = torch.randn(N, H, generator=gen, dtype=F64)

    def loss(out):
        hs, cs = out
        return (hs * w_h).sum() + (cs * w_c).sum() + (hs[-1] * w_hn).sum() + (cs[-1] * w_cn).sum()

    fused = lstm_sequence(x, h0, c0, *params)
    ref = lstm_sequence_reference(x, h0, c0, *params)
    for a, b in zip(fused, ref, strict=True):
        assert a.shape == b.shape == (T, N, H)
        assert_close(a, b, **TIGHT)
    g_fused = _grads(loss(fused), inputs)
    g_ref = _grads(loss(ref), inputs)
    names = ["x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh"]
    for name, a, b in zip(names, g_fused, g_ref, strict=True):
        if b is None:
            assert a is None, name
            continue
        assert a.abs().max() > 0, f"gradient of {name} is trivially zero"
        assert_close(a, b, **TIGHT, msg=lambda m, name=name: f"grad {name}: {m}")


@pytest.mark.parametrize("which", ["hs_only", "cs_only"])
def test_lstm_fused_matches_reference_with_one_output_unused(which):
    """An unused output reaches backward as None/zeros; the gradient must still agree."""
    gen = _gen(30)
    T, N, I, H = 5, 2, 3, 4
    x, h0, c0 = _rand(gen, T, N, I), _rand(gen, N, H), _rand(gen, N, H)
    params = _params(gen, 4 * H, I, H)
    inputs = [x, h0, c0, *params]
    k = 0 if which == "hs_only" else 1
    w = torch.randn(T, N, H, generator=gen, dtype=F64)
    g_fused = _grads((lstm_sequence(x, h0, c0, *params)[k] * w).sum(), inputs)
    g_ref = _grads((lstm_sequence_reference(x, h0, c0, *params)[k] * w).sum(), inputs)
    for a, b in zip(g_fused, g_ref, strict=True):
        assert_close(a, b, **TIGHT)


def test_fused_functions_handle_noncontiguous_input():
    """A batch-first input transposed to time-major is a non-contiguous view."""
    gen = _gen(31)
    T, N, I, H = 6, 3, 4, 5
    x_bf = _rand(gen, N, T, I)
    x = x_bf.transpose(0, 1)
    assert not x.is_contiguous()
    h0, c0 = _rand(gen, N, H), _rand(gen, N, H)
    ep, lp = _params(gen, H, I, H), _params(gen, 4 * H, I, H)
    w = torch.randn(T, N, H, generator=gen, dtype=F64)
    pairs = [
        (elman_sequence(x, h0, *ep, "tanh"), elman_sequence_reference(x, h0, *ep, "tanh")),
        (lstm_sequence(x, h0, c0, *lp)[0], lstm_sequence_reference(x, h0, c0, *lp)[0]),
    ]
    for a, b in pairs:
        assert_close(a, b, **TIGHT)
        assert_close(_grads((a * w).sum(), [x_bf])[0], _grads((b * w).sum(), [x_bf])[0], **TIGHT)


def test_elman_sequence_rejects_unknown_nonlinearity():
    gen = _gen(32)
    x, h0 = _rand(gen, 2, 1, 3), _rand(gen, 1, 4)
    with pytest.raises(ValueError, match="nonlinearity"):
        elman_sequence(x, h0, *_params(gen, 4, 3, 4), "gelu")


# ---------------------------------------------------------------------------------------
# 3. gradcheck of the hand-written backward passes (float64, small sizes).
# ---------------------------------------------------------------------------------------


def _gradcheck(fn, inputs):
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("bias_mode", ["both", "none"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "sigmoid"])
def test_gradcheck_elman(nonlinearity, bias_mode):
    gen = _gen(40)
    T, N, I, H = 4, 2, 3, 3
    x, h0 = _rand(gen, T, N, I, scale=1.5), _rand(gen, N, H)
    params = _params(gen, H, I, H, bias_mode, scale=0.9)
    _gradcheck(lambda *a: elman_sequence(*a, nonlinearity=nonlinearity), (x, h0, *params))


def test_gradcheck_elman_function_apply_directly():
    gen = _gen(41)
    T, N, I, H = 3, 2, 2, 3
    x, h0 = _rand(gen, T, N, I), _rand(gen, N, H)
    w_ih, w_hh, b_ih, b_hh = _params(gen, H, I, H, "ih_only")
    _gradcheck(ElmanFunction.apply, (x, h0, w_ih, w_hh, b_ih, b_hh, "tanh"))


def test_gradcheck_elman_relu_away_from_the_kink_by_construction():
    """Units 0..H/2 have only positive weights and bias >= 0.5 (always active, a >= 0.5);
    the others only negative weights and bias <= -0.5 (always off, a <= -0.5).  With
    x, h0 > 0 every h stays >= 0, so no pre-activation ever comes near 0, not even under
    gradcheck's perturbations (weights are bounded away from 0 too, so none changes sign).
    """
    gen = _gen(42)
    T, N, I, H = 4, 2, 3, 4
    pos = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=F64)

    def mag(*shape):  # magnitudes in [0.2, 0.6]
        return 0.2 + 0.4 * torch.rand(*shape, generator=gen, dtype=F64)

    x = (0.5 + 0.5 * torch.rand(T, N, I, generator=gen, dtype=F64)).requires_grad_()
    h0 = (0.1 + 0.9 * torch.rand(N, H, generator=gen, dtype=F64)).requires_grad_()
    w_ih = (mag(H, I) * pos[:, None]).requires_grad_()
    w_hh = (mag(H, H) * pos[:, None]).requires_grad_()
    b_ih = ((0.5 + mag(H)) * pos).requires_grad_()
    b_hh = (mag(H) * pos).requires_grad_()
    hs = elman_sequence(x, h0, w_ih, w_hh, b_ih, b_hh, "relu")
    assert (hs[:, :, :2] >= 0.5).all() and (hs[:, :, 2:] == 0).all()
    _gradcheck(lambda *a: elman_sequence(*a, nonlinearity="relu"), (x, h0, w_ih, w_hh, b_ih, b_hh))


def test_gradcheck_elman_relu_mixed_signs_with_checked_margin():
    """Signed random data, both regimes across time; the test first checks that every
    pre-activation is far from 0 compared with gradcheck's eps."""
    gen = _gen(43)
    T, N, I, H = 4, 2, 3, 3
    x, h0 = _rand(gen, T, N, I, scale=1.5), _rand(gen, N, H).detach().abs().requires_grad_()
    params = _params(gen, H, I, H, "both", scale=0.9)
    w_ih, w_hh, b_ih, b_hh = (p.detach() for p in params)
    h, margin, active = h0.detach(), math.inf, 0
    for t in range(T):
        a = x[t].detach() @ w_ih.t() + h @ w_hh.t() + b_ih + b_hh
        margin = min(margin, a.abs().min().item())
        active += int((a > 0).sum())
        h = a.clamp_min(0)
    assert margin > 1e-3, "seed gives a pre-activation too close to the kink"
    assert 0 < active < T * N * H, "data should use both sides of the ReLU"
    _gradcheck(lambda *a: elman_sequence(*a, nonlinearity="relu"), (x, h0, *params))


@pytest.mark.parametrize("bias_mode", ["both", "none", "hh_only"])
def test_gradcheck_lstm(bias_mode):
    gen = _gen(44)
    T, N, I, H = 4, 2, 3, 2
    x, h0, c0 = _rand(gen, T, N, I, scale=1.5), _rand(gen, N, H), _rand(gen, N, H)
    params = _params(gen, 4 * H, I, H, bias_mode, scale=0.9)
    _gradcheck(lstm_sequence, (x, h0, c0, *params))


def test_gradcheck_lstm_function_apply_directly():
    gen = _gen(45)
    T, N, I, H = 3, 2, 2, 2
    x, h0, c0 = _rand(gen, T, N, I), _rand(gen, N, H), _rand(gen, N, H)
    _gradcheck(LSTMFunction.apply, (x, h0, c0, *_params(gen, 4 * H, I, H)))

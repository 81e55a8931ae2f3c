"""Pascanu form of the simple RNN: naive forward, fused vs reference, gradcheck, chunking,
equivalence with the Elman form, properties and the module's doctest.

Everything works on the time-major functions of ``rnnlab.cells.pascanu``:
``u`` (T, N, I), ``x0`` (N, H), ``weight_ih`` (H, I), ``weight_hh`` (H, H), ``bias`` (H,).
"""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

import rnnlab.cells.pascanu as pascanu_module
from rnnlab.cells.elman import elman_sequence
from rnnlab.cells.pascanu import (
    PascanuFunction,
    pascanu_sequence,
    pascanu_sequence_reference,
    pascanu_step,
)

F64 = torch.float64
TIGHT = {"atol": 1e-10, "rtol": 1e-10}
SIGMAS = ("tanh", "sigmoid")
NAMES = ("u", "x0", "weight_ih", "weight_hh", "bias")
SIGMA_FN = {"tanh": torch.tanh, "sigmoid": torch.sigmoid}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand(gen, *shape, scale=1.0):
    return ((torch.rand(*shape, generator=gen, dtype=F64) * 2 - 1) * scale).requires_grad_()


def _case(gen, T, N, I, H, with_bias=True, scale=0.7):
    """[u, x0, weight_ih, weight_hh, bias] in float64 with requires_grad (bias maybe None)."""
    return [
        _rand(gen, T, N, I, scale=1.5),
        _rand(gen, N, H, scale=1.5),
        _rand(gen, H, I, scale=scale),
        _rand(gen, H, H, scale=scale),
        _rand(gen, H, scale=scale) if with_bias else None,
    ]


def _grads(loss, tensors):
    """Gradients of ``loss`` w.r.t. every tensor that is not None (None kept in place)."""
    live = [t for t in tensors if t is not None]
    got = iter(torch.autograd.grad(loss, live))
    return [None if t is None else next(got) for t in tensors]


def _assert_same_grads(g_fused, g_ref, names=NAMES):
    for name, a, b in zip(names, g_fused, g_ref, strict=True):
        if b is None:
            assert a is None, name
            continue
        assert b.abs().max() > 0, f"gradient of {name} is trivially zero"
        assert_close(a, b, **TIGHT, msg=lambda m, name=name: f"grad {name}: {m}")


# ---------------------------------------------------------------------------------------
# 1. Naive scalar forward, straight from the equation, against the reference step.
# ---------------------------------------------------------------------------------------

_SCALAR_SIGMA = {"tanh": math.tanh, "sigmoid": lambda v: 1.0 / (1.0 + math.exp(-v))}


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("sigma", SIGMAS)
def test_step_matches_naive_scalar_formula(sigma, with_bias):
    """x_t[j] = sum_k W_rec[j,k] sigma(x_{t-1}[k]) + sum_i W_in[j,i] u_t[i] + b[j]."""
    gen = _gen(1)
    N, I, H = 3, 4, 5
    u, x_prev, w_in, w_rec, b = (
        None if p is None else p.detach() for p in _case(gen, 1, N, I, H, with_bias, 1.0)
    )
    u = u[0]
    s = _SCALAR_SIGMA[sigma]
    expected = torch.empty(N, H, dtype=F64)
    for n in range(N):
        for j in range(H):
            v = sum(float(w_rec[j, k]) * s(float(x_prev[n, k])) for k in range(H))
            v += sum(float(w_in[j, i]) * float(u[n, i]) for i in range(I))
            v += 0.0 if b is None else float(b[j])
            expected[n, j] = v
    got = pascanu_step(u, x_prev, w_in, w_rec, b, sigma)
    assert got.shape == (N, H) and got.dtype == F64
    assert_close(got, expected, **TIGHT)


def test_reference_sequence_chains_the_step():
    gen = _gen(2)
    T, N, I, H = 4, 2, 3, 3
    u, x0, *params = _case(gen, T, N, I, H)
    x, xs = x0, []
    for t in range(T):
        x = pascanu_step(u[t], x, *params, "sigmoid")
        xs.append(x)
    assert_close(pascanu_sequence_reference(u, x0, *params, "sigmoid"), torch.stack(xs), **TIGHT)


# ---------------------------------------------------------------------------------------
# 2. Fused vs reference: values and every gradient, float64, 1e-10.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 7])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("sigma", SIGMAS)
def test_fused_matches_reference(sigma, with_bias, T):
    gen = _gen(10 + T)
    N, I, H = 3, 4, 5
    inputs = _case(gen, T, N, I, H, with_bias)
    # Random weights over every output, plus an extra weight on the final state.
    w_out = torch.randn(T, N, H, generator=gen, dtype=F64)
    w_final = torch.randn(N, H, generator=gen, dtype=F64)

    def loss(xs):
        return (xs * w_out).sum() + (xs[-1] * w_final).sum()

    fused = pascanu_sequence(*inputs, sigma)
    ref = pascanu_sequence_reference(*inputs, sigma)
    assert fused.shape == ref.shape == (T, N, H) and fused.dtype == F64
    assert_close(fused, ref, **TIGHT)
    _assert_same_grads(_grads(loss(fused), inputs), _grads(loss(ref), inputs))


def test_fused_handles_noncontiguous_input():
    """A batch-first input transposed to time-major is a non-contiguous view."""
    gen = _gen(12)
    T, N, I, H = 6, 3, 4, 5
    u_bf = _rand(gen, N, T, I)
    u = u_bf.transpose(0, 1)
    assert not u.is_contiguous()
    _, x0, *params = _case(gen, T, N, I, H)
    w = torch.randn(T, N, H, generator=gen, dtype=F64)
    fused = pascanu_sequence(u, x0, *params, "tanh")
    ref = pascanu_sequence_reference(u, x0, *params, "tanh")
    assert_close(fused, ref, **TIGHT)
    assert_close(_grads((fused * w).sum(), [u_bf])[0], _grads((ref * w).sum(), [u_bf])[0], **TIGHT)


def test_unknown_sigma_is_rejected():
    gen = _gen(13)
    with pytest.raises(ValueError, match="sigma"):
        pascanu_sequence(*_case(gen, 2, 1, 3, 4), "relu")
    with pytest.raises(ValueError, match="sigma"):
        pascanu_sequence_reference(*_case(gen, 2, 1, 3, 4), "relu")


# ---------------------------------------------------------------------------------------
# 3. gradcheck of the hand-written backward (float64, small sizes).
# ---------------------------------------------------------------------------------------


def _gradcheck(fn, inputs):
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("sigma", SIGMAS)
def test_gradcheck(sigma, with_bias):
    gen = _gen(20)
    inputs = _case(gen, 4, 2, 3, 3, with_bias, scale=0.9)
    _gradcheck(lambda *a: pascanu_sequence(*a, sigma=sigma), tuple(inputs))


def test_gradcheck_function_apply_directly():
    gen = _gen(21)
    _gradcheck(PascanuFunction.apply, (*_case(gen, 3, 2, 2, 3), "sigmoid"))


# ---------------------------------------------------------------------------------------
# 4. Three unequal chunks carrying the state equal one pass (values and gradients).
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", SIGMAS)
def test_chunked_equals_whole(sigma):
    gen = _gen(30)
    T, N, I, H = 10, 3, 4, 5
    inputs = _case(gen, T, N, I, H)
    u, x0, *params = inputs
    w = torch.randn(T, N, H, generator=gen, dtype=F64)
    whole = pascanu_sequence(u, x0, *params, sigma)
    x, pieces, start = x0, [], 0
    for size in (3, 5, 2):
        xs = pascanu_sequence(u[start : start + size], x, *params, sigma)
        x = xs[-1]  # the state carried into the next chunk
        pieces.append(xs)
        start += size
    chunked = torch.cat(pieces)
    assert_close(chunked, whole, **TIGHT)
    _assert_same_grads(_grads((chunked * w).sum(), inputs), _grads((whole * w).sum(), inputs))


# ---------------------------------------------------------------------------------------
# 5. The Pascanu form is the Elman form with the state taken before sigma.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", SIGMAS)
def test_equals_elman_with_h0_sigma_of_x0(sigma):
    """h_t = sigma(x_t) obeys h_t = sigma(W_in u_t + b + W_rec h_{t-1}) with h_0 = sigma(x_0):
    the Elman cell with weight_ih = W_in, weight_hh = W_rec, bias_ih = b, bias_hh = None.
    Values agree, and so do the gradients, with dE/dx_0 = sigma'(x_0) * dE/dh_0."""
    gen = _gen(40)
    T, N, I, H = 8, 3, 4, 5
    u, x0, w_in, w_rec, b = _case(gen, T, N, I, H)
    act = SIGMA_FN[sigma]
    w = torch.randn(T, N, H, generator=gen, dtype=F64)
    xs = pascanu_sequence(u, x0, w_in, w_rec, b, sigma)
    h0 = act(x0).detach().requires_grad_()
    hs = elman_sequence(u, h0, w_in, w_rec, b, None, sigma)
    assert_close(act(xs), hs, **TIGHT)
    # The Elman pre-activation a_t = W_in u_t + b + W_rec h_{t-1} is the Pascanu state x_t.
    h_prev = torch.cat([h0[None], hs[:-1]])
    assert_close(xs, u @ w_in.t() + b + h_prev @ w_rec.t(), **TIGHT)

    g_p = _grads((act(xs) * w).sum(), [u, x0, w_in, w_rec, b])
    g_e = _grads((hs * w).sum(), [u, h0, w_in, w_rec, b])
    s0 = act(x0).detach()
    dsigma0 = 1 - s0 * s0 if sigma == "tanh" else s0 * (1 - s0)
    g_e[1] = dsigma0 * g_e[1]
    _assert_same_grads(g_p, g_e)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_equals_elman_from_any_h0_with_inputs_shifted_one_step(sigma):
    """An Elman h_0 outside sigma's range (h_0 = 0 for the sigmoid) has no x_0, but starting
    the Pascanu run from x_0 := a_1 = W_in u_1 + b + W_rec h_0 over u_2..u_T gives
    x_t = a_{t+1}: sigma(x_0) = h_1 and sigma(xs) = hs[1:]."""
    gen = _gen(41)
    T, N, I, H = 8, 3, 4, 5
    u, _, w_in, w_rec, b = _case(gen, T, N, I, H)
    act = SIGMA_FN[sigma]
    h0 = torch.zeros(N, H, dtype=F64)
    hs = elman_sequence(u, h0, w_in, w_rec, b, None, sigma)
    a1 = u[0] @ w_in.t() + b + h0 @ w_rec.t()
    xs = pascanu_sequence(u[1:], a1, w_in, w_rec, b, sigma)
    assert_close(act(a1), hs[0], **TIGHT)
    assert_close(act(xs), hs[1:], **TIGHT)
    # The whole graph (u_1 reaching the rest through x_0) has the Elman gradients.
    w = torch.randn(T, N, H, generator=gen, dtype=F64)
    params = [u, w_in, w_rec, b]
    g_p = _grads((torch.cat([act(a1)[None], act(xs)]) * w).sum(), params)
    g_e = _grads((hs * w).sum(), params)
    _assert_same_grads(g_p, g_e, names=("u", "weight_ih", "weight_hh", "bias"))


# ---------------------------------------------------------------------------------------
# 6. Properties over random shapes.
# ---------------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(
    T=st.integers(1, 30),
    N=st.integers(1, 6),
    I=st.integers(1, 16),
    H=st.integers(1, 16),
    sigma=st.sampled_from(SIGMAS),
    with_bias=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_shapes_and_fused_equals_reference(T, N, I, H, sigma, with_bias, seed):
    gen = _gen(seed)
    inputs = _case(gen, T, N, I, H, with_bias, scale=1.5 / math.sqrt(H))
    fused = pascanu_sequence(*inputs, sigma)
    ref = pascanu_sequence_reference(*inputs, sigma)
    assert fused.shape == (T, N, H) and fused.dtype == F64
    assert_close(fused, ref, **TIGHT)
    w = torch.randn(T, N, H, generator=gen, dtype=F64)
    for a, b in zip(
        _grads((fused * w).sum(), inputs), _grads((ref * w).sum(), inputs), strict=True
    ):
        assert (a is None) == (b is None)
        if b is not None:
            assert a.shape == b.shape
            assert_close(a, b, **TIGHT)


# ---------------------------------------------------------------------------------------
# 7. The module's example runs.
# ---------------------------------------------------------------------------------------


def test_module_doctest():
    result = doctest.testmod(pascanu_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0

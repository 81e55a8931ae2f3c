"""Jordan family (output recurrence, optionally with hidden recurrence) and its three feeding
regimes: naive forward, fused vs reference, gradcheck, chunking, masks, relations to Elman,
properties and the module's doctest.

Everything works on the time-major functions of ``rnnlab.cells.jordan``: ``x`` (T, N, I),
``h0`` (N, H) or None, ``y0`` (N, O), ``teacher`` (T, N, O), ``teacher_mask`` (T, N).
A test case is a dict of named tensors; ``_call`` turns it into the keyword call.
"""

from __future__ import annotations

import doctest
import functools
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

import rnnlab.cells.jordan as jordan_module
from rnnlab.cells.elman import elman_sequence
from rnnlab.cells.jordan import (
    JordanFunction,
    fed_output,
    jordan_sequence,
    jordan_sequence_reference,
    jordan_step,
)

F64 = torch.float64
TIGHT = {"atol": 1e-10, "rtol": 1e-10}
NONLINEARITIES = ("tanh", "sigmoid", "relu")
OUTPUTS = ("identity", "tanh", "sigmoid")
# free: own outputs fed back; teacher: full teacher forcing; mask: a boolean mask mixing
# the two per step and sequence (scheduled sampling); soft: a float mask in (0, 1) that
# requires grad, so its gradient is checked as well.
REGIMES = ("free", "teacher", "mask", "soft")
PARAMS = ("weight_ih", "weight_yh", "weight_ho", "bias_ih", "bias_o", "weight_hh", "bias_hh")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand(gen, *shape, scale=1.0):
    return ((torch.rand(*shape, generator=gen, dtype=F64) * 2 - 1) * scale).requires_grad_()


def _mixed_mask(gen, T, N):
    """A random boolean mask whose first step has both a teacher-fed and an own-fed
    sequence (when N > 1), so that y0 and the teacher both get gradients."""
    mask = torch.rand(T, N, generator=gen) < 0.5
    mask[0, 0] = False
    mask[0, -1] = N > 1
    return mask


def _case(gen, T, N, I, H, O, hidden, regime, biases=True, scale=0.7):
    """Named float64 tensors of one test case; absent ones are None."""
    case = {
        "x": _rand(gen, T, N, I, scale=1.5),
        "h0": _rand(gen, N, H) if hidden else None,
        "y0": _rand(gen, N, O),
        "teacher": None if regime == "free" else _rand(gen, T, N, O),
        "teacher_mask": None,
        "weight_ih": _rand(gen, H, I, scale=scale),
        "weight_yh": _rand(gen, H, O, scale=scale),
        "weight_ho": _rand(gen, O, H, scale=scale),
        "bias_ih": _rand(gen, H, scale=scale) if biases else None,
        "bias_o": _rand(gen, O, scale=scale) if biases else None,
        "weight_hh": _rand(gen, H, H, scale=scale) if hidden else None,
        "bias_hh": _rand(gen, H, scale=scale) if hidden and biases else None,
    }
    if regime == "mask":
        case["teacher_mask"] = _mixed_mask(gen, T, N)
    elif regime == "soft":
        case["teacher_mask"] = (
            0.1 + 0.8 * torch.rand(T, N, generator=gen, dtype=F64)
        ).requires_grad_()
    return case


def _call(fn, case, nonlinearity="tanh", output="identity"):
    c = case
    return fn(
        c["x"],
        c["h0"],
        c["y0"],
        c["weight_ih"],
        c["weight_yh"],
        c["weight_ho"],
        c["bias_ih"],
        c["bias_o"],
        weight_hh=c["weight_hh"],
        bias_hh=c["bias_hh"],
        nonlinearity=nonlinearity,
        output=output,
        teacher=c["teacher"],
        teacher_mask=c["teacher_mask"],
    )


def _leaves(case):
    """The tensors of a case that take gradients, by name."""
    return {k: v for k, v in case.items() if v is not None and v.requires_grad}


def _grads(loss, leaves):
    """Gradients of ``loss`` by name; a leaf the graph never reads gets exact zeros."""
    got = torch.autograd.grad(
        loss, list(leaves.values()), allow_unused=True, materialize_grads=True
    )
    return dict(zip(leaves, got, strict=True))


def _loss_weights(gen, T, N, H, O):
    """Random weights over every h_t and y_t, plus extra weights on the final state."""
    w = [torch.randn(*s, generator=gen, dtype=F64) for s in ((T, N, H), (T, N, O), (N, O))]

    def loss(out):
        hs, ys = out
        return (hs * w[0]).sum() + (ys * w[1]).sum() + (ys[-1] * w[2]).sum()

    return loss


def _assert_outputs_close(a, b):
    for got, want in zip(a, b, strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype
        assert_close(got, want, **TIGHT)


def _assert_grads_close(g_fused, g_ref, zero=()):
    """Every gradient agrees; every one is non-zero except the names in ``zero``, which
    must be exactly zero (inputs that the regime never reads)."""
    assert g_fused.keys() == g_ref.keys()
    for name in g_ref:
        a, b = g_fused[name], g_ref[name]
        if name in zero:
            assert (a == 0).all() and (b == 0).all(), f"gradient of {name} should be zero"
        else:
            assert b.abs().max() > 0, f"gradient of {name} is trivially zero"
        assert_close(a, b, **TIGHT, msg=lambda m, name=name: f"grad {name}: {m}")


# ---------------------------------------------------------------------------------------
# 1. Naive scalar forward, straight from the equations, against the reference.
# ---------------------------------------------------------------------------------------

_SCALAR_PHI = {
    "tanh": math.tanh,
    "sigmoid": lambda a: 1.0 / (1.0 + math.exp(-a)),
    "relu": lambda a: max(a, 0.0),
}
_SCALAR_G = {
    "identity": lambda o: o,
    "tanh": math.tanh,
    "sigmoid": lambda o: 1.0 / (1.0 + math.exp(-o)),
}


def _f(t, *index) -> float:
    return 0.0 if t is None else float(t[index])


def _naive_step(c, x_n, h_n, y_fed_n, nonlinearity, output):
    """One sequence, one step, unit by unit: returns (h_t, y_t) as lists of floats."""
    H, O = c["weight_ih"].shape[0], c["weight_ho"].shape[0]
    h = []
    for j in range(H):
        a = sum(float(c["weight_ih"][j, i]) * float(x_n[i]) for i in range(len(x_n)))
        a += sum(float(c["weight_yh"][j, k]) * y_fed_n[k] for k in range(O))
        if c["weight_hh"] is not None:
            a += sum(float(c["weight_hh"][j, k]) * h_n[k] for k in range(H))
        a += _f(c["bias_ih"], j) + _f(c["bias_hh"], j)
        h.append(_SCALAR_PHI[nonlinearity](a))
    y = []
    for p in range(O):
        o = sum(float(c["weight_ho"][p, j]) * h[j] for j in range(H)) + _f(c["bias_o"], p)
        y.append(_SCALAR_G[output](o))
    return h, y


def _detached(case):
    return {k: None if v is None else v.detach() for k, v in case.items()}


@pytest.mark.parametrize("biases", [True, False])
@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("hidden", [True, False], ids=["hidden", "output_only"])
def test_step_matches_naive_scalar_formula(hidden, nonlinearity, output, biases):
    gen = _gen(1)
    N, I, H, O = 3, 4, 5, 2
    c = _detached(_case(gen, 1, N, I, H, O, hidden, "free", biases, scale=1.0))
    x, h_prev, y_fed = c["x"][0], c["h0"], c["y0"]
    got_h, got_y = jordan_step(
        x,
        (h_prev, y_fed),
        *(c[k] for k in PARAMS[:5]),
        weight_hh=c["weight_hh"],
        bias_hh=c["bias_hh"],
        nonlinearity=nonlinearity,
        output=output,
    )
    exp_h, exp_y = torch.empty(N, H, dtype=F64), torch.empty(N, O, dtype=F64)
    for n in range(N):
        h_n = None if h_prev is None else [float(v) for v in h_prev[n]]
        h, y = _naive_step(c, x[n], h_n, [float(v) for v in y_fed[n]], nonlinearity, output)
        exp_h[n], exp_y[n] = torch.tensor(h, dtype=F64), torch.tensor(y, dtype=F64)
    assert got_h.shape == (N, H) and got_y.shape == (N, O)
    assert_close(got_h, exp_h, **TIGHT)
    assert_close(got_y, exp_y, **TIGHT)
    if nonlinearity == "relu":
        assert (exp_h == 0).any() and (exp_h > 0).any(), "data should use both sides of ReLU"


@pytest.mark.parametrize("regime", ["free", "teacher", "mask"])
@pytest.mark.parametrize("hidden", [True, False], ids=["hidden", "output_only"])
def test_reference_sequence_matches_naive_feeding(hidden, regime):
    """Each sequence picks, with a plain ``if``, the teacher row or its own last output."""
    gen = _gen(2)
    T, N, I, H, O = 5, 3, 2, 3, 2
    c = _detached(_case(gen, T, N, I, H, O, hidden, regime))
    hs, ys = _call(jordan_sequence_reference, c, "sigmoid", "tanh")
    for n in range(N):
        h = None if c["h0"] is None else [float(v) for v in c["h0"][n]]
        y = [float(v) for v in c["y0"][n]]
        for t in range(T):
            use_teacher = c["teacher"] is not None and (
                c["teacher_mask"] is None or bool(c["teacher_mask"][t, n])
            )
            fed = [float(v) for v in c["teacher"][t, n]] if use_teacher else y
            h, y = _naive_step(c, c["x"][t, n], h, fed, "sigmoid", "tanh")
            assert_close(hs[t, n], torch.tensor(h, dtype=F64), **TIGHT)
            assert_close(ys[t, n], torch.tensor(y, dtype=F64), **TIGHT)


def test_fed_output_selects_and_mixes():
    y, teacher = torch.ones(3, 2, dtype=F64), torch.full((3, 2), 5.0, dtype=F64)
    assert torch.equal(fed_output(y, None, None), y)
    assert torch.equal(fed_output(y, teacher, None), teacher)
    mixed = fed_output(y, teacher, torch.tensor([1.0, 0.0, 0.25], dtype=F64))
    assert torch.equal(mixed, torch.tensor([[5.0, 5.0], [1.0, 1.0], [2.0, 2.0]], dtype=F64))


# ---------------------------------------------------------------------------------------
# 2. Fused vs reference: values and every gradient, float64, 1e-10.
# ---------------------------------------------------------------------------------------


def _check_fused_vs_reference(case, nonlinearity, output, gen):
    T, N, _ = case["x"].shape
    H, O = case["weight_ih"].shape[0], case["weight_ho"].shape[0]
    loss = _loss_weights(gen, T, N, H, O)
    fused = _call(jordan_sequence, case, nonlinearity, output)
    ref = _call(jordan_sequence_reference, case, nonlinearity, output)
    assert fused[0].shape == (T, N, H) and fused[1].shape == (T, N, O)
    _assert_outputs_close(fused, ref)
    leaves = _leaves(case)
    # Under full teacher forcing no step reads y0.
    zero = ("y0",) if case["teacher"] is not None and case["teacher_mask"] is None else ()
    _assert_grads_close(_grads(loss(fused), leaves), _grads(loss(ref), leaves), zero)


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("hidden", [True, False], ids=["hidden", "output_only"])
def test_fused_matches_reference(hidden, regime, nonlinearity, output):
    gen = _gen(10)
    case = _case(gen, 7, 3, 4, 5, 2, hidden, regime)
    _check_fused_vs_reference(case, nonlinearity, output, gen)


@pytest.mark.parametrize("T", [1, 2])
@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("hidden", [True, False], ids=["hidden", "output_only"])
def test_fused_matches_reference_short_and_without_biases(hidden, regime, T):
    gen = _gen(11 + T)
    N = 3 if T > 1 else 2
    case = _case(gen, T, N, 3, 4, 3, hidden, regime, biases=False)
    _check_fused_vs_reference(case, "tanh", "sigmoid", gen)


def test_fused_handles_noncontiguous_inputs():
    """Batch-first x and teacher transposed to time-major are non-contiguous views."""
    gen = _gen(14)
    T, N, I, H, O = 6, 3, 4, 5, 2
    case = _case(gen, T, N, I, H, O, True, "mask")
    x_bf, teacher_bf = _rand(gen, N, T, I), _rand(gen, N, T, O)
    case["x"], case["teacher"] = x_bf.transpose(0, 1), teacher_bf.transpose(0, 1)
    assert not case["x"].is_contiguous() and not case["teacher"].is_contiguous()
    loss = _loss_weights(gen, T, N, H, O)
    fused = _call(jordan_sequence, case)
    ref = _call(jordan_sequence_reference, case)
    _assert_outputs_close(fused, ref)
    leaves = {"x_bf": x_bf, "teacher_bf": teacher_bf}
    _assert_grads_close(_grads(loss(fused), leaves), _grads(loss(ref), leaves))


def test_invalid_arguments_are_rejected():
    gen = _gen(15)
    T, N, I, H, O = 3, 2, 2, 3, 2
    good = _case(gen, T, N, I, H, O, True, "mask")
    bad = [
        ({"h0": None}, "h0"),
        ({"weight_hh": None, "bias_hh": None}, "h0"),
        ({"h0": None, "weight_hh": None}, "bias_hh"),
        ({"teacher": None}, "teacher_mask needs"),
        ({"teacher": good["teacher"][:-1]}, "teacher must be"),
        ({"teacher_mask": good["teacher_mask"][:, :1]}, "teacher_mask must be"),
        ({"y0": good["y0"][:, :1]}, "y0 must be"),
    ]
    for fn in (jordan_sequence, jordan_sequence_reference):
        for change, message in bad:
            with pytest.raises(ValueError, match=message):
                _call(fn, {**good, **change})
        with pytest.raises(ValueError, match="nonlinearity"):
            _call(fn, good, nonlinearity="gelu")
        with pytest.raises(ValueError, match="output"):
            _call(fn, good, output="softmax")


# ---------------------------------------------------------------------------------------
# 3. gradcheck of the hand-written backward (float64, small sizes).
# ---------------------------------------------------------------------------------------


def _gradcheck(case, nonlinearity, output, fn=jordan_sequence):
    leaves = _leaves(case)

    def run(*tensors):
        return _call(fn, {**case, **dict(zip(leaves, tensors, strict=True))}, nonlinearity, output)

    assert torch.autograd.gradcheck(run, tuple(leaves.values()), eps=1e-6, atol=1e-7, rtol=1e-5)


_GRADCHECK_ACTIVATIONS = itertools.cycle(
    [("tanh", "identity"), ("sigmoid", "tanh"), ("tanh", "sigmoid"), ("sigmoid", "identity")]
)
GRADCHECK_CASES = [
    (hidden, regime, *next(_GRADCHECK_ACTIVATIONS))
    for hidden in (True, False)
    for regime in REGIMES
]


@pytest.mark.parametrize(("hidden", "regime", "nonlinearity", "output"), GRADCHECK_CASES)
def test_gradcheck(hidden, regime, nonlinearity, output):
    gen = _gen(20)
    case = _case(gen, 4, 2, 3, 3, 2, hidden, regime, scale=0.9)
    _gradcheck(case, nonlinearity, output)


def test_gradcheck_function_apply_directly():
    gen = _gen(21)
    c = _case(gen, 3, 2, 2, 3, 2, True, "soft")
    order = ("x", "h0", "y0", "teacher", "teacher_mask", "weight_ih", "weight_yh")
    order += ("weight_hh", "weight_ho", "bias_ih", "bias_hh", "bias_o")
    inputs = (*(c[k] for k in order), "tanh", "tanh")
    assert torch.autograd.gradcheck(JordanFunction.apply, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("regime", ["free", "mask"])
def test_gradcheck_relu_with_checked_margin(regime):
    """Signed random data uses both sides of the ReLU; the test first checks that every
    pre-activation is far from the kink compared with gradcheck's eps."""
    gen = _gen(22)
    T, N, I, H, O = 4, 2, 3, 3, 2
    case = _case(gen, T, N, I, H, O, True, regime, scale=0.9)
    c = _detached(case)
    h, y, margin, active = c["h0"], c["y0"], math.inf, 0
    for t in range(T):
        mask_t = None if c["teacher_mask"] is None else c["teacher_mask"][t].to(F64)
        fed = fed_output(y, None if c["teacher"] is None else c["teacher"][t], mask_t)
        a = c["x"][t] @ c["weight_ih"].t() + c["bias_ih"] + fed @ c["weight_yh"].t()
        a = a + h @ c["weight_hh"].t() + c["bias_hh"]
        margin = min(margin, a.abs().min().item())
        active += int((a > 0).sum())
        h = a.clamp_min(0)
        y = h @ c["weight_ho"].t() + c["bias_o"]
    assert margin > 1e-3, "seed gives a pre-activation too close to the kink"
    assert 0 < active < T * N * H, "data should use both sides of the ReLU"
    _gradcheck(case, "relu", "identity")


# ---------------------------------------------------------------------------------------
# 4. Three unequal chunks carrying (h, y) equal one pass; teacher and mask sliced per chunk.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("regime", ["free", "teacher", "mask"])
@pytest.mark.parametrize("hidden", [True, False], ids=["hidden", "output_only"])
def test_chunked_equals_whole(hidden, regime):
    gen = _gen(30)
    T, N, I, H, O = 9, 3, 4, 5, 2
    case = _case(gen, T, N, I, H, O, hidden, regime)
    loss = _loss_weights(gen, T, N, H, O)
    whole = _call(jordan_sequence, case, "tanh", "tanh")
    h, y, pieces, start = case["h0"], case["y0"], [], 0
    for size in (2, 4, 3):
        chunk = dict(case, h0=h, y0=y)
        for key in ("x", "teacher", "teacher_mask"):
            if case[key] is not None:
                chunk[key] = case[key][start : start + size]
        hs, ys = _call(jordan_sequence, chunk, "tanh", "tanh")
        h, y = (hs[-1] if hidden else None), ys[-1]  # the state carried onwards
        pieces.append((hs, ys))
        start += size
    chunked = tuple(torch.cat(part) for part in zip(*pieces, strict=True))
    _assert_outputs_close(chunked, whole)
    leaves = _leaves(case)
    zero = ("y0",) if regime == "teacher" else ()
    _assert_grads_close(_grads(loss(chunked), leaves), _grads(loss(whole), leaves), zero)


# ---------------------------------------------------------------------------------------
# 5. Masks: all ones is teacher forcing, all zeros is free-running; teacher-fed steps cut
#    the gradient to earlier outputs.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bool, F64])
@pytest.mark.parametrize("hidden", [True, False], ids=["hidden", "output_only"])
def test_mask_of_ones_is_teacher_forcing_and_zeros_is_free_running(hidden, dtype):
    gen = _gen(40)
    T, N, I, H, O = 6, 3, 4, 5, 2
    case = _case(gen, T, N, I, H, O, hidden, "teacher")
    loss = _loss_weights(gen, T, N, H, O)
    leaves = _leaves(case)
    ones = dict(case, teacher_mask=torch.ones(T, N, dtype=dtype))
    zeros = dict(case, teacher_mask=torch.zeros(T, N, dtype=dtype))
    free = dict(case, teacher=None)
    for fn in (jordan_sequence, jordan_sequence_reference):
        forced = _call(fn, case)
        _assert_outputs_close(_call(fn, ones), forced)
        _assert_grads_close(
            _grads(loss(_call(fn, ones)), leaves), _grads(loss(forced), leaves), zero=("y0",)
        )
        free_out = _call(fn, free)
        _assert_outputs_close(_call(fn, zeros), free_out)
        g_zeros = _grads(loss(_call(fn, zeros)), leaves)
        assert (g_zeros.pop("teacher") == 0).all(), "an unused teacher gets zero gradient"
        free_leaves = {k: v for k, v in leaves.items() if k != "teacher"}
        _assert_grads_close(g_zeros, _grads(loss(free_out), free_leaves))


@pytest.mark.parametrize("fn", [jordan_sequence, jordan_sequence_reference])
def test_teacher_fed_step_cuts_the_gradient_to_earlier_outputs(fn):
    """Output recurrence only: if sequence 0 is teacher-fed at step k, its outputs from
    step k on do not depend on anything before k; sequence 1, fed its own output, does."""
    gen = _gen(41)
    T, N, I, H, O, k = 6, 2, 3, 4, 2, 3
    case = _case(gen, T, N, I, H, O, False, "mask")
    mask = torch.zeros(T, N, dtype=torch.bool)
    mask[k, 0] = True
    case["teacher_mask"] = mask
    hs, ys = _call(fn, case, "tanh", "tanh")
    g_x, g_y0 = torch.autograd.grad(ys[k:].sum() + hs[k:].sum(), [case["x"], case["y0"]])
    assert (g_x[:k, 0] == 0).all() and (g_y0[0] == 0).all()
    assert (g_x[:k, 1] != 0).all() and (g_y0[1] != 0).all()


# ---------------------------------------------------------------------------------------
# 6. Relations to the Elman cell.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_hidden_recurrence_without_feedback_is_elman(nonlinearity):
    gen = _gen(50)
    case = _case(gen, 7, 3, 4, 5, 2, True, "free")
    case["weight_yh"] = torch.zeros(5, 2, dtype=F64, requires_grad=True)
    hs, _ = _call(jordan_sequence, case, nonlinearity)
    elman = elman_sequence(
        case["x"],
        case["h0"],
        case["weight_ih"],
        case["weight_hh"],
        case["bias_ih"],
        case["bias_hh"],
        nonlinearity,
    )
    assert_close(hs, elman, **TIGHT)


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_linear_output_feedback_is_elman_with_factored_recurrence(nonlinearity):
    """Output-only, free-running, g = identity: W_yh y_{t-1} = (W_yh W_ho) h_{t-1} + W_yh b_o,
    an Elman cell whose recurrent matrix has rank <= O, started from y0 = W_ho h0 + b_o."""
    gen = _gen(51)
    T, N, I, H, O = 7, 3, 4, 5, 2
    case = _case(gen, T, N, I, H, O, False, "free")
    h0 = _rand(gen, N, H)
    w_yh, w_ho, b_o = case["weight_yh"], case["weight_ho"], case["bias_o"]
    case["y0"] = h0 @ w_ho.t() + b_o
    hs, ys = _call(jordan_sequence, case, nonlinearity)
    elman = elman_sequence(
        case["x"], h0, case["weight_ih"], w_yh @ w_ho, case["bias_ih"], w_yh @ b_o, nonlinearity
    )
    assert_close(hs, elman, **TIGHT)
    assert_close(ys, elman @ w_ho.t() + b_o, **TIGHT)
    w = torch.randn(T, N, H, generator=gen, dtype=F64)
    leaves = {k: case[k] for k in ("x", "weight_ih", "weight_yh", "weight_ho", "bias_o")}
    leaves["h0"] = h0
    _assert_grads_close(_grads((hs * w).sum(), leaves), _grads((elman * w).sum(), leaves))


# ---------------------------------------------------------------------------------------
# 7. Properties over random shapes.
# ---------------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(
    T=st.integers(1, 30),
    N=st.integers(1, 6),
    I=st.integers(1, 16),
    H=st.integers(1, 16),
    O=st.integers(1, 16),
    hidden=st.booleans(),
    regime=st.sampled_from(REGIMES),
    nonlinearity=st.sampled_from(NONLINEARITIES),
    output=st.sampled_from(OUTPUTS),
    biases=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_shapes_and_fused_equals_reference(
    T, N, I, H, O, hidden, regime, nonlinearity, output, biases, seed
):
    gen = _gen(seed)
    case = _case(gen, T, N, I, H, O, hidden, regime, biases, scale=1.5 / math.sqrt(H + O))
    fused = _call(jordan_sequence, case, nonlinearity, output)
    ref = _call(jordan_sequence_reference, case, nonlinearity, output)
    assert fused[0].shape == (T, N, H) and fused[1].shape == (T, N, O)
    _assert_outputs_close(fused, ref)
    loss = _loss_weights(gen, T, N, H, O)
    leaves = _leaves(case)
    g_fused, g_ref = _grads(loss(fused), leaves), _grads(loss(ref), leaves)
    for name, a in g_fused.items():
        assert a.shape == leaves[name].shape
        assert_close(a, g_ref[name], **TIGHT, msg=lambda m, name=name: f"grad {name}: {m}")


# ---------------------------------------------------------------------------------------
# 8. The module's example runs.
# ---------------------------------------------------------------------------------------


def test_module_doctest():
    result = doctest.testmod(jordan_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------------------------------
# 9. backend="numba": the fused function with the compiled hidden recurrence
#    (rnnlab.backends.numba_elman.ElmanRecurrence), which runs under full teacher forcing.
# ---------------------------------------------------------------------------------------

compiled = pytest.importorskip("rnnlab.backends.numba_elman")
jordan_compiled = functools.partial(jordan_sequence, recurrence=compiled.ElmanRecurrence)


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("regime", ["teacher", "free"])
def test_compiled_recurrence_matches_reference(regime, nonlinearity, output):
    gen = _gen(60)
    case = _case(gen, 7, 3, 4, 5, 2, True, regime)
    loss = _loss_weights(gen, 7, 3, 5, 2)
    got = _call(jordan_compiled, case, nonlinearity, output)
    ref = _call(jordan_sequence_reference, case, nonlinearity, output)
    _assert_outputs_close(got, ref)
    leaves = _leaves(case)
    zero = ("y0",) if regime == "teacher" else ()
    _assert_grads_close(_grads(loss(got), leaves), _grads(loss(ref), leaves), zero)


@pytest.mark.parametrize(("nonlinearity", "output"), [("tanh", "sigmoid"), ("sigmoid", "tanh")])
def test_compiled_recurrence_gradcheck(nonlinearity, output):
    case = _case(_gen(61), 4, 2, 3, 3, 2, True, "teacher", scale=0.9)
    _gradcheck(case, nonlinearity, output, fn=jordan_compiled)


def test_compiled_recurrence_chunked_equals_whole():
    gen = _gen(62)
    T, N, I, H, O = 9, 3, 4, 5, 2
    case = _case(gen, T, N, I, H, O, True, "teacher")
    whole = _call(jordan_compiled, case, "tanh", "tanh")
    h, y, pieces, start = case["h0"], case["y0"], [], 0
    for size in (2, 4, 3):
        chunk = dict(case, h0=h, y0=y, x=case["x"][start : start + size])
        chunk["teacher"] = case["teacher"][start : start + size]
        hs, ys = _call(jordan_compiled, chunk, "tanh", "tanh")
        h, y = hs[-1], ys[-1]
        pieces.append((hs, ys))
        start += size
    _assert_outputs_close(tuple(torch.cat(p) for p in zip(*pieces, strict=True)), whole)


def test_compiled_recurrence_float32_matches_fused():
    gen = _gen(63)
    case = {k: None if v is None else v.detach().float() for k, v in _case(
        gen, 12, 16, 6, 24, 5, True, "teacher").items()}  # fmt: skip
    got = _call(jordan_compiled, case, "tanh", "identity")
    ref = _call(jordan_sequence, case, "tanh", "identity")
    for a, b in zip(got, ref, strict=True):
        assert_close(a, b, atol=2e-5, rtol=2e-5)


def test_layer_takes_the_compiled_recurrence_and_matches_reference():
    import rnnlab

    torch.manual_seed(64)
    layer = rnnlab.JordanRNN(4, 6, 3, hidden_recurrence=True).double()
    assert layer.backend_choice().name == "numba"
    assert rnnlab.JordanRNN(4, 6, 3).backend_choice().name == "fused"  # no hidden loop
    with pytest.raises(ValueError, match="no hidden loop to compile"):
        rnnlab.JordanRNN(4, 6, 3, backend="numba")
    x = torch.randn(5, 2, 4, dtype=F64, requires_grad=True)
    teacher = torch.randn(5, 2, 3, dtype=F64)
    results = []
    for backend in ("numba", "reference"):
        layer.backend = backend
        out, _ = layer(x, teacher=teacher)
        grads = torch.autograd.grad(out.pow(2).sum(), [x, *layer.parameters()])
        results.append([out, *grads])
    for a, b in zip(*results, strict=True):
        assert_close(a, b, **TIGHT)

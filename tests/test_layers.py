"""Layer-level tests of ``rnnlab.RNN`` and ``rnnlab.LSTM``: torch.nn parity, chunking,
shapes (property-based), unbatched input, argument checking and dropout."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.testing import assert_close

import rnnlab
from rnnlab.cells import elman_step

F64 = torch.float64
TIGHT = {"atol": 1e-10, "rtol": 1e-10}
F32_TOL = {"atol": 1e-5, "rtol": 1e-5}

# cell name -> (rnnlab class, torch.nn class, extra constructor kwargs)
CELLS = {
    "lstm": (rnnlab.LSTM, nn.LSTM, {}),
    "rnn-tanh": (rnnlab.RNN, nn.RNN, {"nonlinearity": "tanh"}),
    "rnn-relu": (rnnlab.RNN, nn.RNN, {"nonlinearity": "relu"}),
    "rnn-sigmoid": (rnnlab.RNN, None, {"nonlinearity": "sigmoid"}),
}


def _ours(cell, *args, **kwargs):
    cls, _, extra = CELLS[cell]
    return cls(*args, **extra, **kwargs)


def _theirs(cell, *args, **kwargs):
    _, cls, extra = CELLS[cell]
    return cls(*args, **extra, **kwargs)


def _state_list(state):
    """Final state as a list of tensors: [h] for RNN, [h, c] for LSTM."""
    return [state] if isinstance(state, torch.Tensor) else list(state)


def _make_state(cell, gen, shape, dtype, requires_grad=True):
    parts = [
        (torch.randn(*shape, generator=gen, dtype=dtype) * 0.5).requires_grad_(requires_grad)
        for _ in range(2 if cell == "lstm" else 1)
    ]
    return parts


def _pack(cell, parts):
    return tuple(parts) if cell == "lstm" else parts[0]


def _loss(out, state, gen):
    """Random weighted sum of every output and every final-state tensor."""
    terms = [out, *_state_list(state)]
    total = 0
    for t in terms:
        w = torch.randn(t.shape, generator=gen, dtype=t.dtype)
        total = total + (t * w).sum()
    return total


def _run_with_grads(model, x, state_parts, cell, loss_seed):
    """Forward, loss, backward; returns (out, final state list, {name: grad})."""
    model.zero_grad()
    for t in [x, *state_parts]:
        t.grad = None
    state = _pack(cell, state_parts) if state_parts else None
    out, final = model(x, state)
    _loss(out, final, torch.Generator().manual_seed(loss_seed)).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    grads["input"] = x.grad.clone()
    for k, s in enumerate(state_parts):
        grads[f"state{k}"] = s.grad.clone()
    return out.detach(), [f.detach() for f in _state_list(final)], grads


def _assert_same_run(a, b, tol):
    out_a, fin_a, g_a = a
    out_b, fin_b, g_b = b
    assert out_a.shape == out_b.shape
    assert_close(out_a, out_b, **tol)
    assert len(fin_a) == len(fin_b)
    for s_a, s_b in zip(fin_a, fin_b, strict=True):
        assert s_a.shape == s_b.shape
        assert_close(s_a, s_b, **tol)
    assert g_a.keys() == g_b.keys()
    for name in g_a:
        assert g_a[name].abs().max() > 0, f"gradient of {name} is trivially zero"
        assert_close(g_a[name], g_b[name], **tol, msg=lambda m, n=name: f"grad {n}: {m}")


# ---------------------------------------------------------------------------------------
# 4. Parity with torch.nn.RNN / torch.nn.LSTM through state_dict, both directions.
# ---------------------------------------------------------------------------------------


def _parity_case(cell, num_layers, batch_first, bias, with_state, dtype, backend, tol, seed):
    T, N, I, H = 5, 3, 4, 6
    gen = torch.Generator().manual_seed(seed)
    kw = {"num_layers": num_layers, "bias": bias, "batch_first": batch_first, "dtype": dtype}
    torch.manual_seed(seed)
    ours = _ours(cell, I, H, backend=backend, **kw)
    theirs = _theirs(cell, I, H, **kw)
    assert set(ours.state_dict()) == set(theirs.state_dict())

    shape = (N, T, I) if batch_first else (T, N, I)
    x_data = torch.randn(*shape, generator=gen, dtype=dtype)
    state_data = (
        [s.detach() for s in _make_state(cell, gen, (num_layers, N, H), dtype)]
        if with_state
        else []
    )

    def fresh():
        return x_data.clone().requires_grad_(), [s.clone().requires_grad_() for s in state_data]

    for direction in ("ours->torch", "torch->ours"):
        # Re-draw the source module's weights so the two directions test different values.
        src, dst = (ours, theirs) if direction == "ours->torch" else (theirs, ours)
        with torch.no_grad():
            for name, p in src.named_parameters():
                p.uniform_(-0.6, 0.6, generator=gen)
                if cell == "rnn-relu" and name.startswith("bias"):
                    p.add_(0.3)  # keep ReLU units alive so no gradient is trivially zero
        dst.load_state_dict(src.state_dict())
        for name, p in src.named_parameters():
            assert torch.equal(p, dict(dst.named_parameters())[name])
        x1, s1 = fresh()
        x2, s2 = fresh()
        run_ours = _run_with_grads(ours, x1, s1, cell, loss_seed=seed)
        run_theirs = _run_with_grads(theirs, x2, s2, cell, loss_seed=seed)
        assert run_ours[0].dtype == dtype
        _assert_same_run(run_ours, run_theirs, tol)


@pytest.mark.parametrize("with_state", [False, True], ids=["no_state", "state"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("cell", ["lstm", "rnn-tanh", "rnn-relu"])
def test_matches_torch_nn_float32(cell, num_layers, batch_first, bias, with_state):
    _parity_case(
        cell, num_layers, batch_first, bias, with_state, torch.float32, "fused", F32_TOL, seed=7
    )


@pytest.mark.parametrize("with_state", [False, True], ids=["no_state", "state"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("cell", ["lstm", "rnn-tanh", "rnn-relu"])
def test_reference_backend_matches_torch_nn_float32(cell, num_layers, batch_first, with_state):
    _parity_case(
        cell, num_layers, batch_first, True, with_state, torch.float32, "reference", F32_TOL, 8
    )


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("cell", ["lstm", "rnn-tanh", "rnn-relu"])
def test_matches_torch_nn_float64(cell, num_layers, bias, backend):
    for batch_first, with_state in [(False, True), (True, False)]:
        _parity_case(cell, num_layers, batch_first, bias, with_state, F64, backend, TIGHT, 9)


def test_parameter_names_and_shapes_match_torch_nn():
    for cell in ("lstm", "rnn-tanh"):
        for bias in (True, False):
            ours = _ours(cell, 3, 5, num_layers=3, bias=bias)
            theirs = _theirs(cell, 3, 5, num_layers=3, bias=bias)
            got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
            want = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
            assert got == want
            bound = 1 / 5**0.5
            assert all(p.abs().max() <= bound for p in ours.parameters())


# ---------------------------------------------------------------------------------------
# 5. Chunked equals whole.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("cell", ["lstm", "rnn-tanh", "rnn-sigmoid", "rnn-relu"])
def test_chunked_equals_whole(cell, backend):
    T, N, I, H = 12, 3, 4, 5
    gen = torch.Generator().manual_seed(11)
    torch.manual_seed(11)
    model = _ours(cell, I, H, num_layers=2, backend=backend, dtype=F64)
    x = torch.randn(T, N, I, generator=gen, dtype=F64)
    init = _pack(cell, _make_state(cell, gen, (2, N, H), F64, requires_grad=False))
    whole_out, whole_state = model(x, init)

    state, outs = init, []
    for lo, hi in [(0, 2), (2, 9), (9, 12)]:  # unequal chunks: 2, 7, 3
        out, state = model(x[lo:hi], state)
        outs.append(out)
    assert_close(torch.cat(outs), whole_out, **TIGHT)
    for a, b in zip(_state_list(state), _state_list(whole_state), strict=True):
        assert_close(a, b, **TIGHT)

    # Without an initial state the first chunk starts from zeros, like the whole pass.
    whole_out0, whole_state0 = model(x)
    out_a, st_a = model(x[:5])
    out_b, st_b = model(x[5:], st_a)
    assert_close(torch.cat([out_a, out_b]), whole_out0, **TIGHT)
    for a, b in zip(_state_list(st_b), _state_list(whole_state0), strict=True):
        assert_close(a, b, **TIGHT)


def test_chunked_gradients_flow_through_carried_state():
    """Back-propagating through carried state across chunks gives the whole-pass gradient."""
    T, N, I, H = 9, 2, 3, 4
    gen = torch.Generator().manual_seed(12)
    for cell in ("lstm", "rnn-tanh"):
        torch.manual_seed(12)
        model = _ours(cell, I, H, num_layers=2, dtype=F64, backend="fused")
        x = torch.randn(T, N, I, generator=gen, dtype=F64)
        w = torch.randn(T, N, H, generator=gen, dtype=F64)
        x1 = x.clone().requires_grad_()
        model.zero_grad()
        (model(x1)[0] * w).sum().backward()
        whole = [x1.grad.clone()] + [p.grad.clone() for p in model.parameters()]

        x2 = x.clone().requires_grad_()
        model.zero_grad()
        state, outs = None, []
        for lo, hi in [(0, 1), (1, 6), (6, 9)]:
            out, state = model(x2[lo:hi], state)
            outs.append(out)
        (torch.cat(outs) * w).sum().backward()
        chunked = [x2.grad] + [p.grad for p in model.parameters()]
        for a, b in zip(chunked, whole, strict=True):
            assert_close(a, b, **TIGHT)


# ---------------------------------------------------------------------------------------
# 6. Property test: shapes, dtype, fused == reference.
# ---------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 8),
    length=st.integers(1, 40),
    input_size=st.integers(1, 32),
    hidden_size=st.integers(1, 32),
    num_layers=st.integers(1, 3),
    cell=st.sampled_from(["lstm", "rnn-tanh", "rnn-sigmoid", "rnn-relu"]),
    batch_first=st.booleans(),
    with_state=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_shapes_and_fused_equals_reference(
    batch, length, input_size, hidden_size, num_layers, cell, batch_first, with_state, seed
):
    N, T, I, H, L = batch, length, input_size, hidden_size, num_layers
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    fused = _ours(cell, I, H, num_layers=L, batch_first=batch_first, dtype=F64, backend="fused")
    ref = _ours(cell, I, H, num_layers=L, batch_first=batch_first, dtype=F64, backend="reference")
    ref.load_state_dict(fused.state_dict())
    shape = (N, T, I) if batch_first else (T, N, I)
    x = torch.randn(*shape, generator=gen, dtype=F64)
    state = (
        _pack(cell, _make_state(cell, gen, (L, N, H), F64, requires_grad=False))
        if with_state
        else None
    )
    w_out = torch.randn(*shape[:2], H, generator=gen, dtype=F64)

    results = []
    for model in (fused, ref):
        xi = x.clone().requires_grad_()
        out, final = model(xi, state)
        out_shape = (N, T, H) if batch_first else (T, N, H)
        assert out.shape == out_shape and out.dtype == F64
        finals = _state_list(final)
        assert len(finals) == (2 if cell == "lstm" else 1)
        assert all(f.shape == (L, N, H) and f.dtype == F64 for f in finals)
        # The last layer's final h is the last time step of the output.
        last = out[:, -1] if batch_first else out[-1]
        assert_close(finals[0][-1], last, atol=0, rtol=0)
        loss = (out * w_out).sum() + sum(f.sum() for f in finals)
        (grad_x,) = torch.autograd.grad(loss, xi)
        results.append((out, finals, grad_x))
    (o_f, s_f, g_f), (o_r, s_r, g_r) = results
    assert_close(o_f, o_r, **TIGHT)
    for a, b in zip(s_f, s_r, strict=True):
        assert_close(a, b, **TIGHT)
    assert_close(g_f, g_r, **TIGHT)


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("cell", ["lstm", "rnn-tanh", "rnn-relu"])
def test_missing_state_is_exactly_zero_state(cell, backend):
    model = _ours(cell, 3, 4, num_layers=2, backend=backend, dtype=F64)
    x = torch.randn(5, 2, 3, dtype=F64)
    zeros = _pack(cell, [torch.zeros(2, 2, 4, dtype=F64)] * (2 if cell == "lstm" else 1))
    out_a, fin_a = model(x)
    out_b, fin_b = model(x, zeros)
    assert_close(out_a, out_b, atol=0, rtol=0)
    for a, b in zip(_state_list(fin_a), _state_list(fin_b), strict=True):
        assert_close(a, b, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------
# 7. Unbatched input; sigmoid Elman against an explicit loop.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("cell", ["lstm", "rnn-tanh", "rnn-sigmoid"])
def test_unbatched_equals_batched_with_one_sequence(cell, backend, batch_first, num_layers):
    T, I, H, L = 6, 3, 4, num_layers
    gen = torch.Generator().manual_seed(13)
    torch.manual_seed(13)
    model = _ours(cell, I, H, num_layers=L, backend=backend, batch_first=batch_first, dtype=F64)
    x = torch.randn(T, I, generator=gen, dtype=F64)
    x_batched = x.unsqueeze(0) if batch_first else x.unsqueeze(1)
    parts = _make_state(cell, gen, (L, H), F64, requires_grad=False)

    for state_u, state_b in [
        (None, None),
        (_pack(cell, parts), _pack(cell, [p.unsqueeze(1) for p in parts])),
    ]:
        out_u, fin_u = model(x, state_u)
        out_b, fin_b = model(x_batched, state_b)
        assert out_u.shape == (T, H)
        assert_close(out_u, out_b.squeeze(0 if batch_first else 1), **TIGHT)
        for a, b in zip(_state_list(fin_u), _state_list(fin_b), strict=True):
            assert a.shape == (L, H)
            assert_close(a, b.squeeze(1), **TIGHT)


def test_unbatched_matches_torch_nn():
    gen = torch.Generator().manual_seed(14)
    for cell in ("lstm", "rnn-tanh"):
        ours = _ours(cell, 3, 4, num_layers=2, dtype=F64, backend="fused")
        theirs = _theirs(cell, 3, 4, num_layers=2, dtype=F64)
        theirs.load_state_dict(ours.state_dict())
        x = torch.randn(5, 3, generator=gen, dtype=F64)
        state = _pack(cell, _make_state(cell, gen, (2, 4), F64, requires_grad=False))
        out_a, fin_a = ours(x, state)
        out_b, fin_b = theirs(x, state)
        assert_close(out_a, out_b, **TIGHT)
        for a, b in zip(_state_list(fin_a), _state_list(fin_b), strict=True):
            assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_sigmoid_rnn_matches_explicit_loop(backend, bias, batch_first):
    T, N, I, H, L = 7, 3, 4, 5, 3
    gen = torch.Generator().manual_seed(15)
    torch.manual_seed(15)
    model = rnnlab.RNN(
        I,
        H,
        L,
        nonlinearity="sigmoid",
        bias=bias,
        batch_first=batch_first,
        backend=backend,
        dtype=F64,
    )
    x = torch.randn(N, T, I, generator=gen, dtype=F64)
    h0 = torch.randn(L, N, H, generator=gen, dtype=F64)
    w = torch.randn(N, T, H, generator=gen, dtype=F64)

    # Explicit loop, written from h_t = sigmoid(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh).
    x_loop = x.clone().requires_grad_()
    layer_in, finals = [x_loop[:, t] for t in range(T)], []
    for layer in range(L):
        w_ih, w_hh = getattr(model, f"weight_ih_l{layer}"), getattr(model, f"weight_hh_l{layer}")
        b = 0
        if bias:
            b = getattr(model, f"bias_ih_l{layer}") + getattr(model, f"bias_hh_l{layer}")
        h, outs = h0[layer], []
        for x_t in layer_in:
            h = torch.sigmoid(x_t @ w_ih.T + h @ w_hh.T + b)
            outs.append(h)
        layer_in = outs
        finals.append(h)
    loop_out, loop_final = torch.stack(layer_in, dim=1), torch.stack(finals)
    model.zero_grad()
    ((loop_out * w).sum() + loop_final.sum()).backward()
    loop_grads = [x_loop.grad] + [p.grad.clone() for p in model.parameters()]

    x_model = x.clone().requires_grad_()
    model.zero_grad()
    out, final = model(x_model if batch_first else x_model.transpose(0, 1), h0)
    if not batch_first:
        out = out.transpose(0, 1)
    assert_close(out, loop_out, **TIGHT)
    assert_close(final, loop_final, **TIGHT)
    ((out * w).sum() + final.sum()).backward()
    model_grads = [x_model.grad] + [p.grad for p in model.parameters()]
    for a, b in zip(model_grads, loop_grads, strict=True):
        assert_close(a, b, **TIGHT)


def test_sigmoid_rnn_layer_equals_elman_step_loop():
    """One layer of the sigmoid stack is the reference cell step over time."""
    gen = torch.Generator().manual_seed(16)
    model = rnnlab.RNN(3, 4, nonlinearity="sigmoid", dtype=F64)
    x = torch.randn(6, 2, 3, generator=gen, dtype=F64)
    out, h_n = model(x)
    h, steps = torch.zeros(2, 4, dtype=F64), []
    for x_t in x:
        h = elman_step(x_t, h, *model.layer_parameters(0), "sigmoid")
        steps.append(h)
    assert_close(out, torch.stack(steps), **TIGHT)
    assert_close(h_n[0], h, **TIGHT)
    assert ((out > 0) & (out < 1)).all()


# ---------------------------------------------------------------------------------------
# 8. Argument checking: ValueError naming the argument.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [rnnlab.RNN, rnnlab.LSTM])
def test_bad_input_raises_value_error(cls):
    model = cls(3, 4, num_layers=2)
    for bad in (torch.randn(3), torch.randn(2, 3, 4, 3)):
        with pytest.raises(ValueError, match="input must be 3-D"):
            model(bad)
    with pytest.raises(ValueError, match="input_size=3"):
        model(torch.randn(5, 2, 7))
    with pytest.raises(ValueError, match="input_size=3"):
        model(torch.randn(5, 2))
    with pytest.raises(ValueError, match="input dtype"):
        model(torch.randn(5, 2, 3, dtype=F64))
    with pytest.raises(ValueError, match="input must be a Tensor"):
        model([[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="at least one time step"):
        model(torch.randn(0, 2, 3))


@pytest.mark.parametrize("cls", [rnnlab.RNN, rnnlab.LSTM])
def test_bad_state_raises_value_error(cls):
    is_lstm = cls is rnnlab.LSTM
    model = cls(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3)

    def state(*shape):
        return (torch.zeros(*shape), torch.zeros(*shape)) if is_lstm else torch.zeros(*shape)

    for shape in [(1, 2, 4), (2, 3, 4), (2, 2, 5), (2, 4), (2, 2, 4, 1)]:
        with pytest.raises(ValueError, match="state h must have shape"):
            model(x, state(*shape))
    # Unbatched input wants an unbatched (num_layers, hidden_size) state.
    with pytest.raises(ValueError, match=r"state h must have shape \(2, 4\)"):
        model(torch.randn(5, 3), state(2, 1, 4))
    # batch_first changes the input layout, never the state's (num_layers, N, H).
    bf = cls(3, 4, num_layers=2, batch_first=True)
    with pytest.raises(ValueError, match="state h must have shape"):
        bf(torch.randn(2, 5, 3), state(2, 5, 4))
    if is_lstm:
        with pytest.raises(ValueError, match="state c must have shape"):
            model(x, (torch.zeros(2, 2, 4), torch.zeros(2, 2, 5)))
        with pytest.raises(ValueError, match="state must be a tuple"):
            model(x, torch.zeros(2, 2, 4))
        with pytest.raises(ValueError, match="state must be a tuple"):
            model(x, (torch.zeros(2, 2, 4),) * 3)
    else:
        with pytest.raises(ValueError, match="state must be a tensor"):
            model(x, (torch.zeros(2, 2, 4), torch.zeros(2, 2, 4)))


@pytest.mark.parametrize("cls", [rnnlab.RNN, rnnlab.LSTM])
def test_state_dtype_mismatch_raises_value_error(cls):
    model = cls(3, 4, num_layers=2)
    h = torch.zeros(2, 2, 4, dtype=F64)
    with pytest.raises(ValueError, match="state"):
        model(torch.randn(5, 2, 3), (h, h) if cls is rnnlab.LSTM else h)


@pytest.mark.parametrize("cls", [rnnlab.RNN, rnnlab.LSTM])
def test_bad_constructor_arguments_raise_value_error(cls):
    for bad in (0, -1, 2.0, True, None):
        with pytest.raises(ValueError, match="hidden_size"):
            cls(3, bad)
        with pytest.raises(ValueError, match="num_layers"):
            cls(3, 4, num_layers=bad)
        with pytest.raises(ValueError, match="input_size"):
            cls(bad, 4)
    with pytest.raises(ValueError, match="backend"):
        cls(3, 4, backend="cuda")
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="dropout"):
            cls(3, 4, num_layers=2, dropout=bad)


def test_unknown_nonlinearity_raises_value_error():
    with pytest.raises(ValueError, match="nonlinearity"):
        rnnlab.RNN(3, 4, nonlinearity="gelu")
    with pytest.raises(ValueError, match="nonlinearity"):
        rnnlab.RNN(3, 4, nonlinearity="Tanh")


# ---------------------------------------------------------------------------------------
# 9. Dropout between layers.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("cls", [rnnlab.RNN, rnnlab.LSTM])
def test_dropout_between_layers(cls, backend):
    I, H = 4, 8
    torch.manual_seed(17)
    with_dropout = cls(I, H, num_layers=3, dropout=0.5, backend=backend, dtype=F64)
    without = cls(I, H, num_layers=3, dropout=0.0, backend=backend, dtype=F64)
    without.load_state_dict(with_dropout.state_dict())
    x = torch.randn(6, 3, I, dtype=F64)

    def run(model):
        out, state = model(x)
        return [out, *_state_list(state)]

    # Eval mode: dropout has no effect.
    with_dropout.eval()
    without.eval()
    for a, b in zip(run(with_dropout), run(without), strict=True):
        assert_close(a, b, atol=0, rtol=0)

    # Training mode, dropout=0: same as eval (no other train-time behaviour).
    without.train()
    for a, b in zip(run(without), run(with_dropout.eval()), strict=True):
        assert_close(a, b, atol=0, rtol=0)

    # Training mode with dropout: differs from dropout=0, reproducible under a seed.
    with_dropout.train()
    torch.manual_seed(123)
    first = run(with_dropout)
    torch.manual_seed(123)
    second = run(with_dropout)
    torch.manual_seed(124)
    other_seed = run(with_dropout)
    reference = run(without)
    for a, b in zip(first, second, strict=True):
        assert_close(a, b, atol=0, rtol=0)
    assert not torch.allclose(first[0], reference[0])
    assert not torch.allclose(first[0], other_seed[0])
    # Layer 0 sees the undropped input: its final state is unaffected by dropout.
    for a, b in zip(first[1:], reference[1:], strict=True):
        assert_close(a[0], b[0], atol=0, rtol=0)
        assert not torch.allclose(a[1:], b[1:])


def test_dropout_single_layer_is_a_no_op():
    """With one layer there is no 'between layers', so dropout changes nothing."""
    torch.manual_seed(18)
    model = rnnlab.LSTM(3, 4, num_layers=1, dropout=0.5)
    x = torch.randn(5, 2, 3)
    model.train()
    out_train, _ = model(x)
    model.eval()
    out_eval, _ = model(x)
    assert_close(out_train, out_eval, atol=0, rtol=0)

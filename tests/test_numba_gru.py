"""The compiled GRU training path (``backend="numba"``, :mod:`rnnlab.backends.numba_gru`).

The tiers of the other paths: the sequence function against the reference in float64
(outputs and every gradient, with and without biases), gradcheck, the layer against the
reference layer (stacked, bidirectional, lengths, batch_first) and against
``torch.nn.GRU``, chunked equals whole, float32 against the fused path, and the thread
split.  No timings: ``rnnlab bench speed`` measures the speed.
"""

import copy

import pytest
import torch

import rnnlab
from conftest import split_into
from rnnlab.backends.numba_gru import gru_compiled_sequence
from rnnlab.cells.gru import gru_sequence, gru_sequence_reference

F64 = torch.float64
T, N, I, H = 6, 5, 4, 7
TIGHT = dict(atol=1e-10, rtol=1e-10)


def problem(dtype, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=dtype)).requires_grad_()

    args = [rand(T, N, I), rand(N, H), rand(3 * H, I, scale=0.5), rand(3 * H, H, scale=0.5)]
    args += [rand(3 * H), rand(3 * H)] if bias else [None, None]
    weights = torch.randn(T, N, H, generator=g, dtype=dtype)
    return args, weights


FORMS = ["torch", "cho"]


def values_and_grads(run, dtype, bias=True, form="torch"):
    args, weights = problem(dtype, bias)
    hs = run(*args, form)
    leaves = [a for a in args if a is not None]
    return [hs, *torch.autograd.grad((hs * weights).sum(), leaves)]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_equals_the_reference_in_float64(bias, form, batch_loop):
    got = values_and_grads(gru_compiled_sequence, F64, bias, form)
    expected = values_and_grads(gru_sequence_reference, F64, bias, form)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("form", FORMS)
def test_gradcheck(form):
    args, _ = problem(F64)
    assert torch.autograd.gradcheck(lambda *a: gru_compiled_sequence(*a, form), tuple(args))


@pytest.mark.parametrize("form", FORMS)
def test_float32_equals_the_fused_path(form, batch_loop):
    got = values_and_grads(gru_compiled_sequence, torch.float32, form=form)
    expected = values_and_grads(gru_sequence, torch.float32, form=form)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)


def run_layer(layer, x, lengths=None):
    x = x.clone().requires_grad_()
    out, h = layer(x, lengths=lengths)
    loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()
    loss = loss + (h * 0.5).sum()
    return [out, h, *torch.autograd.grad(loss, [x, *layer.parameters()])]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("varlen", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
def test_layer_equals_the_reference_layer(varlen, batch_first, form):
    torch.manual_seed(0)
    kw = dict(bidirectional=True, batch_first=batch_first, backend="numba", dtype=F64)
    ours = rnnlab.GRU(I, H, num_layers=2, form=form, **kw)
    reference = copy.deepcopy(ours)
    reference.backend = "reference"
    x = torch.randn((N, T, I) if batch_first else (T, N, I), dtype=F64)
    lengths = torch.tensor([6, 2, 4, 1, 5]) if varlen else None
    for a, b in zip(run_layer(ours, x, lengths), run_layer(reference, x, lengths), strict=True):
        torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
def test_layer_matches_torch_nn(dtype):
    torch.manual_seed(0)
    theirs = torch.nn.GRU(I, H, num_layers=2, dtype=dtype)
    ours = rnnlab.GRU.from_torch(theirs, backend="numba")
    x = torch.randn(T, N, I, dtype=dtype)
    tol = TIGHT if dtype == F64 else dict(atol=2e-5, rtol=2e-5)
    out, h = ours(x)
    ref_out, ref_h = theirs(x)
    torch.testing.assert_close(out, ref_out, **tol)
    torch.testing.assert_close(h, ref_h, **tol)
    grads = torch.autograd.grad(out.sum(), list(ours.parameters()))
    ref_grads = torch.autograd.grad(ref_out.sum(), list(theirs.parameters()))
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, **tol)


def test_chunked_equals_whole_with_state_carried():
    torch.manual_seed(0)
    layer = rnnlab.GRU(I, H, num_layers=2, backend="numba", dtype=F64)
    x = torch.randn(T, N, I, dtype=F64)
    whole, h = layer(x)
    outs, state = [], None
    for chunk in (x[:2], x[2:3], x[3:]):
        out, state = layer(chunk, state)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs), whole, **TIGHT)
    torch.testing.assert_close(state, h, **TIGHT)


def test_auto_takes_it_for_both_forms_on_the_cpu():
    assert rnnlab.GRU(I, H).backend_choice().name == "numba"
    assert rnnlab.GRU(I, H, form="cho").backend_choice().name == "numba"
    assert "backend='auto' -> 'numba'" in repr(rnnlab.GRU(I, H))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
def test_rows_split_over_threads_give_the_same_numbers(monkeypatch, dtype, form, batch_loop):
    import rnnlab.backends.numba_gru as numba_gru

    runs = []
    for parts in (1, 2, 5):
        split_into(monkeypatch, numba_gru, batch_loop, parts)
        runs.append(values_and_grads(gru_compiled_sequence, dtype, form=form))
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("form", FORMS)
def test_transposed_initial_state(form):
    """A transposed (not contiguous) h0 gives the reference's values and gradients."""
    args, weights = problem(F64)
    args[1] = args[1].detach().t().contiguous().t().requires_grad_()
    assert not args[1].is_contiguous()
    results = []
    for run in (gru_compiled_sequence, gru_sequence_reference):
        hs = run(*args, form)
        results.append([hs, *torch.autograd.grad((hs * weights).sum(), args)])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, **TIGHT)


def test_auto_stays_fused_where_numba_cannot_cache(monkeypatch):
    """Without a writable cache every process would compile again: auto keeps fused."""
    from rnnlab.backends import numba_math

    monkeypatch.setattr(numba_math, "is_cached", lambda dispatcher: False)
    assert rnnlab.GRU(I, H).backend_choice().name == "fused"
    assert rnnlab.RNN(I, H).backend_choice().name == "fused"
    assert rnnlab.LSTM(I, H, layer_norm=True).backend_choice().name == "fused"
    assert rnnlab.GRU(I, H, backend="numba").backend_choice().name == "numba"  # if asked

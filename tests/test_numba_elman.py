"""The compiled Elman training path (``backend="numba"``, :mod:`rnnlab.backends.numba_elman`).

Each nonlinearity against the reference in float64 (outputs and every gradient), gradcheck,
float32 against the fused path, ``torch.nn.RNN`` agreement and the thread split; the
layer-level tiers (stacked, bidirectional, lengths, packed, chunked) are in
tests/test_backends_training.py.
"""

import pytest
import torch

import rnnlab
from conftest import split_into
from rnnlab.backends.numba_elman import elman_compiled_sequence
from rnnlab.cells.elman import elman_sequence, elman_sequence_reference

F64 = torch.float64
T, N, I, H = 6, 5, 4, 7
NONLINEARITIES = ["tanh", "sigmoid", "relu"]


def problem(dtype, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, shift=0.0):
        return (scale * torch.randn(*shape, generator=g, dtype=dtype) + shift).requires_grad_()

    # biases shifted up so that no ReLU unit is dead at every step
    args = [rand(T, N, I), rand(N, H), rand(H, I, scale=0.5), rand(H, H, scale=0.5)]
    args += [rand(H, shift=0.3), rand(H)] if bias else [None, None]
    return args, torch.randn(T, N, H, generator=g, dtype=dtype)


def values_and_grads(run, dtype, nonlinearity, bias=True):
    args, weights = problem(dtype, bias)
    hs = run(*args, nonlinearity)
    leaves = [a for a in args if a is not None]
    return [hs, *torch.autograd.grad((hs * weights).sum(), leaves)]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_equals_the_reference_in_float64(nonlinearity, bias, batch_loop):
    got = values_and_grads(elman_compiled_sequence, F64, nonlinearity, bias)
    expected = values_and_grads(elman_sequence_reference, F64, nonlinearity, bias)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("nonlinearity", ["tanh", "sigmoid"])
def test_gradcheck(nonlinearity):
    args, _ = problem(F64)
    assert torch.autograd.gradcheck(
        lambda *a: elman_compiled_sequence(*a, nonlinearity), tuple(args)
    )


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_float32_equals_the_fused_path(nonlinearity, batch_loop):
    got = values_and_grads(elman_compiled_sequence, torch.float32, nonlinearity)
    expected = values_and_grads(elman_sequence, torch.float32, nonlinearity)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_layer_matches_torch_nn_in_float32(nonlinearity):
    torch.manual_seed(0)
    theirs = torch.nn.RNN(I, H, num_layers=2, nonlinearity=nonlinearity)
    ours = rnnlab.RNN.from_torch(theirs, backend="numba")
    x = torch.randn(T, N, I)
    out, h = ours(x)
    ref_out, ref_h = theirs(x)
    torch.testing.assert_close(out, ref_out, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(h, ref_h, atol=2e-5, rtol=2e-5)


def test_auto_takes_it_on_the_cpu():
    for nonlinearity in NONLINEARITIES:
        layer = rnnlab.RNN(I, H, nonlinearity=nonlinearity)
        assert layer.backend_choice().name == "numba"


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_rows_split_over_threads_give_the_same_numbers(monkeypatch, nonlinearity, batch_loop):
    import rnnlab.backends.numba_elman as numba_elman

    runs = []
    for parts in (1, 2, 5):
        split_into(monkeypatch, numba_elman, batch_loop, parts)
        runs.append(values_and_grads(elman_compiled_sequence, torch.float32, nonlinearity))
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert torch.equal(a, b)


def test_transposed_initial_state():
    """A transposed (not contiguous) h0 gives the reference's values and gradients."""
    args, weights = problem(F64)
    args[1] = args[1].detach().t().contiguous().t().requires_grad_()
    assert not args[1].is_contiguous()
    results = []
    for run in (elman_compiled_sequence, elman_sequence_reference):
        hs = run(*args, "tanh")
        results.append([hs, *torch.autograd.grad((hs * weights).sum(), args)])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)

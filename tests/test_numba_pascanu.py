"""The compiled Pascanu-form training path (``backend="numba"``,
:mod:`rnnlab.backends.numba_pascanu`).

Both sigmas against the reference in float64 (outputs and every gradient, x0 included),
gradcheck, float32 against the fused path, chunked equals whole, the thread split, and
the layer (stacked, bidirectional) against the reference layer.  No timings:
``rnnlab bench speed`` measures the speed.
"""

import pytest
import torch

import rnnlab
from conftest import split_into
from rnnlab.backends.numba_pascanu import pascanu_compiled_sequence
from rnnlab.cells.pascanu import pascanu_sequence, pascanu_sequence_reference

F64 = torch.float64
T, N, I, H = 6, 5, 4, 7
TIGHT = dict(atol=1e-10, rtol=1e-10)
SIGMAS = ["tanh", "sigmoid"]


def problem(dtype, bias=True, steps=T, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=dtype)).requires_grad_()

    args = [rand(steps, N, I), rand(N, H), rand(H, I, scale=0.5), rand(H, H, scale=0.5)]
    args.append(rand(H) if bias else None)
    return args, torch.randn(steps, N, H, generator=g, dtype=dtype)


def values_and_grads(run, dtype, sigma, bias=True, steps=T):
    args, weights = problem(dtype, bias, steps)
    xs = run(*args, sigma)
    leaves = [a for a in args if a is not None]
    return [xs, *torch.autograd.grad((xs * weights).sum(), leaves)]


@pytest.mark.parametrize("steps", [T, 1], ids=["T6", "T1"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("sigma", SIGMAS)
def test_equals_the_reference_in_float64(sigma, bias, steps, batch_loop):
    got = values_and_grads(pascanu_compiled_sequence, F64, sigma, bias, steps)
    expected = values_and_grads(pascanu_sequence_reference, F64, sigma, bias, steps)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_gradcheck(sigma):
    args, _ = problem(F64)
    assert torch.autograd.gradcheck(lambda *a: pascanu_compiled_sequence(*a, sigma), tuple(args))


@pytest.mark.parametrize("sigma", SIGMAS)
def test_float32_equals_the_fused_path(sigma, batch_loop):
    got = values_and_grads(pascanu_compiled_sequence, torch.float32, sigma)
    expected = values_and_grads(pascanu_sequence, torch.float32, sigma)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)


def test_chunked_equals_whole_with_state_carried():
    args, weights = problem(F64)
    u, x0, *params = args
    whole = pascanu_compiled_sequence(u, x0, *params, "tanh")
    pieces, x = [], x0
    for lo, hi in ((0, 2), (2, 5), (5, T)):
        xs = pascanu_compiled_sequence(u[lo:hi], x, *params, "tanh")
        pieces.append(xs)
        x = xs[-1]
    chunked = torch.cat(pieces)
    torch.testing.assert_close(chunked, whole, **TIGHT)
    leaves = [a for a in args if a is not None]
    g_whole = torch.autograd.grad((whole * weights).sum(), leaves)
    g_chunked = torch.autograd.grad((chunked * weights).sum(), leaves)
    for a, b in zip(g_chunked, g_whole, strict=True):
        torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_rows_split_over_threads_give_the_same_numbers(monkeypatch, sigma, batch_loop):
    import rnnlab.backends.numba_pascanu as numba_pascanu

    runs = []
    for parts in (1, 2, 5):
        split_into(monkeypatch, numba_pascanu, batch_loop, parts)
        runs.append(values_and_grads(pascanu_compiled_sequence, torch.float32, sigma))
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["one-way", "bidirectional"])
def test_layer_equals_the_reference_layer(bidirectional):
    torch.manual_seed(5)
    layer = rnnlab.PascanuRNN(I, H, num_layers=2, sigma="sigmoid", bidirectional=bidirectional)
    layer = layer.double()
    assert layer.backend_choice().name == "numba"  # auto, on the CPU
    x = torch.randn(T, N, I, dtype=F64, requires_grad=True)
    results = []
    for backend in ("numba", "reference"):
        layer.backend = backend
        out, h = layer(x)
        loss = (out * torch.linspace(-1, 1, out.numel(), dtype=F64).view_as(out)).sum()
        grads = torch.autograd.grad(loss + h.sum(), [x, *layer.parameters()])
        results.append([out, h, *grads])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, **TIGHT)


def test_refused_off_the_cpu_types_in_one_line():
    with pytest.raises(ValueError, match="float32 and float64"):
        rnnlab.PascanuRNN(I, H, backend="numba", dtype=torch.bfloat16).backend_choice()

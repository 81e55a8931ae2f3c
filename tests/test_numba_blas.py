"""The BLAS called from inside the compiled loops (:mod:`rnnlab.backends.numba_blas`).

The products against ``torch.mm`` (both dtypes, chunked any way, strided operands, a bias),
the thread-local thread count, the switch that turns it off, and every cell's compiled
path with its whole loop in one call against the path with PyTorch's matmuls, including
widths that the column chunks cut.  No timings: ``rnnlab bench speed`` measures the speed.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import rnnlab
from conftest import split_into
from rnnlab.backends import numba_blas, numba_elman, numba_gru, numba_lstm, numba_pascanu
from rnnlab.backends.numba_blas import NO_BIAS, column_chunks, gemm_columns
from rnnlab.backends.numba_math import _kernel

BLAS = numba_blas.blas()
needs_blas = pytest.mark.skipif(BLAS is None, reason="PyTorch here exports no MKL")


@_kernel
def _all_blocks(gemm, parts, chunks, a, b, c, bias):
    for block in range(parts):
        gemm_columns(gemm, block, parts, chunks, a, b, c, bias)


def test_found_where_pytorch_ships_mkl():
    """PyTorch's x86-64 builds carry MKL; there the loops must find it (else they would
    quietly keep the slower path)."""
    if not torch.backends.mkl.is_available():
        assert BLAS is None
        return
    assert BLAS is not None
    assert min(BLAS.sgemm, BLAS.dgemm, BLAS.set_local_threads) > 0
    assert BLAS.gemm(np.float32) == BLAS.sgemm and BLAS.gemm(np.float64) == BLAS.dgemm


@needs_blas
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, k, n", [(7, 5, 9), (50, 128, 512), (3, 64, 33), (1, 17, 100)])
@pytest.mark.parametrize("chunks, parts", [(1, 1), (2, 2), (3, 2), (5, 3)])
def test_products_equal_torch_mm(dtype, m, k, n, chunks, parts):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    c = np.full((m, n), np.nan, dtype)
    _all_blocks(BLAS.gemm(dtype), parts, min(chunks, n), a, b, c, NO_BIAS)
    expected = (torch.from_numpy(a).double() @ torch.from_numpy(b).double()).numpy()
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(c, expected, rtol=tol, atol=tol * k)


@needs_blas
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_strided_operands_and_a_bias(dtype):
    """Views whose rows are longer than the matrix (a block of a wider array) and a bias
    added to every row, as the GRU's step takes them."""
    rng = np.random.default_rng(1)
    wide_a = rng.standard_normal((6, 30)).astype(dtype)
    wide_b = rng.standard_normal((8, 40)).astype(dtype)
    wide_c = np.zeros((6, 50), dtype)
    a, b, c = wide_a[:, 10:18], wide_b[:, 5:29], wide_c[:, 3:27]
    bias = rng.standard_normal(24).astype(dtype)
    _all_blocks(BLAS.gemm(dtype), 2, 2, a, b, c, bias)
    np.testing.assert_allclose(c, a @ b + bias, rtol=1e-5, atol=1e-5)
    assert not wide_c[:, :3].any() and not wide_c[:, 27:].any()  # nothing outside the view


def test_column_chunks_share_out_evenly_and_stay_wide():
    for pool in (1, 2, 3, 8):
        for width in (1, 31, 32, 64, 100, 512, 1536, 2048):
            chunks = column_chunks(width, pool)
            assert 1 <= chunks <= pool
            assert chunks == 1 or width // chunks >= 32
    assert column_chunks(512, 2) == 2 and column_chunks(2048, 8) == 8


@needs_blas
def test_the_thread_local_count_is_set_and_put_back():
    @_kernel
    def set_twice(fn, first, second):
        before = numba_blas._set_local_threads(fn, first)
        during = numba_blas._set_local_threads(fn, second)
        after = numba_blas._set_local_threads(fn, before)
        return before, during, after

    before, during, after = set_twice(BLAS.set_local_threads, 1, 3)
    assert during == 1 and after == 3  # each call returns the setting it replaced
    assert set_twice(BLAS.set_local_threads, 1, 1)[0] == before  # and `before` came back


def test_rnnlab_blas_torch_turns_it_off():
    code = "from rnnlab.backends.numba_blas import blas; print(blas() is None)"
    env = dict(os.environ, RNNLAB_BLAS="torch")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


# Every cell, wide enough that each product is cut into two column chunks (64 units).
WIDE = 64
LAYERS = {
    "lstm": lambda: rnnlab.LSTM(5, WIDE, num_layers=2, backend="numba"),
    "lstm-options": lambda: rnnlab.LSTM(
        5, WIDE, peephole=True, layer_norm=True, zoneout=0.1, recurrent_dropout=0.2, backend="numba"
    ),
    "lstm-proj": lambda: rnnlab.LSTM(5, WIDE, proj_size=40, zoneout=0.1, backend="numba"),
    "gru": lambda: rnnlab.GRU(5, WIDE, num_layers=2, backend="numba"),
    "gru-cho": lambda: rnnlab.GRU(5, WIDE, form="cho", backend="numba"),
    "rnn": lambda: rnnlab.RNN(5, WIDE, nonlinearity="relu", backend="numba"),
    "pascanu": lambda: rnnlab.PascanuRNN(5, WIDE, backend="numba"),
}
MODULES = (numba_lstm, numba_gru, numba_elman, numba_pascanu)


def values_and_grads(name, dtype):
    torch.manual_seed(0)
    layer = LAYERS[name]().to(dtype)
    x = torch.randn(9, 6, 5, dtype=dtype, requires_grad=True)
    torch.manual_seed(1)  # the same dropout and zoneout masks on every path
    out = layer(x)[0]
    weights = torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out)
    return [out, *torch.autograd.grad((out * weights).sum(), [x, *layer.parameters()])]


@needs_blas
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_one_call_per_loop_equals_the_python_loop(monkeypatch, name, dtype):
    calls = []
    record = numba_lstm._region_call
    for module in MODULES:
        monkeypatch.setattr(module, "_region_call", lambda *a: (calls.append(1), record(*a)))
    got = values_and_grads(name, dtype)
    assert calls, "the whole loop did not run in one compiled call"
    for module in MODULES:
        monkeypatch.setattr(module, "_region_parts", lambda rows: None)
    expected = values_and_grads(name, dtype)
    tol = dict(atol=1e-12, rtol=1e-12) if dtype == torch.float64 else dict(atol=2e-5, rtol=2e-5)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, **tol)


@needs_blas
@pytest.mark.parametrize("name", list(LAYERS))
def test_chunks_and_row_blocks_give_the_same_numbers_on_any_threads(monkeypatch, name):
    runs = []
    for parts in (1, 2, 3):
        for module in MODULES:
            split_into(monkeypatch, module, "region", parts)
        runs.append(values_and_grads(name, torch.float32))
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert torch.equal(a, b)

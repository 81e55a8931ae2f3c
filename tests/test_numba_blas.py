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
from rnnlab.backends.numba_blas import NO_BIAS, column_chunks, product_columns, product_rows
from rnnlab.backends.numba_math import _kernel

BLAS = numba_blas.blas()
needs_blas = pytest.mark.skipif(BLAS is None, reason="PyTorch here exports no MKL")
needs_brgemm = pytest.mark.skipif(BLAS is None or not BLAS.brgemm, reason="no oneDNN brgemm")


@_kernel
def _all_blocks(ctl, parts, a, b, c, bias):
    for block in range(parts):
        if ctl[numba_blas.SPLIT_ROWS]:
            m = a.shape[0]
            product_rows(ctl, block * m // parts, (block + 1) * m // parts, a, b, c, bias)
        else:
            product_columns(ctl, numba_blas.CHUNKS, block, parts, a, b, c, bias)


def ctl_for(kind, dtype, split_rows, chunks):
    address = {numba_blas.BRGEMM: BLAS.brgemm, numba_blas.FORTRAN: BLAS.product(dtype)[1]}
    if kind == numba_blas.FORTRAN:
        address[kind] = BLAS.sgemm if dtype == np.float32 else BLAS.dgemm
    return np.array([kind, address[kind], BLAS.set_local_threads, split_rows, chunks], np.int64)


CALLS = [
    ("sgemm", numba_blas.FORTRAN, np.float32),
    ("dgemm", numba_blas.FORTRAN, np.float64),
    ("brgemm", numba_blas.BRGEMM, np.float32),
]


def test_found_where_pytorch_ships_mkl():
    """PyTorch's x86-64 builds carry MKL (and oneDNN); there the loops must find them
    (else they would quietly keep the slower path)."""
    if not torch.backends.mkl.is_available():
        assert BLAS is None
        return
    assert BLAS is not None
    assert min(BLAS.sgemm, BLAS.dgemm, BLAS.set_local_threads) > 0
    assert BLAS.product(np.float64) == (numba_blas.FORTRAN, BLAS.dgemm)
    kind = numba_blas.BRGEMM if BLAS.brgemm else numba_blas.FORTRAN
    assert BLAS.product(np.float32)[0] == kind


@needs_blas
@pytest.mark.parametrize("name, kind, dtype", CALLS, ids=[c[0] for c in CALLS])
@pytest.mark.parametrize("m, k, n", [(7, 5, 9), (50, 128, 512), (3, 64, 33), (1, 17, 100)])
@pytest.mark.parametrize("split, parts", [("columns", 1), ("columns", 3), ("rows", 2), ("rows", 5)])
def test_products_equal_torch_mm(name, kind, dtype, m, k, n, split, parts):
    if kind == numba_blas.BRGEMM and not BLAS.brgemm:
        pytest.skip("no oneDNN brgemm")
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    c = np.full((m, n), np.nan, dtype)
    ctl = ctl_for(kind, dtype, split == "rows", min(parts, n))
    _all_blocks(ctl, parts, a, b, c, NO_BIAS)
    expected = (torch.from_numpy(a).double() @ torch.from_numpy(b).double()).numpy()
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(c, expected, rtol=tol, atol=tol * k)


@needs_blas
@pytest.mark.parametrize("name, kind, dtype", CALLS, ids=[c[0] for c in CALLS])
@pytest.mark.parametrize("split", ["columns", "rows"])
def test_strided_operands_and_a_bias(name, kind, dtype, split):
    """Views whose rows are longer than the matrix (a block of a wider array) and a bias
    added to every row, as the GRU's step takes them."""
    if kind == numba_blas.BRGEMM and not BLAS.brgemm:
        pytest.skip("no oneDNN brgemm")
    rng = np.random.default_rng(1)
    wide_a = rng.standard_normal((6, 30)).astype(dtype)
    wide_b = rng.standard_normal((8, 40)).astype(dtype)
    wide_c = np.zeros((6, 50), dtype)
    a, b, c = wide_a[:, 10:18], wide_b[:, 5:29], wide_c[:, 3:27]
    bias = rng.standard_normal(24).astype(dtype)
    _all_blocks(ctl_for(kind, dtype, split == "rows", 2), 2, a, b, c, bias)
    np.testing.assert_allclose(c, a @ b + bias, rtol=1e-5, atol=1e-5)
    assert not wide_c[:, :3].any() and not wide_c[:, 27:].any()  # nothing outside the view


@needs_brgemm
def test_brgemm_gives_the_same_numbers_however_a_product_is_cut():
    """What lets the loops split rows with brgemm: a row's values do not depend on the
    rows or columns computed with it (MKL's do, so its products keep fixed chunks)."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal((50, 300)).astype(np.float32)
    b = rng.standard_normal((300, 200)).astype(np.float32)
    runs = []
    for split, parts in (("rows", 1), ("rows", 3), ("rows", 7), ("columns", 4)):
        c = np.zeros((50, 200), np.float32)
        _all_blocks(ctl_for(numba_blas.BRGEMM, np.float32, split == "rows", parts), parts, a, b,
                    c, NO_BIAS)  # fmt: skip
        runs.append(c)
    for other in runs[1:]:
        assert np.array_equal(runs[0], other)


@needs_brgemm
@pytest.mark.parametrize(
    "m, k, n", [(300, 65, 512), (65, 2500, 40), (700, 130, 300), (3, 4, 5), (64, 256, 256)]
)
@pytest.mark.parametrize("layout", ["plain", "a transposed", "b transposed", "bias"])
def test_matmul_equals_torch(m, k, n, layout):
    torch.manual_seed(0)
    a = torch.randn(k, m).t() if layout == "a transposed" else torch.randn(m, k)
    b = torch.randn(n, k).t() if layout == "b transposed" else torch.randn(k, n)
    bias = torch.randn(n) if layout == "bias" else None
    got = numba_blas.matmul(a, b, bias)
    expected = a.double() @ b.double() + (0 if bias is None else bias.double())
    torch.testing.assert_close(got.double(), expected, atol=1e-4 * k**0.5, rtol=1e-4)
    assert got.is_contiguous() and got.dtype == torch.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows, cols", [(1, 5), (7, 3), (2500, 65), (33, 129)])
def test_transposes_both_ways_equal_numpy(dtype, rows, cols):
    """fbgemm's transpose (float32, where found) and the blocked loop, on 1 and 3 threads'
    shares, into a column offset of a wider array; a strided source too."""
    rng = np.random.default_rng(0)
    wide = rng.standard_normal((rows, cols + 4)).astype(dtype)
    source = wide[:, 2 : 2 + cols]  # rows contiguous, a row stride longer than the row
    fns = [0] + ([BLAS.transpose] if BLAS and BLAS.transpose and dtype == np.float32 else [])
    for fn in fns:
        for parts in (1, 3):
            out = np.full((cols, rows + 5), -7.0, dtype)
            for p in range(parts):
                numba_blas._transpose_part(fn, source, out, 5, p, parts)
            assert np.array_equal(out[:, 5:], source.T)
            assert np.all(out[:, :5] == -7.0)


def test_transposed_and_transpose_into():
    torch.manual_seed(0)
    for w in (torch.randn(512, 128), torch.randn(3, 4, dtype=torch.float64)):
        assert torch.equal(numba_blas.transposed(w), w.t().contiguous())
        assert torch.equal(numba_blas.transposed(w.t()), w)  # a transposed view
    h0, hs = torch.randn(4, 6), torch.randn(20, 6)
    out = np.empty((6, 24), np.float32)
    numba_blas.transpose_into(out, h0.numpy(), hs.numpy(), np.empty((0, 6), np.float32))
    assert np.array_equal(out, torch.cat([h0, hs]).t().numpy())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("T, N, H, G", [(50, 30, 64, 256), (1, 30, 64, 256), (3, 2, 5, 7)])
def test_outer_sum_prev_and_outer_and_sums_equal_their_sums(dtype, T, N, H, G):
    """W_hh's gradient in one product over [h0; hs[:-1]], and W_ih's with b's from a row
    of ones under x^T, against the sums written out in float64 (a d that is a column
    slice of a wider tensor, as the GRU passes)."""
    from rnnlab.cells import elman

    torch.manual_seed(0)
    h0, hs = torch.randn(N, H, dtype=dtype), torch.randn(T, N, H, dtype=dtype)
    d = torch.randn(T, N, G + 3, dtype=dtype)[..., 1 : G + 1]
    prev = torch.cat([h0.unsqueeze(0), hs[:-1]]).double()
    expected = torch.einsum("tnh,tng->hg", prev, d.double())
    tol = dict(atol=2e-4 * (T * N) ** 0.5, rtol=1e-4) if dtype == torch.float32 else {}
    for mm in (torch.mm, numba_blas.matmul):
        got = elman.outer_sum_prev(h0, hs, d, mm)
        torch.testing.assert_close(got.double(), expected, **tol)
    x, d2 = hs.reshape(T * N, H), d.reshape(T * N, G)
    for mm in (torch.mm, numba_blas.matmul):
        grad_w, grad_b = elman.outer_and_sums(x, d2, mm)
        torch.testing.assert_close(grad_w.double(), (d2.double().t() @ x.double()), **tol)
        torch.testing.assert_close(grad_b.double(), d2.double().sum(0), **tol)
        assert elman.outer_and_sums(x, d2, mm, sums=False)[1] is None


@_kernel
def _matvec_columns_call(w, v, o):
    numba_blas.matvec_columns(w, v, o)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, m", [(1, 1), (7, 77), (256, 128), (33, 300), (64, 200), (5, 3)])
def test_matvec_columns_equals_numpy_and_any_cut_of_its_columns(dtype, n, m):
    rng = np.random.default_rng(n * m)
    w = rng.standard_normal((n, m + 9)).astype(dtype)[:, 4 : 4 + m]  # row stride > m
    v = rng.standard_normal(2 * n).astype(dtype)[::2]  # strided v
    o = np.full(m, np.nan, dtype)
    _matvec_columns_call(w, v, o)
    exact = w.astype(np.float64).T @ v.astype(np.float64)
    scale = np.abs(w).T.astype(np.float64) @ np.abs(v).astype(np.float64)
    bound = (n + 1) * np.finfo(dtype).eps * scale  # a chain of n fused multiply-adds
    assert np.all(np.abs(o - exact) <= bound)
    # each column is the same chain wherever it falls: cut into pieces, the same bits
    cut = np.full(m, np.nan, dtype)
    edges = sorted({0, m, m // 3, min(m, m // 3 + 5), min(m, 17)})
    for a, b in zip(edges, edges[1:], strict=False):
        _matvec_columns_call(w[:, a:b], v, cut[a:b])
    np.testing.assert_array_equal(cut, o)


def test_matvec_columns_of_no_rows_is_zeros():
    o = np.ones(5, np.float32)
    _matvec_columns_call(np.empty((0, 5), np.float32), np.empty(0, np.float32), o)
    assert not o.any()
    _matvec_columns_call(np.empty((3, 0), np.float32), np.ones(3, np.float32), o[:0])


@needs_brgemm
@pytest.mark.parametrize("m", [500, 129, 3])
def test_matmul_same_numbers_on_any_threads(monkeypatch, m):
    """Any thread count, and so any rows of tiles (129 rows: 3 tiles, 4 on 2 threads)."""
    a, b = torch.randn(m, 300), torch.randn(300, 700)
    runs = []
    for parts in (1, 2, 3):
        monkeypatch.setattr(numba_blas, "_matmul_parts", lambda parts=parts: parts)
        runs.append(numba_blas.matmul(a, b))
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    torch.testing.assert_close(runs[0], a @ b, rtol=1e-4, atol=1e-4)


def test_tiles_share_out_evenly_where_the_rows_allow():
    tile_grid = numba_blas.tile_grid
    assert tile_grid(129, 512, 1) == (3, 1)
    assert tile_grid(129, 512, 2) == (4, 1)  # not 1 tile against 2
    assert tile_grid(129, 512, 3) == (3, 1)
    assert tile_grid(2500, 512, 2) == (40, 1)
    assert tile_grid(1, 2048, 3) == (1, 4)  # one row: no more rows of tiles to be had
    for m in range(1, 300, 7):
        for n in (1, 65, 512, 1536):
            for parts in (1, 2, 3, 4):
                rows, cols = tile_grid(m, n, parts)
                assert 1 <= rows <= m and cols == -(-n // numba_blas.TILE_N)
                assert rows >= -(-m // numba_blas.TILE_M)


def test_matmul_leaves_what_it_does_not_take_to_torch():
    """float64, autograd, tiny products: PyTorch's own (autograd included)."""
    a = torch.randn(200, 100, requires_grad=True)
    b = torch.randn(100, 300)
    out = numba_blas.matmul(a, b)
    assert out.grad_fn is not None
    out.sum().backward()
    torch.testing.assert_close(a.grad, b.sum(1).expand(200, 100))
    wide = torch.randn(200, 100, dtype=torch.float64)
    assert numba_blas.matmul(wide, wide.t()).dtype == torch.float64


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


@pytest.mark.parametrize("choice, expected", [("torch", "None"), ("mkl", "0")])
def test_rnnlab_blas_turns_it_off(choice, expected):
    """RNNLAB_BLAS=torch: PyTorch's matmuls between the passes; =mkl: MKL, no brgemm."""
    code = "from rnnlab.backends.numba_blas import blas; b = blas(); print(b and b.brgemm)"
    env = dict(os.environ, RNNLAB_BLAS=choice)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    if BLAS is not None:
        assert done.stdout.strip() == expected


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


def values_and_grads(name, dtype, batch=6):
    torch.manual_seed(0)
    layer = LAYERS[name]().to(dtype)
    x = torch.randn(9, batch, 5, dtype=dtype, requires_grad=True)
    torch.manual_seed(1)  # the same dropout and zoneout masks on every path
    out = layer(x)[0]
    weights = torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out)
    return [out, *torch.autograd.grad((out * weights).sum(), [x, *layer.parameters()])]


@needs_blas
@pytest.mark.parametrize("batch", [6, 40], ids=["columns", "rows"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_one_call_per_loop_equals_the_python_loop(monkeypatch, name, dtype, batch):
    """The loop in one compiled call, its threads splitting each product's columns (a
    small batch, or MKL) or the rows (brgemm), against the Python loop with torch.mm."""
    calls = []
    record = numba_lstm._region_call
    for module in MODULES:
        monkeypatch.setattr(module, "_region_call", lambda *a: (calls.append(1), record(*a)))
    got = values_and_grads(name, dtype, batch)
    assert calls, "the whole loop did not run in one compiled call"
    for module in MODULES:
        monkeypatch.setattr(module, "_region_parts", lambda rows: None)
    expected = values_and_grads(name, dtype, batch)
    # float32: the two loops' step products sum in other orders (brgemm against MKL), and
    # the weight gradients add 360 such terms through a layer norm: 1e-4 (seen: 4e-5)
    tol = dict(atol=1e-12, rtol=1e-12) if dtype == torch.float64 else dict(atol=1e-4, rtol=1e-4)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, **tol)


@needs_blas
@pytest.mark.parametrize("batch", [6, 40], ids=["columns", "rows"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_chunks_and_row_blocks_give_the_same_numbers_on_any_threads(monkeypatch, name, batch):
    runs = []
    for parts in (1, 2, 3):
        for module in MODULES:
            split_into(monkeypatch, module, "region", parts)
        runs.append(values_and_grads(name, torch.float32, batch))
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert torch.equal(a, b)

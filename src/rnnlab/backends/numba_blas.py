r"""Matrix products for the compiled loops: the kernels PyTorch ships, called from Numba.

Why.  The compiled training paths (:mod:`rnnlab.backends.numba_lstm`, ``numba_gru``,
``numba_elman``, ``numba_pascanu``) spend each step in one product and one pass over the
step's element-wise work.  Called from Python, the product is ``torch.mm`` on PyTorch's
OpenMP threads and the pass a Numba parallel region on Numba's threads: two thread pools
taking turns 2 x T times per layer, each start costing microseconds and each pool's
spinning threads slowing the other's.  Here the whole time loop of a batch is one Numba
parallel region, and each thread calls a GEMM kernel itself, on one thread:

* **float32: oneDNN's brgemm** (the batch-reduce GEMM micro-kernel oneDNN's own RNNs are
  built on), as PyTorch exports it, ``at::native::cpublas::brgemm``.  Single-threaded it
  ran 1.1-1.6x faster than MKL's ``sgemm`` on this project's AMD CPU (where MKL takes its
  AVX2 code), most at few rows: 25 x 128 by 128 x 512 in 37.9 µs against 59.7; 16 x 256
  by 256 x 512 in 41 against 63.  Its values for a row do not depend on the other rows
  or columns computed in the same call (checked bit for bit), so each thread takes its
  own sequences (:data:`SPLIT_ROWS`) and runs them through every step without meeting
  the others;
* **float64 (and float32 without brgemm): MKL's** Fortran ``dgemm_`` / ``sgemm_``, run on
  the calling thread alone (``MKL_Set_Num_Threads_Local``).  MKL's values do depend on
  how a product is cut, so the threads split its columns into chunks fixed by the
  product's width and the thread pool (:func:`column_chunks`), then the rows of the pass,
  and meet after each (``numba_math._claim``).

The products over every step (input projection, weight and input gradients) go through
:func:`matmul`: brgemm tiles on Numba's threads, 0.72-0.99 of ``torch.mm``'s time at the
shapes of the benchmark.  ``docs/performance.md``, "One parallel region per batch", has
the measurements.

Where.  :func:`blas` finds the functions by name in PyTorch's ``libtorch_cpu`` with
``ctypes``, and tries brgemm on a small product before trusting it.  Where MKL is missing
(PyTorch built with OpenBLAS or Accelerate, as on ARM) it returns None and the compiled
paths keep ``torch.mm`` between compiled passes; without brgemm (an older PyTorch) float32
takes MKL.  Nothing is compiled on the user's machine and nothing is installed besides
PyTorch.  ``RNNLAB_BLAS=torch`` turns it all off, ``RNNLAB_BLAS=mkl`` leaves brgemm out.

The calls.  :func:`_gemm` and :func:`_brgemm` are LLVM intrinsics that call a function at
an address given at run time (so the compiled code, with no address baked in, can be
cached on disk); :func:`_set_local_threads` likewise.  The products take row-major views
(rows contiguous, any row stride); Fortran's gemm gets the column-major C^T = B^T A^T.

Same numbers on any number of threads: brgemm's rows and MKL's fixed chunks are computed
by the same call whichever thread runs them, so the results do not depend on the thread
count (the tests compare 1, 2 and 3 blocks bit for bit).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from rnnlab.backends.buffers import _workspace, pooled, workspace
from rnnlab.backends.numba_math import _jit, _kernel, numba_threads

_kernel_par = functools.partial(_jit, refcounts=False, parallel=True)

_TORCH_LIBRARY = {  # where PyTorch keeps its CPU library, by platform
    "linux": "libtorch_cpu.so",
    "darwin": "libtorch_cpu.dylib",
    "win32": "torch_cpu.dll",
}


FORTRAN, BRGEMM = 0, 1  # how a product is called: Fortran's ?gemm_, or oneDNN's brgemm

# at::native::cpublas::brgemm(M, N, K, ld_a, ld_b, ld_c, add_C, const float* A,
# const float* B, float* C, bool is_vnni): oneDNN's batch-reduce GEMM micro-kernel, as
# PyTorch exports it (C++ name, so only this exact signature is found).
_BRGEMM_F32 = "_ZN2at6native7cpublas6brgemmEllllllbPKfS3_Pfb"


@dataclass(frozen=True)
class Blas:
    """Addresses of the functions the compiled loops call (integers, for :func:`_gemm`,
    :func:`_brgemm` and :func:`_set_local_threads`); ``brgemm`` is 0 where there is none."""

    sgemm: int
    dgemm: int
    set_local_threads: int
    brgemm: int = 0
    transpose: int = 0

    def product(self, dtype) -> tuple[int, int]:
        """(kind, address) of the product for arrays of ``dtype``: oneDNN's brgemm for
        float32 where it is found, else MKL's sgemm_ or dgemm_."""
        if np.dtype(dtype) == np.float32:
            return (BRGEMM, self.brgemm) if self.brgemm else (FORTRAN, self.sgemm)
        return FORTRAN, self.dgemm


@functools.lru_cache(maxsize=1)
def blas() -> Blas | None:
    """PyTorch's own MKL (and oneDNN's brgemm), when its library exports what the loops
    call; else None (see the module docstring).  ``RNNLAB_BLAS=torch`` gives None,
    ``RNNLAB_BLAS=mkl`` leaves brgemm out."""
    choice = os.environ.get("RNNLAB_BLAS", "auto")
    if choice == "torch" or not torch.backends.mkl.is_available():
        return None
    name = _TORCH_LIBRARY.get(sys.platform)
    path = Path(torch.__file__).parent / "lib" / (name or "")
    if name is None or not path.exists():
        return None
    try:
        lib = ctypes.CDLL(str(path))
        found = [lib.sgemm_, lib.dgemm_, lib.MKL_Set_Num_Threads_Local]
    except (OSError, AttributeError):
        return None
    addresses = [ctypes.cast(f, ctypes.c_void_p).value for f in found]
    brgemm = _working_brgemm(lib) if choice == "auto" else 0
    return Blas(*addresses, brgemm=brgemm, transpose=_working_transpose(lib))


def _working_brgemm(lib) -> int:
    """The address of PyTorch's float32 brgemm, if it exports one and it computes a small
    product right (a PyTorch whose function kept the name but not the meaning is left
    alone); else 0.  With oneDNN off (``torch.backends.mkldnn``) PyTorch's brgemm itself
    falls back to its BLAS."""
    if not torch.backends.mkldnn.is_available():
        return 0
    try:
        fn = getattr(lib, _BRGEMM_F32)
    except AttributeError:
        return 0
    long, pointer, flag = ctypes.c_long, ctypes.c_void_p, ctypes.c_bool
    fn.restype, fn.argtypes = None, [long] * 6 + [flag, pointer, pointer, pointer, flag]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 9)).astype(np.float32)  # rows of 9 of which 7 are used
    b = rng.standard_normal((7, 4)).astype(np.float32)
    c = np.ones((5, 6), np.float32)  # C = A B + C in its first 3 columns
    fn(5, 3, 7, 9, 4, 6, True, a.ctypes.data, b.ctypes.data, c.ctypes.data, False)
    expected = a[:, :7].astype(np.float64) @ b[:, :3] + 1.0
    ok = np.allclose(c[:, :3], expected, atol=1e-5) and np.all(c[:, 3:] == 1.0)
    return ctypes.cast(fn, ctypes.c_void_p).value if ok else 0


# fbgemm::transpose_simd<float>(M, N, const float* src, ld_src, float* dst, ld_dst): dst =
# src^T for an M x N row-major src, with AVX-512 / AVX2 kernels chosen at run time
# (fbgemm's own reference loop on other CPUs).  PyTorch ships it inside libtorch_cpu.
_TRANSPOSE_F32 = "_ZN6fbgemm14transpose_simdIfEEvllPKT_lPS1_l"


def _working_transpose(lib) -> int:
    """The address of fbgemm's float32 transpose, if PyTorch exports it and it transposes
    a small strided matrix right; else 0 (:func:`_transpose_blocks` keeps its own loop)."""
    try:
        fn = getattr(lib, _TRANSPOSE_F32)
    except AttributeError:
        return 0
    long, pointer = ctypes.c_int64, ctypes.c_void_p
    fn.restype, fn.argtypes = None, [long, long, pointer, long, pointer, long]
    src = np.arange(7 * 20, dtype=np.float32).reshape(7, 20)  # 7 x 19 used, row stride 20
    dst = np.full((19, 9), -1.0, np.float32)  # 19 x 7 written, row stride 9
    fn(7, 19, src.ctypes.data, 20, dst.ctypes.data, 9)
    ok = np.array_equal(dst[:, :7], src[:, :19].T) and np.all(dst[:, 7:] == -1.0)
    return ctypes.cast(fn, ctypes.c_void_p).value if ok else 0


def column_chunks(width: int, pool: int | None = None) -> int:
    """How many column chunks a product ``width`` columns wide is cut into: one per thread
    of the pool (``pool``, default Numba's, fixed for the process), fewer where a chunk
    would be narrower than 32 columns.  More, narrower chunks measured slower here: 64 x
    512 by 512 x 1536 on 2 threads took 653 µs in 2 chunks, 672 in 6 and 702 in 16; 50 x
    512 by 512 x 128 took 44 µs in 2, 54 in 8."""
    pool = numba_threads() if pool is None else pool
    return max(1, min(pool, width // 32))


# -- calling a function at a run-time address ---------------------------------------------

_I8P = ir.IntType(8).as_pointer()
_I32 = ir.IntType(32)


def _slot(builder, ty, value):
    """A stack slot holding ``value``, as an i8* (Fortran takes every argument by address)."""
    pointer = cgutils.alloca_once(builder, ty)
    builder.store(value, pointer)
    return builder.bitcast(pointer, _I8P)


def _int32_slot(context, builder, value, ty):
    as_int = context.cast(builder, value, ty, types.int64)
    return _slot(builder, _I32, builder.trunc(as_int, _I32))


def _data(context, builder, ty, value):
    array = context.make_array(ty)(context, builder, value)
    return builder.bitcast(array.data, _I8P)


def _function(context, builder, address, ty, fnty):
    as_int = context.cast(builder, address, ty, types.int64)
    return builder.inttoptr(as_int, fnty.as_pointer())


@intrinsic
def _gemm(typingctx, fn, m, n, k, a, lda, b, ldb, c, ldc, add):
    """Row-major ``C = A B`` (``C += A B`` with ``add``) through the Fortran ?gemm_ at
    address ``fn``: A (m x k, row stride ``lda``), B (k x n, ``ldb``), C (m x n, ``ldc``);
    ``a``, ``b``, ``c`` are arrays whose first element is the matrix's first.  Computed
    as the column-major C^T = B^T A^T."""
    sig = types.void(fn, m, n, k, a, lda, b, ldb, c, ldc, add)

    def codegen(context, builder, signature, args):
        fn_, m_, n_, k_, a_, lda_, b_, ldb_, c_, ldc_, add_ = args
        ts = signature.args
        real_type = ts[4].dtype
        real = context.get_value_type(real_type)
        char = ir.IntType(8)
        normal = _slot(builder, char, ir.Constant(char, ord("N")))
        one = _slot(builder, real, ir.Constant(real, 1.0))
        flag = context.cast(builder, add_, ts[10], types.boolean)
        beta = builder.select(flag, ir.Constant(real, 1.0), ir.Constant(real, 0.0))
        fnty = ir.FunctionType(ir.VoidType(), [_I8P] * 13)
        call = _function(context, builder, fn_, ts[0], fnty)

        def int32(value, ty):
            return _int32_slot(context, builder, value, ty)

        builder.call(
            call,
            [
                normal,
                normal,
                int32(n_, ts[2]),
                int32(m_, ts[1]),
                int32(k_, ts[3]),
                one,
                _data(context, builder, ts[6], b_),
                int32(ldb_, ts[7]),
                _data(context, builder, ts[4], a_),
                int32(lda_, ts[5]),
                _slot(builder, real, beta),
                _data(context, builder, ts[8], c_),
                int32(ldc_, ts[9]),
            ],
        )
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _brgemm(typingctx, fn, m, n, k, a, lda, b, ldb, c, ldc, add):
    """The same product through PyTorch's float32 ``at::native::cpublas::brgemm`` at
    address ``fn`` (row-major already; ``is_vnni`` false)."""
    sig = types.void(fn, m, n, k, a, lda, b, ldb, c, ldc, add)

    def codegen(context, builder, signature, args):
        fn_, m_, n_, k_, a_, lda_, b_, ldb_, c_, ldc_, add_ = args
        ts = signature.args
        i64, i8 = ir.IntType(64), ir.IntType(8)
        fnty = ir.FunctionType(ir.VoidType(), [i64] * 6 + [i8, _I8P, _I8P, _I8P, i8])
        call = _function(context, builder, fn_, ts[0], fnty)

        def long(value, ty):
            return context.cast(builder, value, ty, types.int64)

        flag = builder.zext(context.cast(builder, add_, ts[10], types.boolean), i8)
        builder.call(
            call,
            [
                long(m_, ts[1]),
                long(n_, ts[2]),
                long(k_, ts[3]),
                long(lda_, ts[5]),
                long(ldb_, ts[7]),
                long(ldc_, ts[9]),
                flag,
                _data(context, builder, ts[4], a_),
                _data(context, builder, ts[6], b_),
                _data(context, builder, ts[8], c_),
                ir.Constant(i8, 0),
            ],
        )
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _transpose_call(typingctx, fn, m, n, src, ld_src, dst, ld_dst):
    """``dst[:n, :m] = src[:m, :n]^T`` through fbgemm's float32 transpose at address
    ``fn`` (row strides ``ld_src``, ``ld_dst``; arrays whose first element is the
    matrix's first)."""
    sig = types.void(fn, m, n, src, ld_src, dst, ld_dst)

    def codegen(context, builder, signature, args):
        fn_, m_, n_, src_, lds_, dst_, ldd_ = args
        ts = signature.args
        i64 = ir.IntType(64)
        fnty = ir.FunctionType(ir.VoidType(), [i64, i64, _I8P, i64, _I8P, i64])
        call = _function(context, builder, fn_, ts[0], fnty)

        def long(value, ty):
            return context.cast(builder, value, ty, types.int64)

        builder.call(
            call,
            [
                long(m_, ts[1]),
                long(n_, ts[2]),
                _data(context, builder, ts[3], src_),
                long(lds_, ts[4]),
                _data(context, builder, ts[5], dst_),
                long(ldd_, ts[6]),
            ],
        )
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _set_local_threads(typingctx, fn, count):
    """``MKL_Set_Num_Threads_Local(count)`` at address ``fn``: this thread's MKL thread
    count (0: the global one again); returns the previous setting."""

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(_I32, [_I32])
        call = _function(context, builder, args[0], signature.args[0], fnty)
        value = builder.trunc(context.cast(builder, args[1], signature.args[1], types.int64), _I32)
        return builder.sext(builder.call(call, [value]), ir.IntType(64))

    return types.int64(fn, count), codegen


@intrinsic
def matvec_columns(typingctx, w, v, o):
    """``o = w^T v`` for ``w`` (n, m) with contiguous rows (any row stride), ``v`` (n,) of
    any stride, ``o`` (m,) contiguous: every ``o[j]`` is the chain
    ``fma(w[n-1, j], v[n-1], ... fma(w[0, j], v[0], 0))``, so its value does not depend on
    m or on where j falls in the columns (a product cut into column blocks gives the
    same numbers).

    Why an intrinsic.  Written as Numba loops the sum over k stores and reloads ``o``
    every few rows (the compiler keeps no vector in a register across a loop); here the
    columns go eight vectors at a time (then four, then one), the accumulators stay in
    registers down all n rows, and each weight is loaded once: on a (1024, 128) block,
    the LSTM's reverse step at batch 1, 5.4 µs against 9.0 µs for ``_matvec_t``'s
    row-by-row form.  The last m mod (vector width) columns go four at a time in scalar
    fused multiply-adds, the same chain as in the vectors."""
    sig = types.void(w, v, o)

    def codegen(context, builder, signature, args):
        tw, tv, to = signature.args
        real = context.get_value_type(tw.dtype)
        size = context.get_abi_sizeof(real)
        lanes = 64 // size  # one 512-bit vector; LLVM splits it where the CPU is narrower
        vec = ir.VectorType(real, lanes)
        i64 = ir.IntType(64)
        arr_w = context.make_array(tw)(context, builder, args[0])
        arr_v = context.make_array(tv)(context, builder, args[1])
        arr_o = context.make_array(to)(context, builder, args[2])
        n = builder.extract_value(arr_w.shape, 0)
        m = builder.extract_value(arr_w.shape, 1)
        row = builder.extract_value(arr_w.strides, 0)  # bytes
        v_step = builder.extract_value(arr_v.strides, 0)
        w_base, v_base, o_base = (builder.bitcast(a.data, _I8P) for a in (arr_w, arr_v, arr_o))
        suffix = "f32" if size == 4 else "f64"
        fma_vec = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vec, [vec] * 3), f"llvm.fma.v{lanes}{suffix}"
        )
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(real, [real] * 3), f"llvm.fma.{suffix}"
        )
        broadcast = ir.Constant(ir.VectorType(_I32, lanes), [0] * lanes)
        col = cgutils.alloca_once_value(builder, ir.Constant(i64, 0))

        def at(base, offset, ty):
            return builder.bitcast(builder.gep(base, [offset]), ty.as_pointer())

        def const(value):
            return ir.Constant(i64, value)

        def columns(count, width, kind):
            """While ``count`` more columns remain: ``count`` at a time, in ``width``-wide
            pieces of type ``kind`` (a vector or the scalar), one accumulator each."""
            test, body, done = (builder.append_basic_block(k) for k in ("test", "body", "done"))
            builder.branch(test)
            builder.position_at_end(test)
            j = builder.load(col)
            builder.cbranch(builder.icmp_signed("<=", builder.add(j, const(count)), m), body, done)
            builder.position_at_end(body)
            j = builder.load(col)
            first = builder.mul(j, const(size))  # the block's first column, in bytes
            pieces = count // width
            zero = ir.Constant(kind, [0.0] * lanes) if width > 1 else ir.Constant(kind, 0.0)
            accs = [cgutils.alloca_once_value(builder, zero) for _ in range(pieces)]
            with cgutils.for_range(builder, n) as loop:
                k = loop.index
                vk = builder.load(at(v_base, builder.mul(k, v_step), real))
                if width > 1:
                    undef = ir.Constant(vec, None)
                    vk = builder.insert_element(undef, vk, ir.Constant(_I32, 0))
                    vk = builder.shuffle_vector(vk, undef, broadcast)
                start = builder.add(builder.mul(k, row), first)
                for u, acc in enumerate(accs):
                    piece = at(w_base, builder.add(start, const(u * width * size)), kind)
                    wk = builder.load(piece, align=size)
                    total = builder.call(fma_vec if width > 1 else fma, [wk, vk, builder.load(acc)])
                    builder.store(total, acc)
            for u, acc in enumerate(accs):
                out = at(o_base, builder.add(first, const(u * width * size)), kind)
                builder.store(builder.load(acc), out, align=size)
            builder.store(builder.add(j, const(count)), col)
            builder.branch(test)
            builder.position_at_end(done)

        for count in (8, 4, 1):
            columns(count * lanes, lanes, vec)
        columns(4, 1, real)
        columns(1, 1, real)
        return context.get_dummy_value()

    return sig, codegen


# -- the products of a loop's steps ------------------------------------------------------
#
# ``ctl`` (int64), made by :func:`make_ctl` for one compiled loop: how to call the product
# (kind, address), MKL's thread setter, whether the threads split the rows of a step (each
# runs its sequences through every step, meeting nobody) or each product's columns and
# then the rows of its pass (meeting after each), and the column chunks of each product.
KIND, FN, SET_LOCAL, SPLIT_ROWS, CHUNKS = 0, 1, 2, 3, 4
NO_BIAS = np.empty(0)  # ``bias`` for a product without one
MIN_ROWS = 8  # rows a thread takes at least before the rows are split (brgemm only)


def make_ctl(dtype, rows: int, parts: int, *widths: int) -> np.ndarray:
    """``ctl`` for a loop over ``rows`` sequences in ``parts`` blocks whose products are
    ``widths`` columns wide.  The rows are split only with brgemm, whose results do not
    depend on how a product is cut (MKL's do; its column chunks are then fixed by the
    widths and the pool, :func:`column_chunks`), and with :data:`MIN_ROWS` each."""
    lib = blas()
    kind, address = lib.product(dtype)
    split_rows = kind == BRGEMM and rows >= MIN_ROWS * parts
    chunks = [column_chunks(w) for w in widths]
    return np.array([kind, address, lib.set_local_threads, split_rows, *chunks], np.int64)


@_kernel
def _product(ctl, m, n, k, a, b, c, add):
    """Row-major ``c[:m, :n] (+)= a[:m, :k] b[:k, :n]`` (rows contiguous, any row strides)."""
    lda, ldb = a.strides[0] // a.itemsize, b.strides[0] // b.itemsize
    ldc = c.strides[0] // c.itemsize
    if ctl[KIND] == BRGEMM:
        _brgemm(ctl[FN], m, n, k, a, lda, b, ldb, c, ldc, add)
    else:
        _gemm(ctl[FN], m, n, k, a, lda, b, ldb, c, ldc, add)


@_kernel
def _fill_bias(c, bias, lo, hi):
    """Every row of ``c[:, lo:hi]`` = ``bias[lo:hi]``."""
    for i in range(c.shape[0]):
        row, add = c[i, lo:hi], bias[lo:hi]
        for j in range(hi - lo):
            row[j] = add[j]


@_kernel
def product_columns(ctl, chunk, block, parts, a, b, c, bias):
    """Block ``block`` of ``parts`` of ``c = a b (+ bias)``: its column chunks ``block``,
    ``block + parts``, ... of ``ctl[chunk]``.  ``a`` (m, k), ``b`` (k, n), ``c`` (m, n),
    row-major, rows contiguous; ``bias`` (n,) is added to every row (length 0: none)."""
    m, k = a.shape
    n = c.shape[1]
    chunks = ctl[chunk]
    for q in range(block, chunks, parts):
        lo, hi = q * n // chunks, (q + 1) * n // chunks
        if hi > lo:
            if bias.shape[0] > 0:
                _fill_bias(c, bias, lo, hi)
            _product(ctl, m, hi - lo, k, a, b[:, lo:], c[:, lo:], bias.shape[0] > 0)


@_kernel
def product_block(ctl, chunk, k, parts, lo, hi, a, b, c, bias):
    """Block ``k`` of ``parts`` of ``c = a b (+ bias)``: rows ``lo:hi`` where the loop
    splits rows (``ctl[SPLIT_ROWS]``), else its column chunks of ``ctl[chunk]``."""
    if ctl[SPLIT_ROWS]:
        product_rows(ctl, lo, hi, a, b, c, bias)
    else:
        product_columns(ctl, chunk, k, parts, a, b, c, bias)


@_kernel
def stages_of(ctl, stage, per_step, steps):
    """The stages that block's claim of ``stage`` covers: all ``per_step * steps`` of them
    where the rows are split (one claim per block: it runs its rows through every step),
    else that stage alone."""
    if ctl[SPLIT_ROWS]:
        return range(per_step * steps)
    return range(stage, stage + 1)


@_kernel
def claims(ctl, per_step, steps):
    """How many stages the threads meet at: one where the rows are split, else every
    stage of every step."""
    return 1 if ctl[SPLIT_ROWS] else per_step * steps


@_kernel
def product_rows(ctl, lo, hi, a, b, c, bias):
    """Rows ``lo:hi`` of ``c = a b (+ bias)``, arrays as :func:`product_columns`."""
    if hi > lo:
        c_rows = c[lo:hi]
        if bias.shape[0] > 0:
            _fill_bias(c_rows, bias, 0, c.shape[1])
        _product(ctl, hi - lo, c.shape[1], a.shape[1], a[lo:], b, c_rows, bias.shape[0] > 0)


# -- a whole product on the threads ---------------------------------------------------------
#
# The products over every step (the input projection, the weight gradients, the input's
# gradient) in tiles of about TILE_M x TILE_N, each tile's sum over k in blocks of TILE_K
# (so that its block of B stays in L2 cache), added in order.  The tiles' columns and k
# blocks are fixed by the shape (their rows follow the thread count, :func:`tile_grid`,
# which only cuts the output's rows), so the result does not depend on the threads.
# Tiles of 64 x 512 x 512 measured 142-205 GFLOP/s on 2 threads with cold caches at the
# benchmark's shapes, 64 x 256 x 256 146-204 (the four other shapes tried fell between).

TILE_M, TILE_N, TILE_K = 64, 512, 512
MATMUL_MIN_WORK = 1 << 20  # multiply-adds below which PyTorch's product is as quick


@_kernel
def _tile(ctl, a, b, c, bias, r0, r1, c0, c1):
    """``c[r0:r1, c0:c1] = a[r0:r1] b[:, c0:c1] (+ bias[c0:c1])``, the sum over k in blocks
    of TILE_K, in order."""
    kk = a.shape[1]
    c_tile = c[r0:r1, c0:]
    add = bias.shape[0] > 0
    if add:
        _fill_bias(c_tile[:, : c1 - c0], bias[c0:c1], 0, c1 - c0)
    for k0 in range(0, kk, TILE_K):
        k1 = min(kk, k0 + TILE_K)
        _product(ctl, r1 - r0, c1 - c0, k1 - k0, a[r0:, k0:], b[k0:, c0:], c_tile, add or k0 > 0)


@_kernel
def tile_grid(m, n, parts):
    """(rows, cols) of the tiles of an (m, n) product on ``parts`` threads: about TILE_M x
    TILE_N each, with more rows of tiles where that gives every thread as many (129 rows
    are 3 tiles of 43, which 2 threads share 1 : 2, so they become 4 of 32-33).  Rows of
    tiles only cut the output's rows, so the numbers do not depend on ``parts``."""
    rows, cols = (m + TILE_M - 1) // TILE_M, (n + TILE_N - 1) // TILE_N
    more = rows
    while (more * cols) % parts and more < min(m, 2 * rows):
        more += 1
    return (more if (more * cols) % parts == 0 else rows), cols


@_kernel
def _tiles(ctl, a, b, c, bias, p, parts):
    """Thread ``p``'s share of the tiles of ``c = a b (+ bias)``."""
    m, n = c.shape
    rows, cols = tile_grid(m, n, parts)
    tiles = rows * cols
    old = _set_local_threads(ctl[SET_LOCAL], 1)
    for q in range(p * tiles // parts, (p + 1) * tiles // parts):
        i, j = q // cols, q % cols
        _tile(ctl, a, b, c, bias, i * m // rows, (i + 1) * m // rows, j * n // cols,
              (j + 1) * n // cols)  # fmt: skip
    _set_local_threads(ctl[SET_LOCAL], old)


@_kernel
def _matmul_one(ctl, a, b, c, bias):
    _tiles(ctl, a, b, c, bias, 0, 1)


@_kernel_par
def _matmul_threads(ctl, a, b, c, bias, parts):
    for p in prange(parts):
        _tiles(ctl, a, b, c, bias, p, parts)


def _threads_for(a: torch.Tensor, b: torch.Tensor, work: int) -> int | None:
    """The threads :func:`matmul` computes a product of 2-D ``a`` and ``b`` on (``work``
    multiply-adds), or None where it leaves the product to PyTorch: no brgemm or usable
    threads, autograd, not float32 on the CPU, not 2-D, or too small to pay."""
    lib = blas()
    parts = _matmul_parts()
    if (
        lib is None
        or not lib.brgemm
        or parts is None
        or torch.is_grad_enabled()
        and (a.requires_grad or b.requires_grad)
        or a.dtype != torch.float32
        or b.dtype != torch.float32
        or a.device.type != "cpu"
        or b.device.type != "cpu"
        or a.dim() != 2
        or b.dim() != 2
        or work < MATMUL_MIN_WORK
    ):
        return None
    return parts


def _tiled(a: np.ndarray, b: np.ndarray, bias: np.ndarray, parts: int) -> torch.Tensor:
    """``a @ b (+ bias)`` in brgemm tiles on ``parts`` threads, into a pooled tensor."""
    c = pooled((a.shape[0], b.shape[1]), torch.float32)
    args = (make_ctl(np.float32, 0, 1), a, b, c.numpy(), bias)
    if parts > 1:
        _matmul_threads(*args, parts)
    else:
        _matmul_one(*args)
    return c


def matmul(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b (+ bias)`` for 2-D float32 CPU tensors, through oneDNN's brgemm in tiles on
    Numba's threads where :func:`blas` found it and the threads are usable; else
    PyTorch's own ``a @ b``.  No autograd: for the hand-derived passes, which run with
    gradients off.  An operand whose rows are not contiguous (a transposed view) is
    copied first.  ``matmul.outer_sum_prev`` and ``matmul.outer_and_sums`` are
    :func:`outer_sum_prev` and :func:`outer_and_sums`, which the cells' helpers of those
    names (:mod:`rnnlab.cells.elman`) take where the product they are given has them."""
    parts = _threads_for(a, b, a.shape[0] * a.shape[1] * b.shape[-1])
    if parts is None:
        b = b.contiguous()  # a transposed weight: PyTorch's product is quicker with a copy
        return a @ b if bias is None else torch.addmm(bias, a, b)
    if bias is not None:  # (n,), or a scalar added to every column
        bias = bias.detach().to(torch.float32).expand(b.shape[1]).contiguous().numpy()
    return _tiled(_rows(a, 0), _rows(b, 1), NO_BIAS if bias is None else bias, parts)


def outer_sum_prev(h0: torch.Tensor, hs: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``sum_t h_{t-1}^T d_t``, (H, G), with h_{-1} = ``h0`` (N, H); ``hs`` (T, N, H), ``d``
    (T, N, G) (rows contiguous; a column slice of a larger tensor is fine): the recurrent
    weight gradient's sum over time, as :func:`rnnlab.cells.elman.outer_sum_prev`, in one
    product over all T N rows: h0 and hs[:-1] are transposed side by side into one
    workspace, which the transposed operand needed anyway.  Where :func:`matmul` would
    leave the product to PyTorch, so does this (two products, the cells' way)."""
    T, N, H = hs.shape
    d2 = d.reshape(T * N, d.shape[2])
    parts = _threads_for(hs[0], d2, T * N * H * d2.shape[1])
    if parts is None or h0.dtype != torch.float32 or T == 1:
        from rnnlab.cells.elman import outer_sum_prev as two_products

        return two_products(h0, hs, d)
    prev = _workspace(0, (H, T * N), np.float32)
    transpose_into(prev, h0.detach().contiguous().numpy(), hs[:-1].detach().reshape(-1, H).numpy())
    return _tiled(prev, _rows(d2, 1), NO_BIAS, parts)


def outer_and_sums(x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x^T d, the column sums of d)`` for ``x`` (M, I) and ``d`` (M, G): an input weight's
    gradient and its bias's, in one product.  x is transposed into a workspace with a row
    of ones under it, which makes the product's last row d's column sums: no pass over d
    of its own.  Where :func:`matmul` would leave the product to PyTorch, so does this."""
    M, I = x.shape
    parts = _threads_for(x, d, M * (I + 1) * d.shape[1])
    if parts is None:
        return matmul(x.t(), d), d.sum(0)
    ones_under = _workspace(2, (I + 1, M), np.float32)
    transpose_into(ones_under[:I], x.detach().contiguous().numpy())
    ones_under[I] = 1.0
    both = _tiled(ones_under, _rows(d, 1), NO_BIAS, parts)
    return both[:I], both[I]


matmul.outer_sum_prev = outer_sum_prev
matmul.outer_and_sums = outer_and_sums


def _rows(tensor: torch.Tensor, slot: int = 0) -> np.ndarray:
    """A numpy view of 2-D ``tensor`` with contiguous rows; a transposed view (columns
    contiguous) is copied into rows (:func:`transpose_into`) in workspace ``slot``
    (:func:`_workspace`: valid until the next call with that slot on this thread),
    anything else by PyTorch."""
    tensor = tensor.detach()
    rows, cols = tensor.shape
    if (cols <= 1 or tensor.stride(1) == 1) and tensor.stride(0) >= cols:
        return tensor.numpy()  # rows contiguous, and a row stride the products accept
    if tensor.stride(0) == 1 and rows > 1:  # the transpose of a (cols, rows) row-major array
        source = tensor.t().numpy()
        return transpose_into(_workspace(slot, tensor.shape, source.dtype), source)
    return tensor.contiguous().numpy()


def transpose_into(out: np.ndarray, *sources: np.ndarray) -> np.ndarray:
    """``out = [s_1; s_2; ...]^T``: each source (rows contiguous) transposed into the next
    columns of ``out``; returns ``out``.  fbgemm's transpose (float32, where
    :func:`blas` found it) or a blocked loop, the rows shared out over Numba's threads."""
    lib = blas()
    fn = lib.transpose if lib is not None and out.dtype == np.float32 else 0
    threads = _matmul_parts() or 1
    col = 0
    for source in sources:
        parts = threads if source.size >= TRANSPOSE_THREADS_FROM else 1
        if source.shape[0] > 0:
            (_transposed_threads if parts > 1 else _transposed_one)(fn, source, out, col, parts)
        col += source.shape[0]
    return out


def transposed(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``tensor.t()`` (2-D, CPU, rows contiguous): the step weights
    ``W^T`` of the compiled loops (PyTorch's strided copy of a 512 x 128 weight took 44 µs
    here, fbgemm's transpose 7)."""
    source = _rows(tensor.detach())
    out = torch.empty(tensor.shape[1], tensor.shape[0], dtype=tensor.dtype)
    transpose_into(out.numpy(), source)
    return out


TRANSPOSE_THREADS_FROM = 1 << 18  # elements; smaller transposes run on the calling thread
BLOCK = 32  # the square blocks a transposed copy moves (two 4 KB tiles of float32 in L1)


@_kernel
def _transpose_part(fn, source, out, col, p, parts):
    """Thread ``p``'s share of ``out[:, col:col + rows] = source^T``: its block of the
    rows of ``source``, through fbgemm's transpose at address ``fn``, or (``fn`` 0) block
    by block, so reads and writes stay in cache lines already loaded (PyTorch's strided
    copy ran 2.7 GB/s here; fbgemm's transpose 46-55 GB/s, this loop 10 on one thread)."""
    rows, cols = source.shape
    lo, hi = p * rows // parts, (p + 1) * rows // parts
    if hi <= lo:
        return
    if fn != 0:
        ld_source = source.strides[0] // source.itemsize
        ld_out = out.strides[0] // out.itemsize
        _transpose_call(fn, hi - lo, cols, source[lo:], ld_source, out[:, col + lo :], ld_out)
        return
    for c0 in range(0, cols, BLOCK):
        c1 = min(cols, c0 + BLOCK)
        for r0 in range(lo, hi, BLOCK):
            r1 = min(hi, r0 + BLOCK)
            for c in range(c0, c1):
                dst = out[c, col + r0 : col + r1]
                for r in range(r1 - r0):
                    dst[r] = source[r0 + r, c]


@_kernel
def _transposed_one(fn, source, out, col, parts):
    _transpose_part(fn, source, out, col, 0, 1)


@_kernel_par
def _transposed_threads(fn, source, out, col, parts):
    for p in prange(parts):
        _transpose_part(fn, source, out, col, p, parts)


def _matmul_parts() -> int | None:
    """Threads for :func:`matmul`: PyTorch's count, as far as Numba has threads that may
    run here; None where PyTorch has more than one but Numba's cannot run (a forked
    process), so that PyTorch's own product keeps them."""
    from rnnlab.backends.numba_generate import _POOL_PID, threads_usable

    threads = torch.get_num_threads()
    if threads == 1:
        return 1
    if not threads_usable():
        return None
    _POOL_PID[0] = _POOL_PID[0] or os.getpid()
    return max(1, min(threads, numba_threads()))


__all__ = [
    "BRGEMM",
    "FORTRAN",
    "NO_BIAS",
    "Blas",
    "blas",
    "column_chunks",
    "make_ctl",
    "matmul",
    "outer_and_sums",
    "outer_sum_prev",
    "claims",
    "product_block",
    "product_columns",
    "product_rows",
    "stages_of",
    "transpose_into",
    "transposed",
    "workspace",
]

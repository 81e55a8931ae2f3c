r"""Matrix products inside compiled loops: the BLAS that PyTorch ships, called from Numba.

Why.  The compiled training paths (:mod:`rnnlab.backends.numba_lstm`, ``numba_gru``,
``numba_elman``, ``numba_pascanu``) spend each step in one matmul and one pass over the
step's element-wise work.  Called from Python, the matmul is PyTorch's ``torch.mm`` on
its OpenMP threads and the pass a Numba parallel region on Numba's own threads: two
thread pools taking turns 2 x T times per layer, each start costing a few microseconds
and each pool's spinning threads slowing the other's.  Here the whole time loop is one
Numba parallel region, and each thread calls the BLAS itself, single-threaded, on its own
columns of the product.  Measured on this project's 2-core machine (one process,
interleaved medians; µs per product, both halves at once against ``torch.mm`` on 2
threads): 50 x 128 by 128 x 512: 48.7 against 60.0; 50 x 512 by 512 x 128: 38.8 against
47.5; 64 x 512 by 512 x 2048: 872 against 1,089; 16 x 256 by 256 x 1024: 69 against 95
(``docs/performance.md``, "One parallel region per sequence").

Which BLAS.  PyTorch's x86-64 wheels link Intel's MKL into ``libtorch_cpu`` and export its
Fortran ``sgemm_`` / ``dgemm_`` and ``MKL_Set_Num_Threads_Local`` (which makes MKL run
on the calling thread alone, for that thread only).  :func:`blas` finds the three by
name with ``ctypes``; where any is missing (PyTorch built with OpenBLAS or Accelerate, as
on ARM; an unusual build) it returns None and the compiled paths keep PyTorch's matmul
between compiled passes, as before.  Nothing is compiled on the user's machine and
nothing is installed besides PyTorch.  ``RNNLAB_BLAS=torch`` turns this off.

The calls.  :func:`_gemm` is an LLVM intrinsic that calls a function at an address given
at run time (so the compiled code, with no address baked in, can be cached on disk);
:func:`_set_local_threads` likewise.  The products are row-major views
(:func:`gemm_columns`): C[:, lo:hi] = A B[:, lo:hi], computed as the column-major product
C^T = B^T A^T that Fortran's gemm takes.

Same numbers on any number of threads.  A product's columns are cut into chunks fixed by
the product's width and the process's thread pool size (:func:`column_chunks`), never by
how many threads a call uses, and each chunk is one gemm call with the same arguments on
whichever thread runs it; MKL on one thread is deterministic, so the results do not depend
on the thread count (the tests compare 1, 2 and 3 blocks bit for bit).
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
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from rnnlab.backends.numba_math import _kernel, numba_threads

_TORCH_LIBRARY = {  # where PyTorch keeps its CPU library, by platform
    "linux": "libtorch_cpu.so",
    "darwin": "libtorch_cpu.dylib",
    "win32": "torch_cpu.dll",
}


@dataclass(frozen=True)
class Blas:
    """Addresses of the BLAS functions the compiled loops call (integers, for
    :func:`_gemm` and :func:`_set_local_threads`)."""

    sgemm: int
    dgemm: int
    set_local_threads: int

    def gemm(self, dtype) -> int:
        """The gemm for arrays of ``dtype`` (float32 or float64)."""
        return self.sgemm if np.dtype(dtype) == np.float32 else self.dgemm


@functools.lru_cache(maxsize=1)
def blas() -> Blas | None:
    """PyTorch's own MKL, when its library exports what the loops call; else None (see the
    module docstring).  ``RNNLAB_BLAS=torch`` gives None."""
    if os.environ.get("RNNLAB_BLAS", "mkl") == "torch":
        return None
    if not torch.backends.mkl.is_available():
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
    return Blas(*(ctypes.cast(f, ctypes.c_void_p).value for f in found))


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
def _gemm(typingctx, fn, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
    """Row-major ``C = A op(B) + beta C`` through the Fortran gemm at address ``fn``:
    A (m x k, row stride ``lda``), op(B) = B (k x n, stride ``ldb``) or, with ``trans_b``,
    B^T for B (n x k); C (m x n, stride ``ldc``).  ``a``, ``b``, ``c`` are arrays whose
    first element is the matrix's first; ``beta`` is 0 or 1."""
    sig = types.void(fn, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, signature, args):
        fn_, tb, m_, n_, k_, a_, lda_, b_, ldb_, beta_, c_, ldc_ = args
        ts = signature.args
        real_type = ts[5].dtype
        real = context.get_value_type(real_type)
        char = ir.IntType(8)
        normal = _slot(builder, char, ir.Constant(char, ord("N")))
        transposed = _slot(builder, char, ir.Constant(char, ord("T")))
        flag = context.cast(builder, tb, ts[1], types.boolean)
        op_b = builder.select(flag, transposed, normal)
        one = _slot(builder, real, ir.Constant(real, 1.0))
        beta_slot = _slot(builder, real, context.cast(builder, beta_, ts[9], real_type))
        fnty = ir.FunctionType(ir.VoidType(), [_I8P] * 13)
        call = _function(context, builder, fn_, ts[0], fnty)
        # column-major C^T (n x m) = op(B)^T (n x k) A^T (k x m)
        builder.call(
            call,
            [
                op_b,
                normal,
                _int32_slot(context, builder, n_, ts[3]),
                _int32_slot(context, builder, m_, ts[2]),
                _int32_slot(context, builder, k_, ts[4]),
                one,
                _data(context, builder, ts[7], b_),
                _int32_slot(context, builder, ldb_, ts[8]),
                _data(context, builder, ts[5], a_),
                _int32_slot(context, builder, lda_, ts[6]),
                beta_slot,
                _data(context, builder, ts[10], c_),
                _int32_slot(context, builder, ldc_, ts[11]),
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


# -- products cut into column chunks --------------------------------------------------------

NO_BIAS = np.empty(0)  # gemm_columns' ``bias`` for a product without one


@_kernel
def gemm_columns(gemm, block, parts, chunks, a, b, c, bias):
    """Block ``block`` of ``parts`` of ``c = a b (+ bias)``: the column chunks ``block``,
    ``block + parts``, ... of ``chunks`` (:func:`column_chunks`).  Row-major 2-D arrays,
    each row contiguous: ``a`` (m, k), ``b`` (k, n), ``c`` (m, n); ``bias`` (n,) is added
    to every row (length 0: none).  ``gemm``: :meth:`Blas.gemm`."""
    m, k = a.shape
    n = c.shape[1]
    with_bias = bias.shape[0] > 0
    for q in range(block, chunks, parts):
        lo, hi = q * n // chunks, (q + 1) * n // chunks
        if hi == lo:
            continue
        c_q = c[:, lo:]
        if with_bias:  # C = bias, then C = A B + C
            for i in range(m):
                row, add = c_q[i, : hi - lo], bias[lo:hi]
                for j in range(hi - lo):
                    row[j] = add[j]
        _gemm(gemm, False, m, hi - lo, k, a, a.strides[0] // a.itemsize, b[:, lo:],
              b.strides[0] // b.itemsize, 1.0 if with_bias else 0.0, c_q,
              c.strides[0] // c.itemsize)  # fmt: skip


def gemm_ready(array) -> bool:
    """Whether :func:`gemm_columns` can take ``array`` as it is: 2-D with rows contiguous."""
    return array.ndim == 2 and (array.shape[1] <= 1 or array.strides[1] == array.itemsize)


__all__ = ["NO_BIAS", "Blas", "blas", "column_chunks", "gemm_columns", "gemm_ready"]

"""Numba helpers shared by the compiled loops: the jit wrapper and the gate functions.

:func:`_jit` compiles with the on-disk cache where one can be written; :func:`_tanh` and
:func:`_sigmoid` pick, while compiling, libm's functions for float64 arrays and the
vectorisable rational tanh (:func:`_tanh_rational`, error bound below) for float32 ones.
Used by :mod:`rnnlab.backends.numba_generate` and the compiled training steps
(:mod:`rnnlab.backends.numba_lstm`, ``numba_gru``, ``numba_elman``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
from pathlib import Path

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload


def _jit(fn, refcounts: bool = True, **extra):
    """``numba.njit`` with the on-disk cache when a writable cache directory exists.

    Numba looks for a cache directory when the function is decorated (next to this file,
    else the user's cache directory, or ``NUMBA_CACHE_DIR``) and raises if none is
    writable, as in a read-only install with a read-only home: compile in memory then.
    ``RNNLAB_NUMBA_CACHE=0`` turns the cache off.

    ``refcounts=False`` compiles without Numba's reference counting of arrays (its
    ``_nrt`` option), for functions that only take views of arrays their caller owns and
    allocate none.  Every view, and every array passed to another compiled function, then
    costs no atomic increment and decrement of the owner's count: the LSTM's training
    step over 50 rows of 128 units went from 81 to 32 µs forward and 55 to 24 µs backward
    (one thread).  Such a function cannot allocate arrays (Numba refuses to compile it).
    """
    options = dict(error_model="numpy", **extra)  # x / 0 -> inf, as in torch (q may be 0)
    if not refcounts:
        options["_nrt"] = False
    if os.environ.get("RNNLAB_NUMBA_CACHE", "1") != "0":
        try:
            return _stamp_with_sources(numba.njit(cache=True, **options)(fn))
        except Exception:  # no writable cache locator: compile in memory
            pass
    return numba.njit(**options)(fn)


STAMPED_PACKAGES = ("backends", "cells")  # where compiled code and its constants come from


@functools.cache
def sources_digest() -> str:
    """A digest of every source file in :data:`STAMPED_PACKAGES` of rnnlab."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for package in STAMPED_PACKAGES:
        for path in sorted((root / package).glob("*.py")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _stamp_with_sources(dispatcher):
    """Key ``dispatcher``'s on-disk cache on :func:`sources_digest` too.

    Numba checks a cached function against its own file's time and size only, yet the
    machine code holds the functions it called from other files, inlined, and the
    constants it read from them (Numba issue #1833): after an edit of ``numba_math.py``
    alone, the LSTM's kernels in ``numba_lstm.py`` would load as they were.  With the
    digest in the stamp the cache index is checked against, any edit in those packages
    makes every kernel compile again.  Where Numba's cache has another shape (a future
    version), its own check stays."""
    cache_file = getattr(getattr(dispatcher, "_cache", None), "_cache_file", None)
    stamp = getattr(cache_file, "_source_stamp", None)
    if stamp is not None:
        cache_file._source_stamp = (stamp, sources_digest())
    return dispatcher


def is_cached(dispatcher) -> bool:
    """Whether a function from :func:`_jit` keeps its compiled code on disk (False where
    no cache directory was writable, or with ``RNNLAB_NUMBA_CACHE=0``): without it every
    process compiles the function again."""
    from numba.core.caching import NullCache

    return not isinstance(getattr(dispatcher, "_cache", None), NullCache)


# Gate nonlinearities.  Float64 models use libm's ``exp`` and ``tanh`` (exact to rounding,
# so their samples equal the plain path's).  Float32 models use a rational tanh evaluated in
# float64 (Eigen's float coefficients: odd degree 13 over even degree 6, input clamped to
# +-9): no calls and no branches, so LLVM vectorises a whole gate loop, 8x faster than the
# libm calls here.  Its absolute error is at most 2.57e-8 for every float32 input, under
# half an ulp of float32 at 1 (6e-8), and sigmoid(x) = 1/2 + tanh(x/2)/2 is within 1.29e-8
# (measured against numpy's float64 functions on all 2.1e9 non-negative float32 values up
# to +inf; both are odd about 0 and 1/2, and tanh(9) = 1 - 3e-8; the worst case is near
# x = 0.317).  NaN stays NaN.
_TANH_CLAMP = 9.0
_P1, _P3, _P5, _P7 = (
    4.89352455891786e-03,
    6.37261928875436e-04,
    1.48572235717979e-05,
    5.12229709037114e-08,
)
_P9, _P11, _P13 = -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16
_Q0, _Q2, _Q4, _Q6 = (
    4.89352518554385e-03,
    2.26843463243900e-03,
    1.18534705686654e-04,
    1.19825839466702e-06,
)


@_jit
def _tanh_rational(x):
    """tanh(x) to within 2.57e-8 for float32 inputs, in float64 arithmetic, branch-free."""
    x = min(max(float(x), -_TANH_CLAMP), _TANH_CLAMP)
    x2 = x * x
    p = _P11 + x2 * _P13
    p = _P1 + x2 * (_P3 + x2 * (_P5 + x2 * (_P7 + x2 * (_P9 + x2 * p))))
    q = _Q0 + x2 * (_Q2 + x2 * (_Q4 + x2 * _Q6))
    return x * p / q


_kernel = functools.partial(_jit, refcounts=False)  # views only: see _jit


def _tanh(a, like):
    """tanh for a model whose arrays look like ``like``: libm for float64 models, the
    rational tanh for float32 ones (chosen while compiling, by ``like``'s dtype)."""
    if like.dtype == np.float32:
        return _tanh_rational(a)
    return math.tanh(a)


def _sigmoid(a, like):
    """The logistic function, chosen like :func:`_tanh`."""
    if like.dtype == np.float32:
        return 0.5 + 0.5 * _tanh_rational(0.5 * float(a))
    return 1.0 / (1.0 + math.exp(-a))


@overload(_tanh, jit_options={"error_model": "numpy"})
def _tanh_for(a, like):
    if like.dtype == types.float32:
        return lambda a, like: _tanh_rational(a)
    return lambda a, like: math.tanh(a)


@overload(_sigmoid, jit_options={"error_model": "numpy"})
def _sigmoid_for(a, like):
    if like.dtype == types.float32:
        return lambda a, like: 0.5 + 0.5 * _tanh_rational(0.5 * float(a))
    return lambda a, like: 1.0 / (1.0 + math.exp(-a))


# The same rational function in float32 arithmetic, for the training kernels
# (:mod:`rnnlab.backends.numba_lstm`): 16 lanes per vector instead of 8, 2.6x faster
# here, at a larger error: at most 4.1e-7 for tanh and 2.3e-7 for sigmoid on every
# float32 input (``scripts/tanh_error_sweep.py
# --float32``), within the float32 tolerances of the tests, where the float64 version
# stays below float32 rounding.  Generation keeps the float64 version: its samples are to
# match the plain path's.
_F32 = np.float32
_P1_32, _P3_32, _P5_32, _P7_32 = _F32(_P1), _F32(_P3), _F32(_P5), _F32(_P7)
_P9_32, _P11_32, _P13_32 = _F32(_P9), _F32(_P11), _F32(_P13)
_Q0_32, _Q2_32, _Q4_32, _Q6_32 = _F32(_Q0), _F32(_Q2), _F32(_Q4), _F32(_Q6)
_CLAMP_32 = _F32(_TANH_CLAMP)
_HALF_32 = _F32(0.5)


@_jit
def _tanh_rational32(x):
    """tanh(x) for a float32 x, in float32 arithmetic, branch-free: within 4.1e-7."""
    x = min(max(x, -_CLAMP_32), _CLAMP_32)
    x2 = x * x
    p = _P11_32 + x2 * _P13_32
    p = _P1_32 + x2 * (_P3_32 + x2 * (_P5_32 + x2 * (_P7_32 + x2 * (_P9_32 + x2 * p))))
    q = _Q0_32 + x2 * (_Q2_32 + x2 * (_Q4_32 + x2 * _Q6_32))
    return x * p / q


def _tanh_fast(a, like):
    """tanh for the training kernels: libm for float64 arrays, :func:`_tanh_rational32`
    for float32 ones (chosen while compiling, by ``like``'s dtype)."""
    if like.dtype == np.float32:
        return _tanh_rational32(np.float32(a))
    return math.tanh(a)


def _sigmoid_fast(a, like):
    """The logistic function, chosen like :func:`_tanh_fast`."""
    if like.dtype == np.float32:
        return _HALF_32 + _HALF_32 * _tanh_rational32(_HALF_32 * np.float32(a))
    return 1.0 / (1.0 + math.exp(-a))


@overload(_tanh_fast, jit_options={"error_model": "numpy"})
def _tanh_fast_for(a, like):
    if like.dtype == types.float32:
        return lambda a, like: _tanh_rational32(np.float32(a))
    return lambda a, like: math.tanh(a)


@overload(_sigmoid_fast, jit_options={"error_model": "numpy"})
def _sigmoid_fast_for(a, like):
    if like.dtype == types.float32:
        return lambda a, like: _HALF_32 + _HALF_32 * _tanh_rational32(_HALF_32 * np.float32(a))
    return lambda a, like: 1.0 / (1.0 + math.exp(-a))


# -- threads that meet inside one parallel region ----------------------------------------
#
# A recurrence at batch 1 splits each step's units over the threads, and every step needs
# every unit of the step before: one barrier per step.  A parallel region per step costs
# 4-11 µs here (OpenMP), as much as the step; a barrier of two threads spinning on a shared
# counter costs about 0.1 µs.  So such a loop runs in one region, and its threads meet
# through the atomics below (LLVM's own, so the compiler neither caches the loads nor moves
# the writes of the step's values past them: ``_store_done`` releases them, ``_load``
# acquires them).
#
# Blocks and stages (:func:`_claim`).  The work is ``parts`` blocks (the units of one
# thread) times a sequence of stages (a step each), and stage s of any block may start only
# once every block has finished stage s - 1.  ``sync`` (2, parts) int64 holds, for each
# block, the last stage claimed and the last stage done, both -1 at first.  A thread runs
# its own block of each stage; a block nobody claimed for :data:`PATIENCE` spins, it runs
# itself.  So no thread ever waits on a block that no running thread has claimed: a thread
# pool that runs the region's iterations one after another (fewer threads than asked for)
# is slow, not dead-locked.  Every block is computed by the same operations whichever
# thread runs it, so the results do not depend on the threads.

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
PATIENCE = 4096  # spins (with a pause each, tens of ns) before taking another's block


def _item_pointer(context, builder, sig, args):
    aryty, idxty = sig.args[0], sig.args[1]
    array = context.make_array(aryty)(context, builder, args[0])
    index = context.cast(builder, args[1], idxty, types.intp)
    return cgutils.get_item_pointer(context, builder, aryty, array, [index], wraparound=False)


@intrinsic
def _load(typingctx, array, index):
    """``array[index]``, an atomic load with acquire ordering (int64 arrays)."""

    def codegen(context, builder, sig, args):
        return builder.load_atomic(_item_pointer(context, builder, sig, args), "acquire", 8)

    return array.dtype(array, index), codegen


@intrinsic
def _store_done(typingctx, array, index, value):
    """``array[index] = value``, an atomic store with release ordering."""

    def codegen(context, builder, sig, args):
        value = context.cast(builder, args[2], sig.args[2], sig.args[0].dtype)
        builder.store_atomic(value, _item_pointer(context, builder, sig, args), "release", 8)
        return context.get_dummy_value()

    return types.void(array, index, value), codegen


@intrinsic
def _compare_and_swap(typingctx, array, index, expected, new):
    """Set ``array[index]`` to ``new`` if it holds ``expected``, atomically; True if it
    did."""

    def codegen(context, builder, sig, args):
        dtype = sig.args[0].dtype
        old = context.cast(builder, args[2], sig.args[2], dtype)
        new = context.cast(builder, args[3], sig.args[3], dtype)
        pointer = _item_pointer(context, builder, sig, args)
        result = builder.cmpxchg(pointer, old, new, "acq_rel", "acquire")
        return builder.extract_value(result, 1)

    return types.boolean(array, index, expected, new), codegen


@intrinsic
def _spin_pause(typingctx):
    """The x86 ``pause`` hint inside a spin loop (nothing elsewhere)."""

    def codegen(context, builder, sig, args):
        if _X86:
            pause = ir.FunctionType(ir.VoidType(), [])
            pause_fn = cgutils.get_or_insert_function(builder.module, pause, "llvm.x86.sse2.pause")
            builder.call(pause_fn, [])
        return context.get_dummy_value()

    return types.void(), codegen


@_kernel
def _claim(sync, k, stage, own):
    """Wait until block ``k`` of ``stage`` is done (False), or claim it (True: the caller
    runs it, then calls :func:`_done`).  ``own``: the caller's own block, claimed at once;
    another thread's is claimed only if nobody has for :data:`PATIENCE` spins."""
    claimed, done = sync[0], sync[1]
    spins = 0
    while _load(done, k) < stage:
        if _load(claimed, k) < stage and (own or spins > PATIENCE):
            if _compare_and_swap(claimed, k, stage - 1, stage):
                return True
        else:
            _spin_pause()
            spins += 1
    return False


@_kernel
def _done(sync, k, stage):
    """Block ``k`` of ``stage`` is finished: its values are visible to every thread that
    sees it done."""
    _store_done(sync[1], k, stage)


def new_sync(parts: int) -> np.ndarray:
    """A fresh ``sync`` array for :func:`_claim`: no stage claimed or done."""
    return np.full((2, parts), -1, dtype=np.int64)


def numba_threads() -> int:
    """``numba.get_num_threads()``, leaving PyTorch's OpenMP settings as they were.

    The first call starts Numba's threading layer.  Where that is OpenMP, Numba's
    library sets two process-wide OpenMP values that PyTorch's own libgomp (the one found
    first) then obeys: the thread count (``NUMBA_NUM_THREADS``: a ``torch.set_num_threads(1)``
    made earlier was silently undone) and nested parallelism (switched on: PyTorch's
    parallel operations then nest the BLAS's teams inside their own, and a Python-loop
    LSTM training step ran 0.13 s before and 2.4 s after one sampled text).  Both are put
    back, once: Numba sets them only when it starts.  Every use of Numba's threads in
    rnnlab goes through here first."""
    if _STARTED:
        return numba.get_num_threads()
    import torch

    before = torch.get_num_threads()
    omp = _omp_global()
    nested = None if omp is None else int(omp.omp_get_nested())
    threads = numba.get_num_threads()
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)
    if omp is not None and int(omp.omp_get_nested()) != nested:
        omp.omp_set_nested(nested)
    _STARTED.append(True)
    return threads


_STARTED: list = []  # non-empty once numba_threads() has started Numba's threads


@functools.lru_cache(maxsize=1)
def _omp_global():
    """The OpenMP runtime that a symbol lookup in the process's global scope finds (the
    one Numba's OpenMP layer binds its settings to), or None: no OpenMP there, or a
    platform without that lookup (``ctypes.CDLL(None)`` fails on Windows)."""
    try:
        lib = ctypes.CDLL(None)
        lib.omp_get_nested  # noqa: B018 (raises AttributeError without OpenMP)
    except Exception:
        return None
    return lib

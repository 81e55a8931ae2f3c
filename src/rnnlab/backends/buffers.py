"""Memory the compiled training paths reuse from call to call, instead of fresh pages.

A training step of a recurrent layer allocates the same large arrays every time: the
input projection (T, N, G), the states of every step, the reverse loop's gradients.
Fresh memory of that size comes from the kernel page by page: the first write to each
4 KB page faults, and the kernel clears it, so a buffer costs about a microsecond per
page before it holds anything.  On this project's 2-core machine a (6400 x 512) by
(512 x 1536) product took 59-60 ms into a fresh output and 48-50 ms into one written
before, and the layer-norm LSTM's step at shape 1 took 1,241 faults and 4.2 ms of system
time (``docs/performance.md``).  Two ways round it here:

* :func:`workspace`: per-thread scratch arrays, one per slot, for buffers that live within
  one call (the reverse loops' gradients, a transposed operand);
* :func:`pooled`: tensors over arrays kept in a pool, for buffers that outlive the call
  (saved for the backward pass, or returned).  An array is handed out again only once
  nothing refers to it any more: every tensor made from it holds a reference to it, so
  the pool sees that through the array's reference count.  The pool keeps at most
  :data:`POOL_LIMIT` bytes of arrays nobody uses.

Both hold on to their memory for the life of the process (or the thread), as a caching
allocator does; :func:`release` gives the pool's unused arrays back.
"""

from __future__ import annotations

import math
import sys
import threading

import numpy as np
import torch

POOL_MIN_BYTES = 1 << 20  # smaller buffers fault in quickly: plain torch.empty
POOL_LIMIT = 1 << 30  # bytes of unused arrays the pool keeps at most
_ALIGN = 64  # bytes: a cache line, and an AVX-512 vector

_LOCAL = threading.local()
_POOL: dict[tuple[int, np.dtype], list[np.ndarray]] = {}
_POOL_LOCK = threading.Lock()
_ZEROS: dict[np.dtype, np.ndarray] = {}


def _workspace(slot: int, shape, dtype) -> np.ndarray:
    """A scratch array of ``shape`` kept per thread and slot, reused while it is big
    enough (valid until the next call with that slot on this thread)."""
    spaces = _LOCAL.__dict__.setdefault("spaces", {})
    size = math.prod(shape)
    key = (slot, np.dtype(dtype))
    space = spaces.get(key)
    if space is None or space.size < size:
        space = spaces[key] = _aligned(size, dtype)
    return space[:size].reshape(shape)


def workspace(slot: int, like: torch.Tensor, *shape: int) -> torch.Tensor:
    """A tensor of ``shape`` and ``like``'s dtype over this thread's workspace ``slot``,
    for a buffer that lives only within one call.  Slots below 10 are
    :func:`rnnlab.backends.numba_blas.matmul`'s."""
    return torch.from_numpy(_workspace(slot, shape, _numpy_dtype(like.dtype)))


def pooled(shape, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor of ``shape``, over an array from the pool that nothing
    refers to any more where there is one of its size (else a new one, which the pool
    keeps).  Small buffers (under :data:`POOL_MIN_BYTES`) are plain ``torch.empty``."""
    np_dtype = _numpy_dtype(dtype)
    size = math.prod(shape)
    if size * np_dtype.itemsize < POOL_MIN_BYTES:
        return torch.empty(shape, dtype=dtype)
    key = (size, np_dtype)
    with _POOL_LOCK:
        arrays = _POOL.setdefault(key, [])
        free = _unused(arrays)
        if free:
            array = arrays[free[0]]
        else:
            _trim(size * np_dtype.itemsize)
            array = _aligned(size, np_dtype)
            arrays.append(array)
        return torch.from_numpy(array).view(shape)


def zeros(shape, dtype: torch.dtype) -> np.ndarray:
    """A numpy array of zeros of ``shape``: a view of one zero buffer kept per dtype (grown
    when too small), for inputs the compiled loops only read, such as the gradient of an
    output that nothing used (autograd passes None there, rather than a fresh
    (T, N, H) tensor of zeros for each call).  Never write to it."""
    np_dtype = _numpy_dtype(dtype)
    size = math.prod(shape)
    with _POOL_LOCK:
        buffer = _ZEROS.get(np_dtype)
        if buffer is None or buffer.size < size:
            buffer = _ZEROS[np_dtype] = np.zeros(max(size, 1), np_dtype)
    return buffer[:size].reshape(shape)


def release() -> int:
    """Give back every pooled array that nothing refers to; returns the bytes freed."""
    with _POOL_LOCK:
        return _trim(POOL_LIMIT + 1)


def _unused(arrays: list[np.ndarray]) -> list[int]:
    """The indices of the arrays in ``arrays`` that nothing but the list refers to: the
    list's reference and getrefcount's own argument, 2 (every tensor made from an array
    holds a reference to it)."""
    return [i for i in range(len(arrays)) if sys.getrefcount(arrays[i]) == 2]


def _trim(incoming: int) -> int:
    """Drop unused arrays, largest first, until those left and ``incoming`` bytes fit in
    :data:`POOL_LIMIT`; returns the bytes dropped."""
    free = [(key, i) for key, arrays in _POOL.items() for i in _unused(arrays)]
    free.sort(key=lambda item: -_POOL[item[0]][item[1]].nbytes)
    unused = sum(_POOL[key][i].nbytes for key, i in free)
    drop: dict[tuple, set[int]] = {}
    dropped = 0
    for key, i in free:
        if unused + incoming - dropped <= POOL_LIMIT:
            break
        drop.setdefault(key, set()).add(i)
        dropped += _POOL[key][i].nbytes
    for key, indices in drop.items():
        _POOL[key] = [a for i, a in enumerate(_POOL[key]) if i not in indices]
    return dropped


def _aligned(size: int, dtype) -> np.ndarray:
    """An uninitialised 1-D array of ``size`` elements starting on a 64-byte boundary."""
    dtype = np.dtype(dtype)
    raw = np.empty(size * dtype.itemsize + _ALIGN, np.uint8)
    offset = -raw.ctypes.data % _ALIGN
    return raw[offset : offset + size * dtype.itemsize].view(dtype)


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    found = _NUMPY_DTYPES.get(dtype)
    if found is None:
        found = _NUMPY_DTYPES[dtype] = torch.empty(0, dtype=dtype).numpy().dtype
    return found


_NUMPY_DTYPES: dict[torch.dtype, np.dtype] = {}


__all__ = ["POOL_LIMIT", "POOL_MIN_BYTES", "pooled", "release", "workspace", "zeros"]

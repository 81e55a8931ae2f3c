"""The C allocator: keep freed memory for the next training step.

PyTorch's CPU tensors come from the C library's ``malloc``.  glibc serves a block above
its mmap threshold (128 KiB at start, raised up to 32 MiB as large blocks are freed)
with fresh pages from the kernel and gives them back on ``free``; it also returns the
heap's free top to the kernel once that passes the trim threshold.  A training step
allocates and frees the same large tensors every step (activations, oneDNN's workspace,
the logits and their gradients), so every step writes to fresh pages, and the kernel
clears each 4 KiB page on its first write (a minor page fault).  On this project's
2-core machine ``rnnlab train --config demo`` took 5.7-6.9 million faults and 16 s of
system time in 45 s, and made 35,754-41,444 characters/s; with glibc keeping what it
freed, 151,000 faults, 1.2 s and 48,345-54,725 characters/s (1.32-1.35x), for 16% more
peak memory (``docs/performance.md``, "The allocator keeps freed memory").

:func:`keep_freed_memory` sets both thresholds (``mallopt``) to :data:`KEEP_BYTES`: blocks
up to that size come from the heap and return to it, and up to that much free memory
stays at its top.  The process then holds its peak memory until it ends, as PyTorch's
GPU caching allocator does.  It changes the whole process, so the library never calls
it on import: every ``rnnlab`` command calls it at start (:func:`configure`, unless
``RNNLAB_MALLOC=default``), and a script of your own may call it once at the top.  It
does nothing where the C library is not glibc (macOS, musl): their allocators are
left as they are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

from rnnlab.errors import UserError

M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
KEEP_BYTES = 1 << 30  # 1 GiB: above every per-step tensor of the shipped presets
ENVIRONMENT = "RNNLAB_MALLOC"
CHOICES = ("keep", "default")

_state = {"keeps": False}


def _glibc():
    """glibc's handle, or None where the C library is another one."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


def keep_freed_memory(limit: int = KEEP_BYTES) -> bool:
    """Have glibc's ``malloc`` keep freed blocks of up to ``limit`` bytes for reuse
    instead of handing them back to the kernel (module docstring).  Returns whether the
    setting took (False where the C library is not glibc)."""
    if not 0 < limit < 1 << 31:  # mallopt takes a C int
        raise ValueError(f"limit must be between 1 and 2**31 - 1 bytes, not {limit}")
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    kept = bool(libc.mallopt(M_MMAP_THRESHOLD, limit)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, limit)
    )
    _state["keeps"] = _state["keeps"] or kept
    return kept


def keeps_freed_memory() -> bool:
    """Whether :func:`keep_freed_memory` took in this process."""
    return _state["keeps"]


def configure(environ=os.environ) -> bool:
    """What every ``rnnlab`` command does at start: :func:`keep_freed_memory` unless
    ``RNNLAB_MALLOC=default`` (glibc's own settings, as a plain PyTorch script has them).
    Returns whether the allocator now keeps freed memory."""
    choice = environ.get(ENVIRONMENT, "keep").strip().lower() or "keep"
    if choice not in CHOICES:
        raise UserError(
            f"{ENVIRONMENT}={environ[ENVIRONMENT]!r}: use 'keep' (the default: the C "
            "allocator keeps freed memory for reuse) or 'default' (its own settings)"
        )
    return keep_freed_memory() if choice == "keep" else False

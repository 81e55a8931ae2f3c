"""Mixed precision for training: ``float32``, ``bfloat16`` or ``auto``.

With ``bfloat16`` each update's forward pass runs under ``torch.autocast``: matrix
products and PyTorch's own recurrent kernels (the layers' ``torch`` path, oneDNN's LSTM
on the CPU) take bfloat16 operands, while the parameters, their gradients, the optimiser
state, the loss (``cross_entropy`` runs in float32 under autocast) and every validation
and test stay float32.  bfloat16 keeps float32's exponent range, so no loss scaling is
needed.  The ``fused`` and ``reference`` paths run in float32 inside the autocast region
(:meth:`rnnlab.layers._Stack._precision_guard`), so the hand-derived backward passes are
never fed a dtype they were not derived for.

Where it pays: CPUs with AMX (Intel Sapphire Rapids and later) multiply bfloat16 matrices
several times faster than float32 ones, and GPUs with bfloat16 tensor cores likewise; so do
CPUs whose AVX-512 has bfloat16 dot products (``avx512_bf16``: AMD Zen 4 and later): on
this project's 2-core Zen 4 host a bfloat16 product ran 2.3x faster than a float32 one and
a whole character-model training step 1.7x (``rnnlab bench speed --sections precision``).
Elsewhere bfloat16 is emulated and slower (1.17x the time on another host of this
project).  CPU flags do not tell these apart reliably (that host reported ``avx512_bf16``
too), so ``auto`` measures: on a CPU without AMX it times one product in each precision
(:func:`cpu_bfloat16_speedup`, once per process, a fraction of a second) and takes bfloat16
where it is at least :data:`BF16_MIN_SPEEDUP` times faster.  GPUs: bfloat16 where
supported.  The choice and its reason are logged at the start of a run.
"""

from __future__ import annotations

import functools
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

PRECISIONS = ("float32", "bfloat16", "auto")
BF16_MIN_SPEEDUP = 1.3  # auto takes bfloat16 on a CPU without AMX from this speed-up on


@dataclass(frozen=True)
class PrecisionChoice:
    dtype: torch.dtype | None  # None: plain float32, no autocast
    reason: str

    @property
    def name(self) -> str:
        return "float32" if self.dtype is None else "bfloat16"


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (fast bfloat16 matrix products through oneDNN)."""
    init = getattr(getattr(torch._C, "_cpu", None), "_init_amx", None)
    try:
        return bool(init()) if init is not None else False
    except RuntimeError:  # pragma: no cover - kernel refused the AMX state
        return False


@functools.lru_cache(maxsize=1)
def cpu_bfloat16_speedup() -> float:
    """How many times faster one bfloat16 matrix product runs than the same float32 one on
    this CPU, at PyTorch's thread count: 512 x 512 by 512 x 1024, the best of three
    interleaved timings each after a warm-up (about 0.05 s where bfloat16 is fast, a few
    tenths where it is emulated).  Measured once per process."""
    a, b = torch.randn(512, 512), torch.randn(512, 1024)
    operands = {torch.float32: (a, b), torch.bfloat16: (a.bfloat16(), b.bfloat16())}
    best = dict.fromkeys(operands, math.inf)
    for round_ in range(4):
        for dtype, (x, y) in operands.items():
            start = time.perf_counter()
            torch.mm(x, y)
            if round_ > 0:  # round 0 warms up (oneDNN's first call builds its kernel)
                best[dtype] = min(best[dtype], time.perf_counter() - start)
    return best[torch.float32] / best[torch.bfloat16]


def choose_precision(name: str, device: torch.device) -> PrecisionChoice:
    """Resolve ``name`` (one of :data:`PRECISIONS`) for a model on ``device``."""
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {name!r}")
    if name == "float32":
        return PrecisionChoice(None, "float32 (asked for)")
    if name == "bfloat16":
        return PrecisionChoice(torch.bfloat16, "bfloat16 autocast (asked for)")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice(torch.bfloat16, "bfloat16 autocast (this GPU supports it)")
        return PrecisionChoice(None, "float32 (this GPU has no fast bfloat16)")
    if device.type != "cpu":
        return PrecisionChoice(None, f"float32 (no fast bfloat16 on this {device.type})")
    if cpu_has_amx():
        return PrecisionChoice(torch.bfloat16, "bfloat16 autocast (this CPU has AMX)")
    speedup = cpu_bfloat16_speedup()
    if speedup >= BF16_MIN_SPEEDUP:
        return PrecisionChoice(
            torch.bfloat16,
            f"bfloat16 autocast (a bfloat16 matrix product ran {speedup:.1f}x faster than "
            "float32 on this CPU)",
        )
    return PrecisionChoice(
        None,
        f"float32 (a bfloat16 matrix product ran {speedup:.2f}x as fast as float32 on this "
        f"CPU; bfloat16 pays from {BF16_MIN_SPEEDUP}x)",
    )


def autocast(choice: PrecisionChoice, device: torch.device):
    """The context an update's forward pass runs in."""
    if choice.dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=choice.dtype)


__all__ = [
    "BF16_MIN_SPEEDUP",
    "PRECISIONS",
    "PrecisionChoice",
    "autocast",
    "choose_precision",
    "cpu_bfloat16_speedup",
    "cpu_has_amx",
]

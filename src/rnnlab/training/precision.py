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
several times faster than float32 ones, and GPUs with bfloat16 tensor cores likewise.  On
other CPUs bfloat16 is emulated and slower, so ``auto`` picks bfloat16 only on an AMX CPU
or a GPU that supports it, and float32 elsewhere.  The choice is logged at the start of a
run.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

PRECISIONS = ("float32", "bfloat16", "auto")


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
    if device.type == "cpu" and cpu_has_amx():
        return PrecisionChoice(torch.bfloat16, "bfloat16 autocast (this CPU has AMX)")
    return PrecisionChoice(None, f"float32 (no fast bfloat16 on this {device.type})")


def autocast(choice: PrecisionChoice, device: torch.device):
    """The context an update's forward pass runs in."""
    if choice.dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=choice.dtype)


__all__ = ["PRECISIONS", "PrecisionChoice", "autocast", "choose_precision", "cpu_has_amx"]

"""Keeping gradients in check: clipping by global norm or by value (seeds 000-004).

Pascanu, Mikolov & Bengio (2013), Algorithm 1::

    g <- dE/dtheta
    if ||g|| >= threshold:  g <- (threshold / ||g||) g

``mode="norm"`` does exactly that over all parameters together (the global norm).
``mode="value"`` clamps every element to [-threshold, threshold] (element-wise clipping,
which changes the gradient's direction).  Both report the norm before clipping.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CLIP_MODES = ("norm", "value")


@dataclass(frozen=True)
class ClipResult:
    norm: float  # global L2 norm of the gradient before clipping
    clipped: bool  # whether clipping changed the gradient


def global_norm(parameters) -> float:
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    return float(
        torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    )


@torch.no_grad()
def clip_gradients(parameters, threshold: float, mode: str = "norm") -> ClipResult:
    """Clip gradients in place; ``threshold`` 0 only measures. Returns the pre-clip norm."""
    parameters = [p for p in parameters if p.grad is not None]
    norm = global_norm(parameters)
    if threshold <= 0 or not torch.isfinite(torch.tensor(norm)):
        return ClipResult(norm, False)
    if mode == "norm":
        if norm < threshold:
            return ClipResult(norm, False)
        scale = threshold / norm
        for p in parameters:
            p.grad.mul_(scale)
        return ClipResult(norm, True)
    if mode != "value":
        raise ValueError(f"clip mode must be one of {', '.join(CLIP_MODES)}; got {mode!r}")
    clipped = any(bool((p.grad.abs() > threshold).any()) for p in parameters)
    for p in parameters:
        p.grad.clamp_(-threshold, threshold)
    return ClipResult(norm, clipped)

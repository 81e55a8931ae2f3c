"""Named weight initialisations for recurrent layers (seeds 002 and 004).

Pick one per layer with ``init=`` (a scheme name or an :class:`Init`)::

    rnnlab.RNN(1, 50, init=Init("spectral", radius=0.95, connections=15))
    rnnlab.RNN(2, 100, nonlinearity="relu", init="identity")

Schemes (H = hidden size; gated cells treat each (H x H) gate block of W_hh alone):

``uniform``    torch.nn's rule: every parameter ~ U(-1/sqrt(H), 1/sqrt(H)).
``normal``     every weight ~ N(0, std^2), biases 0 (seed 002's Gaussian; Pascanu et al. use
               std 0.01 for sigmoid networks and 0.1 for tanh networks).
``orthogonal`` W_hh blocks (semi-)orthogonal times ``gain``; other weights as ``uniform``;
               biases 0.
``identity``   W_hh blocks = ``gain`` * I, input weights ~ N(0, std^2), biases 0: the IRNN
               of Le, Jaitly & Hinton (2015) for ReLU networks (they use std 0.001).
``spectral``   W_hh blocks ~ N(0, 1), optionally sparse with ``connections`` non-zero
               incoming weights per unit, rescaled so their spectral radius is ``radius``;
               input weights ~ N(0, std^2); biases 0.  Pascanu et al. (2013): radius 0.95,
               15 connections, std 0.01 ("smart tanh").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

SCHEMES = ("uniform", "normal", "orthogonal", "identity", "spectral")


@dataclass(frozen=True)
class Init:
    scheme: str = "uniform"
    std: float = 0.01
    gain: float = 1.0
    radius: float = 0.95
    connections: int | None = None

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ValueError(
                f"init scheme must be one of {', '.join(SCHEMES)}; got {self.scheme!r}"
            )
        if self.std <= 0:
            raise ValueError(f"init std must be positive; got {self.std}")
        if self.radius <= 0:
            raise ValueError(f"init radius must be positive; got {self.radius}")
        if self.connections is not None and self.connections < 1:
            raise ValueError(f"init connections must be positive; got {self.connections}")


def spectral_radius(w: Tensor) -> float:
    """Largest |eigenvalue| of a square matrix."""
    return float(torch.linalg.eigvals(w.detach().double().cpu()).abs().max())


def scaled_to_radius(h: int, radius: float, connections: int | None = None, **factory) -> Tensor:
    """A random (h, h) matrix, optionally with ``connections`` non-zeros per row, whose
    spectral radius is exactly ``radius``."""
    w = torch.randn(h, h, dtype=torch.float64)
    if connections is not None and connections < h:
        keep = torch.zeros(h, h, dtype=torch.bool)
        for i in range(h):
            keep[i, torch.randperm(h)[:connections]] = True
        w = w * keep
    rho = spectral_radius(w)
    if rho == 0:  # e.g. one connection per unit forming a nilpotent pattern: draw again
        return scaled_to_radius(h, radius, connections, **factory)
    return (w * (radius / rho)).to(**factory)


def _recurrent_block(shape, init: Init, like: Tensor) -> Tensor:
    rows, cols = shape
    if init.scheme == "orthogonal":
        return nn.init.orthogonal_(torch.empty(rows, cols, dtype=like.dtype), gain=init.gain)
    if init.scheme == "identity":
        return init.gain * torch.eye(rows, cols, dtype=like.dtype)
    if rows != cols:
        raise ValueError(f"the spectral scheme needs square recurrent blocks; got {rows}x{cols}")
    return scaled_to_radius(rows, init.radius, init.connections, dtype=like.dtype)


@torch.no_grad()
def apply_init(module: nn.Module, init: Init) -> None:
    """Initialise a recurrent layer's ``weight_*``/``bias_*`` parameters by ``init``."""
    bound = 1.0 / math.sqrt(module.hidden_size)
    gates = getattr(module, "gate_count", 1)
    for name, p in module.named_parameters():
        if init.scheme == "uniform" or not name.startswith(("weight", "bias")):
            nn.init.uniform_(p, -bound, bound)
        elif name.startswith("bias"):
            p.zero_()
        elif init.scheme == "normal":
            nn.init.normal_(p, 0.0, init.std)
        elif name.startswith("weight_hh"):
            block = p.shape[0] // gates
            for g in range(gates):
                rows = slice(g * block, (g + 1) * block)
                p[rows] = _recurrent_block((block, p.shape[1]), init, p).to(p.device)
        elif init.scheme == "orthogonal":
            nn.init.uniform_(p, -bound, bound)
        else:
            nn.init.normal_(p, 0.0, init.std)

r"""The recurrent matrix: eigenvalues, spectral radius and the power method (seed 004).

Take the linear recurrence :math:`h_t = W^\top h_{t-1}`, so :math:`h_t = (W^t)^\top h_0`.
With :math:`W = Q \Lambda Q^{-1}` every component of :math:`h_0` along an eigenvector is
multiplied by :math:`\lambda^t`: components with :math:`|\lambda| < 1` vanish, those with
:math:`|\lambda| > 1` explode, and :math:`h_t` turns towards the eigenvector of the
largest :math:`|\lambda|`, the spectral radius :math:`\rho(W)`.  Backpropagation through
a linear network is this same iteration run backwards, which is why
:math:`\rho(W_{hh})` decides whether gradients vanish (:math:`\rho < 1`) or may explode
(:math:`\rho > 1`) in the linear case, and bounds them together with :math:`\max\phi'`
in the nonlinear one.

:func:`recurrent_spectra` lists the eigenvalues of every layer's :math:`W_{hh}`; for gated
cells each gate's (H x H) block is its own matrix (LSTM i, f, g, o; GRU r, z, n).
:func:`power_method` runs the iteration and reports the measured growth per step next to
:math:`\rho`.

>>> import torch
>>> from rnnlab.analysis import power_method
>>> pm = power_method(torch.diag(torch.tensor([1.2, 0.5, -0.3])), steps=60)
>>> round(pm.radius, 3), round(pm.growth, 3), bool(pm.alignment[-1] > 0.999)
(1.2, 1.2, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from rnnlab.analysis.unroll import direction_names, recurrent_layers

GATE_NAMES = {"LSTM": "ifgo", "GRU": "rzn"}


@dataclass
class Spectrum:
    """Eigenvalues of one recurrent matrix (or gate block) ``name``: ``l0``, ``l1.f``, ..."""

    name: str
    eigenvalues: np.ndarray  # complex, sorted by decreasing modulus
    norm: float  # largest singular value ||W||_2 (>= the spectral radius)

    @property
    def radius(self) -> float:
        return float(np.abs(self.eigenvalues).max())

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "radius": self.radius,
            "norm": self.norm,
            "eigenvalues": [[float(z.real), float(z.imag)] for z in self.eigenvalues],
        }


def matrix_spectrum(name: str, w: Tensor) -> Spectrum:
    w = w.detach().to(torch.float64).cpu()
    eig = torch.linalg.eigvals(w).numpy()
    eig = eig[np.argsort(-np.abs(eig), kind="stable")]
    return Spectrum(name, eig, float(torch.linalg.matrix_norm(w, ord=2)))


def gate_blocks(layer, weight_hh: Tensor) -> list[tuple[str, Tensor]]:
    """The square blocks of W_hh with their gate names ("" for a one-block cell)."""
    gates = getattr(layer, "gate_count", 1)
    if gates == 1:
        return [("", weight_hh)]
    names = getattr(layer, "gate_names", None) or GATE_NAMES.get(type(layer).__name__)
    names = names or [f"g{g}" for g in range(gates)]
    return list(zip(names, weight_hh.chunk(gates, dim=0), strict=True))


def recurrent_spectra(target) -> list[Spectrum]:
    """Eigenvalues of W_hh for every layer and direction (and gate block) of ``target``
    (a recurrent stack or a model with one as ``.rnn``).  Non-square blocks (an LSTM with a
    projection) have no eigenvalues and are skipped."""
    layer = recurrent_layers(target)
    spectra = []
    for i, suffix, name in direction_names(layer):
        w = layer.direction_parameters(i, suffix).get("weight_hh")
        if w is None:
            continue
        for gate, block in gate_blocks(layer, w):
            if block.shape[0] == block.shape[1]:
                spectra.append(matrix_spectrum(f"{name}.{gate}" if gate else name, block))
    return spectra


@dataclass
class PowerIteration:
    """h_t = (W^t)^T h_0 for t = 0..steps, measured."""

    norms: np.ndarray  # ||h_t||, t = 0..steps
    alignment: np.ndarray  # |cos| between h_t and the leading eigenspace of W^T
    radius: float  # spectral radius of W

    @property
    def growth(self) -> float:
        """Measured growth per step, exp of the log-norm slope over the second half."""
        t = np.arange(len(self.norms))
        half = len(t) // 2
        ok = np.isfinite(self.norms) & (self.norms > 1e-300)
        ok[:half] = False
        if ok.sum() < 2:
            return math.nan
        return float(np.exp(np.polyfit(t[ok], np.log(self.norms[ok]), 1)[0]))

    def to_json(self) -> dict:
        return {
            "radius": self.radius,
            "growth": self.growth,
            "norms": [float(x) for x in self.norms],
            "alignment": [float(x) for x in self.alignment],
        }


def leading_eigenspace(w: Tensor, rtol: float = 1e-6) -> Tensor:
    """Orthonormal real basis (S, r) of the span of W's eigenvectors of largest modulus (a
    complex pair spans a plane)."""
    eigenvalues, vectors = torch.linalg.eig(w)
    modulus = eigenvalues.abs()
    keep = modulus >= modulus.max() * (1 - rtol)
    v = vectors[:, keep]
    basis = torch.cat([v.real, v.imag], dim=1)
    u, s, _ = torch.linalg.svd(basis, full_matrices=False)
    return u[:, s > s.max() * 1e-8]


def power_method(
    weight: Tensor, h0: Tensor | None = None, steps: int = 50, seed: int = 0
) -> PowerIteration:
    """Iterate h_t = W^T h_{t-1} from ``h0`` (default: a seeded random unit vector)."""
    w = weight.detach().to(torch.float64).cpu()
    if w.dim() != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"the power method needs a square matrix; got {tuple(w.shape)}")
    if h0 is None:
        h0 = torch.randn(w.shape[0], generator=torch.Generator().manual_seed(seed), dtype=w.dtype)
    h = h0.detach().to(torch.float64).cpu().flatten()
    basis = leading_eigenspace(w.t())
    norms, alignment = [], []
    for t in range(steps + 1):
        if t:
            h = w.t() @ h
        n = float(h.norm())
        norms.append(n)
        alignment.append(float((basis.t() @ h).norm() / n) if n > 0 else math.nan)
    radius = float(torch.linalg.eigvals(w).abs().max())
    return PowerIteration(np.array(norms), np.array(alignment), radius)

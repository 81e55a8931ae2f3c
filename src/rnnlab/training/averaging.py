r"""An exponential moving average of the weights (Polyak averaging), for validation.

With ``ema = d`` in the optimiser settings, every update that steps the optimiser also
moves a shadow copy :math:`\bar\theta` of the parameters towards them:

.. math::

    \bar\theta \leftarrow \bar\theta + (1 - d_t)(\theta - \bar\theta), \qquad
    d_t = \min\left(d, \frac{1 + t}{10 + t}\right)

where t is the number of averaged updates so far; the ramp :math:`d_t` keeps the first
updates from being dominated by the initial weights (with :math:`d_0 = 0.1`).  The average
averages out the noise of the last ~1/(1 - d) updates, which can validate lower than the
weights themselves while the learning rate is still high (and lags behind them once it is
low; docs/performance.md has the 30-minute Shakespeare runs with and without it).

The trainer validates (and samples, and saves ``best/``) with the average swapped in
(:meth:`WeightAverage.swapped_in`) and trains the weights themselves; ``last/`` holds both,
so ``--resume`` continues the average exactly.  Floating-point buffers are averaged with
the parameters; other buffers are copied.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn


class WeightAverage:
    """The moving average of ``model``'s parameters and floating buffers, decay ``decay``."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the average's decay must be in (0, 1); got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self._live = self._tensors(model)
        self.shadow = [t.detach().clone() for t in self._live]

    @staticmethod
    def _tensors(model: nn.Module) -> list[Tensor]:
        tensors = list(model.parameters())
        return tensors + [b for b in model.buffers() if b.is_floating_point()]

    def rate(self) -> float:
        """1 - d_t for the next update."""
        return 1.0 - min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the current weights (call after each optimiser step)."""
        torch._foreach_lerp_(self.shadow, [t.detach() for t in self._live], self.rate())
        self.updates += 1

    @contextmanager
    def swapped_in(self):
        """Within the block the model holds the average; its own weights come back after."""
        saved = [t.detach().clone() for t in self._live]
        with torch.no_grad():
            for live, avg in zip(self._live, self.shadow, strict=True):
                live.copy_(avg)
        try:
            yield
        finally:
            with torch.no_grad():
                for live, own in zip(self._live, saved, strict=True):
                    live.copy_(own)

    @torch.no_grad()
    def restart(self) -> None:
        """Start the average anew from the model's current weights (warm-up included)."""
        for t, live in zip(self.shadow, self._live, strict=True):
            t.copy_(live)
        self.updates = 0

    # -- resumption ----------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, Tensor], dict]:
        tensors = {f"ema.{i}": t.contiguous() for i, t in enumerate(self.shadow)}
        return tensors, {"decay": self.decay, "updates": self.updates}

    def load_state_dict(self, tensors: dict[str, Tensor], meta: dict) -> None:
        if len([k for k in tensors if k.startswith("ema.")]) != len(self.shadow):
            raise ValueError("the saved weight average does not match this model")
        with torch.no_grad():
            for i, t in enumerate(self.shadow):
                t.copy_(tensors[f"ema.{i}"])
        self.updates = int(meta["updates"])


__all__ = ["WeightAverage"]

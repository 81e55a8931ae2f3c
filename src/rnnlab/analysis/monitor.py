"""A training monitor: the gradient-flow numbers of a model, as one flat JSON-able dict.

The trainer calls :func:`snapshot` every N updates and writes the dict into its metrics,
so a run records how the gradient flow and the spectral radius evolve::

    record.update(snapshot(model, (inputs, targets)))

It measures on a float64 copy of the weights, starts from a zero state, applies no
dropout and leaves the model's parameters, their ``.grad`` and its train/eval mode as they
were.  Cost: one unrolled forward and one backward over at most ``max_sequences``
sequences, plus an eigenvalue decomposition of every (H x H) recurrent block.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rnnlab.analysis.gradients import gradient_norms_through_time
from rnnlab.analysis.spectra import recurrent_spectra
from rnnlab.analysis.unroll import is_language_model, recurrent_layers


def _first_sequences(target, inputs: Tensor, count: int) -> Tensor:
    """The first ``count`` sequences of ``inputs`` in ``target``'s input layout."""
    if is_language_model(target):
        return inputs[:count]
    layer = recurrent_layers(target)
    if inputs.dim() == 2:  # one unbatched sequence
        return inputs
    return inputs[:count] if layer.batch_first else inputs[:, :count]


def snapshot(target, batch, max_sequences: int = 8, loss: str = "last") -> dict[str, float | None]:
    """Gradient flow and spectra of ``target`` on ``batch``, as ``{key: number}``.

    ``target``: a language model (``batch`` = token ids (N, T), or ``(inputs, targets)``)
    or a recurrent stack (``batch`` = its input tensor, or ``(inputs, None)``).

    Keys, for every layer/direction ``l0``, ``l1``, ``l0_reverse``, ... (and gate block,
    ``l0.i``, ``l0.f``, ... for gated cells):

    * ``spectral_radius.<block>``: largest |eigenvalue| of W_hh (or of its gate block);
    * ``grad_log_rate.<layer>``: per-step slope of ln ||dE/dh_k|| going back in time
      (loss at the last step by default); negative = vanishing;
    * ``grad_ratio.<layer>``: ||dE/dh_0|| / ||dE/dh_T||;
    * ``fraction_vanished.<layer>``: fraction of steps with ||dE/dh_k|| < 1e-6 ||dE/dh_T||.

    Non-finite numbers are written as None (JSON null).
    """
    inputs, targets = batch if isinstance(batch, tuple | list) else (batch, None)
    inputs = _first_sequences(target, inputs, max_sequences)
    if targets is not None:
        targets = targets[:max_sequences]
    with torch.enable_grad():
        flow = gradient_norms_through_time(target, inputs, targets, loss=loss)
    record: dict[str, float | None] = {}
    for spectrum in recurrent_spectra(target):
        record[f"spectral_radius.{spectrum.name}"] = _clean(spectrum.radius)
    for name in flow.norms:
        record[f"grad_log_rate.{name}"] = _clean(flow.log_rate[name])
        record[f"grad_ratio.{name}"] = _clean(flow.ratio[name])
        record[f"fraction_vanished.{name}"] = _clean(flow.fraction_vanished[name])
    return record


def _clean(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None

"""The ``torch`` training path: one layer and direction through PyTorch's recurrent kernel.

``torch.nn.LSTM`` / ``GRU`` / ``RNN`` call ``torch._VF.lstm / gru / rnn_tanh / rnn_relu``
with their parameters in a flat list, per layer and direction ``[weight_ih, weight_hh,
bias_ih, bias_hh, weight_hr]`` (biases only with ``bias=True``, ``weight_hr`` only with a
projection).  rnnlab's layers hold the same parameters under the same names, so the
kernel runs on them directly and gradients reach them through PyTorch's own backward.

The driver (:mod:`rnnlab.layers`) keeps stacking, dropout between layers and the reversal
of the backward direction, so those draw the same random numbers and behave exactly as on
the ``fused`` path; this module runs one layer in one direction.  Variable lengths go to
the kernel as a ``PackedSequence`` (one call, no time segments): padded outputs are zero
and each sequence's final state is the state at its own last step, as
:func:`rnnlab.layers.run_segments` gives them.
"""

from __future__ import annotations

import warnings

from torch import _VF, Tensor
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

KERNELS = {"lstm": _VF.lstm, "gru": _VF.gru, "rnn_tanh": _VF.rnn_tanh, "rnn_relu": _VF.rnn_relu}
WEIGHT_ORDER = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


def flat_weights(params: dict[str, Tensor]) -> list[Tensor]:
    """One direction's parameters in ``torch.nn``'s flat order (absent ones left out)."""
    return [params[name] for name in WEIGHT_ORDER if name in params]


def run_direction(
    kernel: str, x: Tensor, state: tuple[Tensor, ...], params: dict[str, Tensor], lengths=None
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One layer, one direction: x (T, N, I), state of (N, size) tensors ->
    ``(out (T, N, H_out), final state)``; ``lengths`` (N,) CPU int64 or None."""
    weights = flat_weights(params)
    if "weight_hr" in params:
        with warnings.catch_warnings():  # "not supported with oneDNN": torch's own fallback
            warnings.simplefilter("ignore", UserWarning)
            return _run(kernel, x, state, weights, "bias_ih" in params, lengths)
    return _run(kernel, x, state, weights, "bias_ih" in params, lengths)


def _run(kernel, x, state, weights, has_bias, lengths):
    hx = tuple(s.unsqueeze(0) for s in state)
    hx_arg = hx if kernel == "lstm" else hx[0]
    run = KERNELS[kernel]
    if lengths is None:
        result = run(x, hx_arg, weights, has_bias, 1, 0.0, False, False, False)
        return result[0], tuple(h[0] for h in result[1:])
    T = x.shape[0]
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    order, inverse = packed.sorted_indices, packed.unsorted_indices
    hx_sorted = tuple(h.index_select(1, order) for h in hx)
    hx_arg = hx_sorted if kernel == "lstm" else hx_sorted[0]
    result = run(packed.data, packed.batch_sizes, hx_arg, weights, has_bias, 1, 0.0, False, False)
    out, _ = pad_packed_sequence(packed._replace(data=result[0]), total_length=T)
    return out, tuple(h[0].index_select(0, inverse) for h in result[1:])


__all__ = ["KERNELS", "flat_weights", "run_direction"]

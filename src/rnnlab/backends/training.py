"""Which path a recurrent layer's forward and backward take: the choice behind ``backend=``.

The layers of :mod:`rnnlab.layers` (``RNN``, ``LSTM``, ``GRU``, ``PascanuRNN``,
``JordanRNN``) run each layer and direction through one of three paths:

``fused``      the cell's whole-sequence ``torch.autograd.Function`` with hand-derived BPTT
               (:mod:`rnnlab.cells`): every cell family and option; the reference for
               speed work and the fallback.
``reference``  the cell's reference step in a Python loop, differentiated by autograd.
``torch``      PyTorch's own recurrent kernel (``torch._VF.lstm / gru / rnn_tanh /
               rnn_relu``, what ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` call), on the layer's
               own parameters: only where ``torch.nn`` computes the same function (plain
               LSTM, with or without ``proj_size``; GRU in the torch form; Elman with tanh or
               relu).  On the CPU in float32 PyTorch runs the LSTM through oneDNN.

``auto`` (the default) takes the fastest of these that computes the same function, by
the rule in :func:`choose_training_backend`: ``torch`` for the LSTM on every device and
for every counterpart on a GPU (cuDNN); ``fused`` for GRU and Elman layers on the CPU,
where the hand-derived path measured faster than PyTorch's kernel (docs/performance.md);
``fused`` for everything without a ``torch.nn`` counterpart (layer norm, peepholes,
zoneout, recurrent dropout, the GRU's Cho form, the sigmoid Elman layer, the Pascanu and
Jordan layers).  No path changes results beyond floating-point rounding: the tests hold
``fused`` and ``torch`` to the reference at 1e-10 in float64.
"""

from __future__ import annotations

import torch

from rnnlab.backends import BackendChoice

TRAINING_BACKENDS = ("auto", "fused", "reference", "torch")

# Cells whose fused path measured faster than PyTorch's kernel on the CPU, at every issue-8
# shape, at 1 and 2 threads (docs/performance.md, "Choosing the training path").
FUSED_WINS_ON_CPU = ("gru", "rnn")


def torch_counterpart(layer) -> tuple[str | None, str]:
    """``(kernel, why)``: the ``torch._VF`` kernel computing ``layer``'s function (``"lstm"``,
    ``"gru"``, ``"rnn_tanh"``, ``"rnn_relu"``), or None and the reason there is none."""
    kind = getattr(layer, "cell_kind", None)
    if kind == "lstm":
        if layer.has_options:
            return (
                None,
                "peephole / layer_norm / recurrent_dropout / zoneout have no torch.nn kernel",
            )
        return "lstm", "torch.nn.LSTM's kernel"
    if kind == "gru":
        if layer.form != "torch":
            return None, "the Cho-form GRU has no torch.nn kernel"
        return "gru", "torch.nn.GRU's kernel"
    if kind == "rnn":
        if layer.nonlinearity == "sigmoid":
            return None, "the sigmoid Elman layer has no torch.nn kernel"
        return f"rnn_{layer.nonlinearity}", "torch.nn.RNN's kernel"
    return None, f"{type(layer).__name__} has no torch.nn counterpart"


def choose_training_backend(layer, backend: str | None = None) -> BackendChoice:
    """The path ``layer`` (an rnnlab layer) runs with ``backend`` (default: its own), and why.

    ``auto``: ``torch`` where a ``torch.nn`` kernel computes the layer's function and
    either the layer is on a GPU or it is an LSTM; ``fused`` otherwise.  ``torch`` asked
    for where there is no counterpart raises ValueError (one line).
    """
    backend = layer.backend if backend is None else backend
    if backend not in TRAINING_BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(TRAINING_BACKENDS)}; got {backend!r}")
    if backend in ("fused", "reference"):
        return BackendChoice(backend, "asked for")
    kernel, why = torch_counterpart(layer)
    if backend == "torch":
        if kernel is None:
            raise ValueError(f"backend 'torch' cannot run this layer: {why}")
        return BackendChoice("torch", why)
    if kernel is None:
        return BackendChoice("fused", why)
    device = _device(layer)
    if device.type != "cpu":
        return BackendChoice("torch", f"{why} on {device.type}")
    if layer.cell_kind in FUSED_WINS_ON_CPU:
        return BackendChoice("fused", "faster than torch.nn's kernel on the CPU")
    return BackendChoice("torch", f"{why}, faster than fused on the CPU")


def _device(layer) -> torch.device:
    p = next(layer.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


__all__ = ["TRAINING_BACKENDS", "choose_training_backend", "torch_counterpart"]

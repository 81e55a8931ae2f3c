"""The small task the experiments train on: recall the first symbol after T steps.

Step 1 shows one of K symbols (one-hot in the first K input channels); steps 2..T show
random distractor symbols (one-hot in the other K channels); after step T the network
must name the first symbol.  The loss is the cross entropy at the last step only, so
everything it learns about step 1 has to travel back through T - 1 recurrent steps: the
task needs exactly the long-range gradient that vanishes.  Chance level is ln K nats.

:func:`train_recall` is a deliberately plain loop (no engine): sample a batch, loss,
optional L1/L2 penalty and Pascanu regulariser, clip, step; it records what the
experiments compare.

Every model is built with ``backend=BACKEND`` (``"fused"``), not the layers' default
``"auto"``: float32 training on this task is chaotic (a difference in the last bit of one
gradient can decide whether a run learns), and ``"auto"`` picks whichever compiled kernel
(numba, PyTorch's own) is available and fastest, a choice that changes between versions and
machines.  The fused path is plain PyTorch with hand-derived backward code, the same on
every machine with the same torch build.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.analysis.unroll import Readout
from rnnlab.layers import GRU, LSTM, RNN
from rnnlab.training.clipping import clip_gradients
from rnnlab.training.regularizers import OmegaProbe, weight_penalty

SYMBOLS = 4
BACKEND = "fused"  # pinned, so a trained outcome does not change with the kernels installed

# The cells the experiments compare: label -> (layer class, keyword arguments).
CELLS = {
    "Elman tanh": (RNN, {"nonlinearity": "tanh"}),
    "Elman sigmoid": (RNN, {"nonlinearity": "sigmoid"}),
    "Elman ReLU": (RNN, {"nonlinearity": "relu"}),
    "LSTM": (LSTM, {}),
    "LSTM (forget bias 3)": (LSTM, {"forget_bias": 3.0}),
    "GRU": (GRU, {}),
}


def recall_batch(
    batch: int, length: int, generator: torch.Generator, symbols: int = SYMBOLS
) -> tuple[Tensor, Tensor]:
    """Inputs (T, N, 2K), time-major, and the symbol to recall (N,)."""
    y = torch.randint(symbols, (batch,), generator=generator)
    distractors = torch.randint(symbols, (length, batch), generator=generator)
    x = torch.zeros(length, batch, 2 * symbols)
    x[0, torch.arange(batch), y] = 1.0
    x[1:, :, symbols:] = F.one_hot(distractors[1:], symbols).float()
    return x, y


class Recaller(nn.Module):
    """A recurrent stack and a linear head that reads the last output."""

    def __init__(self, rnn: nn.Module, symbols: int = SYMBOLS):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(rnn.num_directions * rnn.output_size, symbols)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.head(out[-1])

    def readout(self, y: Tensor) -> Readout:
        """The loss at every step t: cross entropy of the head on y_t against the symbol (the
        task's own loss is this at the last step). For the analysis functions (float64)."""
        weight = self.head.weight.detach().double()
        bias = self.head.bias.detach().double()
        return lambda y_t, t: F.cross_entropy(F.linear(y_t, weight, bias), y)


def make_recaller(
    cell: str,
    hidden: int = 32,
    seed: int = 0,
    symbols: int = SYMBOLS,
    backend: str = BACKEND,
    **layer_kwargs,
) -> Recaller:
    """A fresh :class:`Recaller` for one of :data:`CELLS`, seeded, its layer on ``backend``
    (default :data:`BACKEND`, pinned: see the module docstring); ``layer_kwargs`` go to the
    layer class (``init=``, ...)."""
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {', '.join(CELLS)}; got {cell!r}")
    torch.manual_seed(seed)
    cls, kwargs = CELLS[cell]
    return Recaller(cls(2 * symbols, hidden, backend=backend, **kwargs, **layer_kwargs), symbols)


@dataclass
class History:
    losses: list[float] = field(default_factory=list)  # training loss per update (nats)
    grad_norms: list[float] = field(default_factory=list)  # global norm before clipping
    omegas: list[float] = field(default_factory=list)
    accuracy: float = math.nan  # on a fresh batch after training

    @property
    def final_loss(self) -> float:
        """Mean of the last 10% of the finite training losses."""
        finite = [x for x in self.losses if math.isfinite(x)]
        if not finite:
            return math.nan
        return float(np.mean(finite[-max(1, len(finite) // 10) :]))

    @property
    def nonfinite(self) -> int:
        return sum(1 for x in self.losses if not math.isfinite(x))


def train_recall(
    model: Recaller,
    length: int,
    updates: int,
    lr: float = 3e-3,
    optimizer: str = "adam",
    batch: int = 32,
    clip: float = 0.0,
    l1: float = 0.0,
    l2: float = 0.0,
    pascanu_alpha: float = 0.0,
    seed: int = 0,
    progress=None,
) -> History:
    """Train ``model`` on the recall task; ``progress`` is a tqdm bar (or None) to advance.

    A non-finite loss or gradient skips its update (as the engine does) and is recorded."""
    g = torch.Generator().manual_seed(seed)
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=lr) if optimizer == "adam" else torch.optim.SGD(params, lr=lr)
    probe = OmegaProbe(model.rnn, "elman") if pascanu_alpha > 0 else None
    history = History()
    model.train()
    for _ in range(updates):
        x, y = recall_batch(batch, length, g)
        loss = F.cross_entropy(model(x), y)
        total = loss + weight_penalty(model.named_parameters(), l1, l2) if l1 or l2 else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        if probe is not None:
            omega = probe.omega()
            if omega is not None:
                (pascanu_alpha * omega).backward()
                history.omegas.append(omega.item())
        result = clip_gradients(params, clip)
        history.losses.append(loss.item())
        history.grad_norms.append(result.norm)
        if math.isfinite(history.losses[-1]) and math.isfinite(result.norm):
            opt.step()
        if progress is not None:
            progress.update(1)
    if probe is not None:
        probe.close()
    model.eval()
    with torch.no_grad():
        x, y = recall_batch(512, length, g)
        history.accuracy = float((model(x).argmax(-1) == y).float().mean())
    return history

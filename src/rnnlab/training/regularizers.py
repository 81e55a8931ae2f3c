r"""Regularisers: the vanishing-gradient regulariser of Pascanu et al. (2013), L1 and L2.

**Pascanu, Mikolov & Bengio (2013), eq. 9.**  For a recurrent state :math:`x_k`,

.. math::

    \Omega = \sum_k \left( \frac{\lVert \frac{\partial E}{\partial x_{k+1}}
             \frac{\partial x_{k+1}}{\partial x_k} \rVert}
             {\lVert \frac{\partial E}{\partial x_{k+1}} \rVert} - 1 \right)^2

asks each backward step to keep the norm of the error signal, so it neither vanishes nor
grows.  As in the paper, :math:`\partial E/\partial x_{k+1}` and :math:`x_k` are held
constant: only the direct dependence of the Jacobian on the recurrent matrix contributes
to :math:`\partial\Omega/\partial W`.  The sum runs over every transition of the sequence,
k = 0 .. T-1 (x_0 is the initial state); over a batch, :math:`\Omega` is the mean of the
per-sequence sums.

Two state conventions (row vectors, so :math:`a = x W^\top`):

* **Pascanu form** (``form="pascanu"``): :math:`x_{k+1} = W \sigma(x_k) + W_{in} u_{k+1} + b`,
  so :math:`g \frac{\partial x_{k+1}}{\partial x_k} = (g W) \odot \sigma'(x_k)`.  The layer
  emits :math:`y_k = \sigma(x_k)`, from which :math:`\sigma'(x_k)` follows
  (:math:`1-y^2` for tanh, :math:`y(1-y)` for the sigmoid).
* **Elman form** (``form="elman"``): :math:`h_{k+1} = \phi(W h_k + W_{ih} x_{k+1} + b)`, so
  :math:`g \frac{\partial h_{k+1}}{\partial h_k} = (g \odot \phi'(a_{k+1})) W`; here
  :math:`\phi'(a_{k+1})` is held constant with :math:`h_k`, the analogue of the paper's choice.

The total error signals :math:`\partial E/\partial x_k` are rebuilt from the direct
gradients of the loss with respect to the layer's outputs by running the backward
recursion once more (cheap: one (N, H) x (H, H) product per step, no graph).
"""

from __future__ import annotations

import torch
from torch import Tensor

FORMS = ("elman", "pascanu")


def _derivative_from_output(y: Tensor, nonlinearity: str) -> Tensor:
    if nonlinearity == "tanh":
        return 1 - y * y
    if nonlinearity == "sigmoid":
        return y * (1 - y)
    if nonlinearity == "relu":
        return (y > 0).to(y.dtype)
    raise ValueError(f"unknown nonlinearity {nonlinearity!r}")


def pascanu_omega(
    weight_hh: Tensor,
    outputs: Tensor,
    initial: Tensor,
    grad_outputs: Tensor,
    form: str = "elman",
    nonlinearity: str = "tanh",
    eps: float = 1e-12,
) -> Tensor:
    """Omega for one recurrent layer; differentiable with respect to ``weight_hh`` only.

    outputs: (T, N, H) the layer's outputs (Elman: h_1..h_T; Pascanu: sigma(x_1..x_T)).
    initial: (N, H) the initial state (Elman: h_0; Pascanu: x_0).
    grad_outputs: (T, N, H) the direct gradients dE/d outputs (through the loss only).
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(FORMS)}; got {form!r}")
    y = outputs.detach()
    d = grad_outputs.detach()
    W = weight_hh.detach()
    deriv = _derivative_from_output(y, nonlinearity)  # phi'(a_t) or sigma'(x_t), t = 1..T
    T = y.shape[0]
    with torch.no_grad():
        g = torch.empty_like(y)  # total dE/d state_t for t = 1..T
        if form == "elman":
            g[T - 1] = d[T - 1]
            for t in range(T - 2, -1, -1):
                g[t] = d[t] + (g[t + 1] * deriv[t + 1]) @ W
        else:
            e = d * deriv  # direct gradient with respect to x_t
            g[T - 1] = e[T - 1]
            for t in range(T - 2, -1, -1):
                g[t] = e[t] + (g[t + 1] @ W) * deriv[t]
    if form == "elman":
        pushed = (g * deriv) @ weight_hh  # (g_{k+1} * phi'_{k+1}) W, k = 0..T-1
    else:
        y0 = _activation(initial.detach(), nonlinearity)
        prev_deriv = torch.cat([_derivative_from_output(y0, nonlinearity).unsqueeze(0), deriv[:-1]])
        pushed = (g @ weight_hh) * prev_deriv  # (g_{k+1} W) * sigma'(x_k)
    ratio = pushed.norm(dim=-1) / g.norm(dim=-1).clamp_min(eps)
    return ((ratio - 1) ** 2).sum(0).mean()


def _activation(x: Tensor, nonlinearity: str) -> Tensor:
    return {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu}[nonlinearity](x)


def weight_penalty(parameters, l1: float = 0.0, l2: float = 0.0) -> Tensor | float:
    """l1 * sum |w| + l2 * sum w^2 over weight matrices (biases are left alone)."""
    total = 0.0
    for name, p in parameters:
        if not name.split(".")[-1].startswith("weight"):
            continue
        if l1:
            total = total + l1 * p.abs().sum()
        if l2:
            total = total + l2 * (p * p).sum()
    return total


class OmegaProbe:
    """Captures what :func:`pascanu_omega` needs from one recurrent layer during training.

    A forward hook records the layer's outputs and initial state at each call, and a tensor
    hook records the direct gradients during ``loss.backward()``; :meth:`omega` then joins
    the calls of one update in time order.
    """

    def __init__(self, layer, form: str):
        if getattr(layer, "num_layers", 1) != 1 or getattr(layer, "bidirectional", False):
            raise ValueError(
                "the Pascanu regulariser needs a single-layer, one-directional recurrent layer"
            )
        self.layer, self.form = layer, form
        self.nonlinearity = getattr(layer, "nonlinearity", None) or layer.sigma
        self.calls: list[dict] = []
        self.handle = layer.register_forward_hook(self._forward_hook)

    def _forward_hook(self, module, args, output):
        if not torch.is_grad_enabled() or not module.training:
            return
        outputs, final = output
        state = args[1] if len(args) > 1 else None
        record = {"outputs": outputs, "initial": state, "grad": None, "initial_grad": None}
        outputs.register_hook(lambda grad: record.__setitem__("grad", grad))
        if state is not None and state.requires_grad:
            state.register_hook(lambda grad: record.__setitem__("initial_grad", grad))
        self.calls.append(record)

    def omega(self) -> Tensor | None:
        calls, self.calls = self.calls, []
        if not calls or any(c["grad"] is None for c in calls):
            return None
        outputs = torch.cat([c["outputs"] for c in calls])
        # A call that continues the previous one (truncated BPTT over k2 > k1 steps) sends
        # the recurrent part of the gradient back into the previous call's last output;
        # take it out, so that only the loss's direct gradient remains.
        grads = []
        for i, c in enumerate(calls):
            g = c["grad"].clone()
            nxt = calls[i + 1]["initial_grad"] if i + 1 < len(calls) else None
            if nxt is not None:
                g[-1] -= nxt.reshape(g[-1].shape)
            grads.append(g)
        grads = torch.cat(grads)
        initial = calls[0]["initial"]
        if initial is None:
            initial = outputs.new_zeros(outputs.shape[1:])
        elif initial.dim() == 3:
            initial = initial[0]
        return pascanu_omega(
            self.layer.weight_hh_l0, outputs, initial, grads, self.form, self.nonlinearity
        )

    def close(self) -> None:
        self.handle.remove()

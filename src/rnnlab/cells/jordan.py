r"""Output recurrence (Jordan network), with optional hidden recurrence and teacher forcing.

Seed 001 draws two networks whose output feeds back: "recurrence through the output
only" (a Jordan network) and "hidden and output recurrence".  They are one family here;
the flag is whether ``weight_hh`` is given.  For t = 1..T:

.. math::

    \tilde y_{t-1} &= m_t\, y^*_{t-1} + (1 - m_t)\, y_{t-1}
        \qquad\text{(the output fed to step t)} \\
    a_t &= W_{ih} x_t + b_{ih} + W_{yh} \tilde y_{t-1}
           \;[\, + W_{hh} h_{t-1} + b_{hh} \text{ with hidden recurrence}\,] \\
    h_t &= \phi(a_t), \qquad \phi \in \{\tanh, \mathrm{sigmoid}, \mathrm{relu}\} \\
    o_t &= W_{ho} h_t + b_o, \qquad y_t = g(o_t), \qquad
          g \in \{\mathrm{identity}, \tanh, \mathrm{sigmoid}\}

The state carried from step to step is :math:`y_{t-1}` alone, or
:math:`(h_{t-1}, y_{t-1})` with hidden recurrence; :math:`y_0` (and :math:`h_0`) are given.

Feeding.  :math:`m_t` is one number per step and per sequence, ``teacher_mask`` (T, N):

* free-running (``teacher=None``): :math:`m_t = 0`, the model is fed its own :math:`y_{t-1}`;
* teacher forcing (``teacher`` given, ``teacher_mask=None``): :math:`m_t = 1`, the model is
  fed the true previous output :math:`y^*_{t-1}` from ``teacher`` (T, N, O);
* scheduled sampling: a ``teacher_mask`` of booleans (or 0/1 floats) picks teacher (1) or
  own output (0) per step and sequence.  Mask all ones is teacher forcing, all zeros is
  free-running.  A float mask in between mixes the two linearly, by the formula above.
  A mask needs a ``teacher``.  The own output mixed in is the continuous :math:`y_{t-1}`;
  scheduled sampling of *discrete* symbols needs samples, which this module does not
  draw (see below).

Every time-indexed tensor is aligned by step: row t-1 of ``x``, ``teacher``,
``teacher_mask``, ``hs`` and ``ys`` belongs to step t.  So ``teacher[0]`` is
:math:`y^*_0`, the true initial output (usually ``y0``), and for next-step prediction of
targets :math:`y^*_1..y^*_T` one passes ``teacher = cat([y0[None], targets[:-1]])``.

Why :math:`g` has no softmax.  With a softmax output, :math:`y_t` is a distribution over
symbols, but what a generating model emits and feeds back is a *sampled* symbol, which
is not a differentiable function of :math:`o_t`; feeding the probability vector back
while training would train on inputs never seen when generating.  (Its Jacobian is also
a full O x O matrix, not the elementwise :math:`g'` used below.)  Discrete outputs are
therefore left to teacher forcing: use ``output="identity"`` so that ``ys`` are the
logits :math:`o_t`, put the cross-entropy on them, feed one-hot true symbols as
``teacher``, and generate step by step with :func:`jordan_step`, sampling from
:math:`\mathrm{softmax}(o_t)` and feeding the sample's one-hot vector.  (Sampled symbols
drawn in a no-grad pass can also be written into ``teacher`` rows selected by the mask.)

Shapes (time-major): ``x``: (T, N, I); ``h0``: (N, H) with hidden recurrence, else
``None``; ``y0``: (N, O); ``weight_ih``: (H, I); ``weight_yh``: (H, O); ``weight_hh``:
(H, H) or ``None``; ``weight_ho``: (O, H); ``bias_ih``, ``bias_hh``: (H,) or ``None``;
``bias_o``: (O,) or ``None``; ``teacher``: (T, N, O) or ``None``; ``teacher_mask``:
(T, N) bool or float, or ``None``.  Outputs ``hs``: (T, N, H) and ``ys``: (T, N, O); the
next chunk's state is ``(hs[-1], ys[-1])``.

Relation to Elman.  With hidden recurrence and :math:`W_{yh} = 0` this is the Elman
cell.  Without hidden recurrence, free-running and :math:`g` the identity,
:math:`W_{yh} y_{t-1} = W_{yh} W_{ho} h_{t-1} + W_{yh} b_o`: an Elman cell whose
recurrent matrix :math:`W_{yh} W_{ho}` has rank at most O (with
:math:`y_0 = W_{ho} h_0 + b_o`).

Backward.  Write :math:`\bar v = \partial E/\partial v` for the total gradient reaching
:math:`v`, and :math:`\bar f_t` for that reaching the fed value :math:`\tilde y_{t-1}`:

.. math::

    \bar y_t &= \partial E_t/\partial y_t + (1 - m_{t+1}) \odot \bar f_{t+1} \\
    \bar o_t &= \bar y_t \odot g'(o_t) \\
    \bar h_t &= \partial E_t/\partial h_t + W_{ho}^\top \bar o_t
               \;[\, + W_{hh}^\top \delta_{t+1}\,] \\
    \delta_t &= \bar h_t \odot \phi'(a_t), \qquad \bar f_t = W_{yh}^\top \delta_t \\
    \partial E/\partial W_{ih} &= \textstyle\sum_t \delta_t x_t^\top, \quad
    \partial E/\partial W_{yh} = \textstyle\sum_t \delta_t \tilde y_{t-1}^\top, \quad
    \partial E/\partial W_{hh} = \textstyle\sum_t \delta_t h_{t-1}^\top, \quad
    \partial E/\partial W_{ho} = \textstyle\sum_t \bar o_t h_t^\top \\
    \partial E/\partial b_{ih} &= \partial E/\partial b_{hh} = \textstyle\sum_t \delta_t,
    \quad \partial E/\partial b_o = \textstyle\sum_t \bar o_t, \quad
    \partial E/\partial x_t = W_{ih}^\top \delta_t \\
    \partial E/\partial h_0 &= W_{hh}^\top \delta_1, \quad
    \partial E/\partial y_0 = (1 - m_1) \odot \bar f_1, \quad
    \partial E/\partial y^*_{t-1} = m_t \odot \bar f_t, \quad
    \partial E/\partial m_t = \bar f_t \cdot (y^*_{t-1} - y_{t-1})

So no gradient reaches :math:`y_{t-1}` through a teacher-fed step (:math:`m_t = 1`); under
full teacher forcing :math:`\partial E/\partial y_0 = 0`.  The teacher gets its exact
gradient :math:`m_t \bar f_t` (computed only when ``teacher`` requires grad), and so does a
float mask that requires grad; a boolean mask is a constant.
:math:`\phi'` and :math:`g'` come from the saved outputs: :math:`1-h^2`, :math:`h(1-h)`,
:math:`[h>0]` for tanh, sigmoid, ReLU; :math:`1`, :math:`1-y^2`, :math:`y(1-y)` for identity,
tanh, sigmoid.  The weight gradients are single matmuls over all steps after the loop.

Under full teacher forcing no step reads the model's own output, so the feedback
projections :math:`W_{yh} y^*_{t-1}` and the outputs :math:`o_t` of all steps are single
matmuls; without hidden recurrence nothing is recurrent at all and forward and backward
run with no time loop (teacher forcing parallelises training across time).

Memory of the fused forward, kept for backward: ``T*N*(H+O)`` values (the outputs
``hs`` and ``ys``) besides the inputs.

Example (hidden and output recurrence, scheduled sampling):

>>> import torch
>>> from rnnlab.cells.jordan import jordan_sequence, jordan_sequence_reference
>>> T, N, I, H, O = 6, 2, 3, 5, 2
>>> x, h0, y0 = torch.randn(T, N, I), torch.zeros(N, H), torch.zeros(N, O)
>>> w_ih, w_yh, w_ho = torch.randn(H, I), torch.randn(H, O), torch.randn(O, H)
>>> w_hh, b_ih, b_o = torch.randn(H, H), torch.randn(H), torch.randn(O)
>>> targets = torch.randn(T, N, O)  # y*_1 .. y*_T
>>> teacher = torch.cat([y0[None], targets[:-1]])  # step t is fed y*_{t-1}
>>> mask = torch.rand(T, N) < 0.75  # teacher with probability 0.75, else own output
>>> kw = dict(weight_hh=w_hh, output="tanh", teacher=teacher, teacher_mask=mask)
>>> hs, ys = jordan_sequence(x, h0, y0, w_ih, w_yh, w_ho, b_ih, b_o, **kw)
>>> hs.shape, ys.shape
(torch.Size([6, 2, 5]), torch.Size([6, 2, 2]))
>>> ref_hs, ref_ys = jordan_sequence_reference(x, h0, y0, w_ih, w_yh, w_ho, b_ih, b_o, **kw)
>>> torch.allclose(hs, ref_hs, atol=1e-5) and torch.allclose(ys, ref_ys, atol=1e-5)
True
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnnlab.cells.elman import (
    _ACTIVATIONS,
    _ACTIVATIONS_,
    _activation_grad,
    _combined_bias,
    check_nonlinearity,
    input_projection,
    outer_sum_prev,
    step_weight,
)

OUTPUTS = ("identity", "tanh", "sigmoid")

_OUTPUTS = {"identity": lambda o: o, "tanh": torch.tanh, "sigmoid": torch.sigmoid}
_OUTPUTS_ = {"identity": lambda o: o, "tanh": torch.tanh_, "sigmoid": torch.sigmoid_}


def check_output(output: str) -> str:
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}; got {output!r}")
    return output


def fed_output(y_prev: Tensor, teacher_t: Tensor | None, mask_t: Tensor | None) -> Tensor:
    """The output fed to a step: m y*_{t-1} + (1 - m) y_{t-1}, one m per sequence.

    ``teacher_t=None`` is free-running (m = 0); ``mask_t=None`` with a teacher is
    teacher forcing (m = 1).  ``mask_t`` is (N,) in the dtype of ``y_prev``.
    """
    if teacher_t is None:
        return y_prev
    if mask_t is None:
        return teacher_t
    m = mask_t[:, None]
    return m * teacher_t + (1 - m) * y_prev


def jordan_step(
    x_t: Tensor,
    state: tuple[Tensor | None, Tensor],
    weight_ih: Tensor,
    weight_yh: Tensor,
    weight_ho: Tensor,
    bias_ih: Tensor | None,
    bias_o: Tensor | None,
    *,
    weight_hh: Tensor | None = None,
    bias_hh: Tensor | None = None,
    nonlinearity: str = "tanh",
    output: str = "identity",
) -> tuple[Tensor, Tensor]:
    """Reference step ``(x_t, (h_{t-1}, y_fed)) -> (h_t, y_t)`` with plain autograd.

    ``y_fed`` is whatever output is fed to this step (own or teacher, see
    :func:`fed_output`); ``h_{t-1}`` is ignored, and may be ``None``, without hidden
    recurrence (``weight_hh=None``).
    """
    h_prev, y_fed = state
    a = x_t @ weight_ih.t() + y_fed @ weight_yh.t()
    if bias_ih is not None:
        a = a + bias_ih
    if weight_hh is not None:
        a = a + h_prev @ weight_hh.t()
    if bias_hh is not None:
        a = a + bias_hh
    h = _ACTIVATIONS[nonlinearity](a)
    o = h @ weight_ho.t()
    if bias_o is not None:
        o = o + bias_o
    return h, _OUTPUTS[output](o)


def _float_mask(teacher_mask: Tensor | None, like: Tensor) -> Tensor | None:
    """The mask in the dtype of the data (a float mask stays differentiable)."""
    return None if teacher_mask is None else teacher_mask.to(like.dtype)


def _check_args(x, h0, y0, weight_ho, weight_hh, bias_hh, teacher, teacher_mask, nl, output):
    check_nonlinearity(nl)
    check_output(output)
    if (h0 is None) != (weight_hh is None):
        raise ValueError("h0 must be given exactly when weight_hh is (hidden recurrence)")
    if bias_hh is not None and weight_hh is None:
        raise ValueError("bias_hh needs weight_hh (hidden recurrence)")
    T, N = x.shape[:2]
    O = weight_ho.shape[0]
    if y0.shape != (N, O):
        raise ValueError(f"y0 must be (N, O) = {(N, O)}; got {tuple(y0.shape)}")
    if teacher is not None and teacher.shape != (T, N, O):
        raise ValueError(f"teacher must be (T, N, O) = {(T, N, O)}; got {tuple(teacher.shape)}")
    if teacher_mask is not None:
        if teacher is None:
            raise ValueError("teacher_mask needs a teacher")
        if teacher_mask.shape != (T, N):
            raise ValueError(
                f"teacher_mask must be (T, N) = {(T, N)}; got {tuple(teacher_mask.shape)}"
            )


def jordan_sequence_reference(
    x,
    h0,
    y0,
    weight_ih,
    weight_yh,
    weight_ho,
    bias_ih,
    bias_o,
    *,
    weight_hh=None,
    bias_hh=None,
    nonlinearity="tanh",
    output="identity",
    teacher=None,
    teacher_mask=None,
):
    """Run :func:`jordan_step` over time, choosing each fed output with :func:`fed_output`.

    Autograd derives the gradients.  Returns ``(hs, ys)``, (T, N, H) and (T, N, O).
    """
    _check_args(
        x, h0, y0, weight_ho, weight_hh, bias_hh, teacher, teacher_mask, nonlinearity, output
    )
    mask = _float_mask(teacher_mask, x)
    h, y, hs, ys = h0, y0, [], []
    for t in range(x.shape[0]):
        fed = fed_output(
            y, None if teacher is None else teacher[t], None if mask is None else mask[t]
        )
        h, y = jordan_step(
            x[t],
            (h, fed),
            weight_ih,
            weight_yh,
            weight_ho,
            bias_ih,
            bias_o,
            weight_hh=weight_hh,
            bias_hh=bias_hh,
            nonlinearity=nonlinearity,
            output=output,
        )
        hs.append(h)
        ys.append(y)
    return torch.stack(hs), torch.stack(ys)


def _output_grad(y: Tensor, output: str) -> Tensor | float:
    """g'(o) written in terms of the output y = g(o)."""
    if output == "tanh":
        return 1 - y * y
    if output == "sigmoid":
        return y * (1 - y)
    return 1.0


class JordanFunction(torch.autograd.Function):
    """Whole-sequence Jordan forward with BPTT written by hand (see the module docstring).

    ``apply(x, h0, y0, teacher, teacher_mask, weight_ih, weight_yh, weight_hh, weight_ho,
    bias_ih, bias_hh, bias_o, nonlinearity, output, recurrence)``, every optional tensor
    ``None`` when absent and ``teacher_mask`` already in the dtype of ``x``.  Returns
    ``(hs, ys)``.  ``recurrence`` (or None) runs the hidden recurrence under full teacher
    forcing, where it is the Elman loop h_t = phi(a_t + W_hh h_{t-1}): an object with
    ``forward(hs, h0, weight_hh, nonlinearity)`` (in place) and ``backward(hs, grad_h,
    weight_hh, nonlinearity, delta)`` (fills delta, returns h0's gradient), such as the
    compiled :class:`rnnlab.backends.numba_elman.ElmanRecurrence`.
    """

    @staticmethod
    def forward(
        ctx,
        x,
        h0,
        y0,
        teacher,
        teacher_mask,
        weight_ih,
        weight_yh,
        weight_hh,
        weight_ho,
        bias_ih,
        bias_hh,
        bias_o,
        nonlinearity,
        output,
        recurrence=None,
    ):
        T, N, I = x.shape
        H, O = weight_ih.shape[0], weight_ho.shape[0]
        act_, out_ = _ACTIVATIONS_[nonlinearity], _OUTPUTS_[output]
        hidden = weight_hh is not None
        # Does the model's own output enter any step?  Not under full teacher forcing.
        own_fed = teacher is None or teacher_mask is not None
        # hs[t] starts as the pre-activation a_t and is turned into h_t in place.  Input
        # projections of all steps in one matmul; the biases ride along.
        hs = input_projection(x, weight_ih, _combined_bias(bias_ih, bias_hh, x))
        if not own_fed:
            # Full teacher forcing: the feedback projections W_yh y*_{t-1} of all steps
            # are known in advance, one matmul too.
            hs.view(T * N, H).addmm_(teacher.reshape(T * N, O), weight_yh.t())
        ys = x.new_empty(T, N, O)
        b_o = bias_o if bias_o is not None else x.new_zeros(())
        w_yh_t, w_ho_t = step_weight(weight_yh), step_weight(weight_ho)
        w_hh_t = step_weight(weight_hh) if hidden else None
        h, y = h0, y0
        if own_fed:
            for t in range(T):
                teacher_t = None if teacher is None else teacher[t]
                mask_t = None if teacher_mask is None else teacher_mask[t]
                hs[t].addmm_(fed_output(y, teacher_t, mask_t), w_yh_t)
                if hidden:
                    hs[t].addmm_(h, w_hh_t)
                h = act_(hs[t])
                y = out_(torch.addmm(b_o, h, w_ho_t, out=ys[t]))
        else:
            if hidden and recurrence is not None:
                recurrence.forward(hs, h0, weight_hh, nonlinearity)
            elif hidden:
                for t in range(T):
                    hs[t].addmm_(h, w_hh_t)
                    h = act_(hs[t])
            else:
                act_(hs)
            # No output feeds back, so the outputs of all steps are one matmul.
            out_(torch.addmm(b_o, hs.view(T * N, H), w_ho_t, out=ys.view(T * N, O)))
        ctx.activations = (nonlinearity, output)
        ctx.recurrence = recurrence
        ctx.has_bias = (bias_ih is not None, bias_hh is not None, bias_o is not None)
        ctx.save_for_backward(
            x, h0, y0, teacher, teacher_mask, weight_ih, weight_yh, weight_hh, weight_ho, hs, ys
        )
        return hs, ys

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs, grad_ys):
        x, h0, y0, teacher, mask, weight_ih, weight_yh, weight_hh, weight_ho, hs, ys = (
            ctx.saved_tensors
        )
        nonlinearity, output = ctx.activations
        T, N, I = x.shape
        H, O = hs.shape[2], ys.shape[2]
        hidden = weight_hh is not None
        own_fed = teacher is None or mask is not None
        m = None if mask is None else mask[:, :, None]  # (T, N, 1)
        grad_a = torch.empty_like(hs)  # delta_t of every step
        grad_o = torch.empty_like(ys)  # o-bar_t of every step
        grad_h_next = torch.zeros_like(hs[0])  # W_hh^T delta_{t+1}
        grad_y_next = torch.zeros_like(ys[0])  # (1 - m_{t+1}) f-bar_{t+1}
        if own_fed:
            grad_fed = torch.empty_like(ys)  # f-bar_t = W_yh^T delta_t of every step
            for t in range(T - 1, -1, -1):
                grad_y = grad_ys[t] + grad_y_next
                torch.mul(grad_y, _output_grad(ys[t], output), out=grad_o[t])
                grad_h = torch.addmm(grad_hs[t], grad_o[t], weight_ho)
                if hidden:
                    grad_h += grad_h_next
                torch.mul(grad_h, _activation_grad(hs[t], nonlinearity), out=grad_a[t])
                torch.mm(grad_a[t], weight_yh, out=grad_fed[t])
                grad_y_next = grad_fed[t] if m is None else grad_fed[t] * (1 - m[t])
                if hidden:
                    grad_h_next = grad_a[t] @ weight_hh
        else:
            # Full teacher forcing: y_t feeds nothing, so o-bar_t and the gradient
            # reaching h_t from the output are computed for all steps at once.
            torch.mul(grad_ys, _output_grad(ys, output), out=grad_o)
            grad_h = torch.addmm(grad_hs.reshape(T * N, H), grad_o.view(T * N, O), weight_ho)
            grad_h = grad_h.view(T, N, H)
            if hidden and ctx.recurrence is not None:
                grad_h_next = ctx.recurrence.backward(hs, grad_h, weight_hh, nonlinearity, grad_a)
            elif hidden:
                for t in range(T - 1, -1, -1):
                    grad_h_t = grad_h[t] + grad_h_next
                    torch.mul(grad_h_t, _activation_grad(hs[t], nonlinearity), out=grad_a[t])
                    grad_h_next = grad_a[t] @ weight_hh
            else:
                torch.mul(grad_h, _activation_grad(hs, nonlinearity), out=grad_a)
            grad_fed = (grad_a.view(T * N, H) @ weight_yh).view(T, N, O)

        needs = ctx.needs_input_grad
        grad_x = grad_h0 = grad_y0 = grad_teacher = grad_mask = None
        grad_w_ih = grad_w_yh = grad_w_hh = grad_w_ho = grad_b_ih = grad_b_hh = grad_b_o = None
        delta = grad_a.view(T * N, H)
        d_o = grad_o.view(T * N, O)
        y_prev = None  # own y_{t-1} of every step: not read under full teacher forcing
        if needs[4] or (needs[6] and own_fed):
            y_prev = torch.cat([y0.unsqueeze(0), ys[:-1]])
        if needs[0]:
            grad_x = (delta @ weight_ih).view(T, N, I)
        if needs[1]:
            grad_h0 = grad_h_next
        if needs[2]:
            # (1 - m_1) f-bar_1; zeros under full teacher forcing, where no step reads y0.
            grad_y0 = grad_y_next
        if needs[3]:
            grad_teacher = grad_fed if m is None else grad_fed * m
        if needs[4]:
            grad_mask = (grad_fed * (teacher - y_prev)).sum(2)
        # (x^T delta)^T rather than delta^T x where the narrow operand is x: the same
        # sums, 1.3-1.5x faster at (2500 x 65) by (2500 x 128) on two threads
        # (see rnnlab.cells.lstm.ext_parameter_grads); not for W_ho, where it was slower
        if needs[5]:
            grad_w_ih = (x.reshape(T * N, I).t() @ delta).t()
        if needs[6]:
            y_flat = None if y_prev is None else y_prev.view(T * N, O)
            fed = fed_output(y_flat, _flat(teacher), _flat(mask))
            grad_w_yh = (fed.reshape(T * N, O).t() @ delta).t()
        if needs[7]:
            grad_w_hh = outer_sum_prev(h0, hs, grad_a).t()
        if needs[8]:
            grad_w_ho = d_o.t() @ hs.view(T * N, H)
        if any(needs[9:11]):
            grad_b = delta.sum(0)
            grad_b_ih = grad_b if ctx.has_bias[0] else None
            grad_b_hh = grad_b if ctx.has_bias[1] else None
        if needs[11] and ctx.has_bias[2]:
            grad_b_o = d_o.sum(0)
        return (
            grad_x,
            grad_h0,
            grad_y0,
            grad_teacher,
            grad_mask,
            grad_w_ih,
            grad_w_yh,
            grad_w_hh,
            grad_w_ho,
            grad_b_ih,
            grad_b_hh,
            grad_b_o,
            None,
            None,
            None,
        )


def _flat(t: Tensor | None) -> Tensor | None:
    """Merge the time and batch dimensions: (T, N, ...) -> (T*N, ...)."""
    return None if t is None else t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])


def jordan_sequence(
    x,
    h0,
    y0,
    weight_ih,
    weight_yh,
    weight_ho,
    bias_ih,
    bias_o,
    *,
    weight_hh=None,
    bias_hh=None,
    nonlinearity="tanh",
    output="identity",
    teacher=None,
    teacher_mask=None,
    recurrence=None,
):
    """Fused Jordan sequence: ``(hs, ys)`` with hand-derived BPTT as its backward.

    Same arguments and results as :func:`jordan_sequence_reference`; ``recurrence``: see
    :class:`JordanFunction` (the compiled hidden recurrence of ``backend="numba"``).
    """
    _check_args(
        x, h0, y0, weight_ho, weight_hh, bias_hh, teacher, teacher_mask, nonlinearity, output
    )
    return JordanFunction.apply(
        x,
        h0,
        y0,
        teacher,
        _float_mask(teacher_mask, x),
        weight_ih,
        weight_yh,
        weight_hh,
        weight_ho,
        bias_ih,
        bias_hh,
        bias_o,
        nonlinearity,
        output,
        recurrence,
    )

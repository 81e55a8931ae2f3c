"""Layer-level tests of the Pascanu-form and Jordan (output-recurrence) layers: both
backends agree, variable lengths, chunked equals whole, teacher forcing, bad input."""

import pytest
import torch

from rnnlab.cells.jordan import jordan_sequence_reference
from rnnlab.cells.pascanu import pascanu_sequence_reference
from rnnlab.layers import JordanRNN, PascanuRNN

F64 = torch.float64
T, N, I, H, O = 9, 3, 4, 6, 2
LENGTHS = [9, 4, 6]


def grads(module, loss):
    return torch.autograd.grad(loss, list(module.parameters()))


def twin(cls, *args, **kwargs):
    torch.manual_seed(0)
    fused = cls(*args, **kwargs, dtype=F64)
    reference = cls(*args, **kwargs, backend="reference", dtype=F64)
    reference.load_state_dict(fused.state_dict())
    return fused, reference


@pytest.mark.parametrize("sigma", ["tanh", "sigmoid"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("lengths", [None, LENGTHS])
def test_pascanu_layer_backends_agree(sigma, bidirectional, lengths):
    fused, reference = twin(
        PascanuRNN, I, H, num_layers=2, sigma=sigma, bidirectional=bidirectional
    )
    x = torch.randn(T, N, I, dtype=F64, requires_grad=True)
    w = torch.randn(T, N, H * (2 if bidirectional else 1), dtype=F64)
    results = []
    for m in (fused, reference):
        out, xn = m(x, lengths=lengths)
        loss = (out * w).sum() + xn.pow(2).sum()
        results.append((out, xn, *torch.autograd.grad(loss, [x, *m.parameters()])))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_pascanu_layer_emits_sigma_of_its_state():
    layer = PascanuRNN(I, H, sigma="sigmoid", dtype=F64)
    u, x0 = torch.randn(T, N, I, dtype=F64), torch.randn(1, N, H, dtype=F64)
    out, xn = layer(u, x0)
    xs = pascanu_sequence_reference(
        u, x0[0], layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_l0, "sigmoid"
    )
    torch.testing.assert_close(out, torch.sigmoid(xs), atol=1e-12, rtol=0)
    torch.testing.assert_close(xn[0], xs[-1], atol=1e-12, rtol=0)
    assert [n for n, _ in layer.named_parameters()] == ["weight_ih_l0", "weight_hh_l0", "bias_l0"]


def test_pascanu_chunked_equals_whole_and_lengths_cut_each_sequence():
    layer = PascanuRNN(I, H, num_layers=2, dtype=F64)
    x = torch.randn(T, N, I, dtype=F64)
    whole, final = layer(x)
    state, parts = None, []
    for chunk in x.split([2, 4, 3]):
        out, state = layer(chunk, state)
        parts.append(out)
    torch.testing.assert_close(torch.cat(parts), whole, atol=1e-12, rtol=0)
    torch.testing.assert_close(state, final, atol=1e-12, rtol=0)
    out, xn = layer(x, lengths=LENGTHS)
    for n, length in enumerate(LENGTHS):
        alone, xa = layer(x[:length, n : n + 1])
        torch.testing.assert_close(out[:length, n : n + 1], alone, atol=1e-12, rtol=0)
        torch.testing.assert_close(xn[:, n : n + 1], xa, atol=1e-12, rtol=0)


@pytest.mark.parametrize("hidden_recurrence", [False, True])
@pytest.mark.parametrize("feeding", ["free", "teacher", "scheduled"])
@pytest.mark.parametrize("lengths", [None, LENGTHS])
def test_jordan_layer_backends_agree(hidden_recurrence, feeding, lengths):
    fused, reference = twin(
        JordanRNN, I, H, O, hidden_recurrence=hidden_recurrence, output="tanh", batch_first=True
    )
    x = torch.randn(N, T, I, dtype=F64, requires_grad=True)
    teacher = torch.randn(N, T, O, dtype=F64) if feeding != "free" else None
    mask = (torch.rand(N, T) < 0.5) if feeding == "scheduled" else None
    w = torch.randn(N, T, O, dtype=F64)
    results = []
    for m in (fused, reference):
        ys, state = m(x, teacher=teacher, teacher_mask=mask, lengths=lengths)
        states = state if isinstance(state, tuple) else (state,)
        loss = (ys * w).sum() + sum(s.pow(2).sum() for s in states)
        results.append((ys, *states, *torch.autograd.grad(loss, [x, *m.parameters()])))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_jordan_layer_matches_the_cell_and_carries_state_across_chunks():
    layer = JordanRNN(I, H, O, hidden_recurrence=True, dtype=F64)
    x = torch.randn(T, N, I, dtype=F64)
    teacher = torch.randn(T, N, O, dtype=F64)
    mask = (torch.rand(T, N) < 0.5).to(F64)
    h0, y0 = torch.randn(1, N, H, dtype=F64), torch.randn(1, N, O, dtype=F64)
    ys, (hn, yn) = layer(x, (h0, y0), teacher=teacher, teacher_mask=mask)
    p = layer.direction_parameters(0)
    hs, ref = jordan_sequence_reference(
        x,
        h0[0],
        y0[0],
        p["weight_ih"],
        p["weight_yh"],
        p["weight_ho"],
        p["bias_ih"],
        p["bias_o"],
        weight_hh=p["weight_hh"],
        bias_hh=p["bias_hh"],
        teacher=teacher,
        teacher_mask=mask,
    )
    torch.testing.assert_close(ys, ref, atol=1e-12, rtol=0)
    state, parts = (h0, y0), []
    for sl in (slice(0, 3), slice(3, 4), slice(4, T)):
        out, state = layer(x[sl], state, teacher=teacher[sl], teacher_mask=mask[sl])
        parts.append(out)
    torch.testing.assert_close(torch.cat(parts), ys, atol=1e-12, rtol=0)
    torch.testing.assert_close(state[0], hn, atol=1e-12, rtol=0)
    torch.testing.assert_close(state[1], yn, atol=1e-12, rtol=0)


def test_jordan_teacher_mask_extremes():
    layer = JordanRNN(I, H, O, dtype=F64)
    x, teacher = torch.randn(T, N, I, dtype=F64), torch.randn(T, N, O, dtype=F64)
    forced, _ = layer(x, teacher=teacher)
    torch.testing.assert_close(
        layer(x, teacher=teacher, teacher_mask=torch.ones(T, N))[0], forced, atol=1e-12, rtol=0
    )
    torch.testing.assert_close(
        layer(x, teacher=teacher, teacher_mask=torch.zeros(T, N))[0],
        layer(x)[0],
        atol=1e-12,
        rtol=0,
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(teacher=torch.zeros(T, N, O + 1, dtype=F64)), "teacher must have"),
        (dict(teacher_mask=torch.ones(T, N)), "teacher_mask needs a teacher"),
        (
            dict(teacher=torch.zeros(T, N, O, dtype=F64), teacher_mask=torch.ones(T, N + 1)),
            "teacher_mask must have shape",
        ),
        (dict(lengths=[T + 1, 1, 1]), "must not exceed"),
    ],
)
def test_jordan_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        JordanRNN(I, H, O, dtype=F64)(torch.randn(T, N, I, dtype=F64), **kwargs)


def test_jordan_is_one_layer_one_direction():
    with pytest.raises(ValueError, match="one layer in one direction"):
        JordanRNN(I, H, O, num_layers=2)
    with pytest.raises(ValueError, match="one layer in one direction"):
        JordanRNN(I, H, O, bidirectional=True)

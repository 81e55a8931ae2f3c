"""Differential test: rnnlab layers against torch.nn on every configuration combination.

Outputs, final states and gradients (input, initial state, every parameter) must agree to
1e-10 in float64 and 1e-5 in float32, padded (``lengths=``) and packed inputs included.
"""

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnlab

T, N, I, H = 6, 4, 5, 7
LENGTHS = [6, 2, 4, 1]  # unsorted on purpose; torch.nn sorts inside the PackedSequence
CELLS = {
    "rnn-tanh": (rnnlab.RNN, torch.nn.RNN, {"nonlinearity": "tanh"}),
    "rnn-relu": (rnnlab.RNN, torch.nn.RNN, {"nonlinearity": "relu"}),
    "lstm": (rnnlab.LSTM, torch.nn.LSTM, {}),
    "gru": (rnnlab.GRU, torch.nn.GRU, {}),
    "lstm-proj": (rnnlab.LSTM, torch.nn.LSTM, {"proj_size": 3}),
}
CONFIGS = list(
    itertools.product(
        CELLS,
        [1, 2, 3],  # num_layers
        [False, True],  # bidirectional
        [False, True],  # batch_first
        [True, False],  # bias
        [False, True],  # variable lengths
        [torch.float64, torch.float32],
    )
)


def tolerance(dtype):
    return dict(atol=1e-10, rtol=1e-10) if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-5)


def states_of(state):
    return list(state) if isinstance(state, tuple) else [state]


def make_pair(cell, layers, bidirectional, batch_first, bias, dtype, seed=0, **extra):
    """A torch.nn module and an rnnlab layer on the fused path with its weights (the torch
    path is held to torch.nn in test_backends_training.py)."""
    ours_cls, torch_cls, kwargs = CELLS[cell]
    torch.manual_seed(seed)
    reference = torch_cls(
        I,
        H,
        num_layers=layers,
        bidirectional=bidirectional,
        batch_first=batch_first,
        bias=bias,
        **kwargs,
        **extra,
    ).to(dtype)
    if cell == "rnn-relu":  # keep units alive so gradients are informative
        with torch.no_grad():
            for name, p in reference.named_parameters():
                if name.startswith("bias"):
                    p.add_(0.3)
    ours = ours_cls.from_torch(reference, backend="fused")
    return ours, reference


def run_and_grads(module, x, state, lengths, packed, batch_first, weights):
    """Outputs (padded), final states and gradients w.r.t. x, state and parameters."""
    params = list(module.parameters())
    if packed:
        inp = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
        out, final = module(inp, state)
        out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)
    elif lengths is not None:
        out, final = module(x, state, lengths=lengths)
    else:
        out, final = module(x, state)
    finals = states_of(final)
    loss = (out * weights[0]).sum() + sum(
        (f * w).sum() for f, w in zip(finals, weights[1:], strict=True)
    )
    grads = torch.autograd.grad(loss, [x, *states_of(state), *params])
    return out, finals, grads


@pytest.mark.parametrize("cell, layers, bidirectional, batch_first, bias, varlen, dtype", CONFIGS)
def test_matches_torch_nn(cell, layers, bidirectional, batch_first, bias, varlen, dtype):
    ours, reference = make_pair(cell, layers, bidirectional, batch_first, bias, dtype)
    D = 2 if bidirectional else 1
    g = torch.Generator().manual_seed(1)
    shape = (N, T, I) if batch_first else (T, N, I)
    x = torch.randn(shape, generator=g, dtype=dtype, requires_grad=True)
    sizes = ours.state_sizes()
    state = tuple(
        torch.randn(D * layers, N, size, generator=g, dtype=dtype, requires_grad=True)
        for size in sizes
    )
    state = state if len(sizes) == 2 else state[0]
    out = ours.output_size
    out_shape = (N, T, D * out) if batch_first else (T, N, D * out)
    weights = [torch.randn(out_shape, generator=g, dtype=dtype)]
    weights += [torch.randn(D * layers, N, size, generator=g, dtype=dtype) for size in sizes]
    lengths = torch.tensor(LENGTHS) if varlen else None

    expected = run_and_grads(reference, x, state, lengths, varlen, batch_first, weights)
    tol = tolerance(dtype)
    modes = [False, True] if varlen else [False]  # padded lengths= and PackedSequence
    for packed in modes:
        got = run_and_grads(ours, x, state, lengths, packed, batch_first, weights)
        torch.testing.assert_close(got[0], expected[0], **tol)
        for a, b in zip(got[1], expected[1], strict=True):
            torch.testing.assert_close(a, b, **tol)
        for a, b in zip(got[2], expected[2], strict=True):
            torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("cell", list(CELLS))
def test_state_dict_moves_both_ways(cell):
    ours, reference = make_pair(cell, 2, True, False, True, torch.float64)
    assert list(ours.state_dict()) == list(reference.state_dict())
    back = ours.to_torch()
    assert type(back) is type(reference)
    for k, v in reference.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)
    fresh_ours = CELLS[cell][0](
        I, H, num_layers=2, bidirectional=True, dtype=torch.float64, **CELLS[cell][2]
    )
    fresh_ours.load_state_dict(reference.state_dict())
    x = torch.randn(T, N, I, dtype=torch.float64)
    torch.testing.assert_close(fresh_ours(x)[0], reference(x)[0], atol=1e-12, rtol=0)


def test_padding_neither_changes_state_nor_receives_gradient():
    lstm = rnnlab.LSTM(I, H, num_layers=2, bidirectional=True, dtype=torch.float64, backend="fused")
    x = torch.randn(T, N, I, dtype=torch.float64, requires_grad=True)
    out, (h, c) = lstm(x, lengths=LENGTHS)
    (out.sum() + h.sum() + c.sum()).backward()
    for n, length in enumerate(LENGTHS):
        assert (out[length:, n] == 0).all()
        assert (x.grad[length:, n] == 0).all()
        # each sequence alone, cut to its own length, gives the same result
        alone, (ha, ca) = lstm(x[:length, n : n + 1].detach())
        torch.testing.assert_close(out[:length, n : n + 1], alone, atol=1e-12, rtol=0)
        torch.testing.assert_close(h[:, n : n + 1], ha, atol=1e-12, rtol=0)
        torch.testing.assert_close(c[:, n : n + 1], ca, atol=1e-12, rtol=0)


def test_mask_equals_lengths():
    rnn = rnnlab.RNN(I, H, batch_first=True, bidirectional=True, dtype=torch.float64)
    x = torch.randn(N, T, I, dtype=torch.float64)
    mask = torch.arange(T).unsqueeze(0) < torch.tensor(LENGTHS).unsqueeze(1)  # (N, T)
    a, ha = rnn(x, mask=mask)
    b, hb = rnn(x, lengths=LENGTHS)
    assert torch.equal(a, b) and torch.equal(ha, hb)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lengths=[6, 2, 4]), r"lengths must have shape \(4,\)"),
        (dict(lengths=[7, 2, 4, 1]), "must not exceed the sequence length 6"),
        (dict(lengths=[6, 0, 4, 1]), "lengths must be positive"),
        (dict(lengths=[6.0, 2.0, 4.0, 1.0]), "lengths must be integers"),
        (dict(lengths=[2, 6, 4, 1], enforce_sorted=True), "sorted in decreasing order"),
        (dict(mask=torch.tensor([[1, 0, 1, 1, 1, 1]] * 4).bool().t()), "prefix"),
        (dict(mask=torch.ones(6, 3).bool()), r"mask must have the input's shape \(6, 4\)"),
        (dict(lengths=[6, 2, 4, 1], mask=torch.ones(6, 4).bool()), "not both"),
    ],
)
def test_bad_lengths_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        rnnlab.LSTM(I, H)(torch.randn(T, N, I), **kwargs)


def test_from_torch_rejects_the_wrong_class_and_sigmoid_has_no_counterpart():
    with pytest.raises(ValueError, match="torch.nn.LSTM"):
        rnnlab.LSTM.from_torch(torch.nn.GRU(2, 3))
    with pytest.raises(ValueError, match="sigmoid"):
        rnnlab.RNN(2, 3, nonlinearity="sigmoid").to_torch()
    with pytest.raises(ValueError, match="cho"):
        rnnlab.GRU(2, 3, form="cho").to_torch()

"""Training backends of the layers (``backend="auto" | "fused" | "reference" | "torch" | "numba"``).

Every path that can run a configuration passes the four tiers the reference passes:
float64 agreement with ``backend="reference"`` (outputs, final states and the gradients of
input, initial state and every parameter, to 1e-10), ``torch.autograd.gradcheck``,
agreement with ``torch.nn`` loaded with the same weights, and chunked equals whole with
the state carried.  Then the rule of ``auto``: which path it takes, that it never takes
``torch`` where ``torch.nn`` computes another function, and that the choice is visible.
No timings here: the speed behind the rule is measured by ``rnnlab bench speed``.
"""

import copy
import logging

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnlab
from rnnlab.backends.training import choose_training_backend

F64 = torch.float64
T, N, I, H = 6, 4, 3, 5
LENGTHS = [6, 2, 4, 1]
TIGHT = dict(atol=1e-10, rtol=1e-10)
F32 = dict(atol=1e-5, rtol=1e-5)

# name -> (rnnlab class, torch.nn class, kwargs): the configurations with a torch.nn kernel
COUNTERPARTS = {
    "lstm": (rnnlab.LSTM, torch.nn.LSTM, {}),
    "lstm-proj": (rnnlab.LSTM, torch.nn.LSTM, {"proj_size": 2}),
    "gru": (rnnlab.GRU, torch.nn.GRU, {}),
    "rnn-tanh": (rnnlab.RNN, torch.nn.RNN, {"nonlinearity": "tanh"}),
    "rnn-relu": (rnnlab.RNN, torch.nn.RNN, {"nonlinearity": "relu"}),
}
# configurations torch.nn cannot compute: auto must not take torch, "torch" must refuse
NO_COUNTERPART = {
    "lstm-peephole": (rnnlab.LSTM, {"peephole": True}),
    "lstm-layer-norm": (rnnlab.LSTM, {"layer_norm": True}),
    "lstm-zoneout": (rnnlab.LSTM, {"zoneout": 0.1}),
    "lstm-recurrent-dropout": (rnnlab.LSTM, {"recurrent_dropout": 0.25}),
    "gru-cho": (rnnlab.GRU, {"form": "cho"}),
    "rnn-sigmoid": (rnnlab.RNN, {"nonlinearity": "sigmoid"}),
    "pascanu": (rnnlab.PascanuRNN, {}),
}
FAST_PATHS = ("fused", "torch")


def make(cell, backend, dtype=F64, seed=0, **kw):
    cls, _, extra = COUNTERPARTS[cell]
    torch.manual_seed(seed)
    layer = cls(I, H, backend=backend, dtype=dtype, **extra, **kw)
    if cell == "rnn-relu":  # keep ReLU units alive so no gradient is trivially zero
        with torch.no_grad():
            for name, p in layer.named_parameters():
                if name.startswith("bias"):
                    p.add_(0.3)
    return layer


def twin(layer, backend):
    """A copy of ``layer`` (same weights) on another backend."""
    other = copy.deepcopy(layer)
    other.backend = backend
    return other


def states_of(state):
    return list(state) if isinstance(state, tuple) else [state]


def inputs(layer, batch_first, dtype=F64, seed=1):
    g = torch.Generator().manual_seed(seed)
    D = layer.num_directions
    shape = (N, T, I) if batch_first else (T, N, I)
    x = torch.randn(shape, generator=g, dtype=dtype)
    state = [
        torch.randn(D * layer.num_layers, N, size, generator=g, dtype=dtype)
        for size in layer.state_sizes()
    ]
    out_shape = (N, T, D * layer.output_size) if batch_first else (T, N, D * layer.output_size)
    weights = [torch.randn(out_shape, generator=g, dtype=dtype)]
    weights += [torch.randn(s.shape, generator=g, dtype=dtype) for s in state]
    return x, state, weights


def run_and_grads(module, x, state, weights, lengths=None, packed=False, batch_first=False):
    """Outputs (padded), final states and the gradients of x, the state and every parameter."""
    x = x.clone().requires_grad_()
    state = [s.clone().requires_grad_() for s in state]
    hx = tuple(state) if len(state) == 2 else state[0]
    if packed:
        inp = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
        out, final = module(inp, hx)
        out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)
    elif lengths is not None:
        out, final = module(x, hx, lengths=lengths)
    else:
        out, final = module(x, hx)
    finals = states_of(final)
    loss = (out * weights[0]).sum() + sum(
        (f * w).sum() for f, w in zip(finals, weights[1:], strict=True)
    )
    grads = torch.autograd.grad(loss, [x, *state, *module.parameters()])
    return [out, *finals, *grads]


def assert_runs_close(got, expected, tol):
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, **tol)


# -- tier 1: every fast path equals the reference in float64 ------------------------------

# two layers throughout (the second reads the first's output); batch_first alternates
CASES = [
    (cell, bidirectional, varlen, (bidirectional + k) % 2 == 1)
    for cell in COUNTERPARTS
    for bidirectional in (False, True)
    for k, varlen in enumerate(("full", "lengths", "packed"))
]


@pytest.mark.parametrize("backend", FAST_PATHS)
@pytest.mark.parametrize("cell, bidirectional, varlen, batch_first", CASES)
def test_fast_paths_equal_the_reference_in_float64(
    backend, cell, bidirectional, varlen, batch_first
):
    kw = dict(num_layers=2, bidirectional=bidirectional, batch_first=batch_first)
    ours = make(cell, backend, **kw)
    reference = twin(ours, "reference")
    assert ours.backend_choice().name == backend
    x, state, weights = inputs(ours, batch_first)
    lengths = None if varlen == "full" else torch.tensor(LENGTHS)
    packed = varlen == "packed"
    expected = run_and_grads(reference, x, state, weights, lengths, packed, batch_first)
    got = run_and_grads(ours, x, state, weights, lengths, packed, batch_first)
    assert_runs_close(got, expected, TIGHT)


@pytest.mark.parametrize("cell", list(COUNTERPARTS))
def test_no_bias_and_unbatched_input(cell):
    ours = make(cell, "torch", num_layers=2, bias=False)
    reference = twin(ours, "reference")
    x = torch.randn(T, I, dtype=F64)
    torch.testing.assert_close(ours(x)[0], reference(x)[0], **TIGHT)
    x, state, weights = inputs(ours, False)
    assert_runs_close(
        run_and_grads(ours, x, state, weights), run_and_grads(reference, x, state, weights), TIGHT
    )


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn-tanh"])
def test_dropout_between_layers_draws_the_same_masks_on_every_path(cell):
    """The driver applies dropout between layers for every path, so one seed gives one
    result whichever path runs (auto may switch paths without changing training)."""
    ours = make(cell, "torch", num_layers=3, dropout=0.4, bidirectional=True)
    x, state, weights = inputs(ours, False)
    runs = {}
    for backend in ("torch", "fused", "reference"):
        layer = twin(ours, backend).train()
        torch.manual_seed(5)
        runs[backend] = run_and_grads(layer, x, state, weights, torch.tensor(LENGTHS))
    assert_runs_close(runs["torch"], runs["reference"], TIGHT)
    assert_runs_close(runs["fused"], runs["reference"], TIGHT)


# -- tier 2: gradcheck ---------------------------------------------------------------------


@pytest.mark.parametrize("varlen", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("cell", list(COUNTERPARTS))
def test_gradcheck_torch_path(cell, varlen):
    cls, _, extra = COUNTERPARTS[cell]
    torch.manual_seed(0)  # small sizes: gradcheck perturbs every parameter
    layer = cls(2, 3, num_layers=2, bidirectional=varlen, backend="torch", dtype=F64, **extra)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 2, generator=g, dtype=F64)
    D = layer.num_directions
    state = [torch.randn(D * 2, 3, n, generator=g, dtype=F64) for n in layer.state_sizes()]
    lengths = torch.tensor([4, 2, 3]) if varlen else None
    params = list(layer.parameters())
    names = [name for name, _ in layer.named_parameters()]

    def fn(x, *tensors):
        st, ps = tensors[: len(state)], tensors[len(state) :]
        hx = tuple(st) if len(st) == 2 else st[0]
        out, final = torch.func.functional_call(
            layer, dict(zip(names, ps, strict=True)), (x, hx), {"lengths": lengths}
        )
        return (out, *states_of(final))

    args = [x.requires_grad_(), *(s.requires_grad_() for s in state)]
    args += [p.detach().clone().requires_grad_() for p in params]
    assert torch.autograd.gradcheck(fn, tuple(args), eps=1e-6, atol=1e-6)


# -- tier 3: torch.nn agreement --------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("varlen", ["full", "lengths", "packed"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", list(COUNTERPARTS))
def test_torch_and_auto_paths_match_torch_nn(cell, bidirectional, varlen, dtype):
    _, torch_cls, extra = COUNTERPARTS[cell]
    torch.manual_seed(3)
    theirs = torch_cls(I, H, num_layers=2, bidirectional=bidirectional, **extra).to(dtype)
    lengths = None if varlen == "full" else torch.tensor(LENGTHS)
    tol = TIGHT if dtype == F64 else F32
    for backend in ("torch", "auto"):
        ours = COUNTERPARTS[cell][0].from_torch(theirs, backend=backend)
        x, state, weights = inputs(ours, False, dtype=dtype)
        expected_lengths = lengths if varlen != "full" else None
        got = run_and_grads(ours, x, state, weights, lengths, varlen == "packed")
        # torch.nn takes variable lengths only packed
        expected = run_and_grads(theirs, x, state, weights, expected_lengths, varlen != "full")
        assert_runs_close(got, expected, tol)


# -- tier 4: chunked equals whole ----------------------------------------------------------


@pytest.mark.parametrize("cell, bidirectional, varlen, batch_first", CASES)
def test_numba_path_equals_the_reference_in_float64(cell, bidirectional, varlen, batch_first):
    """The compiled path through the same cases (its own files test the options)."""
    test_fast_paths_equal_the_reference_in_float64(
        "numba", cell, bidirectional, varlen, batch_first
    )


@pytest.mark.parametrize("cell", list(COUNTERPARTS))
def test_numba_path_chunked_equals_whole(cell):
    test_chunked_equals_whole_with_state_carried(cell, "numba")


@pytest.mark.parametrize("backend", FAST_PATHS)
@pytest.mark.parametrize("cell", list(COUNTERPARTS))
def test_chunked_equals_whole_with_state_carried(cell, backend):
    layer = make(cell, backend, num_layers=2)
    x, state, _ = inputs(layer, False)
    whole, whole_final = layer(x, tuple(state) if len(state) == 2 else state[0])
    outs, carried = [], tuple(state) if len(state) == 2 else state[0]
    for chunk in (x[:2], x[2:3], x[3:]):
        out, carried = layer(chunk, carried)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs), whole, **TIGHT)
    for a, b in zip(states_of(carried), states_of(whole_final), strict=True):
        torch.testing.assert_close(a, b, **TIGHT)


# -- the rule of auto and its visibility ---------------------------------------------------


@pytest.mark.parametrize(
    "cell, expected",
    [
        ("lstm", "torch"),
        ("lstm-proj", "numba"),
        ("gru", "numba"),
        ("rnn-tanh", "numba"),
        ("rnn-relu", "numba"),
    ],
)
def test_auto_on_the_cpu(cell, expected):
    layer = make(cell, "auto", dtype=torch.float32)
    assert layer.backend == "auto"
    assert layer.backend_choice().name == expected
    assert f"backend='auto' -> '{expected}'" in repr(layer)


def test_auto_is_the_default_and_explicit_backends_show_plainly():
    assert rnnlab.LSTM(2, 3).backend == "auto"
    assert "backend='fused')" in repr(rnnlab.GRU(2, 3, backend="fused"))
    assert "->" not in repr(rnnlab.LSTM(2, 3, backend="torch"))


@pytest.mark.parametrize("name", list(NO_COUNTERPART))
def test_auto_never_takes_torch_without_a_counterpart(name):
    cls, kw = NO_COUNTERPART[name]
    layer = cls(I, H, **kw)
    choice = layer.backend_choice()
    assert choice.name == "numba"  # every one of them takes the compiled steps on the CPU
    assert choice.reason  # says why
    with pytest.raises(ValueError, match="backend 'torch' cannot run this layer"):
        cls(I, H, backend="torch", **kw)


def test_jordan_without_hidden_recurrence_stays_fused_and_refuses_torch():
    assert rnnlab.JordanRNN(3, 4, 2).backend_choice().name == "fused"
    with pytest.raises(ValueError, match="no torch.nn counterpart"):
        rnnlab.JordanRNN(3, 4, 2, backend="torch")


def test_auto_prefers_torch_on_a_gpu():
    """On a GPU every counterpart goes to torch (cuDNN); checked without a GPU by asking the
    rule with the device faked."""
    layer = make("gru", "auto", dtype=torch.float32)
    choice = choose_training_backend(layer)
    assert choice.name == "numba"
    import rnnlab.backends.training as training

    original = training._device
    try:
        training._device = lambda _layer: torch.device("cuda")
        assert choose_training_backend(layer).name == "torch"
        assert choose_training_backend(make("rnn-relu", "auto")).name == "torch"
        assert choose_training_backend(rnnlab.GRU(I, H, form="cho")).name == "fused"
    finally:
        training._device = original


def test_the_choice_is_logged_once(caplog):
    layer = make("lstm", "auto", dtype=torch.float32)
    with caplog.at_level(logging.INFO, logger="rnnlab"):
        layer(torch.randn(T, N, I))
        layer(torch.randn(T, N, I))
    lines = [r.getMessage() for r in caplog.records if "backend" in r.getMessage()]
    assert lines == [
        "LSTM: backend 'auto' -> torch (torch.nn.LSTM's kernel, faster than fused on the CPU)"
    ]


def test_unknown_backend_is_rejected():
    with pytest.raises(
        ValueError, match="backend must be one of auto, fused, reference, torch, numba"
    ):
        rnnlab.LSTM(2, 3, backend="cuda")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_language_model_trains_on_the_auto_path(cell):
    from rnnlab.models import LanguageModel, ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=7, cell=cell, num_layers=2, hidden_size=8, backend="auto")
    model = LanguageModel(config)
    idx = torch.randint(7, (3, 5))
    logits, loss, _ = model(idx, targets=idx)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("backend", ["auto", "numba", "fused", "torch"])
def test_an_empty_batch_gives_empty_outputs_on_every_path(backend):
    # torch.nn returns (T, 0, H); the compiled and fused kernels expect rows, so the
    # layer takes the reference path for that call, and the next call its own again
    layers = [
        (rnnlab.LSTM(3, 5, num_layers=2, bidirectional=True, backend=backend), (4, 0, 10)),
        (rnnlab.GRU(3, 5, backend=backend), (4, 0, 5)),
        (rnnlab.RNN(3, 5, backend=backend), (4, 0, 5)),
    ]
    if backend != "torch":
        layers += [
            (rnnlab.LSTM(3, 5, proj_size=2, backend=backend), (4, 0, 2)),
            (rnnlab.PascanuRNN(3, 5, backend=backend), (4, 0, 5)),
        ]
    for layer, shape in layers:
        x = torch.randn(4, 0, 3, requires_grad=True)
        out, final = layer(x)
        assert tuple(out.shape) == shape
        for f in final if isinstance(final, tuple) else (final,):
            assert f.shape[1] == 0
        out.sum().backward()
        assert tuple(x.grad.shape) == (4, 0, 3)
        assert layer.backend_choice().name == "reference"
        layer(torch.randn(4, 2, 3))
        assert layer.backend_choice() == choose_training_backend(layer)
    path = backend if backend != "torch" else "auto"  # Jordan has no torch.nn kernel
    jordan = rnnlab.JordanRNN(3, 5, 2, hidden_recurrence=True, backend=path)
    out, _ = jordan(torch.randn(4, 0, 3), teacher=torch.randn(4, 0, 2))
    assert tuple(out.shape) == (4, 0, 2)

"""The compiled LSTM training path (``backend="numba"``, :mod:`rnnlab.backends.numba_lstm`).

The four tiers of the other paths: the sequence function against the reference in float64
for every combination of options (outputs and the gradients of every input), gradcheck,
the layer against the reference layer (stacked, bidirectional, with lengths) and against
``torch.nn.LSTM``, chunked equals whole; then float32 against the fused path, the rule of
``auto`` and the one-line errors.  No timings: ``rnnlab bench speed`` measures the speed.
"""

import copy
import itertools

import pytest
import torch

import rnnlab
from conftest import split_into
from rnnlab.backends import buffers
from rnnlab.backends.numba_lstm import lstm_compiled_sequence
from rnnlab.cells.lstm import lstm_ext_sequence, lstm_ext_sequence_reference

F64 = torch.float64
T, N, I, H = 5, 3, 4, 6
TIGHT = dict(atol=1e-10, rtol=1e-10)
F32 = dict(atol=2e-5, rtol=2e-5)
OPTIONS = ("peephole", "ln", "drop", "zoneout")


def problem(dtype, on, zoneout_training=True, seed=1, rows=N, hidden=H):
    """Arguments, options and the tensors to differentiate, for the options in ``on``
    (``rows`` sequences: 1 takes the one-call compiled loop, ``SEQUENCE_ROWS``)."""
    g = torch.Generator().manual_seed(seed)
    N, H = rows, hidden
    P = 3 if "proj" in on else H  # the size of h: projected to 3 units

    def rand(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=g, dtype=dtype)

    def coin(p, *shape):
        return torch.bernoulli(torch.full(shape, p, dtype=dtype), generator=g)

    args = [rand(T, N, I), rand(N, P), rand(N, H), rand(4 * H, I, scale=0.5)]
    args += [rand(4 * H, P, scale=0.5), rand(4 * H), rand(4 * H)]
    opts, leaves = {}, list(args)
    if "proj" in on:
        opts["weight_hr"] = rand(P, H, scale=0.5)
        leaves.append(opts["weight_hr"])
    if "peephole" in on:
        opts["peephole"] = rand(3, H)
        leaves.append(opts["peephole"])
    if "ln" in on:  # gains near 1, shifts near 0, none trivial
        ln = [1 + rand(4 * H, scale=0.3), rand(4 * H, scale=0.3)] * 2
        ln += [1 + rand(H, scale=0.3), rand(H, scale=0.3)]
        opts["ln"] = tuple(ln)
        leaves += ln
    if "drop" in on:
        opts["drop_mask"] = coin(0.7, N, P) / 0.7
    if "zoneout" in on:
        opts["zoneout"] = (
            (coin(0.2, T, N, P), coin(0.3, T, N, H)) if zoneout_training else (0.1, 0.05)
        )
    for leaf in leaves:
        leaf.requires_grad_(True)
    return args, opts, leaves


def values_and_grads(run, dtype, on, zoneout_training=True, rows=N, hidden=H):
    args, opts, leaves = problem(dtype, on, zoneout_training, rows=rows, hidden=hidden)
    hs, cs = run(*args, **opts)
    g = torch.Generator().manual_seed(7)
    w_h, w_c = (torch.randn(v.shape, generator=g, dtype=dtype) for v in (hs, cs))
    grads = torch.autograd.grad((hs * w_h).sum() + (cs * w_c).sum(), leaves)
    return [hs, cs, *grads]


PATHS = ["region", "steps", "batch1"]


@pytest.fixture
def rows(request, monkeypatch):
    """The sequences of a test problem, for the path ``request.param`` names: a batch
    (N rows) with its time loop in one compiled call (``region``) or in Python with
    ``torch.mm`` between the compiled passes (``steps``; see conftest.batch_loop), or one
    sequence (``batch1``, the whole-sequence loop, ``SEQUENCE_ROWS``)."""
    import rnnlab.backends.numba_lstm as numba_lstm

    if request.param == "steps":
        monkeypatch.setattr(numba_lstm, "_region_parts", lambda rows: None)
    elif request.param == "region" and numba_lstm.blas() is None:
        pytest.skip("PyTorch here exports no BLAS for the compiled loops")
    return 1 if request.param == "batch1" else N


COMBINATIONS = [
    combo for k in range(len(OPTIONS) + 1) for combo in itertools.combinations(OPTIONS, k)
]


@pytest.mark.parametrize("rows", PATHS, indirect=True)
@pytest.mark.parametrize("on", COMBINATIONS, ids=lambda c: "+".join(c) or "plain")
def test_equals_the_reference_in_float64(on, rows):
    for zoneout_training in (True, False) if "zoneout" in on else (True,):
        got = values_and_grads(lstm_compiled_sequence, F64, on, zoneout_training, rows)
        expected = values_and_grads(lstm_ext_sequence_reference, F64, on, zoneout_training, rows)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, **TIGHT)


PROJECTED = [("proj",), ("proj", "zoneout", "drop"), ("proj", *OPTIONS)]


@pytest.mark.parametrize("rows", PATHS, indirect=True)
@pytest.mark.parametrize("on", PROJECTED, ids=lambda c: "+".join(c))
def test_projected_equals_the_reference_in_float64(on, rows):
    got = values_and_grads(lstm_compiled_sequence, F64, on, rows=rows)
    expected = values_and_grads(lstm_ext_sequence_reference, F64, on, rows=rows)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("rows", PATHS, indirect=True)
@pytest.mark.parametrize("on", [OPTIONS, ("proj", *OPTIONS)], ids=["options", "proj+options"])
def test_gradcheck_with_every_option(rows, on):
    args, opts, leaves = problem(F64, on, rows=rows)
    proj = "proj" in on

    def run(*tensors):
        return lstm_compiled_sequence(
            *tensors[:7],
            weight_hr=tensors[7] if proj else None,
            peephole=tensors[7 + proj],
            ln=tensors[8 + proj : 14 + proj],
            drop_mask=opts["drop_mask"],
            zoneout=opts["zoneout"],
        )

    assert torch.autograd.gradcheck(run, tuple(leaves))


@pytest.mark.parametrize("rows", PATHS, indirect=True)
@pytest.mark.parametrize(
    "on", [(), OPTIONS, ("ln",), ("proj", *OPTIONS)], ids=["plain", "all", "ln", "proj+all"]
)
def test_float32_equals_the_fused_path(on, rows):
    got = values_and_grads(lstm_compiled_sequence, torch.float32, on, rows=rows)
    expected = values_and_grads(lstm_ext_sequence, torch.float32, on, rows=rows)
    # With the projection and every option the gradients here reach 20 through a layer
    # norm over 6 units, which amplifies rounding: on other seeds the fused path itself
    # lands 1e-4 from the float64 result, so the two float32 paths get 1e-4.
    tol = dict(atol=1e-4, rtol=1e-4) if "proj" in on else F32
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, **tol)


LAYER_OPTIONS = [
    {},
    {"layer_norm": True},
    {"peephole": True, "zoneout": (0.2, 0.1), "recurrent_dropout": 0.25},
    {"proj_size": 3, "zoneout": (0.2, 0.1), "recurrent_dropout": 0.25},
]


def run_layer(layer, x, lengths=None):
    torch.manual_seed(3)  # the same dropout and zoneout masks on every path
    x = x.clone().requires_grad_()
    out, (h, c) = layer(x, lengths=lengths)
    loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()
    loss = loss + (h * 0.5).sum() - c.sum()
    return [out, h, c, *torch.autograd.grad(loss, [x, *layer.parameters()])]


@pytest.mark.parametrize(
    "kw", LAYER_OPTIONS, ids=["plain", "ln", "peephole-zoneout-dropout", "proj-zoneout-dropout"]
)
@pytest.mark.parametrize("varlen", [False, True], ids=["full", "lengths"])
def test_layer_equals_the_reference_layer(kw, varlen):
    torch.manual_seed(0)
    ours = rnnlab.LSTM(I, H, num_layers=2, bidirectional=True, backend="numba", dtype=F64, **kw)
    reference = copy.deepcopy(ours)
    reference.backend = "reference"
    x = torch.randn(T, N, I, dtype=F64)
    lengths = torch.tensor([5, 2, 4]) if varlen else None
    for a, b in zip(run_layer(ours, x, lengths), run_layer(reference, x, lengths), strict=True):
        torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("used", ["hs", "c_n", "h_n"])
@pytest.mark.parametrize("kw", LAYER_OPTIONS[:2], ids=["plain", "ln"])
def test_gradients_when_an_output_is_not_used(used, kw):
    """Autograd passes None for an output nobody used (the compiled backward reads a shared
    zero buffer there, ``buffers.zeros``): only the outputs, only the final cell state,
    only the final h, each against the reference; the zero buffer stays zero."""
    torch.manual_seed(0)
    ours = rnnlab.LSTM(I, H, num_layers=2, backend="numba", dtype=F64, **kw)
    reference = copy.deepcopy(ours)
    reference.backend = "reference"
    x = torch.randn(T, N, I, dtype=F64, requires_grad=True)
    grads = []
    for layer in (ours, reference):
        out, (h, c) = layer(x)
        loss = {"hs": out.sum(), "c_n": (c * c).sum(), "h_n": h.sum()}[used]
        grads.append(torch.autograd.grad(loss, [x, *layer.parameters()]))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, **TIGHT)
    assert not buffers.zeros((T, N, H), F64).any()


def test_plain_layer_matches_torch_nn():
    torch.manual_seed(0)
    theirs = torch.nn.LSTM(I, H, num_layers=2, dtype=F64)
    ours = rnnlab.LSTM.from_torch(theirs, backend="numba")
    x = torch.randn(T, N, I, dtype=F64)
    out, (h, c) = ours(x)
    ref_out, (ref_h, ref_c) = theirs(x)
    for a, b in ((out, ref_out), (h, ref_h), (c, ref_c)):
        torch.testing.assert_close(a, b, **TIGHT)
    grads = torch.autograd.grad(out.sum(), list(ours.parameters()))
    ref_grads = torch.autograd.grad(ref_out.sum(), list(theirs.parameters()))
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, **TIGHT)


def test_chunked_equals_whole_with_state_carried():
    torch.manual_seed(0)
    layer = rnnlab.LSTM(I, H, num_layers=2, layer_norm=True, peephole=True, backend="numba")
    layer = layer.to(F64).eval()
    layer.zoneout = (0.1, 0.05)  # evaluation: the expectation, the same at every chunk
    x = torch.randn(T, N, I, dtype=F64)
    whole, (h, c) = layer(x)
    outs, state = [], None
    for chunk in (x[:2], x[2:3], x[3:]):
        out, state = layer(chunk, state)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs), whole, **TIGHT)
    torch.testing.assert_close(state[0], h, **TIGHT)
    torch.testing.assert_close(state[1], c, **TIGHT)


def test_auto_takes_it_for_the_lstm_options():
    assert rnnlab.LSTM(I, H, layer_norm=True).backend_choice().name == "numba"
    assert rnnlab.LSTM(I, H, zoneout=0.1).backend_choice().name == "numba"
    assert rnnlab.LSTM(I, H).backend_choice().name == "torch"  # oneDNN for the plain LSTM
    assert rnnlab.LSTM(I, H, proj_size=2, peephole=True).backend_choice().name == "numba"
    # PyTorch's projected LSTM has no oneDNN kernel: 0.15-0.73 of its time
    assert rnnlab.LSTM(I, H, proj_size=2).backend_choice().name == "numba"
    assert "backend='auto' -> 'numba'" in repr(rnnlab.LSTM(I, H, peephole=True))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: rnnlab.JordanRNN(I, H, 2, backend="numba"), "no hidden loop to compile"),
        (
            lambda: rnnlab.LSTM(I, H, backend="numba", dtype=torch.bfloat16).backend_choice(),
            "float32 and float64",
        ),
    ],
)
def test_unsupported_layers_are_refused_in_one_line(make, message):
    with pytest.raises(ValueError, match=message) as caught:
        make()
    assert "\n" not in str(caught.value)


def test_a_model_trains_on_it():
    """A layer-norm LSTM with a linear read-out learns to echo its input one step late."""
    torch.manual_seed(0)
    rnn = rnnlab.LSTM(2, 16, layer_norm=True, zoneout=0.05)
    head = torch.nn.Linear(16, 2)
    assert rnn.backend_choice().name == "numba"
    opt = torch.optim.Adam([*rnn.parameters(), *head.parameters()], lr=0.02)
    x = torch.randn(12, 16, 2)
    target = torch.cat([torch.zeros(1, 16, 2), x[:-1]])
    losses = []
    for _ in range(60):
        out, _ = rnn(x)
        loss = torch.nn.functional.mse_loss(head(out), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_numba_threads_leave_torch_openmp_settings_alone():
    """Numba's OpenMP layer shares its settings with PyTorch's libgomp: starting it reset
    ``torch.set_num_threads(1)`` and switched nested parallelism on (which made PyTorch's
    small parallel operations up to 25x slower).  In fresh processes, as a user's: once
    through :func:`numba_threads`, once through a threaded generation."""
    import subprocess
    import sys

    check = (
        "from rnnlab.backends.numba_math import _omp_global\n"
        "omp = _omp_global()  # None without OpenMP in the global scope: nothing to spoil\n"
        "print(torch.get_num_threads(), 0 if omp is None else omp.omp_get_nested())\n"
    )
    start = "import torch; torch.set_num_threads({})\n"
    through_helper = "from rnnlab.backends.numba_math import numba_threads\nnumba_threads()\n"
    through_generation = (
        "from rnnlab.models import LanguageModel, ModelConfig\n"
        "from rnnlab.backends import numba_generate\n"
        "numba_generate.threads_usable = lambda: True  # 2 threads at 256 units\n"
        "model = LanguageModel(ModelConfig(vocab_size=5, hidden_size=256)).eval()\n"
        "model.generate([1, 2], 5, greedy=True)\n"
    )
    cases = {"1 0": start.format(1) + through_helper, "2 0": start.format(2) + through_generation}
    for expected, code in cases.items():
        done = subprocess.run(
            [sys.executable, "-c", code + check], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == expected


@pytest.mark.parametrize(
    "on", [OPTIONS, ("ln",), ("proj", *OPTIONS)], ids=["options", "ln", "proj+options"]
)
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
def test_rows_split_over_threads_give_the_same_numbers(monkeypatch, dtype, on, batch_loop):
    """Each row is computed the same way whichever block and thread it falls in, and the
    layer norm's gain and bias gradients, summed per sequence in the reverse loop, do
    not depend on the blocks either."""
    import rnnlab.backends.numba_lstm as numba_lstm

    runs = []
    for parts in (1, 2, 3):
        split_into(monkeypatch, numba_lstm, batch_loop, parts)
        runs.append(values_and_grads(lstm_compiled_sequence, dtype, on))
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("on", [(), ("peephole", "drop", "zoneout")], ids=["plain", "options"])
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
def test_units_of_one_sequence_split_over_threads_give_the_same_numbers(monkeypatch, dtype, on):
    """At batch 1 the whole sequence is one call, its units split into blocks, one per
    thread, that meet at every step (``numba_math._claim``).  Any number of blocks gives
    the same numbers, bit for bit, and the reference's in float64.  Also with fewer
    threads than blocks, so that one thread runs its own block of a step and then, after
    waiting in vain, the others': a pool that runs the blocks one after another is slow,
    not dead-locked.  40 units: blocks of 20, 13-14 and 40 (the copies of the weights take
    eight rows at a time, then the rest)."""
    import numba

    import rnnlab.backends.numba_lstm as numba_lstm
    from rnnlab.backends.numba_math import numba_threads

    before = numba_threads()
    runs = []
    try:
        for parts, threads in ((1, before), (2, before), (3, before), (3, 1)):
            monkeypatch.setattr(numba_lstm, "_parts", lambda size, least=0, parts=parts: parts)
            numba.set_num_threads(threads)
            runs.append(values_and_grads(lstm_compiled_sequence, dtype, on, rows=1, hidden=40))
    finally:
        numba.set_num_threads(before)
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert torch.equal(a, b)
    if dtype == F64:
        expected = values_and_grads(lstm_ext_sequence_reference, F64, on, rows=1, hidden=40)
        for a, b in zip(runs[0], expected, strict=True):
            torch.testing.assert_close(a, b, **TIGHT)


def test_atomics_claim_each_block_once():
    """The atomics the blocks meet through: compare-and-swap sets only from the expected
    value; a block is claimed once per stage, and a done block is not claimed again."""
    import numba
    import numpy as np

    from rnnlab.backends.numba_math import _claim, _compare_and_swap, _done, _load, new_sync

    @numba.njit
    def swaps(a):
        return _compare_and_swap(a, 0, 5, 6), _compare_and_swap(a, 0, 5, 7), _load(a, 0)

    assert swaps(np.array([5], dtype=np.int64)) == (True, False, 6)

    @numba.njit
    def stage_zero(sync):
        first = _claim(sync, 0, 0, True)  # claimed: the caller runs it
        _done(sync, 0, 0)
        again = _claim(sync, 0, 0, True)  # done: nothing to run
        return first, again

    sync = new_sync(2)
    assert stage_zero(sync) == (True, False)
    assert sync.tolist() == [[0, -1], [0, -1]]


def test_transposed_initial_state():
    """An initial state that is a transposed view (not contiguous) gives the reference's
    values and gradients: buffers the compiled passes write are made contiguous."""
    args, opts, leaves = problem(F64, ("drop", "zoneout"))
    for k in (1, 2):  # h0 and c0 as views of (H, N) tensors
        args[k] = args[k].detach().t().contiguous().t().requires_grad_()
        assert not args[k].is_contiguous()
    leaves = list(args)
    results = []
    for run in (lstm_compiled_sequence, lstm_ext_sequence_reference):
        hs, cs = run(*args, **opts)
        results.append([hs, cs, *torch.autograd.grad(hs.sum() + 2 * cs.sum(), leaves)])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, **TIGHT)

"""The extended LSTM of ``rnnlab.cells.lstm``: projection, peepholes, layer norm,
recurrent dropout, zoneout, and the forget-gate bias helper.

Tiers as in ``test_cells.py``: naive written-out forward against the reference step;
fused against the autograd reference (values and every gradient, float64, 1e-10);
float64 gradcheck of the hand-written backward; ``torch.nn.LSTM(proj_size=P)`` loaded with
the same weights; chunked equals whole; the options' limiting cases.
"""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from torch.testing import assert_close

import rnnlab.cells.lstm as lstm_module
from rnnlab.cells.lstm import (
    LN_EPS,
    LSTMExtFunction,
    LSTMLayerNorm,
    init_forget_bias,
    lstm_ext_sequence,
    lstm_ext_sequence_reference,
    lstm_ext_step,
    lstm_sequence,
)

F64 = torch.float64
TIGHT = {"atol": 1e-10, "rtol": 1e-10}
EXACT = {"atol": 0.0, "rtol": 0.0}
OPTIONS = ("projection", "peephole", "ln", "dropout", "zoneout", "zoneout_eval")
# Each option alone, none, and all together (with 0/1 zoneout masks; "all_eval" with the
# evaluation-time probabilities instead).
CONFIGS = {
    "none": (),
    **{name: (name,) for name in OPTIONS},
    "all": ("projection", "peephole", "ln", "dropout", "zoneout"),
    "all_eval": ("projection", "peephole", "ln", "dropout", "zoneout_eval"),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a shared two-core machine
    the OpenMP workers of a busy process can make each small op ~50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand(gen, *shape, scale=1.0, dtype=F64):
    return ((torch.rand(*shape, generator=gen, dtype=dtype) * 2 - 1) * scale).requires_grad_()


def _bernoulli(gen, p, *shape, dtype=F64):
    return (torch.rand(*shape, generator=gen, dtype=dtype) < p).to(dtype)


def _problem(gen, options, T=6, N=3, I=4, H=5, P=3, bias=(True, True), dtype=F64):
    """Inputs, parameters and option arguments of one extended-LSTM call.

    Returns ``(tensors, rebuild)``: ``tensors`` maps names to every differentiable tensor
    (requires_grad); ``rebuild(values)`` gives ``(args, kwargs)`` for
    :func:`lstm_ext_sequence` from a list of tensors standing in for ``tensors`` (gradcheck
    passes its own copies), the masks included in ``kwargs``.
    """
    options = set(options)
    P = P if "projection" in options else H
    t = {
        "x": _rand(gen, T, N, I, scale=1.5, dtype=dtype),
        "h0": _rand(gen, N, P, dtype=dtype),
        "c0": _rand(gen, N, H, dtype=dtype),
        "w_ih": _rand(gen, 4 * H, I, scale=0.7, dtype=dtype),
        "w_hh": _rand(gen, 4 * H, P, scale=0.7, dtype=dtype),
    }
    if bias[0]:
        t["b_ih"] = _rand(gen, 4 * H, scale=0.7, dtype=dtype)
    if bias[1]:
        t["b_hh"] = _rand(gen, 4 * H, scale=0.7, dtype=dtype)
    if "projection" in options:
        t["w_hr"] = _rand(gen, P, H, scale=0.8, dtype=dtype)
    if "peephole" in options:
        t["peephole"] = _rand(gen, 3, H, scale=0.8, dtype=dtype)
    if "ln" in options:
        for name in LSTMLayerNorm._fields:
            size = H if name.endswith("_c") else 4 * H
            value = _rand(gen, size, scale=0.5, dtype=dtype).detach()
            value = value + 1 if name.startswith("gamma") else value
            t[name] = value.requires_grad_()
    fixed = {}
    if "dropout" in options:
        mask = _bernoulli(gen, 0.7, N, P, dtype=dtype)
        mask[0, 0], mask[0, 1] = 0.0, 1.0  # both kinds of entry, whatever the seed
        fixed["drop_mask"] = mask / 0.7
    if "zoneout" in options:
        zone_h, zone_c = _bernoulli(gen, 0.3, T, N, P), _bernoulli(gen, 0.3, T, N, H)
        zone_h[0, 0, 0], zone_c[0, 0, 0] = 1.0, 1.0
        zone_h[0, 0, 1], zone_c[0, 0, 1] = 0.0, 0.0
        fixed["zoneout"] = (zone_h.to(dtype), zone_c.to(dtype))
    if "zoneout_eval" in options:
        fixed["zoneout"] = (0.15, 0.1)
    names = list(t)

    def rebuild(values):
        v = dict(zip(names, values, strict=True))
        args = (v["x"], v["h0"], v["c0"], v["w_ih"], v["w_hh"], v.get("b_ih"), v.get("b_hh"))
        kwargs = dict(fixed, weight_hr=v.get("w_hr"), peephole=v.get("peephole"))
        if "gamma_x" in v:
            kwargs["ln"] = LSTMLayerNorm(*(v[name] for name in LSTMLayerNorm._fields))
        return args, kwargs

    return t, rebuild


def _weighted_loss(gen, T, N, P, H, dtype=F64):
    """A random weighted sum over hs and cs; the final states get weights of their own."""
    w_h, w_c = (
        torch.randn(T, N, P, generator=gen, dtype=dtype),
        torch.randn(T, N, H, generator=gen, dtype=dtype),
    )
    w_hn, w_cn = (
        torch.randn(N, P, generator=gen, dtype=dtype),
        torch.randn(N, H, generator=gen, dtype=dtype),
    )

    def loss(out):
        hs, cs = out
        return (hs * w_h).sum() + (cs * w_c).sum() + (hs[-1] * w_hn).sum() + (cs[-1] * w_cn).sum()

    return loss


def _assert_grads_close(names, got, expected, tol, nonzero=True):
    for name, a, b in zip(names, got, expected, strict=True):
        if nonzero:
            assert b.abs().max() > 0, f"gradient of {name} is trivially zero"
        assert_close(a, b, **tol, msg=lambda m, name=name: f"grad {name}: {m}")


# ---------------------------------------------------------------------------------------
# (a) Fused vs reference: values and every gradient, float64, 1e-10.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", list(CONFIGS))
def test_ext_fused_matches_reference(config):
    gen = _gen(100 + list(CONFIGS).index(config))
    tensors, rebuild = _problem(gen, CONFIGS[config])
    args, kwargs = rebuild(list(tensors.values()))
    T, N, P, H = args[0].shape[0], args[1].shape[0], args[1].shape[1], args[2].shape[1]
    loss = _weighted_loss(gen, T, N, P, H)
    fused = lstm_ext_sequence(*args, **kwargs)
    ref = lstm_ext_sequence_reference(*args, **kwargs)
    assert fused[0].shape == ref[0].shape == (T, N, P)
    assert fused[1].shape == ref[1].shape == (T, N, H)
    for a, b in zip(fused, ref, strict=True):
        assert_close(a, b, **TIGHT)
    g_fused = torch.autograd.grad(loss(fused), list(tensors.values()))
    g_ref = torch.autograd.grad(loss(ref), list(tensors.values()))
    _assert_grads_close(list(tensors), g_fused, g_ref, TIGHT)


@pytest.mark.parametrize("bias", [(False, False), (True, False), (False, True)])
def test_ext_fused_matches_reference_bias_modes(bias):
    gen = _gen(120 + 2 * bias[0] + bias[1])
    tensors, rebuild = _problem(gen, CONFIGS["all"], T=4, bias=bias)
    args, kwargs = rebuild(list(tensors.values()))
    loss = _weighted_loss(gen, 4, 3, 3, 5)
    fused = lstm_ext_sequence(*args, **kwargs)
    ref = lstm_ext_sequence_reference(*args, **kwargs)
    for a, b in zip(fused, ref, strict=True):
        assert_close(a, b, **TIGHT)
    g_fused = torch.autograd.grad(loss(fused), list(tensors.values()))
    g_ref = torch.autograd.grad(loss(ref), list(tensors.values()))
    _assert_grads_close(list(tensors), g_fused, g_ref, TIGHT)


@pytest.mark.parametrize("which", [0, 1])
def test_ext_fused_with_one_output_unused_and_noncontiguous_input(which):
    """hs alone or cs alone in the loss; x is a batch-first tensor seen time-major."""
    gen = _gen(125)
    tensors, rebuild = _problem(gen, CONFIGS["all"], T=5)
    x_bf = _rand(gen, 3, 5, 4, scale=1.5)
    tensors["x"] = x_bf.transpose(0, 1)
    assert not tensors["x"].is_contiguous()
    args, kwargs = rebuild(list(tensors.values()))
    w = torch.randn(lstm_ext_sequence(*args, **kwargs)[which].shape, generator=gen, dtype=F64)
    inputs = [x_bf, *list(tensors.values())[1:]]
    g_fused = torch.autograd.grad((lstm_ext_sequence(*args, **kwargs)[which] * w).sum(), inputs)
    g_ref = torch.autograd.grad(
        (lstm_ext_sequence_reference(*args, **kwargs)[which] * w).sum(), inputs
    )
    _assert_grads_close(["x", *list(tensors)[1:]], g_fused, g_ref, TIGHT, nonzero=False)


# ---------------------------------------------------------------------------------------
# (b) gradcheck of the hand-written backward, float64, small sizes.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [c for c in CONFIGS if c != "all_eval"])
def test_gradcheck_ext(config):
    gen = _gen(140 + list(CONFIGS).index(config))
    tensors, rebuild = _problem(gen, CONFIGS[config], T=3, N=2, I=2, H=3, P=2)

    def run(*values):
        args, kwargs = rebuild(list(values))
        return lstm_ext_sequence(*args, **kwargs)

    assert torch.autograd.gradcheck(run, tuple(tensors.values()), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_ext_function_apply_with_fractional_zoneout():
    """LSTMExtFunction.apply directly, every option on, zoneout values strictly in (0, 1)
    so both the kept and the new value carry gradient at every unit."""
    gen = _gen(150)
    T, N, I, H, P = 3, 2, 2, 3, 2
    tensors, rebuild = _problem(gen, ("projection", "peephole", "ln", "dropout"), T, N, I, H, P)
    zone_h = 0.1 + 0.8 * torch.rand(T, N, P, generator=gen, dtype=F64)
    zone_c = 0.1 + 0.8 * torch.rand(T, N, H, generator=gen, dtype=F64)

    def run(*values):
        args, kwargs = rebuild(list(values))
        options = (kwargs["weight_hr"], kwargs["peephole"], *kwargs["ln"], kwargs["drop_mask"])
        return LSTMExtFunction.apply(*args, *options, zone_h, zone_c)

    assert torch.autograd.gradcheck(run, tuple(tensors.values()), eps=1e-6, atol=1e-7, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# (c) Against torch.nn.LSTM(proj_size=P), and against the plain fused LSTM.
# ---------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (F64, 1e-10)])
def test_projection_matches_torch_nn_lstm(dtype, tol):
    gen = _gen(160)
    T, N, I, H, P = 7, 3, 4, 6, 3
    torch.manual_seed(160)
    ref = torch.nn.LSTM(I, H, num_layers=1, proj_size=P).to(dtype)
    names = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "weight_hr_l0"]
    ours = [getattr(ref, n).detach().clone().requires_grad_() for n in names]
    x = _rand(gen, T, N, I, dtype=dtype)
    h0, c0 = _rand(gen, N, P, dtype=dtype), _rand(gen, N, H, dtype=dtype)
    w_out = torch.randn(T, N, P, generator=gen, dtype=dtype)
    w_hn = torch.randn(N, P, generator=gen, dtype=dtype)
    w_cn = torch.randn(N, H, generator=gen, dtype=dtype)

    out_ref, (hn_ref, cn_ref) = ref(x, (h0.unsqueeze(0), c0.unsqueeze(0)))
    w_ih, w_hh, b_ih, b_hh, w_hr = ours
    hs, cs = lstm_ext_sequence(x, h0, c0, w_ih, w_hh, b_ih, b_hh, weight_hr=w_hr)
    tols = {"atol": tol, "rtol": tol}
    assert_close(hs, out_ref, **tols)
    assert_close(hs[-1], hn_ref[0], **tols)
    assert_close(cs[-1], cn_ref[0], **tols)

    def loss(out, hn, cn):
        return (out * w_out).sum() + (hn * w_hn).sum() + (cn * w_cn).sum()

    inputs = [x, h0, c0]
    g_ours = torch.autograd.grad(loss(hs, hs[-1], cs[-1]), inputs + ours)
    g_ref = torch.autograd.grad(
        loss(out_ref, hn_ref[0], cn_ref[0]), inputs + [getattr(ref, n) for n in names]
    )
    _assert_grads_close(["x", "h0", "c0", *names], g_ours, g_ref, tols)


def test_ext_with_every_option_off_equals_plain_lstm():
    gen = _gen(170)
    tensors, rebuild = _problem(gen, ())
    args, kwargs = rebuild(list(tensors.values()))
    loss = _weighted_loss(gen, 6, 3, 5, 5)
    tol = {"atol": 1e-12, "rtol": 1e-12}
    for ext in (lstm_ext_sequence(*args), lstm_ext_sequence(*args, **kwargs)):
        plain = lstm_sequence(*args)
        for a, b in zip(ext, plain, strict=True):
            assert_close(a, b, **tol)
        g_ext = torch.autograd.grad(loss(ext), list(tensors.values()))
        g_plain = torch.autograd.grad(loss(plain), list(tensors.values()))
        _assert_grads_close(list(tensors), g_ext, g_plain, tol)


# ---------------------------------------------------------------------------------------
# (d) Naive written-out forward (peepholes, layer norm) against the reference step.
# ---------------------------------------------------------------------------------------


def _sigmoid(a: float) -> float:
    return 1.0 / (1.0 + math.exp(-a))


def _dot(row, vec) -> float:
    return sum(float(w) * float(v) for w, v in zip(row, vec, strict=True))


def _layer_norm(values, gamma, beta):
    """Layer norm of a list of floats, biased variance, eps = 1e-5."""
    assert LN_EPS == 1e-5
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / len(values)
    return [
        float(gamma[k]) * (v - mean) / math.sqrt(var + 1e-5) + float(beta[k])
        for k, v in enumerate(values)
    ]


@pytest.mark.parametrize("options", [("peephole",), ("ln",), ("peephole", "ln")])
def test_ext_step_matches_naive_written_out_formula(options):
    gen = _gen(180 + len(options) + 3 * ("ln" in options))
    N, I, H = 3, 4, 5
    t, _ = _problem(gen, options, T=1, N=N, I=I, H=H)
    v = {k: val.detach() for k, val in t.items()}
    x, h, c = v["x"][0], v["h0"], v["c0"]
    peep = v.get("peephole", torch.zeros(3, H, dtype=F64))
    exp_h = torch.empty(N, H, dtype=F64)
    exp_c = torch.empty(N, H, dtype=F64)
    for n in range(N):
        a_x = [_dot(v["w_ih"][row], x[n]) for row in range(4 * H)]
        a_h = [_dot(v["w_hh"][row], h[n]) for row in range(4 * H)]
        if "ln" in options:  # over all 4H units of each projection
            a_x = _layer_norm(a_x, v["gamma_x"], v["beta_x"])
            a_h = _layer_norm(a_h, v["gamma_h"], v["beta_h"])
        z = [a_x[r] + a_h[r] + float(v["b_ih"][r]) + float(v["b_hh"][r]) for r in range(4 * H)]
        c_new = []
        o_gates = []
        for j in range(H):
            c_prev = float(c[n, j])
            i_g = _sigmoid(z[j] + float(peep[0, j]) * c_prev)
            f_g = _sigmoid(z[H + j] + float(peep[1, j]) * c_prev)
            g_g = math.tanh(z[2 * H + j])
            c_new.append(f_g * c_prev + i_g * g_g)
            o_gates.append(_sigmoid(z[3 * H + j] + float(peep[2, j]) * c_new[j]))
        n_c = _layer_norm(c_new, v["gamma_c"], v["beta_c"]) if "ln" in options else c_new
        for j in range(H):
            exp_c[n, j] = c_new[j]
            exp_h[n, j] = o_gates[j] * math.tanh(n_c[j])
    ln = LSTMLayerNorm(*(v[k] for k in LSTMLayerNorm._fields)) if "ln" in options else None
    got_h, got_c = lstm_ext_step(
        x, (h, c), v["w_ih"], v["w_hh"], v["b_ih"], v["b_hh"], peephole=v.get("peephole"), ln=ln
    )
    assert_close(got_h, exp_h, **TIGHT)
    assert_close(got_c, exp_c, **TIGHT)


# ---------------------------------------------------------------------------------------
# (e) Chunked equals whole, every option on, (h, c) carried between chunks.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", ["all", "all_eval"])
def test_ext_three_unequal_chunks_equal_whole_sequence(config):
    gen = _gen(190)
    T = 12
    tensors, rebuild = _problem(gen, CONFIGS[config], T=T)
    args, kwargs = rebuild(list(tensors.values()))
    x, h0, c0, *params = args
    loss = _weighted_loss(gen, T, 3, 3, 5)
    whole = lstm_ext_sequence(*args, **kwargs)
    state, hs, cs, start = (h0, c0), [], [], 0
    for length in (3, 5, 4):
        chunk = dict(kwargs)  # the dropout mask is shared; zoneout masks are sliced
        zoneout = kwargs["zoneout"]
        if isinstance(zoneout[0], torch.Tensor):
            chunk["zoneout"] = tuple(z[start : start + length] for z in zoneout)
        out = lstm_ext_sequence(x[start : start + length], *state, *params, **chunk)
        hs.append(out[0])
        cs.append(out[1])
        state = (out[0][-1], out[1][-1])
        start += length
    chunked = (torch.cat(hs), torch.cat(cs))
    for a, b in zip(chunked, whole, strict=True):
        assert_close(a, b, **TIGHT)
    g_chunked = torch.autograd.grad(loss(chunked), list(tensors.values()))
    g_whole = torch.autograd.grad(loss(whole), list(tensors.values()))
    _assert_grads_close(list(tensors), g_chunked, g_whole, TIGHT)


# ---------------------------------------------------------------------------------------
# (f) Limiting cases of the options, and the forget-gate bias.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("run", [lstm_ext_sequence, lstm_ext_sequence_reference])
def test_zoneout_all_ones_keeps_the_state(run):
    gen = _gen(200)
    tensors, rebuild = _problem(gen, ("projection", "peephole", "ln"))
    args, kwargs = rebuild(list(tensors.values()))
    x, h0, c0 = args[:3]
    ones = (torch.ones(6, 3, 3, dtype=F64), torch.ones(6, 3, 5, dtype=F64))
    hs, cs = run(*args, **kwargs, zoneout=ones)
    assert_close(hs, h0.expand_as(hs), **EXACT)
    assert_close(cs, c0.expand_as(cs), **EXACT)
    # Zoneout on one of the two only: that one is frozen, the other moves.
    hs, cs = run(*args, **kwargs, zoneout=(None, ones[1]))
    assert_close(cs, c0.expand_as(cs), **EXACT)
    assert (hs - h0).abs().max() > 1e-3


@pytest.mark.parametrize("config", ["none", "all"])
def test_zoneout_all_zeros_and_dropout_all_ones_change_nothing(config):
    gen = _gen(210)
    options = [o for o in CONFIGS[config] if o not in ("zoneout", "dropout")]
    tensors, rebuild = _problem(gen, options)
    args, kwargs = rebuild(list(tensors.values()))
    T, N, P, H = 6, 3, args[1].shape[1], 5
    loss = _weighted_loss(gen, T, N, P, H)
    neutral = {
        "zoneout": (torch.zeros(T, N, P, dtype=F64), torch.zeros(T, N, H, dtype=F64)),
        "drop_mask": torch.ones(N, P, dtype=F64),
    }
    tol = {"atol": 1e-12, "rtol": 1e-12}
    for run in (lstm_ext_sequence, lstm_ext_sequence_reference):
        plain = run(*args, **kwargs)
        g_plain = torch.autograd.grad(loss(plain), list(tensors.values()))
        for name, value in [*neutral.items(), ("zoneout", (0.0, 0.0))]:
            out = run(*args, **kwargs, **{name: value})
            for a, b in zip(out, plain, strict=True):
                assert_close(a, b, **tol)
            g_out = torch.autograd.grad(loss(out), list(tensors.values()))
            _assert_grads_close(list(tensors), g_out, g_plain, tol)


def test_zoneout_eval_probability_is_the_expectation_of_each_step():
    """With p passed in place of the masks, each step is p * old + (1 - p) * new, the
    expectation over the step's Bernoulli masks of the training-time update."""
    gen = _gen(220)
    p_h, p_c = 0.3, 0.2
    tensors, rebuild = _problem(gen, ("projection", "peephole", "ln", "dropout"))
    args, kwargs = rebuild(list(tensors.values()))
    x, h0, c0, *params = args
    hs, cs = lstm_ext_sequence(*args, **kwargs, zoneout=(p_h, p_c))
    h, c = h0, c0
    for t in range(x.shape[0]):
        h_new, c_new = lstm_ext_step(x[t], (h, c), *params, **kwargs)  # no zoneout
        h, c = p_h * h + (1 - p_h) * h_new, p_c * c + (1 - p_c) * c_new
        assert_close(hs[t], h, **TIGHT)
        assert_close(cs[t], c, **TIGHT)
    # The same probabilities given as constant tensors, full-size or broadcasting.
    for zone in [
        (torch.full((6, 3, 3), p_h, dtype=F64), torch.full((6, 3, 5), p_c, dtype=F64)),
        (torch.tensor(p_h, dtype=F64), torch.full((1, 1, 5), p_c, dtype=F64)),
    ]:
        out = lstm_ext_sequence(*args, **kwargs, zoneout=zone)
        assert_close(out[0], hs, **TIGHT)
        assert_close(out[1], cs, **TIGHT)
    # Averaging one step over its masks (all 0/1 patterns of a unit are independent, so
    # the two extreme patterns weighted by p suffice) gives the probability form.
    state = (h0, c0)
    ones = (torch.ones(3, 3, dtype=F64), torch.ones(3, 5, dtype=F64))
    zeros = (torch.zeros(3, 3, dtype=F64), torch.zeros(3, 5, dtype=F64))
    keep = lstm_ext_step(x[0], state, *params, **kwargs, zoneout=ones)
    move = lstm_ext_step(x[0], state, *params, **kwargs, zoneout=zeros)
    mean_h, mean_c = p_h * keep[0] + (1 - p_h) * move[0], p_c * keep[1] + (1 - p_c) * move[1]
    assert_close(hs[0], mean_h, **TIGHT)
    assert_close(cs[0], mean_c, **TIGHT)


def test_broadcast_masks_equal_full_masks():
    gen = _gen(230)
    T, N, P = 6, 3, 3
    tensors, rebuild = _problem(gen, ("projection", "peephole"))
    args, kwargs = rebuild(list(tensors.values()))
    drop_row = _bernoulli(gen, 0.7, 1, P) / 0.7  # one mask for the whole batch
    zone_h = _bernoulli(gen, 0.4, T, 1, 1)  # whole time steps kept or moved
    small = lstm_ext_sequence(*args, **kwargs, drop_mask=drop_row, zoneout=(zone_h, None))
    full = lstm_ext_sequence(
        *args,
        **kwargs,
        drop_mask=drop_row.expand(N, P).clone(),
        zoneout=(zone_h.expand(T, N, P).clone(), None),
    )
    for a, b in zip(small, full, strict=True):
        assert_close(a, b, **EXACT)


def test_init_forget_bias_sets_the_sum():
    H = 4
    gen = _gen(240)
    b_ih, b_hh = _rand(gen, 4 * H), _rand(gen, 4 * H)
    before = (b_ih.detach().clone(), b_hh.detach().clone())
    out = init_forget_bias(b_ih, b_hh, value=1.0)
    assert out[0] is b_ih and out[1] is b_hh and b_ih.requires_grad
    f = slice(H, 2 * H)
    assert_close(b_ih[f] + b_hh[f], torch.ones(H, dtype=F64), **EXACT)
    assert_close(b_ih[f], torch.ones(H, dtype=F64), **EXACT)
    assert_close(b_hh[f], torch.zeros(H, dtype=F64), **EXACT)
    for now, then in zip((b_ih, b_hh), before, strict=True):  # other gates untouched
        assert_close(now[:H], then[:H], **EXACT)
        assert_close(now[2 * H :], then[2 * H :], **EXACT)
    only_hh = _rand(gen, 4 * H)
    init_forget_bias(None, only_hh, value=2.5)
    assert_close(only_hh[f], torch.full((H,), 2.5, dtype=F64), **EXACT)
    with pytest.raises(ValueError, match="bias"):
        init_forget_bias(None, None)


def test_ext_rejects_mismatched_shapes():
    gen = _gen(250)
    tensors, rebuild = _problem(gen, ("projection",))
    args, kwargs = rebuild(list(tensors.values()))
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = args
    bad = [
        ({"weight_hr": None}, "weight_hr"),
        ({"weight_hr": torch.zeros(5, 5, dtype=F64)}, "weight_hr"),
        ({"peephole": torch.zeros(2, 5, dtype=F64)}, "peephole"),
        ({"drop_mask": torch.ones(3, 5, dtype=F64)}, "drop_mask"),
        ({"zoneout": (torch.zeros(6, 3, 5, dtype=F64), None)}, "zone_h"),
        ({"zoneout": (0.1,)}, "pair"),
        ({"ln": (torch.ones(20, dtype=F64),) * 6}, "gamma_c"),
    ]
    for change, match in bad:
        for run in (lstm_ext_sequence, lstm_ext_sequence_reference):
            with pytest.raises(ValueError, match=match):
                run(*args, **{**kwargs, **change})
    with pytest.raises(ValueError, match="weight_hh"):
        lstm_ext_sequence(x, h0, c0, w_ih, w_hh.t(), b_ih, b_hh, **kwargs)


# ---------------------------------------------------------------------------------------
# (g) The module's examples run.
# ---------------------------------------------------------------------------------------


def test_module_doctest_runs():
    result = doctest.testmod(lstm_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0

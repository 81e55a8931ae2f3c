"""rnnlab.LSTM's options beyond torch.nn, at the layer: both backends agree with every
option on, masks follow variable lengths, evaluation is deterministic, init is right."""

import pytest
import torch

import rnnlab

F64 = torch.float64
T, N, I, H = 7, 3, 4, 6
OPTIONS = dict(
    proj_size=4,
    peephole=True,
    layer_norm=True,
    forget_bias=1.0,
    recurrent_dropout=0.25,
    zoneout=(0.2, 0.1),
)


def twin(**kwargs):
    torch.manual_seed(0)
    fused = rnnlab.LSTM(I, H, dtype=F64, backend="fused", **kwargs)
    reference = rnnlab.LSTM(I, H, dtype=F64, backend="reference", **kwargs)
    reference.load_state_dict(fused.state_dict())
    return fused, reference


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("lengths", [None, [7, 2, 5]])
def test_backends_agree_with_every_option(training, bidirectional, lengths):
    fused, reference = twin(num_layers=2, bidirectional=bidirectional, **OPTIONS)
    x = torch.randn(T, N, I, dtype=F64, requires_grad=True)
    results = []
    for m in (fused, reference):
        m.train(training)
        torch.manual_seed(5)  # the same dropout and zoneout masks for both
        out, (h, c) = m(x, lengths=lengths)
        loss = out.pow(2).sum() + h.sum() + c.pow(2).sum()
        results.append((out, h, c, *torch.autograd.grad(loss, [x, *m.parameters()])))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    grads = results[0][3:]
    assert all(g.abs().sum() > 0 for g in grads[1:]), "every parameter gets a gradient"


def test_each_option_changes_the_output_and_training_masks_are_random():
    x = torch.randn(T, N, I, dtype=F64)
    torch.manual_seed(0)
    plain = rnnlab.LSTM(I, H, dtype=F64)
    base = plain(x)[0]
    for name, value in [
        ("peephole", True),
        ("layer_norm", True),
        ("zoneout", 0.3),
        ("recurrent_dropout", 0.3),
    ]:
        torch.manual_seed(0)
        layer = rnnlab.LSTM(I, H, dtype=F64, **{name: value})
        with torch.no_grad():
            for n, p in plain.named_parameters():
                getattr(layer, n).copy_(p)
        out = layer(x)[0]
        if name in ("zoneout", "recurrent_dropout"):
            assert not torch.equal(out, layer(x)[0])  # a new mask each call in training
            layer.eval()
            assert torch.equal(layer(x)[0], layer(x)[0])  # evaluation is deterministic
            if name == "recurrent_dropout":
                torch.testing.assert_close(layer(x)[0], base, atol=1e-12, rtol=0)
        else:
            assert (out - base).abs().max() > 1e-6, name


def test_chunked_equals_whole_in_evaluation():
    layer = rnnlab.LSTM(I, H, num_layers=2, dtype=F64, **OPTIONS).eval()
    x = torch.randn(T, N, I, dtype=F64)
    whole, final = layer(x)
    state, parts = None, []
    for chunk in x.split([3, 1, 3]):
        out, state = layer(chunk, state)
        parts.append(out)
    torch.testing.assert_close(torch.cat(parts), whole, atol=1e-12, rtol=0)
    for a, b in zip(state, final, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_parameters_and_their_initialisation():
    layer = rnnlab.LSTM(I, H, num_layers=2, **OPTIONS)
    names = [n for n, _ in layer.named_parameters()]
    assert names[:5] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "weight_hr_l0"]
    assert "peephole_l1" in names and "ln_gamma_c_l1" in names
    assert layer.weight_hh_l0.shape == (4 * H, 4) and layer.weight_hr_l0.shape == (4, H)
    assert (layer.ln_gamma_x_l0 == 1).all() and (layer.ln_beta_h_l1 == 0).all()
    f = slice(H, 2 * H)
    assert torch.allclose(layer.bias_ih_l1[f] + layer.bias_hh_l1[f], torch.ones(H))
    with pytest.raises(ValueError, match="cannot convert"):
        layer.to_torch()
    assert isinstance(rnnlab.LSTM(I, H, proj_size=2).to_torch(), torch.nn.LSTM)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(proj_size=H), "proj_size must be smaller"),
        (dict(proj_size=-1), "proj_size"),
        (dict(recurrent_dropout=1.0), "recurrent_dropout"),
        (dict(zoneout=(0.1, 1.2)), "zoneout"),
        (dict(forget_bias=1.0, bias=False), "forget_bias needs bias"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        rnnlab.LSTM(I, H, **kwargs)

"""Weight drop (``weight_drop=p``): DropConnect on W_hh, one mask per forward call.

The forward call in training must equal the same layer run with W_hh replaced by
W_hh * M / (1 - p), M the mask drawn from the same random numbers; the gradient must reach
W_hh through that mask; evaluation must use W_hh itself.  Checked for every cell family
with a W_hh and every backend.
"""

import pytest
import torch

from rnnlab import GRU, LSTM, RNN, JordanRNN, PascanuRNN
from rnnlab.cli.main import main
from rnnlab.dropout import dropout
from rnnlab.models import LanguageModel, ModelConfig
from rnnlab.training import load_config

P = 0.3
FAMILIES = [
    (LSTM, {}),
    (GRU, {}),
    (RNN, {}),
    (PascanuRNN, {}),
    (LSTM, {"proj_size": 3, "backend": "reference"}),
]


def make(cls, extra, backend, weight_drop, num_layers=2):
    kwargs = {"backend": backend, **extra}
    torch.manual_seed(0)
    return cls(4, 6, num_layers=num_layers, weight_drop=weight_drop, dtype=torch.float64, **kwargs)


def backends_of(cls, extra):
    if "backend" in extra:
        return [extra["backend"]]
    return ["fused", "reference"] + (["torch"] if cls is not PascanuRNN else [])


CASES = [(cls, extra, b) for cls, extra in FAMILIES for b in backends_of(cls, extra)]


@pytest.mark.parametrize("cls,extra,backend", CASES)
def test_training_forward_and_gradient_equal_the_masked_weights(cls, extra, backend):
    extra = {k: v for k, v in extra.items() if k != "backend"}
    dropped = make(cls, extra, backend, P)
    plain = make(cls, extra, backend, 0.0)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    torch.manual_seed(7)
    out, _ = dropped(x)
    # The same random numbers, drawn in the same order (layer 0, then layer 1), as masks.
    torch.manual_seed(7)
    masks = [dropout(torch.ones_like(dropped.weight_hh_l0), P)]
    masks.append(dropout(torch.ones_like(dropped.weight_hh_l1), P))
    with torch.no_grad():
        for layer, mask in enumerate(masks):
            getattr(plain, f"weight_hh_l{layer}").mul_(mask)
    expected, _ = plain(x)
    torch.testing.assert_close(out, expected)
    # A fraction close to p of the entries is dropped, the rest scaled by 1 / (1 - p').
    zeros = sum(int((m == 0).sum()) for m in masks)
    assert 0 < zeros < sum(m.numel() for m in masks)
    assert all(float(m.max()) == pytest.approx(1 / (1 - P), rel=1e-4) for m in masks)

    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    expected.backward(grad_out)
    for layer, mask in enumerate(masks):
        got = getattr(dropped, f"weight_hh_l{layer}").grad
        want = getattr(plain, f"weight_hh_l{layer}").grad * mask
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(dropped.weight_ih_l0.grad, plain.weight_ih_l0.grad)


@pytest.mark.parametrize("cls,extra", FAMILIES)
def test_evaluation_and_steps_use_the_weights_themselves(cls, extra):
    backend = extra.get("backend", "fused")
    extra = {k: v for k, v in extra.items() if k != "backend"}
    dropped = make(cls, extra, backend, P).eval()
    plain = make(cls, extra, backend, 0.0).eval()
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(dropped(x)[0], plain(x)[0])
    dropped.train()
    state = None
    for t in range(2):  # step() is the generation path: never thinned
        y, state = dropped.step(x[t], state)
    y_plain, s_plain = None, None
    for t in range(2):
        y_plain, s_plain = plain.step(x[t], s_plain)
    torch.testing.assert_close(y, y_plain)


def test_each_call_draws_a_new_mask_and_repr_shows_it():
    layer = LSTM(4, 6, weight_drop=P, backend="fused")
    x = torch.randn(5, 3, 4)
    a, _ = layer(x)
    b, _ = layer(x)
    assert not torch.equal(a, b)
    assert "weight_drop=0.3" in repr(layer)
    assert "weight_drop" not in repr(LSTM(4, 6))


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, True])
def test_bad_weight_drop_is_refused(bad):
    with pytest.raises(ValueError, match="weight_drop"):
        LSTM(4, 6, weight_drop=bad)
    if not isinstance(bad, bool):
        with pytest.raises(ValueError, match="weight_drop"):
            ModelConfig(vocab_size=5, weight_drop=bad)


def test_jordan_has_no_weight_drop():
    with pytest.raises(ValueError, match="weight_drop"):
        JordanRNN(4, 6, 5, weight_drop=0.2)
    with pytest.raises(ValueError, match="jordan"):
        ModelConfig(vocab_size=5, cell="jordan", num_layers=1, weight_drop=0.2)


def test_language_model_and_cli_pass_it_on(capsys):
    model = LanguageModel(ModelConfig(vocab_size=7, hidden_size=8, weight_drop=0.25))
    assert model.rnn.weight_drop == 0.25
    config = load_config("shakespeare-30min", {"model": {"weight_drop": 0.25}})
    assert config.model.weight_drop == 0.25
    with pytest.raises(SystemExit):
        main(["train", "--weight-drop", "1.2", "--max-steps", "1"])
    assert "--weight-drop" in capsys.readouterr().err

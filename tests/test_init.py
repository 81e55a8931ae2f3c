"""Named initialisation schemes (seeds 002 and 004)."""

import pytest
import torch

import rnnlab
from rnnlab.init import Init, spectral_radius


def test_uniform_is_torch_default_range():
    torch.manual_seed(0)
    lstm = rnnlab.LSTM(3, 16)
    for p in lstm.parameters():
        assert p.abs().max() <= 1 / 16**0.5


def test_normal_sets_std_and_zero_biases():
    torch.manual_seed(0)
    rnn = rnnlab.RNN(200, 200, init=Init("normal", std=0.1))
    assert abs(rnn.weight_hh_l0.std().item() - 0.1) < 0.005
    assert abs(rnn.weight_ih_l0.std().item() - 0.1) < 0.005
    assert (rnn.bias_ih_l0 == 0).all() and (rnn.bias_hh_l0 == 0).all()


def test_orthogonal_recurrent_blocks():
    gru_like = rnnlab.LSTM(4, 8, num_layers=2, init="orthogonal", dtype=torch.float64)
    for layer in range(2):
        w = getattr(gru_like, f"weight_hh_l{layer}")
        for block in w.split(8):
            torch.testing.assert_close(block.t() @ block, torch.eye(8, dtype=torch.float64))


def test_identity_for_relu_rnn():
    torch.manual_seed(0)
    irnn = rnnlab.RNN(2, 100, nonlinearity="relu", init=Init("identity", std=0.001))
    assert torch.equal(irnn.weight_hh_l0, torch.eye(100))
    assert irnn.weight_ih_l0.std() < 0.002
    assert (irnn.bias_hh_l0 == 0).all()


@pytest.mark.parametrize("connections", [None, 15])
def test_spectral_radius_and_sparsity(connections):
    torch.manual_seed(0)
    rnn = rnnlab.RNN(
        1, 50, init=Init("spectral", radius=0.95, connections=connections), dtype=torch.float64
    )
    w = rnn.weight_hh_l0
    assert abs(spectral_radius(w) - 0.95) < 1e-9
    per_unit = (w != 0).sum(1)
    assert (per_unit == (15 if connections else 50)).all()


def test_spectral_per_gate_block():
    lstm = rnnlab.LSTM(3, 10, init=Init("spectral", radius=1.1), dtype=torch.float64)
    for block in lstm.weight_hh_l0.split(10):
        assert abs(spectral_radius(block) - 1.1) < 1e-9


def test_reset_parameters_reapplies_the_scheme():
    rnn = rnnlab.RNN(2, 6, init="identity")
    with torch.no_grad():
        rnn.weight_hh_l0.fill_(3.0)
    rnn.reset_parameters()
    assert torch.equal(rnn.weight_hh_l0, torch.eye(6))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(scheme="xavier"), "init scheme must be one of"),
        (dict(scheme="normal", std=0), "std must be positive"),
        (dict(scheme="spectral", radius=-1), "radius must be positive"),
        (dict(scheme="spectral", connections=0), "connections must be positive"),
    ],
)
def test_bad_init_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Init(**kwargs)

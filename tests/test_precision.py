"""Mixed precision (``precision = "bfloat16" | "auto"``) and the cheaper CPU dropout mask.

bfloat16: PyTorch's own kernels (the ``torch`` path) run under autocast; the ``fused`` and
``reference`` paths run in float32 inside the autocast region, so their results are
bit-identical to float32 runs; states carried out of an autocast step are accepted back;
parameters, gradients and checkpoints stay float32.
"""

import json

import pytest
import torch

from rnnlab import GRU, LSTM, RNN, JordanRNN
from rnnlab.cli.main import main
from rnnlab.dropout import Dropout, bernoulli_mask, dropout
from rnnlab.models import ModelConfig
from rnnlab.training import TrainConfig, load_config, train
from rnnlab.training import precision as precision_module
from rnnlab.training.config import OptimConfig, OutputConfig
from rnnlab.training.precision import autocast, choose_precision

TEXT = "All the world's a stage, and all the men and women merely players;\n" * 40
CPU = torch.device("cpu")
BF16 = torch.bfloat16


def amp():
    return torch.autocast("cpu", dtype=BF16)


# -- choosing the precision -------------------------------------------------------------


def test_choose_precision(monkeypatch):
    assert choose_precision("float32", CPU).dtype is None
    assert choose_precision("bfloat16", CPU).dtype is BF16
    monkeypatch.setattr(precision_module, "cpu_has_amx", lambda: True)
    choice = choose_precision("auto", CPU)
    assert choice.dtype is BF16 and "AMX" in choice.reason and choice.name == "bfloat16"
    monkeypatch.setattr(precision_module, "cpu_has_amx", lambda: False)
    # without AMX, by the measured speed of bfloat16 against float32
    monkeypatch.setattr(precision_module, "cpu_bfloat16_speedup", lambda: 0.8)
    choice = choose_precision("auto", CPU)
    assert choice.dtype is None and choice.name == "float32" and "0.80x" in choice.reason
    monkeypatch.setattr(precision_module, "cpu_bfloat16_speedup", lambda: 2.3)
    choice = choose_precision("auto", CPU)
    assert choice.dtype is BF16 and "2.3x faster" in choice.reason
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_precision("float16", CPU)
    assert isinstance(precision_module.cpu_has_amx(), bool)


def test_the_bfloat16_speedup_is_measured_once():
    precision_module.cpu_bfloat16_speedup.cache_clear()
    speedup = precision_module.cpu_bfloat16_speedup()
    assert 0 < speedup < 100
    assert precision_module.cpu_bfloat16_speedup() == speedup  # cached for the process


def test_config_checks_precision():
    with pytest.raises(ValueError, match="precision must be one of float32, bfloat16, auto"):
        TrainConfig(optim=OptimConfig(precision="half"))
    with pytest.raises(ValueError, match="precision bfloat16 needs float32 parameters"):
        TrainConfig(
            model=ModelConfig(vocab_size=0, dtype="float64"),
            optim=OptimConfig(precision="bfloat16"),
        )
    preset = load_config("shakespeare-30min")
    assert preset.optim.precision == "auto" and preset.optim.max_time == 1800.0


# -- layers under autocast --------------------------------------------------------------


def test_torch_path_runs_in_bfloat16_under_autocast():
    torch.manual_seed(0)
    layer = LSTM(5, 16, num_layers=2, backend="torch")
    x = torch.randn(12, 3, 5)
    ref, (h_ref, _) = layer(x)
    with amp():
        out, (h, c) = layer(x)
    assert out.dtype == BF16 and h.dtype == BF16
    assert torch.allclose(out.float(), ref, atol=3e-2)
    assert torch.allclose(h.float(), h_ref, atol=3e-2)
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in layer.parameters())


@pytest.mark.parametrize(
    "make",
    [
        lambda: GRU(5, 16, num_layers=2, bidirectional=True),  # auto -> fused on the CPU
        lambda: RNN(5, 16, backend="reference"),
        lambda: LSTM(5, 16, zoneout=0.0, peephole=True),  # options: fused
    ],
)
def test_fused_and_reference_paths_stay_float32_under_autocast(make):
    torch.manual_seed(0)
    layer = make()
    assert layer.backend_choice().name != "torch"
    x = torch.randn(9, 3, 5, requires_grad=True)
    ref, ref_state = layer(x)
    ref.sum().backward()
    ref_grads = [p.grad.clone() for p in layer.parameters()] + [x.grad.clone()]
    layer.zero_grad()
    x.grad = None
    with amp():
        out, state = layer(x)
    assert out.dtype == torch.float32
    assert torch.equal(out, ref)  # the very same float32 computation
    out.sum().backward()
    grads = [p.grad for p in layer.parameters()] + [x.grad]
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads, strict=True))


def test_states_and_inputs_from_an_autocast_step_are_accepted():
    torch.manual_seed(0)
    first = LSTM(5, 8, backend="torch")
    second = GRU(8, 8)  # fused: fed a bfloat16 input and state under autocast
    x = torch.randn(6, 2, 5)
    with amp():
        y, (h, c) = first(x)
        z, g = second(y, h.to(BF16))
        again, _ = first(x, (h, c))  # a carried bfloat16 state goes back in
    assert y.dtype == BF16 and z.dtype == torch.float32 and again.shape == y.shape
    # Outside autocast a bfloat16 state or input is still a user error.
    with pytest.raises(ValueError, match="state h dtype torch.bfloat16 does not match"):
        first(x, (h, c))
    with pytest.raises(ValueError, match="input dtype torch.bfloat16 does not match"):
        second(y)


def test_jordan_network_stays_float32_under_autocast():
    torch.manual_seed(0)
    layer = JordanRNN(4, 6, output_size=3)
    x, teacher = torch.randn(7, 2, 4), torch.randn(7, 2, 3)
    ref, _ = layer(x, teacher=teacher)
    with amp():
        out, _ = layer(x, teacher=teacher.to(BF16))
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=1e-2)  # only the teacher was rounded to bfloat16
    with amp():
        exact, _ = layer(x, teacher=teacher)
    assert torch.equal(exact, ref)


def test_autocast_context():
    assert not torch.is_autocast_enabled("cpu")
    with autocast(choose_precision("bfloat16", CPU), CPU):
        assert torch.is_autocast_enabled("cpu")
    with autocast(choose_precision("float32", CPU), CPU):
        assert not torch.is_autocast_enabled("cpu")


# -- training in bfloat16 ---------------------------------------------------------------


def test_training_in_bfloat16_learns_and_keeps_float32_weights(tmp_path):
    config = TrainConfig(
        model=ModelConfig(vocab_size=0, hidden_size=32, num_layers=2, embedding_dim=8),
        optim=OptimConfig(
            lr=1e-2, batch_size=4, seq_len=16, max_steps=30, max_time=None, precision="bfloat16"
        ),
        output=OutputConfig(
            out=str(tmp_path), eval_interval=15, sample_length=0, progress=False, tensorboard=False
        ),
    )
    lines = []
    result = train(config, text=TEXT, log=lines.append)
    assert "precision: bfloat16 autocast (asked for)" in lines
    records = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert train_losses[-1] < train_losses[0] - 0.5
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    assert result.model.rnn.backend_choice().name == "torch"


def test_precision_flag(tmp_path, capsys):
    data = tmp_path / "t.txt"
    data.write_text(TEXT)
    argv = ["train", "--data", data, "--hidden", "16", "--layers", "1", "--embedding", "8"]
    argv += ["--max-steps", "3", "--batch-size", "2", "--seq-len", "8", "--no-progress"]
    code = main([str(a) for a in [*argv, "--precision", "bfloat16", "--out", tmp_path / "r"]])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "precision: bfloat16 autocast (asked for)" in out + err
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in [*argv, "--precision", "fp8", "--out", tmp_path / "s"]])
    assert exc.value.code == 2
    assert "invalid choice: 'fp8'" in capsys.readouterr().err


# -- dropout ----------------------------------------------------------------------------


@pytest.fixture(params=["compiled", "torch-words"])
def mask_source(request, monkeypatch):
    """Both sources of the random words: the compiled splitmix64 and, as without Numba,
    torch's generator."""
    import rnnlab.dropout as module

    if request.param == "torch-words":
        monkeypatch.setattr(module, "_compiled_fill", lambda: None)
    else:
        assert module._compiled_fill() is not None
    return request.param


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5, 0.9])
def test_dropout_rate_and_scale(p, mask_source):
    torch.manual_seed(0)
    x = torch.ones(400_003)  # not a multiple of 4: the last draw is cut
    y = dropout(x, p)
    cut = round(p * 65536)
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - cut / 65536) < 5 * (p * (1 - p) / x.numel()) ** 0.5
    kept = y[y != 0]
    assert torch.all(kept == 65536 / (65536 - cut))  # scaled by the exact keep rate
    assert abs(y.double().mean().item() - 1.0) < 0.02


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9])
def test_bernoulli_mask_rate_values_and_edges(p, mask_source):
    """The zoneout masks: 0/1 in the asked dtype, 1 with probability p (to 2^-16)."""
    torch.manual_seed(0)
    like = torch.zeros(1, dtype=torch.float64)
    mask = bernoulli_mask((7, 11, 5_003), p, like)  # not a multiple of 4
    assert mask.shape == (7, 11, 5_003) and mask.dtype == torch.float64
    assert torch.all((mask == 0) | (mask == 1))
    rate = 1 - round((1 - p) * 65536) / 65536
    assert abs(mask.mean().item() - rate) < 5 * (p * (1 - p) / mask.numel()) ** 0.5
    assert torch.equal(bernoulli_mask((3, 4), 0.0, like), torch.zeros(3, 4, dtype=torch.float64))
    assert torch.equal(bernoulli_mask((3, 4), 1.0, like), torch.ones(3, 4, dtype=torch.float64))


def test_compiled_masks_are_independent_between_values_and_calls():
    """The four values cut from one 64-bit word, neighbours in the mask, and two calls in
    a row: no correlation beyond chance (a fixed seed; 5 standard errors)."""
    torch.manual_seed(1)
    like = torch.zeros(1)
    n = 400_000
    a, b = bernoulli_mask((n,), 0.5, like), bernoulli_mask((n,), 0.5, like)
    centred = [m.double() - 0.5 for m in (a, b)]
    bound = 5 * 0.25 / n**0.5  # the standard error of a mean of n products of +-0.5
    for lag in (1, 2, 3, 4, 5):
        assert abs((centred[0][lag:] * centred[0][:-lag]).mean().item()) < bound
    assert abs((centred[0] * centred[1]).mean().item()) < bound
    words = a.view(-1, 4).double()  # the four values of each word: every pattern 1/16
    patterns = torch.bincount((words * torch.tensor([1.0, 2, 4, 8])).sum(1).long(), minlength=16)
    expected = words.shape[0] / 16
    assert ((patterns - expected).abs() < 5 * (expected * 15 / 16) ** 0.5).all()


def test_dropout_gradient_uses_the_same_mask():
    torch.manual_seed(1)
    x = torch.randn(3, 50, 7, dtype=torch.float64, requires_grad=True)
    y = dropout(x, 0.3)
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad == 0, y == 0)
    assert torch.allclose(x.grad, (y / x).detach(), rtol=1e-14, atol=0)


def test_dropout_is_reproducible_and_off_outside_training():
    x = torch.randn(10, 20)
    torch.manual_seed(5)
    a = dropout(x, 0.5)
    torch.manual_seed(5)
    b = dropout(x, 0.5)
    assert torch.equal(a, b) and not torch.equal(a, x)
    assert dropout(x, 0.5, training=False) is x and dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    assert dropout(torch.ones(4, dtype=BF16), 0.5).dtype == BF16
    assert dropout(torch.empty(0, 3), 0.5).shape == (0, 3)
    module = Dropout(0.2)
    assert repr(module) == "Dropout(p=0.2)"
    assert torch.equal(module.eval()(x), x)
    with pytest.raises(ValueError, match="dropout probability must be in"):
        Dropout(1.5)

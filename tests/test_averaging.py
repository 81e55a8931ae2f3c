"""Weight averaging (``ema = d``): the recurrence, the swap, the trainer and resumption."""

import json

import pytest
import torch
from safetensors.torch import load_file

from rnnlab.cli.main import main
from rnnlab.models import LanguageModel, ModelConfig
from rnnlab.training import TrainConfig, train
from rnnlab.training.averaging import WeightAverage
from rnnlab.training.config import OptimConfig, OutputConfig
from rnnlab.training.streams import evaluate_stream
from rnnlab.training.trainer import prepare_data

TEXT = "the quick brown fox jumps over the lazy dog. " * 40


def test_the_average_follows_its_recurrence_with_the_warm_up():
    model = torch.nn.Linear(3, 2)
    average = WeightAverage(model, decay=0.9)
    expected = [p.detach().clone() for p in model.parameters()]
    for t in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        d = min(0.9, (1 + t) / (10 + t))
        expected = [
            d * e + (1 - d) * p.detach() for e, p in zip(expected, model.parameters(), strict=True)
        ]
        average.update()
    assert average.updates == 30
    for got, want in zip(average.shadow, expected, strict=True):
        torch.testing.assert_close(got, want)


def test_swapped_in_holds_the_average_and_gives_the_weights_back():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    average = WeightAverage(model, decay=0.5)
    own = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    average.update()  # d_0 = 0.1: the average moves 90% of the way
    moved = {k: v.clone() for k, v in model.state_dict().items()}
    with average.swapped_in():
        w = model[0].weight
        torch.testing.assert_close(w, own["0.weight"] + 0.9)
        torch.testing.assert_close(model[1].running_mean, own["1.running_mean"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, moved[k]), k  # bit for bit, integer buffers too


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.5])
def test_bad_decay(bad):
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(torch.nn.Linear(2, 2), bad)


def config(tmp_path, steps, ema=0.8):
    return TrainConfig(
        model=ModelConfig(vocab_size=0, hidden_size=16, num_layers=1, embedding_dim=8),
        optim=OptimConfig(
            lr=1e-2, batch_size=4, seq_len=10, max_steps=steps, max_time=None, ema=ema
        ),
        output=OutputConfig(
            out=str(tmp_path), eval_interval=5, sample_length=0, progress=False, tensorboard=False
        ),
    )


def test_training_validates_and_keeps_the_average(tmp_path):
    logs = []
    result = train(config(tmp_path, 20), text=TEXT, log=logs.append)
    assert any("moving average" in line for line in logs)
    best = load_file(str(tmp_path / "best" / "model.safetensors"))
    last = load_file(str(tmp_path / "last" / "model.safetensors"))
    state = load_file(str(tmp_path / "last" / "training_state.safetensors"))
    meta = json.loads((tmp_path / "last" / "training_state.json").read_text())
    assert meta["average"] == {"decay": 0.8, "updates": 20}
    # last/ holds the trained weights; its training state holds the average.
    model = result.model
    for name, p in model.named_parameters():
        assert torch.equal(last[name], p.detach())
    averaged = [state[f"ema.{i}"] for i in range(len(list(model.parameters())))]
    assert not all(
        torch.equal(a, p.detach()) for a, p in zip(averaged, model.parameters(), strict=True)
    )
    # The validation loss logged is that of the average; best/ is the average then.
    _, _, val_ids = prepare_data(config(tmp_path, 20), TEXT)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["val_loss"] for r in records if r["kind"] == "eval"}
    best_step = min(evals, key=evals.get)
    assert result.best_val_loss == evals[best_step]
    probe = LanguageModel(model.config)
    probe.load_state_dict(best)
    loss = evaluate_stream(probe, val_ids, config(tmp_path, 20).data.val_streams, 10)
    assert loss == pytest.approx(evals[best_step], rel=1e-6)
    if best_step == 20:
        for (name, _), a in zip(model.named_parameters(), averaged, strict=True):
            assert torch.equal(best[name], a), name


def test_resumption_continues_the_average_exactly(tmp_path):
    train(config(tmp_path / "whole", 20), text=TEXT, log=lambda m: None)
    train(config(tmp_path / "split", 10), text=TEXT, log=lambda m: None)
    train(config(tmp_path / "split", 20), text=TEXT, log=lambda m: None, resume=tmp_path / "split")
    whole = load_file(str(tmp_path / "whole" / "last" / "training_state.safetensors"))
    split = load_file(str(tmp_path / "split" / "last" / "training_state.safetensors"))
    keys = [k for k in whole if k.startswith("ema.")]
    assert keys and keys == [k for k in split if k.startswith("ema.")]
    for k in keys:
        assert torch.equal(whole[k], split[k]), k


def test_resuming_a_run_without_an_average_starts_one(tmp_path):
    train(config(tmp_path, 5, ema=0.0), text=TEXT, log=lambda m: None)
    logs = []
    train(config(tmp_path, 10), text=TEXT, log=logs.append, resume=tmp_path)
    assert any("kept no weight average" in line for line in logs)
    meta = json.loads((tmp_path / "last" / "training_state.json").read_text())
    assert meta["average"]["updates"] == 5
    # Resumed with nothing left to do, the new average is the resumed weights themselves.
    train(config(tmp_path / "new", 5, ema=0.0), text=TEXT, log=lambda m: None)
    train(config(tmp_path / "new", 5), text=TEXT, log=lambda m: None, resume=tmp_path / "new")
    weights = load_file(str(tmp_path / "new" / "last" / "model.safetensors"))
    state = load_file(str(tmp_path / "new" / "last" / "training_state.safetensors"))
    model = LanguageModel(
        ModelConfig(vocab_size=len(set(TEXT)), hidden_size=16, num_layers=1, embedding_dim=8)
    )
    names = [name for name, _ in model.named_parameters()]
    for i, name in enumerate(names):
        assert torch.equal(state[f"ema.{i}"], weights[name]), name


def test_ema_out_of_range_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--ema", "1.0", "--max-steps", "1"])
    assert exc.value.code == 2 and "--ema" in capsys.readouterr().err
    with pytest.raises(ValueError, match="ema"):
        TrainConfig(optim=OptimConfig(ema=1.0))

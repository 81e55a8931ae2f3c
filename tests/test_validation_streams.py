"""Validation scores the held-out text as a fixed number of streams, not the batch's."""

import math

import pytest
import torch

from rnnlab.cli.main import main
from rnnlab.models import LanguageModel, ModelConfig
from rnnlab.training import StreamTask, TrainConfig, train
from rnnlab.training.config import DataConfig, OptimConfig, OutputConfig
from rnnlab.training.streams import evaluate_stream
from rnnlab.training.trainer import prepare_data

TEXT = "It is a tale told by an idiot, full of sound and fury, signifying nothing.\n" * 20


def model(seed=0):
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=7, hidden_size=12, num_layers=2, embedding_dim=5)
    return LanguageModel(config).double().eval()


def test_one_stream_scores_every_token_with_all_the_text_before_it():
    m = model()
    ids = torch.randint(0, 7, (301,))
    with torch.no_grad():
        logits, _, _ = m(ids[:-1].unsqueeze(0), None)
        whole = torch.nn.functional.cross_entropy(logits[0], ids[1:]).item()
    for seq_len in (1, 7, 50, 300):  # the chunk length does not change the result
        assert evaluate_stream(m, ids, 1, seq_len) == pytest.approx(whole, rel=1e-12)


def test_k_streams_are_k_contiguous_pieces_each_from_a_zero_state():
    m = model()
    ids = torch.randint(0, 7, (1 + 4 * 60,))
    pieces = []
    with torch.no_grad():
        for k in range(4):
            x, y = ids[k * 60 : (k + 1) * 60], ids[k * 60 + 1 : (k + 1) * 60 + 1]
            logits, _, _ = m(x.unsqueeze(0), None)
            pieces.append(torch.nn.functional.cross_entropy(logits[0], y, reduction="sum"))
    expected = (sum(pieces) / (4 * 60)).item()
    assert evaluate_stream(m, ids, 4, 13) == pytest.approx(expected, rel=1e-12)


def test_the_validation_loss_does_not_depend_on_the_training_batch():
    m = model()
    train_ids, val_ids = torch.randint(0, 7, (2000,)), torch.randint(0, 7, (500,))
    losses = {
        batch: StreamTask(train_ids, val_ids, batch, 10, 10, val_streams=3).evaluate(m)
        for batch in (2, 8, 32)
    }
    assert losses[2] == losses[8] == losses[32]
    assert losses[2]["val_loss"] == evaluate_stream(m, val_ids, 3, 10)


def test_more_streams_start_cold_more_often(tmp_path):
    """On a text the model has learnt, each cold start costs: more streams, higher loss."""
    config = TrainConfig(
        model=ModelConfig(vocab_size=0, hidden_size=32, num_layers=1, embedding_dim=8),
        optim=OptimConfig(lr=1e-2, batch_size=8, seq_len=20, max_steps=120, max_time=None),
        output=OutputConfig(
            out=str(tmp_path),
            eval_interval=1000,
            sample_length=0,
            progress=False,
            tensorboard=False,
        ),
    )
    result = train(config, text=TEXT)
    _, _, val_ids = prepare_data(config, TEXT)
    one, many = (evaluate_stream(result.model, val_ids, s, 20) for s in (1, 64))
    assert math.isfinite(one) and one < many


def test_val_streams_is_checked():
    with pytest.raises(ValueError, match="val_streams must be positive"):
        TrainConfig(data=DataConfig(val_streams=0))


def test_cli_val_streams_and_eval_streams(tmp_path, capsys):
    data = tmp_path / "text.txt"
    data.write_text(TEXT)
    out = tmp_path / "run"
    tiny = ["--hidden", "16", "--layers", "1", "--embedding", "8", "--no-progress"]
    args = ["train", "--data", data, *tiny, "--batch-size", "4", "--seq-len", "16"]
    args += ["--max-steps", "3", "--val-streams", "2", "--sample-length", "0", "--out", out]
    assert main([str(a) for a in args]) == 0
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "scored as 2 streams" in printed
    assert main(["eval", str(out), "--streams", "1"]) == 0
    printed = capsys.readouterr().out
    assert "scored as 1 stream)" in printed
    with pytest.raises(SystemExit) as exc:
        main(["train", "--val-streams", "0"])
    assert exc.value.code == 2
    assert "positive integer" in capsys.readouterr().err

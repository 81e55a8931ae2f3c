"""Checkpoints: safetensors + JSON round trip, atomic replacement, clear errors."""

import json

import pytest
import torch

from rnnlab.data import Vocabulary
from rnnlab.errors import UserError
from rnnlab.models import LanguageModel, ModelConfig
from rnnlab.training import TrainConfig, load_checkpoint, save_checkpoint
from rnnlab.training import checkpoint as ckpt


@pytest.fixture
def saved(tmp_path):
    vocab = Vocabulary.from_text("abcdef\n")
    config = TrainConfig()
    model_config = ModelConfig(vocab_size=len(vocab), hidden_size=8, num_layers=2, embedding_dim=4)
    config = TrainConfig(model=model_config)
    torch.manual_seed(0)
    model = LanguageModel(model_config)
    path = save_checkpoint(tmp_path / "run" / "best", model, config, vocab, step=7, val_loss=1.5)
    return path, model, vocab


def test_round_trip_restores_weights_config_and_vocab(saved):
    path, model, vocab = saved
    loaded, vocab2, config, info = load_checkpoint(path)
    assert vocab2 == vocab and info["step"] == 7 and info["val_loss"] == 1.5
    assert config.model.hidden_size == 8
    idx = torch.randint(len(vocab), (2, 5))
    torch.testing.assert_close(loaded(idx)[0], model.eval()(idx)[0], atol=0, rtol=0)
    assert sorted(p.name for p in path.iterdir()) == sorted(ckpt.FILES)


def test_a_run_directory_resolves_to_best(saved):
    path, _, _ = saved
    assert ckpt.resolve(path.parent) == path


def test_crash_while_writing_keeps_the_previous_checkpoint(saved, monkeypatch):
    path, model, vocab = saved

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", crash)
    with pytest.raises(OSError):
        save_checkpoint(path, model, TrainConfig(model=model.config), vocab, step=99)
    _, _, _, info = load_checkpoint(path)
    assert info["step"] == 7


def test_crash_between_renames_falls_back_to_the_old_copy(saved):
    path, _, _ = saved
    path.rename(path.with_name(".best.old"))  # the new copy never arrived
    _, _, _, info = load_checkpoint(path.parent)
    assert info["step"] == 7


def test_missing_checkpoint(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope")


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(UserError, match="not an rnnlab checkpoint"):
        load_checkpoint(tmp_path)


def test_incomplete_checkpoint_names_the_missing_file(saved):
    path, _, _ = saved
    (path / "model.safetensors").unlink()
    with pytest.raises(UserError, match="incomplete checkpoint .* missing model.safetensors"):
        load_checkpoint(path)


def test_incompatible_version(saved):
    path, _, _ = saved
    meta = json.loads((path / "checkpoint.json").read_text())
    meta["version"] = 99
    (path / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="format version 99"):
        load_checkpoint(path)


def test_corrupt_json_and_weights(saved):
    path, _, _ = saved
    (path / "model.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(UserError, match="damaged"):
        load_checkpoint(path)
    (path / "checkpoint.json").write_text("{broken")
    with pytest.raises(UserError, match="corrupt checkpoint JSON"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_config(saved):
    path, _, _ = saved
    meta = json.loads((path / "checkpoint.json").read_text())
    meta["config"]["model"]["hidden_size"] = 16
    (path / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="damaged or inconsistent"):
        load_checkpoint(path)

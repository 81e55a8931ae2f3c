"""The language model: shapes, loss, truncated-BPTT state carrying, sampling, training."""

import math

import pytest
import torch
import torch.nn.functional as F

from rnnlab.models import LanguageModel, ModelConfig
from rnnlab.training import DataConfig, OptimConfig, OutputConfig, TrainConfig, train
from rnnlab.training.trainer import detach_state


def small_model(cell="lstm", embedding_dim=8, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=11, cell=cell, hidden_size=12, num_layers=2, embedding_dim=embedding_dim, **kw
    )
    return LanguageModel(cfg).double()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("embedding_dim", [0, 8])
def test_forward_shapes_and_loss_is_mean_cross_entropy(cell, embedding_dim):
    model = small_model(cell, embedding_dim)
    idx = torch.randint(11, (3, 9))
    targets = torch.randint(11, (3, 9))
    logits, loss, state = model(idx, targets=targets)
    assert logits.shape == (3, 9, 11)
    h = state[0] if cell == "lstm" else state
    assert h.shape == (2, 3, 12)
    # -(1/NT) sum_t log softmax(logits_t)[target_t], written out
    logp = torch.log_softmax(logits, -1)
    manual = -logp.gather(-1, targets.unsqueeze(-1)).mean()
    torch.testing.assert_close(loss, manual, atol=1e-12, rtol=1e-12)
    assert model(idx)[1] is None


def test_one_hot_input_equals_identity_embedding():
    model = small_model(embedding_dim=0)
    idx = torch.randint(11, (2, 5))
    x = F.one_hot(idx.t(), 11).double()
    hs, _ = model.rnn(x)
    expected = model.head(hs).transpose(0, 1)
    torch.testing.assert_close(model(idx)[0], expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_state_carried_across_chunks_equals_one_pass(cell):
    model = small_model(cell)
    idx = torch.randint(11, (4, 30))
    whole, _, _ = model(idx)
    state, parts = None, []
    for chunk in idx.split([7, 13, 10], dim=1):
        logits, _, state = model(chunk, state)
        state = detach_state(state)
        parts.append(logits)
    torch.testing.assert_close(torch.cat(parts, 1), whole, atol=1e-12, rtol=0)


def test_detached_state_stops_gradients_at_the_chunk_boundary():
    model = small_model()
    emb = model.embedding.weight
    idx = torch.randint(11, (2, 10))
    _, _, state = model(idx[:, :5])
    # Without detaching, the second chunk's loss reaches the first chunk's tokens.
    _, loss, _ = model(idx[:, 5:], state, targets=idx[:, 5:])
    g_full = torch.autograd.grad(loss, emb, retain_graph=True)[0]
    _, loss_tbptt, _ = model(idx[:, 5:], detach_state(state), targets=idx[:, 5:])
    g_trunc = torch.autograd.grad(loss_tbptt, emb)[0]
    first_only = sorted(set(idx[:, :5].flatten().tolist()) - set(idx[:, 5:].flatten().tolist()))
    assert first_only, "the test needs a token that appears only in the first chunk"
    assert g_full[first_only].abs().sum() > 0
    assert g_trunc[first_only].abs().sum() == 0


def test_generate_is_reproducible_and_validates_arguments():
    model = small_model()
    a = model.generate([1, 2], 20, temperature=0.9, generator=torch.Generator().manual_seed(3))
    b = model.generate([1, 2], 20, temperature=0.9, generator=torch.Generator().manual_seed(3))
    assert a == b and len(a) == 20 and all(0 <= t < 11 for t in a)
    g1 = model.generate([1], 15, greedy=True)
    assert g1 == model.generate([1], 15, greedy=True)
    # greedy is the argmax of each step's distribution
    seq, state, logits = [1], None, None
    for _ in range(5):
        logits, _, state = model(torch.tensor([[seq[-1]]]), state)
        seq.append(int(logits[0, -1].argmax()))
    assert seq[1:] == g1[:5]
    with pytest.raises(ValueError, match="temperature"):
        model.generate([1], 5, temperature=0.0)
    with pytest.raises(ValueError, match="prime"):
        model.generate([], 5)


def test_low_temperature_approaches_greedy():
    model = small_model()
    gen = torch.Generator().manual_seed(0)
    cold = model.generate([4], 30, temperature=1e-4, generator=gen)
    assert cold == model.generate([4], 30, greedy=True)


def hello_config(tmp_path, cell="lstm"):
    return TrainConfig(
        data=DataConfig(val_fraction=0.0),
        model=ModelConfig(vocab_size=0, cell=cell, hidden_size=16, num_layers=1, embedding_dim=0),
        optim=OptimConfig(lr=0.05, batch_size=1, seq_len=4, max_steps=150, max_time=None),
        output=OutputConfig(out=str(tmp_path), eval_interval=1000, sample_length=0, progress=False),
    )


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_seed_example_hello(tmp_path, cell):
    """Seed 002/003: from h, e, l, l predict e, l, l, o; greedy from 'h' prints 'hello'."""
    result = train(hello_config(tmp_path, cell), text="hello", log=lambda m: None)
    model, vocab = result.model, result.vocab
    assert vocab.tokens == ["e", "h", "l", "o"]  # one-hot over the four letters
    logits, _, _ = model(torch.tensor([vocab.encode("hell")]))
    assert vocab.decode(logits[0].argmax(-1).tolist()) == "ello"
    assert result.last_train_loss < 0.05
    h = vocab.encode("h")
    assert vocab.decode(h + model.generate(h, 4, greedy=True)) == "hello"
    assert (tmp_path / "best" / "model.safetensors").exists()


def test_training_lowers_validation_loss(tmp_path):
    text = "the quick brown fox jumps over the lazy dog. " * 60
    cfg = TrainConfig(
        model=ModelConfig(vocab_size=0, hidden_size=32, num_layers=1, embedding_dim=16),
        optim=OptimConfig(lr=1e-2, batch_size=8, seq_len=20, max_steps=60, max_time=None),
        output=OutputConfig(out=str(tmp_path), eval_interval=30, sample_length=20, progress=False),
    )
    logs = []
    result = train(cfg, text=text, log=logs.append)
    assert result.best_val_loss < 0.5 * math.log(len(set(text)))
    assert any("sample at step 30" in line for line in logs)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    evals = [line for line in lines if '"kind": "eval"' in line]
    assert len(lines) == 62 and len(evals) == 2 and '"val_loss"' in evals[0]


def plain_generate(model, prime, length, temperature, generator):
    """The reference: a whole forward pass of the model for every token."""
    out, state = [], None
    logits, _, state = model(torch.tensor([prime]))
    for _ in range(length):
        probs = torch.softmax(logits[0, -1].double() / temperature, dim=-1)
        token = int(torch.multinomial(probs, 1, generator=generator))
        out.append(token)
        logits, _, state = model(torch.tensor([[token]]), state)
    return out


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "pascanu", "jordan"])
def test_fast_generation_gives_the_plain_paths_samples(cell):
    torch.manual_seed(1)
    layers = 1 if cell == "jordan" else 2
    cfg = ModelConfig(
        vocab_size=11,
        cell=cell,
        hidden_size=12,
        num_layers=layers,
        embedding_dim=5,
        dtype="float64",
        hidden_recurrence=cell == "jordan",
    )
    model = LanguageModel(cfg).eval()
    fast = model.generate(
        [3, 4, 5], 40, temperature=1.3, generator=torch.Generator().manual_seed(9)
    )
    with torch.no_grad():
        plain = plain_generate(model, [3, 4, 5], 40, 1.3, torch.Generator().manual_seed(9))
    assert fast == plain


@pytest.mark.parametrize(
    "make",
    [
        lambda: __import__("rnnlab").LSTM(
            3, 5, num_layers=2, proj_size=2, peephole=True, layer_norm=True, zoneout=0.2
        ),
        lambda: __import__("rnnlab").GRU(3, 5, num_layers=2, form="cho"),
        lambda: __import__("rnnlab").RNN(3, 5, num_layers=3, nonlinearity="relu"),
        lambda: __import__("rnnlab").PascanuRNN(3, 5, num_layers=2),
    ],
)
def test_layer_step_equals_forward(make):
    layer = make().double().eval()
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    whole, final = layer(x)
    state, outs = None, []
    for x_t in x:
        out, state = layer.step(x_t, state)
        outs.append(out)
    torch.testing.assert_close(torch.stack(outs), whole, atol=1e-12, rtol=0)
    for a, b in zip(
        state if isinstance(state, tuple) else (state,),
        final if isinstance(final, tuple) else (final,),
        strict=True,
    ):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)

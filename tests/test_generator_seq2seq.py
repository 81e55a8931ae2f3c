"""One-to-many and encoder-decoder models: decoding (greedy, beam search, length penalty),
teacher forcing and scheduled sampling, encode(), bad input, checkpoints, learning small
problems, and the three worked examples end to end on tiny budgets."""

from __future__ import annotations

import doctest
import importlib
import json
import math
import random
import sys

import pytest
import torch

from rnnlab.cli.main import main
from rnnlab.errors import UserError
from rnnlab.examples import addition, dates, digit_words
from rnnlab.examples._seq_common import CharVocab, Example, collate, loss_fn
from rnnlab.models.generator import (
    BOS,
    EOS,
    ConditionalGenerator,
    GeneratorConfig,
    beam_search,
    decoder_logits,
    greedy_decode,
    length_penalty,
    log_softmax_step,
    shift_right,
)
from rnnlab.models.seq2seq import Seq2Seq, Seq2SeqConfig
from rnnlab.training.checkpoint import load_model, save_model
from rnnlab.training.config import OptimConfig, OutputConfig, TrainConfig
from rnnlab.training.schedules import TeacherForcing
from rnnlab.training.supervised import SupervisedTask
from rnnlab.training.trainer import Trainer


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors gain nothing from intra-op threads; on a shared two-core machine the
    OpenMP workers of a busy process slow every small op down many times."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _seq2seq(attention="none", bidirectional=False, cell="lstm", layers=1, seed=0, **kw):
    torch.manual_seed(seed)
    config = Seq2SeqConfig(
        source_vocab_size=kw.pop("source_vocab_size", 13),
        target_vocab_size=kw.pop("target_vocab_size", 13),
        cell=cell,
        hidden_size=kw.pop("hidden_size", 16),
        num_layers=layers,
        embedding_dim=8,
        bidirectional=bidirectional,
        attention=attention,
        **kw,
    )
    return Seq2Seq(config)


def _sources(n=6, vocab=13, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(1, 6))] for _ in range(n)]


# -- decoding ----------------------------------------------------------------------------------

# A Markov chain over tokens <pad> <bos> <eos> A B: the state is the previous token.
NEG = -1e9


def _table_step(table: dict[int, dict[int, float]], vocab=5):
    """A step function whose next-token distribution depends only on the previous token."""
    logp = torch.full((vocab, vocab), NEG)
    for prev, row in table.items():
        for token, p in row.items():
            logp[prev, token] = math.log(p)

    def step(tokens, state):
        return logp[tokens], state

    return step


def _dummy_state(n):
    return (torch.zeros(n, 1),)


def test_beam_search_finds_a_higher_scoring_sequence_than_greedy():
    A, B = 3, 4
    # greedy takes A (0.6), then can only end weakly; B (0.4) ends with 0.9
    step = _table_step(
        {BOS: {A: 0.6, B: 0.4}, A: {EOS: 0.35, A: 0.33, B: 0.32}, B: {EOS: 0.9, A: 0.1}}
    )
    kwargs = dict(bos=BOS, eos=EOS, max_length=4)
    g_seqs, g_scores = greedy_decode(step, _dummy_state(1), 1, **kwargs)
    b_seqs, b_scores = beam_search(step, _dummy_state(1), 1, beam=2, alpha=0.0, **kwargs)
    assert g_seqs == [[A]] and b_seqs == [[B]]
    assert g_scores[0] == pytest.approx(math.log(0.6 * 0.35), abs=1e-6)
    assert b_scores[0] == pytest.approx(math.log(0.4 * 0.9), abs=1e-6)
    assert b_scores[0] > g_scores[0]


def test_beam_search_waits_for_a_better_hypothesis_still_being_written():
    A, B, C, D, E = 3, 4, 5, 6, 7
    # "A D E" (0.5) takes three tokens; "B" and "C" (0.25 each) end at once, and the beam's
    # dead slots end with negligible probability: K hypotheses finish before the best does
    table = {BOS: {A: 0.5, B: 0.25, C: 0.25}, A: {D: 1.0}, D: {E: 1.0}, B: {EOS: 1.0}}
    table.update({C: {EOS: 1.0}, E: {EOS: 1.0}})
    step = _table_step(table, vocab=8)
    for alpha in (0.0, 0.6):
        seqs, scores = beam_search(
            step, _dummy_state(1), 1, bos=BOS, eos=EOS, max_length=6, beam=3, alpha=alpha
        )
        assert seqs == [[A, D, E]] and scores[0] == pytest.approx(math.log(0.5), abs=1e-6)


def test_length_penalty_ranks_finished_hypotheses_as_documented():
    A = 3
    step = _table_step({BOS: {EOS: 0.55, A: 0.45}, A: {EOS: 0.9, A: 0.1}})
    short, long = math.log(0.55), math.log(0.45 * 0.9)  # [] and [A], with <eos> 1 and 2 tokens
    assert length_penalty(1, 0.6) == 1.0
    assert length_penalty(7, 1.0) == pytest.approx(2.0)
    assert length_penalty(2, 0.0) == 1.0
    for alpha in (0.0, 0.6, 2.0, 4.0):
        seqs, scores = beam_search(
            step, _dummy_state(1), 1, bos=BOS, eos=EOS, max_length=5, beam=2, alpha=alpha
        )
        long_wins = long / length_penalty(2, alpha) > short / length_penalty(1, alpha)
        assert seqs == ([[A]] if long_wins else [[]]), alpha
        assert scores[0] == pytest.approx(long if long_wins else short, abs=1e-6)
    # raw log probability prefers the short one; the long one wins from alpha =
    # log(long / short) / log(7 / 6) ~ 2.7, so the alphas above see both outcomes
    assert short > long and long / length_penalty(2, 4.0) > short > long / length_penalty(2, 2)


@pytest.mark.parametrize("attention", ["none", "bahdanau", "luong"])
def test_beam_width_one_is_greedy(attention):
    model = _seq2seq(attention, bidirectional=True, cell="gru", layers=2).eval()
    sources = _sources(8)
    state, memory = model.start(sources)
    step = log_softmax_step(lambda t, s: model.decoder.step(t, s, memory))
    kwargs = dict(bos=BOS, eos=EOS, max_length=7)
    with torch.no_grad():
        greedy = greedy_decode(step, state, len(sources), **kwargs)
        beam1 = beam_search(step, state, len(sources), beam=1, alpha=0.6, **kwargs)
    assert beam1[0] == greedy[0]
    assert beam1[1] == pytest.approx(greedy[1], abs=1e-5)
    assert model.generate(sources, max_length=7) == greedy[0]


def test_batched_beam_search_equals_one_input_at_a_time():
    model = _seq2seq("luong", bidirectional=True).eval()
    sources = _sources(5, seed=3)
    together, scores = model.generate(sources, max_length=6, beam=3, return_scores=True)
    for i, source in enumerate(sources):
        alone, score = model.generate([source], max_length=6, beam=3, return_scores=True)
        assert alone == [together[i]]
        assert score[0] == pytest.approx(scores[i], abs=1e-5)


def test_beam_scores_are_at_least_greedy_without_length_penalty():
    model = _seq2seq("bahdanau", hidden_size=24, seed=4).eval()
    sources = _sources(12, seed=5)
    _, greedy = model.generate(sources, max_length=6, return_scores=True)
    _, beam = model.generate(sources, max_length=6, beam=5, length_penalty=0.0, return_scores=True)
    assert all(b >= g - 1e-5 for b, g in zip(beam, greedy, strict=True))


@pytest.mark.parametrize("beam, max_length, message", [(0, 5, "beam width"), (2, 0, "max_length")])
def test_bad_beam_width_or_max_length_fails_clearly(beam, max_length, message):
    model = _seq2seq()
    with pytest.raises(ValueError, match=message):
        model.generate(_sources(2), max_length=max_length, beam=beam)
    generator = ConditionalGenerator(GeneratorConfig(input_size=3, vocab_size=6, hidden_size=4))
    with pytest.raises(ValueError, match=message):
        generator.generate(torch.zeros(2, 3), max_length=max_length, beam=beam)


# -- teacher forcing and scheduled sampling ----------------------------------------------------


def test_whole_sequence_teacher_forcing_equals_step_by_step():
    targets = torch.tensor([[5, 6, 2, 0], [7, 2, 0, 0], [3, 4, 5, 2], [2, 0, 0, 0]])
    inputs = shift_right(targets)
    model = _seq2seq("none", bidirectional=True, layers=2).double()
    state, memory = model.start(_sources(4))
    whole = model.decoder(inputs, state, memory)
    steps = decoder_logits(lambda t, s: model.decoder.step(t, s, memory), state, inputs, 1.0)
    torch.testing.assert_close(whole, steps, rtol=1e-10, atol=1e-10)
    config = GeneratorConfig(input_size=3, vocab_size=8, hidden_size=6, num_layers=2)
    generator = ConditionalGenerator(config).double()
    features = torch.randn(4, 3, dtype=torch.float64)
    whole, _ = generator(features, targets)
    steps = decoder_logits(generator.step, generator.initial_state(features), inputs, 1.0)
    torch.testing.assert_close(whole, steps, rtol=1e-10, atol=1e-10)


def test_scheduled_sampling_feeds_the_model_its_own_predictions():
    model = _seq2seq("none", seed=1)
    sources, targets = _sources(6), torch.randint(3, 13, (6, 5))
    model.train()
    model.teacher_probability = 1.0
    forced, _ = model(sources, targets)
    model.teacher_probability = 0.0
    free, _ = model(sources, targets)
    torch.testing.assert_close(free[:, 0], forced[:, 0])  # step 0 is fed <bos> either way
    assert not torch.allclose(free[:, 1:], forced[:, 1:])
    # fed its own argmax, the free-running logits are those of greedy decoding
    model.eval()
    state, memory = model.start(sources)
    greedy_inputs = [torch.full((6,), BOS)]
    with torch.no_grad():
        for t in range(4):
            greedy_inputs.append(free[:, t].argmax(-1))
        again = model.decoder(torch.stack(greedy_inputs, 1), state, memory)
    torch.testing.assert_close(again, free.detach(), rtol=1e-5, atol=1e-6)
    # evaluation always computes the teacher-forced loss
    model.teacher_probability = 0.0
    torch.testing.assert_close(model(sources, targets)[0], forced.detach())


# -- encode and bad input ----------------------------------------------------------------------


@pytest.mark.parametrize("bidirectional", [False, True])
def test_encode_gives_one_vector_per_sequence(bidirectional):
    model = _seq2seq(bidirectional=bidirectional, layers=2, hidden_size=10).eval()
    sources = _sources(5)
    vectors = model.encode(sources)
    assert vectors.shape == (5, 20 if bidirectional else 10)
    # the top layer's final state, each sequence at its own last step: encoding one alone
    # gives the same vector as encoding it in a padded batch
    for i, source in enumerate(sources):
        torch.testing.assert_close(model.encode([source])[0], vectors[i], rtol=1e-5, atol=1e-6)


def test_encode_feature_sequences_and_wrong_feature_size():
    torch.manual_seed(0)
    config = Seq2SeqConfig(source_vocab_size=0, input_size=5, target_vocab_size=7, hidden_size=6)
    model = Seq2Seq(config)
    assert model.encode(torch.randn(3, 4, 5)).shape == (3, 6)
    assert model.encode([torch.randn(2, 5), torch.randn(7, 5)]).shape == (2, 6)
    with pytest.raises(ValueError, match=r"expects \(N, S, 5\).*\(3, 4, 4\)"):
        model.encode(torch.randn(3, 4, 4))
    tokens = _seq2seq()
    with pytest.raises(ValueError, match="reads token ids"):
        tokens.encode(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match=r"source ids must be in \[0, 13\)"):
        tokens.encode([[3, 40]])
    generator = ConditionalGenerator(GeneratorConfig(input_size=64, vocab_size=6))
    with pytest.raises(ValueError, match="expects feature size 64"):
        generator.generate(torch.zeros(2, 63))


def test_configs_reject_bad_settings():
    with pytest.raises(ValueError, match="attention must be one of"):
        Seq2SeqConfig(source_vocab_size=5, target_vocab_size=5, attention="dot")
    with pytest.raises(ValueError, match="exactly one of"):
        Seq2SeqConfig(source_vocab_size=5, target_vocab_size=5, input_size=3)
    with pytest.raises(ValueError, match="cell must be one of"):
        GeneratorConfig(input_size=3, vocab_size=5, cell="jordan")


# -- checkpoints -------------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path):
    model = _seq2seq("bahdanau", bidirectional=True, cell="gru").eval()
    spec = {"model": model.config.to_json()}
    save_model(tmp_path / "best", model, "seq2seq-test", spec, None, step=3, val_loss=1.0)

    def build(s):
        return Seq2Seq(Seq2SeqConfig(**s["model"]))

    loaded, spec2, info = load_model(tmp_path, build, "seq2seq-test")
    assert spec2 == spec and info["step"] == 3
    sources = _sources(4)
    assert loaded.generate(sources, beam=3) == model.generate(sources, beam=3)
    torch.testing.assert_close(loaded.encode(sources), model.encode(sources))
    with pytest.raises(UserError, match="not a 'generator'"):
        load_model(tmp_path, build, "generator")

    generator = ConditionalGenerator(GeneratorConfig(input_size=3, vocab_size=6, hidden_size=4))
    save_model(tmp_path / "gen", generator, "g", {"model": generator.config.to_json()})
    again, _, _ = load_model(
        tmp_path / "gen", lambda s: ConditionalGenerator(GeneratorConfig(**s["model"])), "g"
    )
    x = torch.randn(5, 3)
    assert again.generate(x, beam=2) == generator.generate(x, beam=2)


# -- learning small problems -------------------------------------------------------------------

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _train(model, train, val, steps, lr, teacher=None, batch_size=32, tmp_path=None):
    """Train through the engine (SupervisedTask + Trainer), as the examples do."""
    config = TrainConfig(
        optim=OptimConfig(lr=lr, batch_size=batch_size, max_steps=steps, max_time=None),
        teacher=teacher or TeacherForcing(),
        output=OutputConfig(
            out=str(tmp_path), eval_interval=steps, progress=False, tensorboard=False
        ),
    )
    task = SupervisedTask(
        train, val, batch_size, collate, loss_fn, lambda m, ex: {"val_loss": 0.0}, seed=0
    )
    Trainer(model, task, config, lambda *a, **k: None, log=lambda m: None).run()
    return model.eval()


def test_generator_learns_to_spell_a_word_from_a_one_hot_class(tmp_path):
    vocab = CharVocab.from_texts(WORDS)
    examples = [
        Example(torch.eye(10)[k], torch.tensor(vocab.encode(w))) for k, w in enumerate(WORDS)
    ]
    torch.manual_seed(0)
    model = ConditionalGenerator(
        GeneratorConfig(input_size=10, vocab_size=len(vocab), hidden_size=32, embedding_dim=8)
    )
    teacher = TeacherForcing("linear", k=1.0, c=1 / 300, min_p=0.5)  # scheduled sampling
    _train(model, examples * 4, examples, 150, 0.02, teacher, tmp_path=tmp_path)
    assert model.teacher_probability == pytest.approx(teacher.probability(149))
    words = [vocab.decode(o) for o in model.generate(torch.eye(10), max_length=8)]
    assert words == list(WORDS)
    assert [vocab.decode(o) for o in model.generate(torch.eye(10), beam=3)] == list(WORDS)


def _reverse_data(n, seed, longest=4):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        digits = [rng.randrange(3, 13) for _ in range(rng.randint(1, longest))]
        out.append(Example(torch.tensor(digits), torch.tensor(digits[::-1])))
    return out


@pytest.mark.parametrize(
    "attention, bidirectional, steps, hidden, batch_size, lr",
    [
        ("none", False, 160, 48, 64, 0.01),
        # 320 updates: at 160 this one ended at 0.885-0.995 over seeds 0-3 on one host
        ("bahdanau", True, 320, 32, 64, 0.01),
        ("luong", True, 140, 32, 64, 0.01),
    ],
)
def test_seq2seq_learns_to_reverse_digit_strings(
    attention, bidirectional, steps, hidden, batch_size, lr, tmp_path
):
    train, test = _reverse_data(3000, 0), _reverse_data(200, 1)
    held = {tuple(e.source.tolist()) for e in test}
    train = [e for e in train if tuple(e.source.tolist()) not in held]
    model = _seq2seq(attention, bidirectional, hidden_size=hidden, seed=0)
    _train(model, train, test, steps, lr, batch_size=batch_size, tmp_path=tmp_path)
    outputs = model.generate([e.source for e in test], max_length=7)
    right = sum(o == e.target.tolist() for o, e in zip(outputs, test, strict=True))
    assert right / len(test) >= 0.9


@pytest.mark.parametrize(
    "name", ["rnnlab.models.generator", "rnnlab.models.seq2seq", "rnnlab.examples._seq_common"]
)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# -- the worked examples -----------------------------------------------------------------------


def test_addition_held_out_pairs_are_disjoint_and_reproducible():
    train, val, test = addition.make_data(3, 5000, 300, 500, seed=7)
    assert (train, val, test) == addition.make_data(3, 5000, 300, 500, seed=7)
    held = {(min(a, b), max(a, b)) for a, b in val + test}
    assert len(held) == 800 and len(set(train)) == 5000
    assert not any((min(a, b), max(a, b)) in held for a, b in train)
    vocab = CharVocab("+0123456789")
    (e,) = addition.examples([(535, 61)], vocab)
    assert e.text == "535+61" and vocab.decode(e.target) == "596"


def test_dates_formats_and_held_out_days():
    may3 = dates.dt.date(1998, 5, 3)
    written = {name: f(may3) for name, f in dates.FORMATS.items()}
    assert written["d Month yyyy"] == "3 May 1998"
    assert written["mm/dd/yy"] == "05/03/98"
    assert written["Weekday, Month d, yyyy"] == "Sunday, May 3, 1998"
    assert written["the dth of Month yyyy"] == "the 3rd of May 1998"
    september = {f(dates.dt.date(1998, 9, 13)) for f in dates.FORMATS.values()}
    assert len(september) == len(dates.FORMATS)  # (in May, "d Mon" is "d Month")
    assert [dates.ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 31)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "31st"
    ]  # fmt: skip
    train, val, test = dates.make_data(3000, 200, 300, seed=2)
    assert (train, val, test) == dates.make_data(3000, 200, 300, seed=2)
    held = {d for d, _ in val + test}
    assert len(held) == 500 and not any(d in held for d, _ in train)
    assert dates.dt.date(1950, 1, 1) <= min(d for d, _ in train + val + test)
    assert max(d for d, _ in train + val + test) <= dates.dt.date(2049, 12, 31)
    vocab = dates.vocabulary()
    for e in dates.examples(test, vocab):  # every format writes within the vocabulary
        assert len(vocab.decode(e.target)) == 10


def test_missing_scikit_learn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn now fails
    with pytest.raises(UserError, match=r"pip install 'rnnlab\[datasets\]'"):
        digit_words.load_digits()
    with pytest.raises(SystemExit) as exit_info:
        main(["task", "digit-words", "--max-steps", "1", "--out", "unused"])
    assert exit_info.value.code == 2


def test_task_list_describes_the_generation_examples(capsys):
    assert main(["task", "--list"]) == 0
    out = capsys.readouterr().out
    for name, architecture in [
        ("digit-words", "one-to-many"),
        ("addition", "seq2seq"),
        ("dates", "seq2seq"),
    ]:
        line = next(line for line in out.splitlines() if line.startswith(name))
        assert architecture in line


@pytest.mark.parametrize(
    "name, options",
    [
        ("addition", ["--attention", "luong", "--digits", "2", "--train-size", "300"]),
        (
            "dates",
            ["--attention", "bahdanau", "--train-size", "300", "--teacher-forcing", "linear"],
        ),
        ("digit-words", ["--cell", "gru"]),
    ],
)
def test_task_command_writes_a_run_directory(name, options, tmp_path, capsys):
    out = tmp_path / name
    extra = ["--val-size", "20", "--test-size", "30"] if name != "digit-words" else []
    argv = ["task", name, *options, *extra, "--hidden", "16", "--max-steps", "4"]
    argv += ["--eval-interval", "2", "--beam", "2", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    for path in ("best/model.safetensors", "last/checkpoint.json", "metrics.jsonl"):
        assert (out / path).exists(), path
    config = json.loads((out / "config.json").read_text())
    assert config["example"]["hidden_size"] == 16
    results = json.loads((out / "results.json").read_text())
    assert set(results["exact_match"]) == {"greedy", "beam2"}
    printed = capsys.readouterr().out
    assert "test exact match" in printed and "greedy" in printed


def test_task_command_bad_beam_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["task", "addition", "--beam", "0"])
    assert exit_info.value.code == 2
    assert "--beam" in capsys.readouterr().err


def test_sequences_per_update_count_the_batches_really_taken():
    """Throughput counts what an update takes: 10 examples in batches of 4 are 3 updates
    an epoch, 10/3 sequences each on average; a batch larger than the training set takes
    all of it, and the task says so once in the log (``note``)."""
    examples = [Example(torch.eye(10)[k], torch.tensor([1, 2])) for k in range(10)]

    def task(batch_size):
        return SupervisedTask(examples, [], batch_size, collate, loss_fn, None, seed=0)

    assert task(4).tokens_per_update == pytest.approx(10 / 3) and task(4).note is None
    big = task(1000)
    assert big.tokens_per_update == 10
    assert "batch size (1,000) is larger than the training set (10 sequences)" in big.note

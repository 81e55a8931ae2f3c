"""The training engine: truncated BPTT(k1, k2), clipping, guards, schedules, configs,
reproducibility and resumption after a killed process."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from rnnlab.cells.elman import elman_step
from rnnlab.cells.lstm import lstm_step
from rnnlab.cli.main import main
from rnnlab.errors import UserError
from rnnlab.models import LanguageModel, ModelConfig
from rnnlab.training import (
    LRSchedule,
    ScheduleConfig,
    StreamTask,
    TeacherForcing,
    TrainConfig,
    clip_gradients,
    load_config,
    train,
)
from rnnlab.training.config import OptimConfig, OutputConfig

V, B, L = 7, 2, 20


def explicit_window_loss(model, ids, c, k1, k2):
    """The loss of update c computed on an explicitly unrolled graph, step by step with the
    cell's reference step: run from step 0, detach the state at the window start
    s = max(0, e - k2), and score the last k1 steps."""
    e = (c + 1) * k1
    s = max(0, e - k2)
    streams = (len(ids) - 1) // B
    x = ids[: B * streams].view(B, -1)
    y = ids[1 : B * streams + 1].view(B, -1)
    rnn, H = model.rnn, model.config.hidden_size
    h = torch.zeros(B, H, dtype=torch.float64)
    c_state = torch.zeros(B, H, dtype=torch.float64)
    losses = []
    for t in range(e):
        if t == s:
            h, c_state = h.detach(), c_state.detach()
        inp = F.one_hot(x[:, t], V).double()
        params = rnn.layer_parameters(0)
        if model.config.cell == "lstm":
            h, c_state = lstm_step(inp, (h, c_state), *params)
        else:
            h = elman_step(inp, h, *params, "tanh")
        if t >= e - k1:
            losses.append(F.cross_entropy(model.head(h), y[:, t], reduction="sum"))
    return sum(losses) / (B * k1)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
@pytest.mark.parametrize("k1, k2", [(3, 3), (3, 7), (4, 6), (3, 1000)])
def test_truncated_bptt_gives_the_exact_gradient(cell, k1, k2):
    torch.manual_seed(0)
    model = LanguageModel(
        ModelConfig(vocab_size=V, cell=cell, hidden_size=5, num_layers=1, embedding_dim=0)
    ).double()
    ids = torch.randint(V, (B * L + 1,))
    task = StreamTask(ids, ids[:5], B, k1, k2)
    for c in range(task.updates_per_epoch):
        model.zero_grad()
        loss = task.training_loss(model)
        loss.backward()
        got = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        expected_loss = explicit_window_loss(model, ids, c, k1, k2)
        expected_loss.backward()
        torch.testing.assert_close(loss, expected_loss, atol=1e-12, rtol=1e-12)
        for a, b in zip(got, [p.grad for p in model.parameters()], strict=True):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    # the task resets at the epoch boundary: the next update is update 0 again
    assert task.training_loss(model).item() == pytest.approx(
        explicit_window_loss(model, ids, 0, k1, k2).item(), abs=1e-12
    )
    assert task.epoch == 1


def test_k2_covering_the_stream_equals_full_bptt():
    """With k2 at least the stream length the window always starts at step 0: full BPTT."""
    task = StreamTask(torch.arange(41) % V, torch.arange(5), B, 4, 20)
    assert [task.window(c)[0] for c in range(task.updates_per_epoch)] == [0, 0, 0, 0, 0]
    # and with k1 = k2 the windows tile the stream (the char-rnn scheme)
    task = StreamTask(torch.arange(41) % V, torch.arange(5), B, 4, 4)
    assert [task.window(c)[:1] + task.window(c)[2:] for c in range(5)] == [
        (0, 4),
        (4, 8),
        (8, 12),
        (12, 16),
        (16, 20),
    ]


def test_clip_by_norm_is_algorithm_1_and_by_value_is_elementwise():
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])  # norm 5
    result = clip_gradients([p], 2.5, "norm")
    assert result.norm == pytest.approx(5.0) and result.clipped
    torch.testing.assert_close(p.grad, torch.tensor([1.5, 2.0, 0.0, 0.0]))
    p.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])
    result = clip_gradients([p], 5.0, "norm")  # ||g|| >= threshold: rescaled to itself
    assert result.clipped and torch.equal(p.grad, torch.tensor([3.0, 4.0, 0.0, 0.0]))
    assert not clip_gradients([p], 6.0, "norm").clipped
    result = clip_gradients([p], 3.5, "value")
    assert result.norm == pytest.approx(5.0) and result.clipped
    torch.testing.assert_close(p.grad, torch.tensor([3.0, 3.5, 0.0, 0.0]))
    assert not clip_gradients([p], 0, "norm").clipped  # 0 only measures


def test_lr_schedules():
    step = LRSchedule(ScheduleConfig("step", step_size=10, gamma=0.5), 1.0)
    assert [step.lr(s, 0) for s in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    warm = LRSchedule(ScheduleConfig("constant", warmup=4), 1.0)
    assert [warm.lr(s, 0) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    cos = LRSchedule(ScheduleConfig("cosine", min_lr=0.1), 1.0)
    assert cos.lr(0, 0.0) == pytest.approx(1.0) and cos.lr(5, 1.0) == pytest.approx(0.1)
    assert cos.lr(3, 0.5) == pytest.approx(0.55)
    plateau = LRSchedule(ScheduleConfig("plateau", patience=2, gamma=0.1), 1.0)
    decays = [plateau.observe(v) for v in (3.0, 2.0, 2.5, 2.4, 2.3, 1.0)]
    assert decays == [False, False, False, True, False, False]
    assert plateau.lr(0, 0) == pytest.approx(0.1)
    restored = LRSchedule(ScheduleConfig("plateau"), 1.0)
    restored.load_state_dict(json.loads(json.dumps(plateau.state_dict())))
    assert restored.lr(0, 0) == plateau.lr(0, 0)


def test_teacher_forcing_schedules():
    assert TeacherForcing("always").probability(10**6) == 1.0
    assert TeacherForcing("never").probability(0) == 0.0
    lin = TeacherForcing("linear", k=1.0, c=0.01, min_p=0.2)
    assert [lin.probability(s) for s in (0, 50, 100)] == pytest.approx([1.0, 0.5, 0.2])
    exp = TeacherForcing("exponential", k=0.99)
    assert exp.probability(100) == pytest.approx(0.99**100)
    inv = TeacherForcing("inverse_sigmoid", k=10)
    assert inv.probability(0) == pytest.approx(10 / 11)
    assert inv.probability(100) == pytest.approx(10 / (10 + math.exp(10)))
    mask = TeacherForcing("linear", k=0.5, c=0.0).mask(
        0, (200, 50), torch.Generator().manual_seed(0)
    )
    assert 0.45 < mask.mean().item() < 0.55 and set(mask.unique().tolist()) == {0.0, 1.0}
    with pytest.raises(ValueError, match="exponential"):
        TeacherForcing("exponential", k=1.5)


TEXT = "the quick brown fox jumps over the lazy dog. " * 40


def small_config(tmp_path, **optim):
    base = dict(lr=1e-2, batch_size=4, seq_len=10, max_steps=20, max_time=None)
    base.update(optim)
    return TrainConfig(
        model=ModelConfig(vocab_size=0, hidden_size=16, num_layers=1, embedding_dim=8),
        optim=OptimConfig(**base),
        output=OutputConfig(
            out=str(tmp_path), eval_interval=10, sample_length=0, progress=False, tensorboard=False
        ),
    )


def train_records(path):
    lines = (path / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


@pytest.mark.parametrize(
    "optimizer, extra",
    [
        ("sgd", dict(momentum=0.9, nesterov=True)),
        ("adamw", dict(weight_decay=0.01)),
        ("rmsprop", dict(momentum=0.5)),
        ("adam", dict(bptt=25, clip_mode="value", clip=0.05)),
    ],
)
def test_every_optimizer_trains(tmp_path, optimizer, extra):
    result = train(
        small_config(tmp_path, optimizer=optimizer, **extra), text=TEXT, log=lambda m: None
    )
    records = train_records(tmp_path)
    assert result.steps == 20 and records[-1]["loss"] < records[0]["loss"]
    if "clip_mode" in extra:
        assert result.clipped_fraction > 0


def test_gradient_norm_and_clipping_are_logged(tmp_path):
    result = train(small_config(tmp_path, clip=0.5), text=TEXT, log=lambda m: None)
    records = train_records(tmp_path)
    assert all(r["grad_norm"] > 0 for r in records)
    clipped = sum(r["clipped"] for r in records)
    assert clipped == sum(r["grad_norm"] >= 0.5 for r in records)
    assert result.clipped_fraction == pytest.approx(clipped / 20)


def test_l1_l2_penalties_shrink_the_weights(tmp_path):
    plain = train(small_config(tmp_path / "a"), text=TEXT, log=lambda m: None)
    shrunk = train(small_config(tmp_path / "b", l2=0.05, l1=0.001), text=TEXT, log=lambda m: None)
    norm = lambda r: sum(p.norm() ** 2 for n, p in r.model.named_parameters() if "weight" in n)  # noqa: E731
    assert norm(shrunk) < norm(plain)


def test_non_finite_updates_are_skipped_then_training_stops(tmp_path, monkeypatch):
    cfg = small_config(tmp_path, max_steps=40, max_nonfinite=3)
    cfg = cfg.updated({"output": {"checkpoint_interval": 5}})
    real = StreamTask.training_loss
    calls = {"n": 0}

    def poisoned(self, model):
        calls["n"] += 1
        loss = real(self, model)
        return loss * float("nan") if calls["n"] in (4,) or calls["n"] > 12 else loss

    monkeypatch.setattr(StreamTask, "training_loss", poisoned)
    with pytest.raises(UserError, match="3 updates in a row had a non-finite"):
        train(cfg, text=TEXT, log=lambda m: None)
    records = train_records(tmp_path)
    assert [r["step"] for r in records if r.get("skipped")] == [4, 13, 14, 15]
    last = load_file(str(tmp_path / "last" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in last.values())
    meta = json.loads((tmp_path / "last" / "checkpoint.json").read_text())
    assert meta["step"] == 10  # the last good checkpoint is intact


def test_early_stopping(tmp_path):
    cfg = small_config(tmp_path, lr=1e-12, max_steps=200).updated(
        {"output": {"eval_interval": 2, "early_stop": 2}}
    )
    result = train(cfg, text=TEXT, log=lambda m: None)
    assert result.stop_reason == "early_stop" and result.steps == 6


def test_same_seed_same_losses(tmp_path):
    cfg = small_config(tmp_path / "a").updated({"model": {"dropout": 0.3, "num_layers": 2}})
    train(cfg, text=TEXT, log=lambda m: None)
    train(cfg.updated({"output": {"out": str(tmp_path / "b")}}), text=TEXT, log=lambda m: None)
    a, b = train_records(tmp_path / "a"), train_records(tmp_path / "b")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    other = cfg.updated({"output": {"out": str(tmp_path / "c"), "seed": 7}})
    train(other, text=TEXT, log=lambda m: None)
    assert [r["loss"] for r in train_records(tmp_path / "c")] != [r["loss"] for r in a]


def test_toml_config_and_flags(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(
        '[model]\nhidden_size = 24\ncell = "gru"\n[optim]\nlr = 0.01\n'
        'max_steps = 7\n[schedule]\nschedule = "cosine"\n'
    )
    cfg = load_config(str(toml), {"optim": {"lr": 0.05}})
    assert cfg.model.hidden_size == 24 and cfg.model.cell == "gru"
    assert cfg.optim.lr == 0.05 and cfg.optim.max_steps == 7  # the flag wins
    assert cfg.schedule.schedule == "cosine"
    assert load_config("demo").output.out == "runs/demo"  # a preset shipped in the package
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nlearning_rate = 1\n")
    with pytest.raises(UserError, match="unknown setting 'learning_rate' in \\[optim\\]"):
        load_config(str(bad))
    bad.write_text("[optim]\nlr = -1\n")
    with pytest.raises(UserError, match="lr must be positive"):
        load_config(str(bad))
    with pytest.raises(UserError, match="config file not found"):
        load_config(str(tmp_path / "missing.toml"))


def test_pascanu_regulariser_from_the_command_line(tmp_path, capsys):
    data = tmp_path / "t.txt"
    data.write_text(TEXT)
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--data",
            str(data),
            "--cell",
            "rnn",
            "--layers",
            "1",
            "--hidden",
            "8",
            "--batch-size",
            "4",
            "--seq-len",
            "10",
            "--max-steps",
            "5",
            "--pascanu-alpha",
            "2",
            "--pascanu-decay",
            "10",
            "--out",
            str(out),
            "--no-progress",
            "--sample-length",
            "0",
        ]
    )
    assert code == 0
    records = train_records(out)
    assert all(r["omega"] >= 0 for r in records)
    code = None
    try:
        main(
            [
                "train",
                "--data",
                str(data),
                "--layers",
                "2",
                "--cell",
                "rnn",
                "--pascanu-alpha",
                "1",
                "--max-steps",
                "1",
                "--batch-size",
                "4",
                "--seq-len",
                "10",
                "--out",
                str(tmp_path / "x"),
            ]
        )
    except SystemExit as exc:
        code = exc.code
    assert code == 2 and "--layers 1" in capsys.readouterr().err


ARGS = [
    "--hidden",
    "16",
    "--layers",
    "2",
    "--embedding",
    "8",
    "--dropout",
    "0.1",
    "--batch-size",
    "4",
    "--seq-len",
    "10",
    "--bptt",
    "15",
    "--max-steps",
    "40",
    "--checkpoint-interval",
    "5",
    "--eval-interval",
    "20",
    "--sample-length",
    "0",
    "--schedule",
    "step",
    "--lr-step",
    "15",
    "--seed",
    "3",
    "--no-progress",
]


def test_a_killed_run_resumes_to_the_same_weights(tmp_path):
    data = tmp_path / "t.txt"
    data.write_text(TEXT)
    assert main(["train", "--data", str(data), *ARGS, "--out", str(tmp_path / "whole")]) == 0

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rnnlab", "train", "--data", str(data), *ARGS, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = out / "last" / "training_state.json"
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint to kill after"
        try:
            if json.loads(state.read_text())["step"] >= 10:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # no clean exit: whatever was on disk is what we have
    proc.wait()
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    whole = load_file(str(tmp_path / "whole" / "last" / "model.safetensors"))
    resumed = load_file(str(out / "last" / "model.safetensors"))
    assert whole.keys() == resumed.keys()
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key
    assert json.loads((out / "last" / "checkpoint.json").read_text())["step"] == 40


def test_resume_errors(tmp_path, capsys):
    for args, message in [
        (["--resume", str(tmp_path / "none")], "run directory not found"),
        (["--resume", str(tmp_path)], "nothing to resume"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(["train", *args])
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_second_ctrl_c_quits_at_once(tmp_path):
    data = tmp_path / "t.txt"
    data.write_text(TEXT * 20)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rnnlab",
            "train",
            "--data",
            str(data),
            "--hidden",
            "512",
            "--batch-size",
            "32",
            "--seq-len",
            "100",
            "--max-time",
            "120",
            "--sample-length",
            "0",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("data:"):
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    # Signals sent back to back can merge into one; wait until the first is acknowledged.
    for line in proc.stdout:
        seen.append(line)
        if "stopping after this update" in line:
            break
    proc.send_signal(signal.SIGINT)
    output = "".join(seen) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output
    assert "second Ctrl-C: quitting at once" in output and "Traceback" not in output


def test_tensorboard_scalars_are_written(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is part of the dev install")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = small_config(tmp_path).updated({"output": {"tensorboard": True}})
    train(cfg, text=TEXT, log=lambda m: None)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/grad_norm", "train/lr", "eval/val_loss"} <= set(tags)
    assert len(events.Scalars("train/loss")) == 20


@pytest.mark.parametrize("hidden", [False, True])
def test_scheduled_sampling_on_a_jordan_language_model(tmp_path, hidden):
    cfg = small_config(tmp_path, max_steps=30).updated(
        {
            "model": {"cell": "jordan", "hidden_recurrence": hidden},
            "teacher": {"schedule": "linear", "k": 1.0, "c": 0.02, "min_p": 0.5},
        }
    )
    result = train(cfg, text=TEXT, log=lambda m: None)
    records = train_records(tmp_path)
    probs = [r["teacher_p"] for r in records]
    assert probs[0] == 1.0 and probs[10] == pytest.approx(0.8) and probs[-1] == 0.5
    assert records[-1]["loss"] < records[0]["loss"]
    model, vocab = result.model, result.vocab
    text = vocab.decode(model.generate(vocab.encode("the "), 20, greedy=True))
    assert len(text) == 20


def test_pascanu_cell_trains_with_the_regulariser(tmp_path):
    cfg = small_config(tmp_path, pascanu_alpha=2.0).updated(
        {"model": {"cell": "pascanu", "nonlinearity": "sigmoid"}}
    )
    result = train(cfg, text=TEXT, log=lambda m: None)
    records = train_records(tmp_path)
    assert all("omega" in r for r in records) and result.best_val_loss < math.log(27)


def test_training_monitor_logs_gradient_flow_and_spectra(tmp_path):
    cfg = small_config(tmp_path, max_steps=10).updated({"output": {"monitor_interval": 5}})
    train(cfg, text=TEXT, log=lambda m: None)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    monitors = [r for r in map(json.loads, lines) if r["kind"] == "monitor"]
    assert [r["step"] for r in monitors] == [5, 10]
    for r in monitors:
        assert 0 < r["spectral_radius.l0.f"] < 10
        assert r["grad_log_rate.l0"] is not None and r["grad_ratio.l0"] > 0
        assert 0 <= r["fraction_vanished.l0"] <= 1


def test_a_slow_first_update_says_numba_is_compiling(monkeypatch):
    """On a terminal, a first update slower than COMPILE_NOTICE_AFTER on a model with a
    compiled layer says why (the first use after an install pauses up to a minute); no
    notice for a model without one, nor where stderr is not a terminal (logs, tests)."""
    import sys
    import time

    import rnnlab.backends
    from rnnlab.models import LanguageModel, ModelConfig
    from rnnlab.training import trainer

    monkeypatch.setattr(rnnlab.backends, "COMPILE_NOTICE_AFTER", 0.01)
    compiled = LanguageModel(ModelConfig(vocab_size=5, cell="gru", hidden_size=8, backend="numba"))
    plain = LanguageModel(ModelConfig(vocab_size=5, hidden_size=8, backend="fused"))
    said = []
    assert trainer._compile_notice(compiled, said.append) is None  # pytest's stderr: no tty
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert trainer._compile_notice(plain, said.append) is None
    timer = trainer._compile_notice(compiled, said.append)
    deadline = time.monotonic() + 5
    while not said and time.monotonic() < deadline:
        time.sleep(0.01)
    timer.cancel()
    assert said and "compiling the numba kernels" in said[0]
    said.clear()
    timer = trainer._compile_notice(compiled, said.append)
    timer.cancel()  # a first update faster than the delay: nothing said
    time.sleep(0.05)
    assert not said

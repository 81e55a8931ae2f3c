"""The command line as a user runs it: train, sample, eval, and every bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rnnlab.cli.main import main

TEXT = (
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 30
)
TINY = [
    "--hidden",
    "16",
    "--layers",
    "1",
    "--embedding",
    "8",
    "--batch-size",
    "4",
    "--seq-len",
    "16",
    "--no-progress",
]


def run_cli(capsys, *argv):
    """Run ``rnnlab argv`` in-process; return (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "hamlet.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run_dir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "hamlet"
    code = main(
        [
            "train",
            "--data",
            str(corpus),
            *TINY,
            "--max-steps",
            "30",
            "--eval-interval",
            "15",
            "--sample-length",
            "20",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return out


def test_train_writes_checkpoints_metrics_and_prints_progress(run_dir):
    for name in ("best", "last"):
        assert (run_dir / name / "model.safetensors").exists()
        assert (run_dir / name / "checkpoint.json").exists()
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [15, 30]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 31))
    assert all(r["grad_norm"] > 0 and r["lr"] > 0 and r["tokens_per_s"] > 0 for r in train)
    assert json.loads((run_dir / "config.json").read_text())["optim"]["max_steps"] == 30


def test_train_output_reports_loss_and_a_sample(corpus, tmp_path, capsys):
    code, out, _ = run_cli(
        capsys,
        "train",
        "--data",
        corpus,
        *TINY,
        "--max-steps",
        "4",
        "--eval-interval",
        "2",
        "--out",
        tmp_path / "r",
    )
    assert code == 0
    assert "nats/char" in out and "bits/char" in out and "chars/s" in out
    assert "best validation loss" in out and "--- sample" in out
    assert "config:" in out


def test_sample_is_reproducible_with_a_seed(run_dir, capsys):
    args = ("sample", run_dir, "--prime", "To be", "--length", "40", "--seed", "5")
    code, first, _ = run_cli(capsys, *args)
    assert code == 0 and first.startswith("To be") and len(first.rstrip("\n")) >= 40
    assert run_cli(capsys, *args)[1] == first
    code, greedy, _ = run_cli(capsys, "sample", run_dir / "last", "--greedy", "--length", "10")
    assert (
        code == 0
        and greedy == run_cli(capsys, "sample", run_dir / "last", "--greedy", "--length", "10")[1]
    )


def test_eval_prints_nats_and_bits(run_dir, corpus, capsys):
    code, out, _ = run_cli(capsys, "eval", run_dir)
    assert code == 0
    nats = float(out.split("validation loss: ")[1].split()[0])
    bits = float(out.split("(")[-1].split()[0])
    assert abs(bits - nats / 0.6931471805599453) < 1e-3
    code, out, _ = run_cli(capsys, "eval", run_dir, "--data", corpus)
    assert code == 0 and str(corpus) in out


def test_word_tokens(corpus, tmp_path, capsys):
    code, out, _ = run_cli(
        capsys,
        "train",
        "--data",
        corpus,
        "--tokens",
        "word",
        "--vocab-size",
        "12",
        *TINY[:-5],
        "--batch-size",
        "2",
        "--seq-len",
        "8",
        "--no-progress",
        "--max-steps",
        "3",
        "--out",
        tmp_path / "w",
    )
    assert code == 0 and "nats/word" in out
    code, out, _ = run_cli(
        capsys, "sample", tmp_path / "w", "--prime", "to be", "--length", "5", "--seed", "1"
    )
    assert code == 0 and out.startswith("to be ")


# -- bad input: one line on stderr, exit status 2, nothing written --------------------------


def expect_train_error(capsys, tmp_path, data, *fragments, extra=()):
    out = tmp_path / "run"
    code, _, err = run_cli(
        capsys, "train", "--data", data, *TINY, "--max-steps", "2", "--out", out, *extra
    )
    assert_one_line_error(code, err, *fragments)
    assert not out.exists(), "a failed run must not leave a run directory behind"


def test_missing_data_file(capsys, tmp_path):
    expect_train_error(capsys, tmp_path, tmp_path / "nope.txt", "not found", "nope.txt")


def test_unreadable_data_file(capsys, tmp_path, monkeypatch):
    path = tmp_path / "secret.txt"
    path.write_text("abc")

    def denied(self):  # chmod 0 does not stop root, so make the read fail as it would
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    expect_train_error(capsys, tmp_path, path, "cannot read", "Permission denied")


def test_data_path_is_a_directory(capsys, tmp_path):
    expect_train_error(capsys, tmp_path, tmp_path, "directory")


def test_empty_data_file(capsys, tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    expect_train_error(capsys, tmp_path, path, "empty")


def test_invalid_utf8_names_the_offset(capsys, tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"caf" + b"\xe9 au lait")
    expect_train_error(capsys, tmp_path, path, "not valid UTF-8", "byte offset 3")


def test_text_shorter_than_one_batch(capsys, tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("x" * 50)
    # 4 streams x 16 steps + 1 = 65 training characters, so 73 in all with 10% held out
    expect_train_error(capsys, tmp_path, path, "text too short", "65 characters", "73")


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--hidden", "0"),
        ("--layers", "-1"),
        ("--seq-len", "0"),
        ("--batch-size", "-4"),
        ("--lr", "0"),
        ("--max-time", "-5"),
        ("--max-steps", "0"),
        ("--embedding", "-1"),
        ("--dropout", "1.5"),
        ("--hidden", "many"),
    ],
)
def test_non_positive_sizes(capsys, tmp_path, corpus, flag, value):
    expect_train_error(capsys, tmp_path, corpus, flag, value, extra=(flag, value))


@pytest.mark.parametrize(
    "flag, value", [("--temperature", "0"), ("--temperature", "-1"), ("--length", "-3")]
)
def test_bad_sampling_numbers(capsys, run_dir, flag, value):
    code, _, err = run_cli(capsys, "sample", run_dir, flag, value)
    assert_one_line_error(code, err, flag, value)


def test_prime_outside_the_vocabulary_lists_the_characters(capsys, run_dir):
    code, _, err = run_cli(capsys, "sample", run_dir, "--prime", "To be Zé")
    assert_one_line_error(code, err, "--prime", "'Z'", "'é'")


def test_missing_checkpoint(capsys, tmp_path):
    for command in ("sample", "eval"):
        code, _, err = run_cli(capsys, command, tmp_path / "nothing")
        assert_one_line_error(code, err, "checkpoint not found")


def test_incomplete_checkpoint(capsys, run_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "checkpoint.json").write_text((run_dir / "best" / "checkpoint.json").read_text())
    code, _, err = run_cli(capsys, "sample", broken)
    assert_one_line_error(code, err, "incomplete checkpoint", "model.safetensors")


def edited_checkpoint(run_dir, folder, edit):
    """A copy of ``run_dir``'s best checkpoint in ``folder``, its checkpoint.json passed
    through ``edit`` (which changes the dict in place)."""
    folder.mkdir()
    for f in (run_dir / "best").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    meta = json.loads((folder / "checkpoint.json").read_text())
    edit(meta)
    (folder / "checkpoint.json").write_text(json.dumps(meta))
    return folder


def test_checkpoint_from_an_incompatible_version(capsys, run_dir, tmp_path):
    old = edited_checkpoint(run_dir, tmp_path / "old", lambda meta: meta.update(version=0))
    code, _, err = run_cli(capsys, "eval", old)
    assert_one_line_error(code, err, "format version 0")


def test_eval_on_text_with_unknown_characters(capsys, run_dir, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("Zebra XYZ")
    code, _, err = run_cli(capsys, "eval", run_dir, "--data", other)
    assert_one_line_error(code, err, "outside the model's vocabulary", "'Z'")


def test_ctrl_c_saves_a_checkpoint_before_exiting(corpus, tmp_path):
    out = tmp_path / "interrupted"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rnnlab",
            "train",
            "--data",
            str(corpus),
            *TINY,
            "--max-time",
            "120",
            "--eval-interval",
            "1",
            "--sample-length",
            "0",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 240  # generous: the machine may be busy
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 130, output
    assert "interrupted at step" in output and "Traceback" not in output
    info = json.loads(Path(out / "last" / "checkpoint.json").read_text())
    records = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert info["step"] >= 1
    assert info["step"] == sum(r["kind"] == "train" for r in records)  # nothing lost
    assert main(["eval", str(out / "last")]) == 0


def test_readme_documents_every_flag():
    """The README's command reference names every flag of every command."""
    from rnnlab.cli.main import build_parser

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        for action in sub._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}" in readme, f"rnnlab {name} {option} is not in the README"


def test_backend_a_cell_cannot_use_is_a_one_line_error(capsys, tmp_path, corpus):
    """The layers refuse the combination; the command says so in one line, no traceback."""
    expect_train_error(
        capsys,
        tmp_path,
        corpus,
        "backend 'torch'",
        "PascanuRNN",
        extra=("--cell", "pascanu", "--backend", "torch"),
    )


def test_hidden_recurrence_flag(capsys, tmp_path, corpus):
    out = tmp_path / "jordan"
    code, _, err = run_cli(
        capsys, "train", "--data", corpus, *TINY, "--cell", "jordan", "--hidden-recurrence",
        "--max-steps", "2", "--sample-length", "0", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["model"]["hidden_recurrence"] is True


def test_unusable_out_directory(capsys, tmp_path, corpus):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, _, err = run_cli(
        capsys, "train", "--data", corpus, *TINY, "--max-steps", "2", "--out", blocker
    )
    assert code == 2 and "Traceback" not in err
    assert "cannot write the run directory" in err and "a-file" in err
    code, _, err = run_cli(capsys, "diagnose", "--hidden", "8", "--out", blocker / "sub")
    assert_one_line_error(code, err, "cannot use", "output directory")


def test_resume_refuses_another_model_shape_and_a_damaged_state(capsys, tmp_path, corpus):
    out = tmp_path / "run"
    args = ("train", "--data", corpus, *TINY, "--max-steps", "2", "--sample-length", "0")
    assert run_cli(capsys, *args, "--out", out)[0] == 0
    code, _, err = run_cli(capsys, "train", "--resume", out, "--hidden", "24", "--max-steps", "3")
    assert_one_line_error(code, err, "another model shape", "hidden_size 16 -> 24")
    (out / "last" / "training_state.json").write_text("{}")
    code, _, err = run_cli(capsys, "train", "--resume", out, "--max-steps", "3")
    assert_one_line_error(code, err, "training state is damaged")


def test_run_directory_works_from_another_directory(capsys, tmp_path, corpus, monkeypatch):
    """The data path is stored absolute, so eval finds the text from anywhere."""
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "text.txt").write_text(TEXT, encoding="utf-8")
    monkeypatch.chdir(tmp_path / "work")
    args = ("train", "--data", "text.txt", *TINY, "--max-steps", "2", "--sample-length", "0")
    assert run_cli(capsys, *args, "--out", "run")[0] == 0
    saved = json.loads((tmp_path / "work" / "run" / "config.json").read_text())
    assert saved["data"]["path"] == str(tmp_path / "work" / "text.txt")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "eval", tmp_path / "work" / "run")
    assert code == 0, err
    assert "validation loss" in out


def test_a_new_run_replaces_the_metrics_of_an_old_one(capsys, tmp_path, corpus):
    out = tmp_path / "run"
    args = ("train", "--data", corpus, *TINY, "--sample-length", "0", "--out", out)
    assert run_cli(capsys, *args, "--max-steps", "3", "--eval-interval", "3")[0] == 0
    assert run_cli(capsys, *args, "--max-steps", "2", "--eval-interval", "2")[0] == 0
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and max(steps) == 2


def test_sample_length_zero_prints_no_sample(capsys, tmp_path, corpus):
    args = ("train", "--data", corpus, *TINY, "--max-steps", "2", "--sample-length", "0")
    code, out, _ = run_cli(capsys, *args, "--out", tmp_path / "run")
    assert code == 0
    assert "--- sample" not in out


def test_eval_says_how_many_streams_it_scored(capsys, run_dir):
    code, out, _ = run_cli(capsys, "eval", run_dir, "--streams", "100000")
    assert code == 0
    assert "scored as 100000 streams" not in out
    assert "fewer than the 100000 asked for" in out


def test_bench_shapes_with_an_empty_entry(capsys):
    for shapes in ("", "1,,2"):
        code, _, err = run_cli(capsys, "bench", "speed", "--quick", "--shapes", shapes)
        assert_one_line_error(code, err, "empty entry")


def test_a_task_model_is_named_as_such(capsys, tmp_path):
    """A checkpoint of ``rnnlab task`` is complete, just not a language model: sample,
    eval, diagnose and --resume say so (they said "incomplete checkpoint").  A directory
    of run directories (a task with several models) names them."""
    import torch

    from rnnlab.training.checkpoint import save_model

    run = tmp_path / "addition"
    save_model(run / "best", torch.nn.Linear(2, 2), "seq2seq-addition", {"spec": 1})
    save_model(run / "last", torch.nn.Linear(2, 2), "seq2seq-addition", {"spec": 1})
    for argv in (("sample", run), ("eval", run), ("diagnose", run)):
        code, _, err = run_cli(capsys, *argv)
        assert_one_line_error(code, err, "'seq2seq-addition' model from 'rnnlab task'")
    for seed in (1, 2):
        save_model(tmp_path / "digits" / f"seed-{seed}" / "best", torch.nn.Linear(2, 2), "k", {})
    code, _, err = run_cli(capsys, "sample", tmp_path / "digits")
    assert_one_line_error(code, err, "holds run directories", "digits/seed-1")


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (("bench", "speed", "--sections", ""), "--sections needs at least one value"),
        (("bench", "speed", "--gen-hidden", "abc"), "--gen-hidden takes whole numbers"),
        (("bench", "long-range", "--lengths", "abc"), "--lengths takes whole numbers"),
        (("bench", "long-range", "--tasks", ","), "--tasks needs at least one value"),
        (("bench", "speed", "--shapes", "0x10x8x16x1"), "every size in a shape must be at least 1"),
        (("train", "--bogus", "1"), "rnnlab train: error: unrecognized arguments: --bogus 1"),
        (("bench", "speed", "--zz"), "see 'rnnlab bench speed --help'"),
    ],
)
def test_list_options_and_unknown_flags_are_one_line_errors(capsys, argv, fragment):
    """An empty list is refused (it used to mean "all"), a non-number names its option,
    and an unknown flag points to the help of the subcommand it was given to."""
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, fragment)


def test_teacher_forcing_schedules_take_their_own_default_k(capsys, corpus, tmp_path):
    """``--teacher-forcing exponential`` alone used to fail (k defaulted to 1 for every
    schedule) and inverse_sigmoid alone fell to no teacher forcing within 5 updates."""
    from dataclasses import replace

    from rnnlab.training.schedules import TeacherForcing

    chosen = replace(TeacherForcing(), schedule="exponential")  # as a flag changes a config
    assert chosen.k_in_effect == 0.999 and 0.36 < chosen.probability(1000) < 0.37
    assert TeacherForcing("inverse_sigmoid").probability(1000) > 0.98
    assert TeacherForcing("linear", k=0.5).probability(0) == 0.5
    code, out, err = run_cli(
        capsys, "train", "--data", corpus, *TINY, "--cell", "jordan", "--hidden", "8",
        "--teacher-forcing", "exponential", "--max-steps", "2", "--sample-length", "0",
        "--out", tmp_path / "jordan",
    )  # fmt: skip
    assert code == 0, err


# -- the review's defects: each a one-line refusal, nothing written ---------------------------


def test_resume_takes_the_run_directory_not_its_checkpoints(capsys, tmp_path, corpus):
    """``--resume RUN/last`` continues RUN (it used to write a new run inside last/);
    RUN/best, a loose checkpoint and ``--out`` elsewhere are refused."""
    run = tmp_path / "run"
    args = ("train", "--data", corpus, *TINY, "--sample-length", "0")
    assert run_cli(capsys, *args, "--max-steps", "2", "--out", run)[0] == 0
    code, out, err = run_cli(capsys, "train", "--resume", run / "last", "--max-steps", "3")
    assert code == 0, err
    assert f"resuming {run} at step 2" in out
    assert not (run / "last" / "config.json").exists()
    assert json.loads((run / "last" / "checkpoint.json").read_text())["step"] == 3
    code, _, err = run_cli(capsys, "train", "--resume", run / "best", "--max-steps", "4")
    assert_one_line_error(code, err, "best checkpoint of the run", f"give the run directory, {run}")
    (tmp_path / "loose").mkdir()
    for f in (run / "last").iterdir():
        (tmp_path / "loose" / f.name).write_bytes(f.read_bytes())
    code, _, err = run_cli(capsys, "train", "--resume", tmp_path / "loose", "--max-steps", "4")
    assert_one_line_error(code, err, "is a checkpoint, not a run directory")
    other = tmp_path / "other"
    code, _, err = run_cli(capsys, "train", "--resume", run, "--out", other, "--max-steps", "4")
    assert_one_line_error(code, err, f"--resume continues {run} in place; drop --out {other}")
    assert not other.exists()
    code, _, err = run_cli(capsys, "train", "--resume", run, "--out", f"{run}/", "--max-steps", "4")
    assert code == 0, err


def test_out_directory_holding_something_else_is_refused(capsys, tmp_path, corpus):
    """A folder with its own config.json is not an earlier run: it is left alone."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.json").write_text('{"name": "my project"}')
    (project / "notes.txt").write_text("mine")
    args = ("train", "--data", corpus, *TINY, "--max-steps", "1", "--sample-length", "0")
    code, out, err = run_cli(capsys, *args, "--out", project)
    assert_one_line_error(code, err, "holds files (config.json, notes.txt) but no rnnlab run")
    assert out == ""  # refused before the configuration is printed
    assert sorted(p.name for p in project.iterdir()) == ["config.json", "notes.txt"]
    assert (project / "config.json").read_text() == '{"name": "my project"}'
    (tmp_path / "empty").mkdir()
    assert run_cli(capsys, *args, "--out", tmp_path / "empty")[0] == 0


@pytest.mark.parametrize(
    "argv",
    [
        ("train", "--max-steps", "1"),
        ("sample", "RUN"),
        ("diagnose", "--hidden", "8"),
        ("task", "digits", "--max-steps", "1"),
        ("task", "addition", "--max-steps", "1"),
    ],
)
def test_a_seed_beyond_64_bits_is_refused(capsys, run_dir, argv):
    argv = [run_dir if a == "RUN" else a for a in argv]
    code, _, err = run_cli(capsys, *argv, "--seed", "99999999999999999999999")
    assert_one_line_error(code, err, "--seed", "must be an integer from -2**63 to 2**63 - 1")


def test_the_largest_seed_trains_and_samples(capsys, tmp_path, corpus):
    out = tmp_path / "run"
    args = ("train", "--data", corpus, *TINY, "--max-steps", "1", "--sample-length", "0")
    code, _, err = run_cli(capsys, *args, "--seed", str(2**63 - 1), "--out", out)
    assert code == 0, err
    assert run_cli(capsys, "sample", out, "--length", "3", "--seed", str(-(2**63)))[0] == 0


def test_out_of_memory_is_one_line(capsys, tmp_path, corpus):
    """A size no machine holds: the allocator's failure named, with what to lower."""
    expect_train_error(
        capsys, tmp_path, corpus, "out of memory: an allocation of", "lower --hidden",
        extra=("--hidden", "10000000"),
    )  # fmt: skip
    code, _, err = run_cli(
        capsys, "bench", "speed", "--shapes", "99999999x99999x99999x99999x9",
        "--sections", "training", "--quick", "--out", tmp_path / "bench", "--no-progress",
    )  # fmt: skip
    assert_one_line_error(code, err, "out of memory", "lower --shapes or --gen-hidden")


def test_other_errors_are_not_taken_for_out_of_memory(capsys, monkeypatch):
    import torch

    from rnnlab.cli import evaluate
    from rnnlab.cli.main import out_of_memory

    assert out_of_memory(MemoryError()) == ""
    assert out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    cpu = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 1600000000000000 bytes"
    assert out_of_memory(RuntimeError(cpu)) == "1.6 PB"
    assert out_of_memory(RuntimeError("shape mismatch")) is None

    def broken(a):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(evaluate, "run", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(["eval", "anything"])


def test_weights_that_do_not_match_the_config_name_the_tensor(capsys, run_dir, tmp_path):
    changed = edited_checkpoint(
        run_dir, tmp_path / "changed", lambda meta: meta["config"]["model"].update(hidden_size=24)
    )
    code, _, err = run_cli(capsys, "sample", changed)
    assert_one_line_error(
        code, err, "does not match the model checkpoint.json describes",
        "rnn.weight_ih_l0 is (64, 8) in the file, (96, 8) in the model", "tensors differ",
    )  # fmt: skip


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (("--nonlinearity", "relu"), "--nonlinearity relu applies to --cell rnn, pascanu or"),
        (("--cell", "gru", "--nonlinearity", "sigmoid"), "--cell gru has its own gates"),
        (("--hidden-recurrence",), "--hidden-recurrence applies to --cell jordan"),
        (("--teacher-forcing", "linear"), "--teacher-forcing linear applies to --cell jordan"),
        (("--tf-min", "0.5"), "--tf-min 0.5 applies to --cell jordan"),
        (("--momentum", "0.9"), "--momentum 0.9 applies to --optimizer sgd or rmsprop"),
    ],
)
def test_options_the_cell_or_optimiser_ignores_are_refused(
    capsys, tmp_path, corpus, extra, fragment
):
    expect_train_error(capsys, tmp_path, corpus, fragment, extra=extra)


def test_ignored_options_at_their_defaults_still_pass(capsys, tmp_path, corpus):
    from rnnlab.cli.train import refuse_inapplicable
    from rnnlab.training.config import TrainConfig

    code, _, err = run_cli(
        capsys, "train", "--data", corpus, *TINY, "--max-steps", "1", "--sample-length", "0",
        "--nonlinearity", "tanh", "--no-hidden-recurrence", "--momentum", "0",
        "--teacher-forcing", "always", "--out", tmp_path / "run",
    )  # fmt: skip
    assert code == 0, err
    toml = tmp_path / "x.toml"
    toml.write_text('[model]\nnonlinearity = "relu"\n')
    code, _, err = run_cli(capsys, "train", "--config", toml, "--max-steps", "1")
    assert_one_line_error(code, err, '[model] nonlinearity = "relu" applies to --cell rnn')
    # A run saved with such a setting (before it was refused) still resumes, flags unchanged.
    saved = TrainConfig().updated({"model": {"nonlinearity": "relu"}})
    refuse_inapplicable(saved, {("optim", "max_steps")}, only_flags=True)


def test_resuming_a_finished_run_is_refused(capsys, tmp_path, corpus):
    run = tmp_path / "run"
    args = ("train", "--data", corpus, *TINY, "--sample-length", "0", "--out", run)
    assert run_cli(capsys, *args, "--max-steps", "3")[0] == 0
    metrics = (run / "metrics.jsonl").read_text()
    for more in ((), ("--max-steps", "2"), ("--max-steps", "3")):
        code, _, err = run_cli(capsys, "train", "--resume", run, *more)
        assert_one_line_error(code, err, f"{run} is already at step 3 (max_steps ", "--max-steps")
    state = json.loads((run / "last" / "training_state.json").read_text())
    state["elapsed"] = 100.0
    (run / "last" / "training_state.json").write_text(json.dumps(state))
    code, _, err = run_cli(capsys, "train", "--resume", run, "--max-steps", "9", "--max-time", "50")
    assert_one_line_error(code, err, "has already run 100 s (max_time 50)", "--max-time")
    assert (run / "metrics.jsonl").read_text() == metrics  # nothing appended


def test_tf_k_help_shows_one_default(capsys):
    code, out, _ = run_cli(capsys, "train", "--help")
    assert code == 0
    start = out.index("\n  --tf-k X")  # its entry, not the usage line
    entry = " ".join(out[start : out.index("\n  --tf-c X")].split())
    assert entry.count("(default:") == 1, entry
    assert "(default: 1 (linear), 0.999 (exponential), 500 (inverse_sigmoid))" in entry


def test_eval_of_a_run_without_validation_text(capsys, tmp_path, corpus):
    run = tmp_path / "run"
    args = ("train", "--data", corpus, *TINY, "--max-steps", "1", "--sample-length", "0")
    assert run_cli(capsys, *args, "--val-fraction", "0", "--out", run)[0] == 0
    code, _, err = run_cli(capsys, "eval", run)
    assert_one_line_error(code, err, "held out no validation text", "--data FILE")
    code, out, err = run_cli(capsys, "eval", run, "--data", corpus)
    assert code == 0, err


@pytest.mark.parametrize(
    "argv",
    [
        ("train", "--max-steps", "1"),
        ("bench", "speed", "--quick"),
        ("bench", "long-range"),
        ("diagnose",),
        ("task", "digits"),
    ],
)
def test_an_empty_out_is_refused(capsys, tmp_path, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, *argv, "--out", "")
    assert_one_line_error(code, err, "argument --out: expected a directory name")
    assert list(tmp_path.iterdir()) == []

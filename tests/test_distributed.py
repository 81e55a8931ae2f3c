"""Data-parallel training on this machine: torch.distributed.run, gloo, 127.0.0.1.

A 2-process run must take exactly the steps of a 1-process run with the same global batch
and seed (float64, 1e-10), resume across a change in the number of processes, and stop
cleanly, without hanging, when one process is killed.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rnnlab.errors import UserError
from rnnlab.training.distributed import Distributed

TEXT = "the quick brown fox jumps over the lazy dog. " * 60
ARGS = [
    "--hidden",
    "16",
    "--layers",
    "2",
    "--embedding",
    "8",
    "--batch-size",
    "4",
    "--seq-len",
    "10",
    "--bptt",
    "15",
    "--eval-interval",
    "6",
    "--sample-length",
    "0",
    "--dtype",
    "float64",
    "--no-progress",
    "--no-tensorboard",
    "--checkpoint-interval",
    "3",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nproc: int, *args, wait=True):
    """``python -m torch.distributed.run -m rnnlab train ...`` (plain python for 1)."""
    if nproc == 1:
        cmd = [sys.executable, "-m", "rnnlab", "train", *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            "--master_addr=127.0.0.1",
            f"--master_port={free_port()}",
            "-m",
            "rnnlab",
            "train",
            *args,
        ]
    env = {**os.environ, "RNNLAB_DIST_TIMEOUT": "30"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out


def losses(run: Path) -> list[float]:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["kind"] == "train"]


def assert_same_weights(a: Path, b: Path, atol=1e-10):
    wa, wb = (
        load_file(str(a / "last" / "model.safetensors")),
        load_file(str(b / "last" / "model.safetensors")),
    )
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=atol, rtol=0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("dist") / "t.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture(scope="module")
def one_process(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    launch(1, "--data", str(corpus), *ARGS, "--max-steps", "12", "--out", str(out))
    return out


def test_two_processes_take_the_same_steps_as_one(corpus, one_process, tmp_path):
    out = tmp_path / "two"
    log = launch(2, "--data", str(corpus), *ARGS, "--max-steps", "12", "--out", str(out))
    assert log.count("best validation loss") == 1  # rank 0 alone reports
    a, b = losses(one_process), losses(out)
    assert len(a) == len(b) == 12
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-10
    assert_same_weights(one_process, out)


def test_resume_with_a_different_number_of_processes(corpus, one_process, tmp_path):
    out = tmp_path / "switch"
    launch(2, "--data", str(corpus), *ARGS, "--max-steps", "6", "--out", str(out))
    log = launch(1, "--resume", str(out), "--max-steps", "12", "--no-progress")
    assert "resuming" in log and "instead of 2" in log
    assert_same_weights(one_process, out)  # streams and carried states reassigned exactly


def start_two_and_wait_for_a_checkpoint(corpus, out):
    """A 2-process run that would go on for ever: (torchrun's Popen, its children's pids)
    once ``last/`` holds a checkpoint."""
    proc = launch(
        2, "--data", str(corpus), *ARGS, "--max-steps", "100000", "--out", str(out), wait=False
    )
    state = out / "last" / "training_state.json"
    deadline = time.monotonic() + 120
    while not state.exists():
        assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint appeared"
        time.sleep(0.1)
    return proc, Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()


def test_killing_one_process_stops_the_others_then_the_run_resumes(corpus, tmp_path):
    out = tmp_path / "killed"
    proc, children = start_two_and_wait_for_a_checkpoint(corpus, out)
    assert len(children) == 2, children
    start = time.monotonic()
    os.kill(int(children[1]), signal.SIGKILL)
    output, _ = proc.communicate(timeout=90)
    assert time.monotonic() - start < 60, "the surviving process hung"
    assert proc.returncode != 0
    assert "another process of this run failed" in output
    assert f"rnnlab train --resume {out}" in output
    step = json.loads((out / "last" / "checkpoint.json").read_text())["step"]
    launch(1, "--resume", str(out), "--max-steps", str(step + 3), "--no-progress")
    assert json.loads((out / "last" / "checkpoint.json").read_text())["step"] == step + 3


def test_sigterm_from_the_launcher_gives_the_one_line_message(corpus, tmp_path):
    """torchrun SIGTERMs the survivors when a process dies; a survivor that gets it before
    its collective fails must still say what happened and how to resume."""
    out = tmp_path / "term"
    proc, children = start_two_and_wait_for_a_checkpoint(corpus, out)
    os.kill(int(children[0]), signal.SIGTERM)
    output, _ = proc.communicate(timeout=90)
    assert proc.returncode != 0
    assert "rank 0: another process of this run failed (stopped by SIGTERM" in output
    assert f"rnnlab train --resume {out}" in output


def test_the_global_batch_must_split_evenly():
    assert Distributed(1, 2).shard(4) == slice(2, 4)
    with pytest.raises(UserError, match="--batch-size 4 is not divisible by the 3 processes"):
        Distributed(0, 3).shard(4)


def test_a_task_example_runs_under_torchrun(tmp_path):
    out = tmp_path / "digits"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "-m",
        "rnnlab",
        "task",
        "digits",
        "--max-steps",
        "20",
        "--eval-interval",
        "10",
        "--batch-size",
        "32",
        "--out",
        str(out),
        "--no-progress",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("test accuracy") == 2  # rank 0's per-seed line and summary
    assert json.loads((out / "results.json").read_text())["test_accuracy"]["mean"] > 0.2


def test_a_worker_exits_at_once_with_its_output_flushed():
    """exit_worker: the status given, and what the worker printed (unflushed, to a pipe)
    still reaches the reader; the interpreter's teardown is skipped."""
    code = (
        "import atexit\n"
        "from rnnlab.training.distributed import exit_worker\n"
        "atexit.register(lambda: print('teardown ran'))\n"
        "print('last words', end='')\n"
        "exit_worker(3)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 3
    assert result.stdout == "last words"


def test_leaving_without_a_process_group_does_nothing():
    from rnnlab.training import distributed

    distributed.shutdown()
    distributed.shutdown(together=True)

"""`rnnlab bench speed` end to end on a tiny configuration: the JSON's structure, finite and
positive ratios.  No timing assertions: timings belong to the benchmark, not the tests."""

import json
import math

import pytest

from rnnlab.bench.speed import SHAPES, Shape, parse_shapes
from rnnlab.cli.main import main


def test_parse_shapes():
    assert parse_shapes(None) == SHAPES
    assert parse_shapes("1,3") == (SHAPES[0], SHAPES[2])
    assert parse_shapes("4x10x8x16x1") == (Shape(4, 10, 8, 16, 1),)
    for bad in ("6", "0", "4x10x8", "4x10x8x0x1", "big"):
        with pytest.raises(ValueError):
            parse_shapes(bad)


def positive(x):
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_bench_speed_tiny_run_writes_json_and_markdown(tmp_path, capsys):
    out = tmp_path / "speed"
    argv = ["bench", "speed", "--quick", "--shapes", "3x4x5x8x2", "--gen-hidden", "8"]
    argv += ["--gen-chars", "5", "--threads", "1", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "## Training step" in printed and "vs torch.nn" in printed
    results = json.loads((out / "results.json").read_text())
    assert (out / "results.md").read_text().startswith("rnnlab bench speed")
    assert results["settings"]["shapes"] == ["3x4x5x8x2"]
    assert results["machine"]["threads"] == 1
    # main() in this process leaves the allocator alone (only the program's entry sets it)
    assert results["machine"]["malloc"] in ("default", "keeps freed memory")
    assert f"malloc {results['machine']['malloc']}" in printed

    training = results["training"]
    assert [r["cell"] for r in training] == ["lstm", "gru", "rnn"]
    for row in training:
        assert set(row["times_s"]) == {"rnnlab", "torch.nn", "cell loop"}
        assert set(row["ratios"]) == {"vs torch.nn", "vs cell loop"}
        assert all(positive(v) for v in [*row["ratios"].values(), *row["gflops"].values()])

    variants = {r["variant"]: r for r in results["variants"]}
    assert set(variants) == {"layer_norm", "peephole", "zoneout", "recurrent_dropout", "jordan"}
    assert variants["jordan"]["layers"] == 1
    for row in variants.values():
        assert set(row["ratios"]) == {"vs python loop", "vs rnnlab plain lstm"}
        assert all(positive(v) for v in row["ratios"].values())

    (gen,) = results["generation"]
    assert gen["hidden"] == 8 and gen["chars"] == 5
    assert set(gen["ratios"]) == {
        "vs torch.nn.LSTM step",
        "vs LSTMCell loop",
        "vs rnnlab torch path",
    }
    assert all(positive(v) for v in [*gen["ratios"].values(), *gen["us_per_char"].values()])
    assert positive(results["generation_first_call"]["first_call_s"])

    precision = results["precision"]
    assert precision["shape"] == [4, 20, 32, 2] and isinstance(precision["amx"], bool)
    assert set(precision["times_s"]) == {"torch.nn float32", "rnnlab float32", "rnnlab bfloat16"}
    assert set(precision["ratios"]) == {"rnnlab float32", "rnnlab bfloat16"}
    speeds = [*precision["ratios"].values(), *precision["chars_per_s"].values()]
    assert all(positive(v) for v in speeds)
    assert "## Precision: one character-model training step" in printed

    limit = results["limit"]
    assert positive(limit["peak_gflops"])
    assert len(limit["training"]) == 9
    assert all(positive(r["fraction_of_peak"]) for r in limit["training"])


@pytest.mark.parametrize(
    "flag, value", [("--sections", "training,nothing"), ("--shapes", "9"), ("--gen-hidden", "x")]
)
def test_bench_speed_bad_arguments_are_one_line_errors(flag, value, tmp_path, capsys):
    try:
        code = main(["bench", "speed", flag, value, "--out", str(tmp_path)])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and value.split(",")[-1] in err


def _exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def _tiny_training_argv(out):
    return ["bench", "speed", "--sections", "training", "--shapes", "3x4x5x8x1", "--repeats", "1",
            "--threads", "1", "--no-progress", "--out", str(out)]  # fmt: skip


def test_bench_speed_keeps_the_cases_it_finished_when_it_runs_out_of_memory(
    tmp_path, capsys, monkeypatch
):
    """Results are written after each case: the LSTM's row survives the GRU's failure, the
    file says the run is not complete, and the error is one line."""
    import rnnlab.bench.speed as speed

    real = speed.bench_training

    def gru_fails(shape, cell, repeats):
        if cell == "gru":
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to "
                               "allocate 1600000000000 bytes. Error code 12")  # fmt: skip
        return real(shape, cell, repeats)

    monkeypatch.setattr(speed, "bench_training", gru_fails)
    out = tmp_path / "speed"
    assert _exit_code(_tiny_training_argv(out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "memory" in err and "Traceback" not in err
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is False
    assert [r["cell"] for r in results["training"]] == ["lstm"]
    assert "Partial results" in (out / "results.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md"]


def test_bench_speed_leaves_no_empty_folder_when_its_first_case_fails(
    tmp_path, capsys, monkeypatch
):
    import rnnlab.bench.speed as speed

    def fails(shape, cell, repeats):
        raise MemoryError()

    monkeypatch.setattr(speed, "bench_training", fails)
    out = tmp_path / "new" / "speed"
    assert _exit_code(_tiny_training_argv(out)) == 2
    assert "memory" in capsys.readouterr().err
    assert not out.exists()
    existing = tmp_path / "mine"  # a folder the user made is theirs: left in place
    existing.mkdir()
    assert _exit_code(_tiny_training_argv(existing)) == 2
    assert existing.is_dir()


def test_bench_speed_complete_run_says_so(tmp_path, capsys):
    out = tmp_path / "speed"
    assert main(_tiny_training_argv(out)) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is True and len(results["training"]) == 3
    assert "Partial" not in (out / "results.md").read_text()

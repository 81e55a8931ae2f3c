"""The long-range benchmark: models, the streaming task, the grid's bookkeeping, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from rnnlab.bench.long_range import (
    BenchModel,
    Grid,
    StreamingTask,
    cell_key,
    markdown_table,
    parse_budget,
    parse_method,
    run_grid,
    write_results,
)
from rnnlab.cli.main import main
from rnnlab.tasks import make_task


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared machine: one thread avoids oversubscription stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("task_name", ["adding-hochreiter", "temporal-order", "copy", "reber"])
@pytest.mark.parametrize("method", ["sgd-cr/sigmoid", "lstm-adam", "irnn"])
def test_model_output_shapes(task_name, method):
    task = make_task(task_name, 30)
    batch = task.sample(4, torch.Generator().manual_seed(0))
    pred = BenchModel(task, parse_method(method))(batch)
    assert task.correct(pred, batch).shape == (4,)
    assert torch.isfinite(task.loss(pred, batch))


def test_last_step_readout_follows_lengths():
    task = make_task("adding-hochreiter", 30)
    batch = task.sample(6, torch.Generator().manual_seed(1))
    model = BenchModel(task, parse_method("lstm-adam"))
    pred = model(batch)
    for i in range(6):
        n = int(batch.lengths[i])
        one = type(batch)(batch.inputs[:n, i : i + 1], batch.targets[i : i + 1])
        assert torch.allclose(model(one), pred[i : i + 1], atol=1e-5)


def test_lstm_method_opens_the_forget_gate():
    """lstm-adam starts with forget-gate bias 3 (b_ih_f + b_hh_f), the others at torch's."""
    model = BenchModel(make_task("temporal-order", 20), parse_method("lstm-adam"))
    H = 50
    forget = slice(H, 2 * H)  # gates i, f, g, o
    bias = model.rnn.bias_ih_l0[forget] + model.rnn.bias_hh_l0[forget]
    torch.testing.assert_close(bias, torch.full((H,), 3.0))
    plain = BenchModel(make_task("temporal-order", 20), parse_method("gru-adam"))
    assert plain.rnn.bias_hh_l0.abs().max() < 1


def test_smart_init_and_methods():
    model = BenchModel(make_task("adding", 20), parse_method("sgd-c"))
    w = model.rnn.weight_hh_l0.detach()
    assert torch.all((w != 0).sum(1) == 15)
    assert abs(float(torch.linalg.eigvals(w.double()).abs().max()) - 0.95) < 1e-4
    assert parse_method("sgd-cr").omega == 2.0 and parse_method("sgd").clip == 0
    for bad in ("adam", "lstm-adam/tanh", "sgd/relu"):
        with pytest.raises(ValueError):
            parse_method(bad)
    assert parse_budget("quick") == (3000, 250) and parse_budget("100")[0] == 100
    with pytest.raises(ValueError):
        parse_budget("0")


def test_streaming_task_state_resumes_the_same_batches():
    task = make_task("temporal-order", 20)
    a = StreamingTask(task, 5, seed=3)
    model = BenchModel(task, parse_method("sgd"))
    a.training_loss(model)
    tensors, meta = a.state_dict()
    b = StreamingTask(task, 5, seed=99)
    b.load_state_dict(tensors, meta)
    assert torch.equal(a.task.sample(5, a.generator).inputs, b.task.sample(5, b.generator).inputs)
    assert b.step == 1


def test_grid_writes_after_each_cell_and_resumes(tmp_path):
    grid = Grid(("temporal-order",), (20,), ("sgd-cr", "lstm-adam"), 1, 4, 4)
    rows = run_grid(grid, tmp_path, progress=False, log=lambda m: None)
    assert [r["method"] for r in rows] == ["sgd-cr", "lstm-adam"]
    data = json.loads((tmp_path / "results.json").read_text())
    assert len(data["rows"]) == 2 and data["summary"][0]["seeds"] == 1
    assert "| temporal-order | 20 | sgd-cr | 0/1 |" in (tmp_path / "results.md").read_text()
    bigger = Grid(("temporal-order",), (20,), ("sgd-cr", "lstm-adam", "sgd"), 1, 4, 4)
    rows = run_grid(bigger, tmp_path, progress=False, log=lambda m: None)
    assert [r["method"] for r in rows] == ["sgd-cr", "lstm-adam", "sgd"]  # only sgd ran


def test_solved_cell_stops_early(tmp_path, monkeypatch):
    from rnnlab.bench import long_range

    monkeypatch.setattr(long_range, "test_error", lambda model, task, size=None: (0.0, 0.0))
    row = long_range.run_cell("adding", 20, "sgd", 0, 100, 5, tmp_path)
    assert row["solved"] and row["updates_to_success"] == 5 and row["updates"] == 5


def test_markdown_table_medians():
    rows = [
        {
            "task": "t",
            "length": 5,
            "method": "m",
            "seed": s,
            "solved": s < 2,
            "updates_to_success": 100 * (s + 1) if s < 2 else None,
            "updates": 300,
            "test_error": 0.001 * (1 + 100 * (s == 2)),
        }
        for s in range(3)
    ]
    assert "| t | 5 | m | 2/3 | 200 | 0.1%, 0.1%, 10.1% | 300 |" in markdown_table(rows)


def test_cli(tmp_path, capsys):
    assert main(["bench", "long-range", "--list"]) == 0
    assert "temporal-order" in capsys.readouterr().out
    argv = [
        "bench",
        "long-range",
        "--tasks",
        "adding",
        "--lengths",
        "20",
        "--methods",
        "sgd-c",
        "--seeds",
        "1",
        "--budget",
        "4",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    assert main(argv) == 0
    assert "| adding | 20 | sgd-c |" in capsys.readouterr().out
    for bad in (
        ["--tasks", "nope"],
        ["--methods", "sgd-x"],
        ["--budget", "soon"],
        ["--lengths", "a"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(["bench", "long-range", "--out", str(tmp_path), *bad])
        assert exc.value.code == 2
        assert "rnnlab: error:" in capsys.readouterr().err


def test_results_follow_the_grid_order(tmp_path):
    grid = Grid(("temporal-order",), (20, 30), ("sgd", "lstm-adam"), 1, 4, 4)
    row = {"updates_to_success": None, "solved": False, "updates": 4, "test_error": 0.5}
    cells = list(grid.cells())
    foreign = {**row, "task": "adding", "length": 7, "method": "sgd", "seed": 0}
    rows = [foreign] + [
        {**row, "task": t, "length": n, "method": m, "seed": s} for t, n, m, s in reversed(cells)
    ]
    write_results(tmp_path, grid, rows)
    saved = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [cell_key(r) for r in saved] == cells + [("adding", 7, "sgd", 0)]


def test_a_results_file_from_another_budget_is_refused(tmp_path):
    """Cells are skipped when results.json has them; that is only right for the same
    budget.  A grid with another one is refused in one line (it used to report the old
    results as the new run's, or mix budgets in one table)."""
    import json

    from rnnlab.bench.long_range import Grid, run_grid
    from rnnlab.errors import UserError

    def grid(updates):
        return Grid(("adding",), (10,), ("lstm-adam",), 1, updates, 10)

    row = {"task": "adding", "length": 10, "method": "lstm-adam", "seed": 0, "solved": False,
           "updates_to_success": None, "updates": 50, "test_error": 0.5, "seconds": 1.0,
           "skipped_updates": 0, "history": []}  # fmt: skip
    stored = {"grid": {"max_updates": 50, "eval_interval": 10, "max_time": None}, "rows": [row]}
    (tmp_path / "results.json").write_text(json.dumps(stored))
    with pytest.raises(UserError, match="max_updates 50.*asks for max_updates 80"):
        run_grid(grid(80), tmp_path, progress=False, log=lambda m: None)
    rows = run_grid(grid(50), tmp_path, progress=False, log=lambda m: None)  # nothing to run
    assert rows == [row]


def test_a_task_that_sets_its_own_lengths_runs_once_at_length_0():
    """The Reber grammar ignores --lengths: one cell labelled 0, not one per length."""
    from rnnlab.bench.long_range import Grid

    grid = Grid(("reber", "adding"), (50, 100), ("lstm-adam",), 1, 10, 5)
    assert list(grid.cells()) == [
        ("reber", 0, "lstm-adam", 0),
        ("adding", 50, "lstm-adam", 0),
        ("adding", 100, "lstm-adam", 0),
    ]

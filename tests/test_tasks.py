"""Statistics of the long-range task generators (rnnlab.tasks)."""

from __future__ import annotations

import random

import pytest
import torch

from rnnlab.tasks import IGNORE, TASKS, Batch, make_task
from rnnlab.tasks.reber import GRAPH, accepts, embedded_reber_string, encode


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_shapes_and_seeding(name):
    task = make_task(name, 50)
    a, b = task.sample(8, gen(3)), task.sample(8, gen(3))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    c = task.sample(8, gen(4))
    assert not (a.inputs.shape == c.inputs.shape and torch.equal(a.inputs, c.inputs))
    T, N, I = a.inputs.shape
    assert N == 8 and I == task.input_size
    expected = {
        "regression": (8,),
        "classification": (8,),
        "tagging": (T, 8),
        "multilabel": (T, 8, task.output_size),
    }[task.kind]
    assert tuple(a.targets.shape) == expected
    first = next(task.test_batches(chunk=5, size=5))
    again = next(task.test_batches(chunk=5, size=5))
    assert torch.equal(first.inputs, again.inputs)  # the test set is fixed


def pascanu_positions(batch):
    return [torch.nonzero(batch.inputs[:, i, 0]).flatten().tolist() for i in range(batch.size)]


@pytest.mark.parametrize("name", ["adding", "adding-sum", "multiplication"])
def test_pascanu_adding_definition(name):
    L = 100
    task = make_task(name, L)
    g = gen(1)
    lengths = set()
    for _ in range(30):
        batch = task.sample(50, g)
        l = batch.inputs.shape[0]
        lengths.add(l)
        assert L <= l < L + 10
        for i, (p0, p1) in enumerate(pascanu_positions(batch)):
            assert 0 <= p0 < int(0.1 * l) <= p1 < int(0.5 * l)
            v0, v1 = batch.inputs[p0, i, 1], batch.inputs[p1, i, 1]
            want = {"adding": (v0 + v1) / 2, "adding-sum": v0 + v1, "multiplication": v0 * v1}
            assert torch.isclose(batch.targets[i], want[name])
    assert len(lengths) > 3  # one length per batch, varying
    values = batch.inputs[:, :, 1]
    assert 0 <= values.min() and values.max() <= 1


def test_le_sum_constant_prediction_mse():
    batch = make_task("adding-sum", 100).sample(20_000, gen(2))
    mse = ((batch.targets - 1.0) ** 2).mean()
    assert abs(float(mse) - 1 / 6) < 0.01


def test_pascanu_test_set_has_a_length_per_sequence():
    batch = next(make_task("adding", 100).test_batches(chunk=200, size=200))
    assert batch.lengths is not None and len(set(batch.lengths.tolist())) > 3
    for i in range(batch.size):
        marked = torch.nonzero(batch.inputs[: batch.lengths[i], i, 0]).flatten()
        assert len(marked) == 2 and marked[1] < int(0.5 * int(batch.lengths[i]))


def test_hochreiter_adding_definition():
    T = 100
    task = make_task("adding-hochreiter", T)
    batch = task.sample(500, gen(5))
    assert task.test_size == 2560
    assert set(batch.lengths.tolist()) <= set(range(T, T + T // 10 + 1))
    assert len(set(batch.lengths.tolist())) > 5
    for i in range(batch.size):
        n = int(batch.lengths[i])
        values, markers = batch.inputs[:n, i, 0], batch.inputs[:n, i, 1]
        assert markers[0] == -1 and markers[-1] == -1
        assert torch.all(batch.inputs[n:, i] == 0)
        assert -1 <= values.min() and values.max() <= 1
        ones = torch.nonzero(markers == 1).flatten().tolist()
        x = [float(values[p]) for p in ones]
        if len(ones) == 1:  # the first pair was marked: its value counts as 0
            assert ones[0] < T // 2 - 1
            x.append(0.0)
        else:
            assert ones[0] < 10 or ones[1] < 10
            assert max(ones) < T // 2 - 1
        assert abs(float(batch.targets[i]) - (0.5 + sum(x) / 4)) < 1e-6
    pred = batch.targets + 0.039
    assert task.correct(pred, batch).all() and not task.correct(pred + 0.002, batch).any()


@pytest.mark.parametrize("bits", [2, 3])
def test_temporal_order_positions_and_balance(bits):
    L = 100
    task = make_task("temporal-order" if bits == 2 else "temporal-order-3", L)
    batch = task.sample(4000, gen(6))
    symbols = batch.inputs.argmax(-1)  # (T, N)
    assert batch.inputs.shape == (L, 4000, 6) and torch.all(batch.inputs.sum(-1) == 1)
    spans = [(10, 20), (50, 60)] if bits == 2 else [(10, 20), (30, 40), (60, 70)]
    for i in range(0, 4000, 37):
        relevant = torch.nonzero(symbols[:, i] < 2).flatten().tolist()
        assert len(relevant) == bits
        assert all(lo <= p < hi for p, (lo, hi) in zip(relevant, spans, strict=True))
        assert batch.targets[i] == sum(int(symbols[p, i]) << k for k, p in enumerate(relevant))
    counts = torch.bincount(batch.targets, minlength=2**bits).float() / 4000
    assert torch.allclose(counts, torch.full_like(counts, 1 / 2**bits), atol=0.03)


def test_temporal_order_hochreiter_variant():
    task = make_task("temporal-order-6a", 100)
    batch = task.sample(200, gen(7))
    assert task.input_size == 8 and task.output_size == 4 and task.test_size == 2560
    for i in range(batch.size):
        s = batch.inputs[: batch.lengths[i], i].argmax(-1)
        assert s[0] == 6 and s[-1] == 7
        relevant = torch.nonzero(s < 2).flatten().tolist()
        assert 10 <= relevant[0] <= 20 and 50 <= relevant[1] <= 60


def test_permutation():
    batch = make_task("permutation", 60).sample(2000, gen(8))
    symbols = batch.inputs.argmax(-1)
    assert torch.equal(symbols[0], batch.targets)
    assert symbols[0].max() <= 1 and symbols[1:].min() >= 2 and symbols[1:].max() == 99
    assert abs(batch.targets.float().mean() - 0.5) < 0.05


def test_memorization_and_copy():
    for name, blank in (("memorization", 5), ("copy", 0)):
        L = 30
        task = make_task(name, L)
        batch = task.sample(100, gen(9))
        x, y = batch.inputs.argmax(-1), batch.targets
        T = L + 20
        assert x.shape == (T, 100)
        assert torch.equal(y[-10:], x[:10]) and torch.all(y[:-10] == blank)
        assert torch.all(x[10 : T - 11] == blank) and torch.all(x[T - 10 :] == blank)
        assert torch.all(x[T - 11] == task.input_size - 1)  # trigger / delimiter
        logits = torch.nn.functional.one_hot(y, task.output_size).float()
        assert task.correct(logits, batch).all()
        logits[T - 1, 0] = logits[T - 1, 0].roll(1)  # one wrong step fails the sequence
        assert task.correct(logits, batch).tolist() == [False] + [True] * 99
    assert IGNORE == -100


def test_reber_strings_are_accepted_and_targets_are_successor_sets():
    rng = random.Random(0)
    strings = [embedded_reber_string(rng) for _ in range(300)]
    assert all(accepts(s) for s in strings)
    assert {s[1] for s in strings} == {"T", "P"}
    assert all(s[1] == s[-2] for s in strings)
    assert not accepts("BTBTXSEPE") and not accepts("BTBTXSET") and not accepts("BTBTXXETE")
    assert set(GRAPH[1]) == {"T", "P"}
    batch = encode(strings[:20])
    task = make_task("reber", 0)
    assert task.correct(batch.targets * 20 - 10, batch).all()  # logits on the right side
    # the long-range step: after the inner string, only the second symbol may follow
    s = strings[0]
    row = batch.targets[len(s) - 3, 0]
    assert row.sum() == 1 and row[task_index(s[1])] == 1
    assert len(task.train_strings) == 256 and len(task.test_strings) == 256


def task_index(symbol):
    return "BTSXPVE".index(symbol)


def test_regression_criteria():
    task = make_task("adding", 50)
    batch = Batch(torch.zeros(5, 3, 2), torch.tensor([0.5, 0.5, 0.5]))
    pred = torch.tensor([0.5, 0.5 + 0.19, 0.5 + 0.21])  # squared error < 0.04
    assert task.correct(pred, batch).tolist() == [True, True, False]


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown task"):
        make_task("nope", 10)
    with pytest.raises(ValueError, match="L >= 20"):
        make_task("temporal-order", 5)


def test_docstring_example_runs():
    import doctest

    import rnnlab.tasks

    result = doctest.testmod(rnnlab.tasks)
    assert result.attempted > 0 and result.failed == 0

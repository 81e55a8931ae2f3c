"""Memory the compiled paths reuse (:mod:`rnnlab.backends.buffers`): a pooled array is
handed out again only once nothing refers to it, workspaces are per thread, and a layer's
outputs held by the caller are never overwritten by a later call."""

import threading

import torch

import rnnlab
from rnnlab.backends import buffers

BIG = (600, 600)  # 1.4 MB of float32: above POOL_MIN_BYTES


def test_an_array_comes_back_only_when_nothing_refers_to_it():
    first = buffers.pooled(BIG, torch.float32)
    address = first.data_ptr()
    view = first[100:]
    del first
    assert buffers.pooled(BIG, torch.float32).data_ptr() != address  # the view holds it
    del view
    again = buffers.pooled(BIG, torch.float32)
    assert again.data_ptr() == address
    assert again.shape == BIG and again.dtype == torch.float32 and again.is_contiguous()
    assert address % 64 == 0


def test_small_buffers_and_other_dtypes_are_not_mixed_up():
    small = buffers.pooled((10, 10), torch.float32)
    assert small.shape == (10, 10)
    wide = buffers.pooled(BIG, torch.float64)
    narrow = buffers.pooled(BIG, torch.float32)
    assert wide.dtype == torch.float64 and narrow.dtype == torch.float32
    assert wide.data_ptr() != narrow.data_ptr()


def test_the_pool_keeps_at_most_its_limit_of_unused_memory(monkeypatch):
    buffers.release()
    monkeypatch.setattr(buffers, "POOL_LIMIT", 3 * 600 * 600 * 4)
    tensors = [buffers.pooled(BIG, torch.float32) for _ in range(5)]
    del tensors  # five unused arrays; the next new size trims them to the limit
    buffers.pooled((700, 700), torch.float32)
    unused = sum(
        a.nbytes for arrays in buffers._POOL.values() for i, a in enumerate(arrays)
        if i in buffers._unused(arrays)
    )  # fmt: skip
    assert unused <= buffers.POOL_LIMIT
    assert buffers.release() > 0


def test_workspaces_are_per_thread_and_reused():
    like = torch.empty(0)
    mine = buffers.workspace(50, like, 30, 40)
    assert buffers.workspace(50, like, 20, 10).data_ptr() == mine.data_ptr()
    theirs = []
    worker = threading.Thread(target=lambda: theirs.append(buffers.workspace(50, like, 30, 40)))
    worker.start()
    worker.join()
    assert theirs[0].data_ptr() != mine.data_ptr()


def test_outputs_held_by_the_caller_survive_later_calls():
    """hs of one call comes from the pool; a second call must not write into it."""
    torch.manual_seed(0)
    for layer in (
        rnnlab.LSTM(8, 64, num_layers=2, backend="numba", layer_norm=True),
        rnnlab.GRU(8, 64, backend="numba"),
        rnnlab.RNN(8, 64, backend="numba"),
        rnnlab.PascanuRNN(8, 64, backend="numba"),
    ):
        x1, x2 = torch.randn(2, 40, 32, 8).unbind(0)
        out1 = layer(x1)[0]
        kept = out1.clone()
        out2 = layer(x2)[0]
        out2.sum().backward()
        assert torch.equal(out1, kept)
        assert not torch.equal(out1, out2)


def test_zeros_are_views_of_one_buffer_grown_when_needed():
    small = buffers.zeros((3, 4), torch.float32)
    assert small.shape == (3, 4) and small.dtype.name == "float32" and not small.any()
    big = buffers.zeros((50, 50, 128), torch.float32)
    assert big.shape == (50, 50, 128) and not big.any()
    again = buffers.zeros((7,), torch.float32)
    assert again.base is buffers.zeros((50, 50, 128), torch.float32).base  # no new buffer
    assert buffers.zeros((2, 2), torch.float64).dtype.name == "float64"

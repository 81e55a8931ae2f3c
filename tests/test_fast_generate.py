"""The compiled generation loop (rnnlab.backends): the plain path's samples, fallbacks, errors.

Exact comparisons use float64 models: the compiled loop sums its matrix-vector products in
another order than torch, so in float32 two candidates within rounding of each other can
swap (a near tie, rare); float64 makes that practically impossible.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import rnnlab.backends as backends
from rnnlab.cli.main import main
from rnnlab.layers import GRU, LSTM
from rnnlab.models import LanguageModel, ModelConfig

pytest.importorskip("numba")
from rnnlab.backends import numba_generate  # noqa: E402

PRIME = [3, 4, 5, 1, 0]


def model_of(cell="lstm", embedding_dim=5, dtype="float64", layers=2, **kw):
    torch.manual_seed(1)
    cfg = ModelConfig(
        vocab_size=11,
        cell=cell,
        hidden_size=12,
        num_layers=layers,
        embedding_dim=embedding_dim,
        dtype=dtype,
        **kw,
    )
    return LanguageModel(cfg).eval()


def both(model, length=60, temperature=1.0, greedy=False, seed=9, prime=PRIME):
    """(compiled, plain) tokens for the same seed."""
    return tuple(
        model.generate(
            prime,
            length,
            temperature,
            greedy,
            generator=torch.Generator().manual_seed(seed),
            backend=backend,
        )
        for backend in ("numba", "torch")
    )


def multinomial_reference(model, prime, length, temperature, seed):
    """What generate() returned before the compiled loop: torch.multinomial per token."""
    g = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        logits, _, state = model(torch.tensor([prime]))
        for _ in range(length):
            probs = torch.softmax(logits[0, -1].double() / temperature, dim=-1)
            out.append(int(torch.multinomial(probs, 1, generator=g)))
            logits, _, state = model(torch.tensor([[out[-1]]]), state)
    return out


CASES = [
    ("lstm", {}),
    ("gru", {}),
    ("rnn", {}),
    ("rnn", {"nonlinearity": "relu"}),
    ("rnn", {"nonlinearity": "sigmoid"}),
    ("pascanu", {}),
    ("pascanu", {"nonlinearity": "sigmoid"}),
]


@pytest.mark.parametrize("cell, kw", CASES, ids=[f"{c}-{k}" for c, k in CASES])
@pytest.mark.parametrize("embedding_dim", [0, 5])
def test_same_samples_as_the_plain_path_float64(cell, kw, embedding_dim):
    model = model_of(cell, embedding_dim, **kw)
    assert backends.choose_generate_backend(model).name == "numba"
    for temperature in (0.5, 1.0, 1.7):
        fast, plain = both(model, temperature=temperature)
        assert fast == plain
    fast, plain = both(model, length=30, greedy=True)
    assert fast == plain


def test_cho_gru_and_one_layer():
    model = model_of("gru")
    model.rnn = GRU(5, 12, num_layers=2, form="cho", dtype=torch.float64)
    fast, plain = both(model, temperature=0.8)
    assert fast == plain
    fast, plain = both(model_of(layers=1), temperature=0.8)
    assert fast == plain


def test_the_samples_are_torch_multinomials():
    """Both paths reproduce the samples of torch.multinomial(probs, 1) for the same seed."""
    model = model_of()
    fast, plain = both(model, length=50, temperature=1.3)
    assert fast == plain == multinomial_reference(model, PRIME, 50, 1.3, seed=9)


def test_float32_model_same_samples():
    """Float32: equal here; a near tie (probability about 1e-6 per token) could swap one."""
    model = model_of(dtype="float32")
    fast, plain = both(model, length=200, temperature=0.9)
    assert fast == plain


def test_chunks_and_priming_boundaries(monkeypatch):
    model = model_of()
    whole = both(model, length=23, temperature=1.1)
    monkeypatch.setattr(backends, "NOISE_CHUNK", 5)
    monkeypatch.setattr(numba_generate, "CHUNK", 5)
    assert both(model, length=23, temperature=1.1) == whole
    greedy = both(model, length=12, greedy=True)
    assert greedy[0] == greedy[1]
    assert both(model, length=0) == ([], [])
    fast, plain = both(model, length=1, prime=[7])
    assert fast == plain and len(fast) == 1


def test_packed_weights_follow_parameter_updates():
    model = model_of()
    before = both(model, temperature=1.0)[0]
    with torch.no_grad():
        model.head.weight.mul_(4.0)
    fast, plain = both(model, temperature=1.0)
    assert fast == plain != before


@pytest.mark.parametrize("update", ["fused_adam", "data"])
def test_packed_weights_follow_updates_that_keep_the_version(update):
    # fused Adam and writes through .data change the weights without bumping _version
    model = model_of()
    first = both(model, temperature=1.0)
    assert first[0] == first[1]
    if update == "fused_adam":
        optimiser = torch.optim.Adam(model.parameters(), lr=0.5, fused=True)
        draw = torch.Generator().manual_seed(1)
        ids = torch.randint(model.config.vocab_size, (2, 6), generator=draw)
        model(ids, targets=ids)[1].backward()
        versions = [p._version for p in model.parameters()]
        optimiser.step()
        assert versions == [p._version for p in model.parameters()]  # why the check exists
    else:
        for p in model.parameters():
            p.data.mul_(3.0)
    fast, plain = both(model, temperature=1.0)
    assert fast == plain != first[0]


def test_a_pack_holds_no_view_of_the_parameters():
    model = model_of()
    packed = numba_generate.pack(model, 1)
    params = [p.detach().numpy() for p in model.parameters()]
    for array in packed.arrays():
        assert not any(np.shares_memory(array, p) for p in params)


def test_auto_falls_back_to_torch_where_the_loop_does_not_apply():
    jordan = model_of("jordan", layers=1, hidden_recurrence=True)
    choice = backends.choose_generate_backend(jordan, "auto")
    assert choice.name == "torch" and "output recurrence" in str(choice)
    tokens = jordan.generate([1, 2], 10, generator=torch.Generator().manual_seed(0))
    assert len(tokens) == 10
    with pytest.raises(ValueError, match="backend 'numba' cannot generate") as info:
        jordan.generate([1], 5, backend="numba")
    assert "\n" not in str(info.value)

    options = model_of()
    options.rnn = LSTM(5, 12, num_layers=2, layer_norm=True, dtype=torch.float64)
    choice = backends.choose_generate_backend(options, "auto")
    assert choice.name == "torch" and "options" in choice.reason
    assert backends.choose_generate_backend(model_of(), "torch").name == "torch"


def test_without_numba_auto_is_torch_and_numba_is_an_error(monkeypatch):
    monkeypatch.setattr(backends, "numba_import_error", lambda: "ImportError: no numba")
    model = model_of()
    assert backends.choose_generate_backend(model, "auto").name == "torch"
    assert len(model.generate([1], 5, generator=torch.Generator().manual_seed(0))) == 5
    with pytest.raises(ValueError, match="needs numba") as info:
        model.generate([1], 5, backend="numba")
    assert "\n" not in str(info.value)


def test_bad_backend_name():
    with pytest.raises(ValueError, match="backend must be one of auto, numba, torch; got 'cuda'"):
        model_of().generate([1], 5, backend="cuda")


def test_non_finite_logits_are_an_error_on_both_paths():
    model = model_of()
    with torch.no_grad():
        model.head.bias[3] = float("nan")
    for backend in ("numba", "torch"):
        for greedy in (False, True):  # argmax would pick the NaN on one path, not the other
            with pytest.raises(ValueError, match="not finite at generated token 0"):
                model.generate([1], 5, greedy=greedy, backend=backend)
    for threads in (1, 2, 3):  # the threads leave their shared loop together
        noise = backends.race_noise(5, 11, torch.Generator().manual_seed(4), chunk=64)
        with pytest.raises(ValueError, match="not finite at generated token 0"):
            numba_generate.generate(model, [1, 2], 5, 1.0, noise, threads=threads)


def test_cache_falls_back_to_memory_when_no_cache_directory_is_writable(monkeypatch):
    import numba

    real = numba.njit

    def njit(*args, **kwargs):
        if kwargs.get("cache"):
            raise RuntimeError("cannot cache function: no locator available")
        return real(*args, **kwargs)

    monkeypatch.setattr(numba, "njit", njit)

    def add_one(x):
        return x + 1

    assert numba_generate._jit(add_one)(np.int64(1)) == 2


def tiny_run(tmp_path):
    """A run directory of a tiny LSTM trained for 3 updates with ``rnnlab train``."""
    corpus = tmp_path / "text.txt"
    corpus.write_text("to be or not to be, that is the question\n" * 20, encoding="utf-8")
    out = tmp_path / "run"
    tiny = ["--hidden", "8", "--layers", "1", "--embedding", "4", "--batch-size", "2"]
    tiny += ["--seq-len", "8", "--max-steps", "3", "--no-progress", "--eval-interval", "3"]
    assert main(["train", "--data", str(corpus), *tiny, "--out", str(out)]) == 0
    return out


def test_rnnlab_sample_logs_the_backend_and_gives_the_same_text(tmp_path, capsys):
    out = tiny_run(tmp_path)
    capsys.readouterr()
    texts, logs = {}, {}
    for backend in ("auto", "numba", "torch"):
        args = ["sample", str(out), "--length", "40", "--seed", "3", "--backend", backend]
        assert main(args) == 0
        texts[backend], logs[backend] = capsys.readouterr()
    assert logs["auto"] == "rnnlab: sampling with backend numba (compiled loop, 1 thread)\n"
    assert logs["torch"].startswith("rnnlab: sampling with backend torch")
    assert texts["auto"] == texts["numba"] == texts["torch"]
    assert len(texts["torch"]) > 40


def test_rnnlab_sample_says_when_the_compiled_loop_is_compiling(tmp_path, capsys, monkeypatch):
    """On a terminal, a compilation of the sampling loop slower than COMPILE_NOTICE_AFTER
    says that Numba is compiling (the first use after an install); a long generation
    after it says nothing, nor does the plain path."""
    import sys
    import time

    import rnnlab.backends
    from rnnlab.models import LanguageModel

    out = tiny_run(tmp_path)
    real_prepare, real_generate = numba_generate.prepare, LanguageModel.generate

    def slow_compile(*args, **kwargs):
        time.sleep(0.3)
        return real_prepare(*args, **kwargs)

    def slow_generate(self, *args, **kwargs):  # a long sample, its loop already compiled
        time.sleep(0.3)
        return real_generate(self, *args, **kwargs)

    monkeypatch.setattr(numba_generate, "prepare", slow_compile)
    monkeypatch.setattr(LanguageModel, "generate", slow_generate)
    monkeypatch.setattr(rnnlab.backends, "COMPILE_NOTICE_AFTER", 0.01)
    capsys.readouterr()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    logs = {}
    for backend in ("numba", "torch"):
        assert main(["sample", str(out), "--length", "5", "--backend", backend]) == 0
        logs[backend] = capsys.readouterr().err
    assert logs["numba"].count("compiling the numba kernels for sampling") == 1
    assert "compiling" not in logs["torch"]
    monkeypatch.setattr(numba_generate, "prepare", real_prepare)  # loaded: fast
    assert main(["sample", str(out), "--length", "5", "--backend", "numba"]) == 0
    assert "compiling" not in capsys.readouterr().err  # the slow generation says nothing


def test_docstring_examples():
    import doctest

    for module in (backends, numba_generate):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0


THREAD_CASES = CASES + [("gru-cho", {})]


@pytest.mark.parametrize("cell, kw", THREAD_CASES, ids=[f"{c}-{k}" for c, k in THREAD_CASES])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_threads_split_units_and_change_nothing(cell, kw, dtype):
    """Each layer's units split over 2 or 3 threads (3 does not divide 12 evenly into the
    gate blocks' cache lines): the same operations in the same order, so the very same
    tokens as one thread, in float32 too, greedy and sampled, through chunk boundaries."""
    model = model_of("gru" if cell == "gru-cho" else cell, dtype=dtype, **kw)
    if cell == "gru-cho":
        model.rnn = GRU(5, 12, num_layers=2, form="cho", dtype=getattr(torch, dtype))
    runs = {}
    for threads in (1, 2, 3):
        noise = backends.race_noise(150, 11, torch.Generator().manual_seed(4), chunk=64)
        sampled = numba_generate.generate(model, PRIME, 150, 0.9, noise, threads=threads)
        greedy = numba_generate.generate(model, PRIME, 20, 1.0, None, threads=threads)
        runs[threads] = (sampled, greedy)
    assert runs[1] == runs[2] == runs[3]
    assert len(set(runs[1][0])) > 3  # a real sample, not a constant


def test_loop_threads_rule(monkeypatch):
    monkeypatch.setattr(numba_generate, "threads_usable", lambda: True)
    monkeypatch.setattr(numba_generate.numba, "get_num_threads", lambda: 2)
    small = numba_generate.MIN_UNITS_PER_THREAD * 2 - 1
    assert numba_generate.loop_threads(small) == 1
    assert numba_generate.loop_threads(small + 1) == 2
    assert numba_generate.loop_threads(4096) == 2
    monkeypatch.setattr(numba_generate.numba, "get_num_threads", lambda: 1)
    assert numba_generate.loop_threads(4096) == 1
    monkeypatch.setattr(numba_generate.numba, "get_num_threads", lambda: 2)
    monkeypatch.setattr(numba_generate, "threads_usable", lambda: False)
    assert numba_generate.loop_threads(4096) == 1


def test_no_threads_in_a_forked_child_or_on_the_work_queue(monkeypatch):
    """GNU OpenMP's pool does not survive fork(): a child of a process that ran the threads
    stays on one thread (Numba would terminate it); so does Numba's slow work queue."""
    monkeypatch.setattr(numba_generate, "_POOL_PID", [None])
    assert numba_generate.threads_usable() == numba_generate._pool_layer_loads()
    monkeypatch.setattr(numba_generate, "_pool_layer_loads", lambda: True)
    assert numba_generate.threads_usable()
    monkeypatch.setattr(numba_generate, "_POOL_PID", [os.getpid() + 1])  # a parent's pool
    assert not numba_generate.threads_usable()
    model = model_of(dtype="float32")
    noise = backends.race_noise(30, 11, torch.Generator().manual_seed(2))
    tokens = numba_generate.generate(model, PRIME, 30, 1.0, noise, threads=2)
    assert tokens == both(model, length=30, seed=2)[1]
    monkeypatch.setattr(numba_generate, "_POOL_PID", [None])
    monkeypatch.setattr(numba_generate.numba.config, "THREADING_LAYER", "workqueue")
    assert not numba_generate.threads_usable()


def test_rational_tanh_of_float32_models_is_within_its_stated_bound():
    """Float32 models take tanh and sigmoid from the branch-free rational approximation:
    within 2.6e-8 of float64 tanh (sigmoid 1.3e-8) on every 509th positive float32 bit
    pattern and its negative (8.4 million values from 1e-45 to inf), NaN stays NaN.
    Float64 models keep libm's functions, exact to rounding."""
    import math

    import numba

    tanh_rational = numba_generate._tanh_rational

    @numba.njit(error_model="numpy")
    def approximations(xs, tanh, sigmoid):
        for i in range(xs.shape[0]):
            tanh[i] = tanh_rational(xs[i])
            sigmoid[i] = 0.5 + 0.5 * tanh_rational(0.5 * xs[i])

    top = int(np.array(np.inf, np.float32).view(np.uint32))
    xs = np.arange(1, top + 1, 509, dtype=np.uint32).view(np.float32)
    xs = np.concatenate([xs, np.array([0.0, 1e-30, 0.5, 1.0, 9.0, 20.0, np.inf], np.float32)])
    xs = np.concatenate([xs, -xs]).astype(np.float64)  # float32 values, float64 reference
    tanh, sigmoid = np.empty_like(xs), np.empty_like(xs)
    approximations(xs, tanh, sigmoid)
    with np.errstate(over="ignore"):
        assert np.abs(tanh - np.tanh(xs)).max() < 2.6e-8
        assert np.abs(sigmoid - 1.0 / (1.0 + np.exp(-xs))).max() < 1.3e-8
    assert math.isnan(tanh_rational(math.nan))
    f32, f64 = np.empty(0, np.float32), np.empty(0, np.float64)
    assert numba_generate._tanh(0.3, f32) == tanh_rational(0.3)
    assert numba_generate._tanh(0.3, f64) == math.tanh(0.3)
    assert numba_generate._sigmoid(0.3, f64) == 1.0 / (1.0 + math.exp(-0.3))


def test_compile_cache_is_keyed_on_the_backend_sources(tmp_path):
    """Numba checks a cached function against its own file only; rnnlab's kernels inline
    code from other files, so ``_jit`` adds a digest of the backend sources to the stamp:
    with another digest (an edited ``numba_math.py``, say) the cached code is not loaded."""
    (tmp_path / "kernel_user.py").write_text(
        "from rnnlab.backends.numba_math import _jit\n\n@_jit\ndef add_one(x):\n    return x + 1\n"
    )
    run = (
        "import sys\nsys.path.insert(0, {path!r})\n"
        "from rnnlab.backends import numba_math\n{patch}\n"
        "import kernel_user\nassert kernel_user.add_one(1) == 2\n"
        "print(sum(kernel_user.add_one.stats.cache_hits.values()))\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "RNNLAB_NUMBA_CACHE": "1"}

    def hits(patch=""):
        code = run.format(path=str(tmp_path), patch=patch)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        return int(done.stdout.split()[-1])

    assert hits() == 0  # compiled and saved
    assert hits() == 1  # loaded: same sources
    assert hits("numba_math.sources_digest = lambda: 'edited'") == 0  # compiled again


@pytest.mark.parametrize("prime", [[5], [-1], [10**8], [1.5], [1, 5]])
def test_prime_ids_outside_the_vocabulary_are_an_error_on_both_paths(prime):
    """The compiled loop indexes its tables with the prime ids unchecked: a bad id must
    never reach it (it read outside the array, or crashed the process)."""
    model = model_of()
    V = model.config.vocab_size
    prime = [V if t == 5 else t for t in prime]
    for backend in ("numba", "torch"):
        with pytest.raises(ValueError, match=r"prime token ids must be integers in \[0, "):
            model.generate(prime, 3, backend=backend)

"""The speed benchmark behind ``rnnlab bench speed``: rnnlab against torch.nn on the CPU.

Everything runs in one process.  Within a case the contenders are interleaved (one run of
each, then again, ``repeats`` times, after one warm-up run each) and each is summarised by
its median, so a load that comes and goes touches all of them alike.  Ratios are rnnlab's
time over the competitor's: below 1 rnnlab is faster.

Sections (issue 8):

``training``    forward + backward of the recurrent stack (float32; gradients of the
                weights and the input), rnnlab's layer with ``backend="auto"`` (the row
                names the path auto took: ``torch`` or ``fused``) vs
                ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` and vs the same stack as a Python loop
                over ``nn.LSTMCell`` / ``nn.GRUCell`` / ``nn.RNNCell``, on :data:`SHAPES`.
``variants``    LSTM with layer norm, peepholes, zoneout, recurrent dropout, and the
                Jordan network (hidden and output recurrence, teacher forcing), on the first
                shape: rnnlab's layer vs the same cell as a Python loop of PyTorch ops
                (the layer's ``backend="reference"``) and vs rnnlab's plain LSTM.
``generation``  microseconds per character of a 2-layer LSTM language model, 65 symbols,
                batch 1, hidden 128/256/512: ``LanguageModel.generate`` (``backend="auto"``)
                vs ``torch.nn.LSTM`` called step by step and vs an ``nn.LSTMCell`` loop,
                each sampling with ``torch.multinomial``; also rnnlab's plain torch path.
                All at ``gen_threads`` threads (torch's and Numba's; the compiled loop
                splits each layer's units over them from 128 units per thread).  The
                compiled loop's first call (compile, or load from Numba's cache) is
                timed apart and reported on its own.
``precision``   a whole character-model training step (embedding, LSTM, dropout, output
                layer, loss, backward, clipping, Adam) at the size of the
                ``shakespeare-30min`` preset: a model written with ``torch.nn`` (float32)
                vs rnnlab's ``LanguageModel`` in float32 and with ``precision="bfloat16"``
                (autocast; fast on CPUs with AMX or AVX-512 bfloat16 dot products: the
                header gives the measured speed of a bfloat16 product against float32,
                what ``precision="auto"`` decides by).
``limit``       the float32 matmul peak measured in this run (the best of square matmuls)
                and each training contender's achieved rate, 6 x tokens x parameters / time.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

import rnnlab
from rnnlab import allocator
from rnnlab.layers import GRU, LSTM, RNN, JordanRNN

SECTIONS = ("training", "variants", "generation", "precision", "limit")


@dataclass(frozen=True)
class Shape:
    """One training shape: (batch, steps, input, hidden, layers)."""

    batch: int
    steps: int
    input: int
    hidden: int
    layers: int

    @property
    def label(self) -> str:
        return "x".join(str(v) for v in asdict(self).values())

    @property
    def tokens(self) -> int:
        return self.batch * self.steps


SHAPES = (
    Shape(50, 50, 65, 128, 2),
    Shape(64, 100, 65, 512, 2),
    Shape(1, 200, 65, 256, 1),
    Shape(32, 100, 128, 256, 1),
    Shape(16, 100, 256, 256, 2),
)
CELLS = ("lstm", "gru", "rnn")
GEN_HIDDEN = (128, 256, 512)
VARIANTS = ("layer_norm", "peephole", "zoneout", "recurrent_dropout", "jordan")


def parse_shapes(text: str | None) -> tuple[Shape, ...]:
    """``None`` -> all of :data:`SHAPES`; ``"1,3"`` -> those (1-based); ``"4x10x8x16x1"``
    -> a custom shape (batch x steps x input x hidden x layers).  Mixed lists are fine."""
    if text is None:
        return SHAPES
    shapes = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise ValueError(f"--shapes has an empty entry: {text!r}")
        if "x" in part:
            values = part.split("x")
            if len(values) != 5 or not all(v.isdigit() for v in values):
                raise ValueError(
                    f"a shape is batch x steps x input x hidden x layers, e.g. 50x50x65x128x2;"
                    f" got {part!r}"
                )
            if not all(int(v) > 0 for v in values):
                raise ValueError(f"every size in a shape must be at least 1; got {part!r}")
            shapes.append(Shape(*(int(v) for v in values)))
        elif part.isdigit() and 1 <= int(part) <= len(SHAPES):
            shapes.append(SHAPES[int(part) - 1])
        else:
            raise ValueError(f"--shapes takes 1..{len(SHAPES)} or NxTxIxHxL; got {part!r}")
    if not shapes:
        raise ValueError("--shapes names no shape")
    return tuple(shapes)


@dataclass
class Settings:
    """What to run; the defaults are the full benchmark."""

    sections: tuple[str, ...] = SECTIONS
    shapes: tuple[Shape, ...] = SHAPES
    repeats: int = 5
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    gen_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    gen_hidden: tuple[int, ...] = GEN_HIDDEN
    gen_chars: int = 400
    peak_sizes: tuple[int, ...] = (512, 1024, 2048)
    lm_shape: tuple[int, int, int, int] = (64, 100, 512, 2)  # batch, steps, hidden, layers
    seed: int = 0

    def check(self) -> None:
        unknown = [s for s in self.sections if s not in SECTIONS]
        if unknown:
            raise ValueError(f"unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}")
        if self.repeats < 1 or self.gen_chars < 1:
            raise ValueError("repeats and generated characters must be positive")


# -- timing -------------------------------------------------------------------------------


def interleaved(contenders: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each contender: one warm-up run each, then ``repeats`` rounds of
    one run of each in turn."""
    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def ratios(times: dict[str, float], ours: str = "rnnlab") -> dict[str, float]:
    """rnnlab's time over each competitor's."""
    return {f"vs {name}": times[ours] / t for name, t in times.items() if name != ours}


# -- training -----------------------------------------------------------------------------

TORCH_LAYERS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
TORCH_CELLS = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}
RNNLAB_LAYERS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}


class CellLoop(nn.Module):
    """A stack of ``nn.LSTMCell`` / ``GRUCell`` / ``RNNCell`` run by a Python loop over time:
    how custom cells are usually written."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int):
        super().__init__()
        self.lstm = cell == "lstm"
        make = TORCH_CELLS[cell]
        self.cells = nn.ModuleList(
            make(input_size if k == 0 else hidden_size, hidden_size) for k in range(num_layers)
        )

    def forward(self, x):
        N = x.shape[1]
        for cell in self.cells:
            h = x.new_zeros(N, cell.hidden_size)
            state = (h, h) if self.lstm else h
            outs = []
            for x_t in x:
                state = cell(x_t, state)
                outs.append(state[0] if self.lstm else state)
            x = torch.stack(outs)
        return x, None


def train_step(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, **kwargs):
    """One forward + backward: the gradients of every parameter and of the input."""

    def run():
        out = module(x, **kwargs)[0]
        torch.autograd.grad(out, [x, *module.parameters()], grad)

    return run


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _inputs(shape: Shape, out_features: int):
    x = torch.randn(shape.steps, shape.batch, shape.input, requires_grad=True)
    grad = torch.randn(shape.steps, shape.batch, out_features)
    return x, grad


def bench_training(shape: Shape, cell: str, repeats: int) -> dict:
    """One (shape, cell) case of the training section."""
    I, H, L = shape.input, shape.hidden, shape.layers
    ours = RNNLAB_LAYERS[cell](I, H, num_layers=L, backend="auto")
    choice = ours.backend_choice()
    modules = {
        "rnnlab": ours,
        "torch.nn": TORCH_LAYERS[cell](I, H, num_layers=L),
        "cell loop": CellLoop(cell, I, H, L),
    }
    x, grad = _inputs(shape, H)
    times = interleaved({k: train_step(m, x, grad) for k, m in modules.items()}, repeats)
    params = parameter_count(ours)
    return {
        "shape": list(asdict(shape).values()),
        "label": shape.label,
        "cell": cell,
        "rnnlab_backend": ours.backend,
        "rnnlab_path": choice.name,
        "rnnlab_path_reason": choice.reason,
        "parameters": params,
        "times_s": times,
        "ratios": ratios(times),
        "gflops": {k: 6 * shape.tokens * params / t / 1e9 for k, t in times.items()},
    }


# -- variants -----------------------------------------------------------------------------


def _variant_layer(variant: str, shape: Shape, backend: str | None):
    I, H, L = shape.input, shape.hidden, shape.layers
    kw = {} if backend is None else {"backend": backend}
    if variant == "jordan":  # one layer; its outputs are the next-symbol logits (I of them)
        return JordanRNN(I, H, I, hidden_recurrence=True, **kw)
    options = {
        "layer_norm": dict(layer_norm=True),
        "peephole": dict(peephole=True),
        "zoneout": dict(zoneout=0.1),
        "recurrent_dropout": dict(recurrent_dropout=0.25),
    }[variant]
    return LSTM(I, H, num_layers=L, **options, **kw)


def bench_variant(variant: str, shape: Shape, repeats: int) -> dict:
    """One variant: rnnlab's layer vs its Python-loop reference vs rnnlab's plain LSTM."""
    ours = _variant_layer(variant, shape, None)
    loop = _variant_layer(variant, shape, "reference")
    loop.load_state_dict(ours.state_dict())
    layers = 1 if variant == "jordan" else shape.layers
    plain = LSTM(shape.input, shape.hidden, num_layers=layers, backend="auto")
    x, grad = _inputs(shape, ours.output_size)
    kwargs = {}
    if variant == "jordan":  # teacher forcing with one-hot symbols, as the language model
        symbols = torch.randint(shape.input, (shape.steps, shape.batch))
        kwargs["teacher"] = nn.functional.one_hot(symbols, shape.input).float()
    contenders = {
        "rnnlab": train_step(ours, x, grad, **kwargs),
        "python loop": train_step(loop, x, grad, **kwargs),
        "rnnlab plain lstm": train_step(
            plain, x, torch.randn(shape.steps, shape.batch, shape.hidden)
        ),
    }
    times = interleaved(contenders, repeats)
    return {
        "variant": variant,
        "shape": list(asdict(shape).values()),
        "label": shape.label,
        "layers": layers,
        "rnnlab_backend": ours.backend,
        "rnnlab_path": ours.backend_choice().name,
        "plain_lstm_path": plain.backend_choice().name,
        "times_s": times,
        "ratios": ratios(times),
    }


# -- generation ---------------------------------------------------------------------------


def _torch_lstm_generator(model, chars: int, temperature: float):
    """``torch.nn.LSTM`` called once per character, same weights as ``model``."""
    lstm = model.rnn.to_torch().eval()

    def run():
        g = torch.Generator().manual_seed(0)
        token, state = 0, None
        with torch.no_grad():
            for _ in range(chars):
                x = model.embedding.weight[token].view(1, 1, -1)
                out, state = lstm(x, state)
                probs = torch.softmax(model.head(out[0, 0]).double() / temperature, -1)
                token = int(torch.multinomial(probs, 1, generator=g))

    return run


def _cell_loop_generator(model, chars: int, temperature: float):
    """A loop over ``nn.LSTMCell`` per layer, same weights as ``model``."""
    cells = []
    for k in range(model.rnn.num_layers):
        w_ih, w_hh, b_ih, b_hh = model.rnn.layer_parameters(k)
        cell = nn.LSTMCell(w_ih.shape[1], model.rnn.hidden_size)
        cell.load_state_dict(
            {"weight_ih": w_ih, "weight_hh": w_hh, "bias_ih": b_ih, "bias_hh": b_hh}
        )
        cells.append(cell)

    def run():
        g = torch.Generator().manual_seed(0)
        token = 0
        states = [None] * len(cells)
        with torch.no_grad():
            for _ in range(chars):
                x = model.embedding.weight[token].view(1, -1)
                for k, cell in enumerate(cells):
                    states[k] = cell(x, states[k])
                    x = states[k][0]
                probs = torch.softmax(model.head(x[0]).double() / temperature, -1)
                token = int(torch.multinomial(probs, 1, generator=g))

    return run


def _rnnlab_generator(model, chars: int, temperature: float, backend: str):
    def run():
        g = torch.Generator().manual_seed(0)
        model.generate([0], chars, temperature, generator=g, backend=backend)

    return run


def first_generate_call(model) -> dict:
    """The compiled loop's first call in this process: compile or load from the cache."""
    from rnnlab.backends import choose_generate_backend

    choice = choose_generate_backend(model, "auto")
    start = time.perf_counter()
    model.generate([0], 1, generator=torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - start
    info = {"backend": str(choice), "first_call_s": seconds}
    if choice.name == "numba":
        from rnnlab.backends.numba_generate import cache_stats

        info["numba_cache"] = cache_stats()
    return info


def bench_generation(hidden: int, chars: int, repeats: int, temperature: float = 1.0) -> dict:
    """Microseconds per character, one hidden size."""
    from rnnlab.backends import choose_generate_backend
    from rnnlab.models import LanguageModel, ModelConfig

    model = LanguageModel(ModelConfig(vocab_size=65, hidden_size=hidden, num_layers=2)).eval()
    contenders = {
        "rnnlab": _rnnlab_generator(model, chars, temperature, "auto"),
        "torch.nn.LSTM step": _torch_lstm_generator(model, chars, temperature),
        "LSTMCell loop": _cell_loop_generator(model, chars, temperature),
        "rnnlab torch path": _rnnlab_generator(model, chars, temperature, "torch"),
    }
    times = interleaved(contenders, repeats)
    us = {k: t / chars * 1e6 for k, t in times.items()}
    return {
        "hidden": hidden,
        "layers": 2,
        "vocab": 65,
        "chars": chars,
        "backend": str(choose_generate_backend(model, "auto")),
        "us_per_char": us,
        "ratios": ratios(us),
    }


# -- the limit ----------------------------------------------------------------------------


# -- a whole language-model training step: float32 and bfloat16 ----------------------------


class TorchCharModel(nn.Module):
    """The character model as a ``torch.nn`` user writes it: embedding, ``nn.LSTM`` with
    dropout between layers, ``nn.Dropout``, linear output, cross entropy."""

    def __init__(self, vocab: int, embedding: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embedding)
        self.rnn = nn.LSTM(embedding, hidden, layers, dropout=dropout)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, idx, state, targets):
        hs, state = self.rnn(self.embedding(idx.t()), state)
        logits = self.head(self.drop(hs)).transpose(0, 1)
        flat = logits.reshape(-1, logits.shape[-1])
        loss = nn.functional.cross_entropy(flat, targets.reshape(-1))
        return logits, loss, state


def lm_step(model: nn.Module, idx, targets, dtype: torch.dtype | None):
    """One update of ``model`` (Adam, clipping at 1), forward under autocast to ``dtype``."""
    optimizer = torch.optim.Adam(model.parameters(), 2e-3)

    def run():
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            _, loss, _ = model(idx, None, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return run


def bench_precision(lm_shape: tuple[int, int, int, int], repeats: int) -> dict:
    """The ``precision`` section: one training step of a character LSTM (65 symbols,
    embedding 64, dropout 0.25) in three forms, interleaved."""
    from rnnlab.models import LanguageModel, ModelConfig
    from rnnlab.training.precision import cpu_bfloat16_speedup, cpu_has_amx

    batch, steps, hidden, layers = lm_shape
    vocab, embedding, dropout = 65, 64, 0.25
    config = ModelConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=layers,
        embedding_dim=embedding,
        dropout=dropout,
    )
    idx = torch.randint(0, vocab, (batch, steps))
    targets = torch.randint(0, vocab, (batch, steps))
    theirs = TorchCharModel(vocab, embedding, hidden, layers, dropout)
    contenders = {
        "torch.nn float32": lm_step(theirs, idx, targets, None),
        "rnnlab float32": lm_step(LanguageModel(config), idx, targets, None),
        "rnnlab bfloat16": lm_step(LanguageModel(config), idx, targets, torch.bfloat16),
    }
    times = interleaved(contenders, repeats)
    base = times["torch.nn float32"]
    return {
        "shape": list(lm_shape),
        "label": f"{batch}x{steps} chars, {layers}x{hidden} LSTM",
        "amx": cpu_has_amx(),
        "bf16_product_speedup": cpu_bfloat16_speedup(),
        "times_s": times,
        "chars_per_s": {name: batch * steps / t for name, t in times.items()},
        "ratios": {name: t / base for name, t in times.items() if name != "torch.nn float32"},
    }


def matmul_peak(sizes=(512, 1024, 2048), repeats: int = 5) -> dict:
    """Float32 GFLOP/s of square matmuls (median of ``repeats``); the peak is the best."""
    rates = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        seconds = interleaved({"mm": lambda a=a, b=b: a @ b}, repeats)["mm"]
        rates[str(n)] = 2 * n**3 / seconds / 1e9
    return {"matmul_gflops": rates, "peak_gflops": max(rates.values())}


def limit_rows(training: list[dict], peak: float) -> list[dict]:
    return [
        {
            "label": row["label"],
            "cell": row["cell"],
            "contender": name,
            "gflops": rate,
            "fraction_of_peak": rate / peak,
        }
        for row in training
        for name, rate in row["gflops"].items()
    ]


# -- the whole run ------------------------------------------------------------------------


def run_speed(settings: Settings, out: Path | None = None, progress: bool = True, log=print):
    """Run the selected sections; write results.json and results.md to ``out``, after each
    case (``"complete": false`` until the last), so that a run stopped part way (out of
    memory, Ctrl-C) keeps the cases it finished."""
    settings.check()
    torch.manual_seed(settings.seed)
    threads_before = torch.get_num_threads()
    numba_threads_before = _numba_threads()
    sections = settings.sections
    jobs = []
    if "training" in sections:
        jobs += [("training", (s, c)) for s in settings.shapes for c in CELLS]
    if "variants" in sections:
        jobs += [("variants", (v, settings.shapes[0])) for v in VARIANTS]
    if "generation" in sections:
        jobs += [("generation_first", None)] + [("generation", h) for h in settings.gen_hidden]
    if "precision" in sections:
        jobs += [("precision", None)]
    if "limit" in sections:
        jobs += [("limit", None)]
    results: dict = {
        "machine": machine_info(settings),
        "settings": {
            **{k: v for k, v in asdict(settings).items() if k != "shapes"},
            "shapes": [s.label for s in settings.shapes],
        },
        "complete": False,
    }
    bar = tqdm(jobs, disable=not progress, desc="bench speed", unit="case")
    try:
        for kind, arg in bar:
            bar.set_postfix_str(f"{kind} {arg if not isinstance(arg, tuple) else arg[-1]}")
            if kind == "generation" or kind == "generation_first":
                torch.set_num_threads(settings.gen_threads)
                _set_numba_threads(settings.gen_threads)
            else:
                torch.set_num_threads(settings.threads)
            if kind == "training":
                row = bench_training(arg[0], arg[1], settings.repeats)
                results.setdefault("training", []).append(row)
            elif kind == "variants":
                results.setdefault("variants", []).append(
                    bench_variant(arg[0], arg[1], settings.repeats)
                )
            elif kind == "generation_first":
                from rnnlab.models import LanguageModel, ModelConfig

                model = LanguageModel(ModelConfig(vocab_size=65, hidden_size=16, num_layers=2))
                results["generation_first_call"] = first_generate_call(model)
            elif kind == "generation":
                results.setdefault("generation", []).append(
                    bench_generation(arg, settings.gen_chars, settings.repeats)
                )
            elif kind == "precision":
                results["precision"] = bench_precision(settings.lm_shape, settings.repeats)
            else:
                limit = matmul_peak(settings.peak_sizes, repeats=max(3, settings.repeats))
                limit["training"] = limit_rows(results.get("training", []), limit["peak_gflops"])
                results["limit"] = limit
            _save(out, results)
        results["complete"] = True
    finally:
        torch.set_num_threads(threads_before)
        _set_numba_threads(numba_threads_before)
        bar.close()
    _save(out, results)
    return results


def _save(out: Path | None, results: dict) -> None:
    """results.json and results.md in ``out`` (nothing where ``out`` is None), each written
    whole to a temporary name and then renamed over the last."""
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("results.json", json.dumps(results, indent=2) + "\n"),
                       ("results.md", markdown(results))):  # fmt: skip
        partial = out / f".{name}.partial"
        partial.write_text(text)
        partial.replace(out / name)


def _numba_threads() -> int | None:
    """Numba's thread count now (None without Numba)."""
    try:
        from rnnlab.backends.numba_math import numba_threads
    except Exception:  # no Numba: the generation rows say which path ran
        return None
    return numba_threads()


def _set_numba_threads(threads: int | None) -> None:
    """Give the compiled generation loop ``threads`` threads (at most what Numba has), so
    that it runs at the thread count its competitors get; None (no Numba) does nothing."""
    if threads is None or _numba_threads() is None:
        return
    import numba

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def machine_info(settings: Settings) -> dict:
    info = {
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "rnnlab": rnnlab.__version__,
        "threads": settings.threads,
        "gen_threads": settings.gen_threads,
        # both sides share the process, so both have this allocator (rnnlab.allocator)
        "malloc": "keeps freed memory" if allocator.keeps_freed_memory() else "default",
    }
    try:
        import numba

        info["numba"] = numba.__version__
    except Exception:  # reported, not needed
        info["numba"] = None
    return info


# -- report -------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def markdown(results: dict) -> str:
    """The tables of a results dict: times, and ratios rnnlab / competitor."""
    m = results["machine"]
    parts = [
        f"rnnlab bench speed: {m['cpu_count']} CPUs, threads {m['threads']} "
        f"(generation {m['gen_threads']}), torch {m['torch']}, numba {m['numba']}, "
        f"malloc {m.get('malloc', 'default')}; "
        f"median of {results['settings']['repeats']} interleaved runs. "
        "Ratio = rnnlab time / competitor time (below 1: rnnlab is faster).\n"
    ]
    if not results.get("complete", True):
        parts.append("\n**Partial results**: the run stopped before its last case.\n")
    if "training" in results:
        rows = [
            [
                r["label"],
                r["cell"],
                r.get("rnnlab_path", r["rnnlab_backend"]),
                _ms(r["times_s"]["rnnlab"]),
                _ms(r["times_s"]["torch.nn"]),
                _ms(r["times_s"]["cell loop"]),
                f"{r['ratios']['vs torch.nn']:.2f}",
                f"{r['ratios']['vs cell loop']:.2f}",
            ]
            for r in results["training"]
        ]
        parts.append(
            "\n## Training step (forward + backward), shape = batch x steps x input x hidden "
            "x layers; rnnlab with backend='auto', the path it took in the third column\n\n"
            + _table(
                [
                    "shape",
                    "cell",
                    "auto ->",
                    "rnnlab ms",
                    "torch.nn ms",
                    "cell loop ms",
                    "vs torch.nn",
                    "vs cell loop",
                ],
                rows,
            )
        )
    if "variants" in results:
        rows = [
            [
                r["variant"],
                r["label"] + (" (1 layer)" if r["layers"] != r["shape"][4] else ""),
                f"{r.get('rnnlab_path', '?')} / {r.get('plain_lstm_path', '?')}",
                _ms(r["times_s"]["rnnlab"]),
                _ms(r["times_s"]["python loop"]),
                _ms(r["times_s"]["rnnlab plain lstm"]),
                f"{r['ratios']['vs python loop']:.2f}",
                f"{r['ratios']['vs rnnlab plain lstm']:.2f}",
            ]
            for r in results["variants"]
        ]
        parts.append(
            "\n## Variants (training step)\n\n"
            + _table(
                [
                    "variant",
                    "shape",
                    "auto -> (variant / plain)",
                    "rnnlab ms",
                    "python loop ms",
                    "plain LSTM ms",
                    "vs python loop",
                    "vs plain LSTM",
                ],
                rows,
            )
        )
    if "generation" in results:
        first = results.get("generation_first_call", {})
        rows = [
            [
                str(r["hidden"]),
                r["backend"],
                f"{r['us_per_char']['rnnlab']:.0f}",
                f"{r['us_per_char']['torch.nn.LSTM step']:.0f}",
                f"{r['us_per_char']['LSTMCell loop']:.0f}",
                f"{r['us_per_char']['rnnlab torch path']:.0f}",
                f"{r['ratios']['vs torch.nn.LSTM step']:.3f}",
                f"{r['ratios']['vs LSTMCell loop']:.3f}",
            ]
            for r in results["generation"]
        ]
        note = ""
        if first:
            note = f"First call (compile or cache load, apart): {first['first_call_s']:.2f} s"
            if "numba_cache" in first:
                note += f", numba cache {first['numba_cache']}"
            note += ".\n"
        parts.append(
            "\n## Generation, µs per character (2-layer LSTM, 65 symbols, batch 1)\n\n"
            + _table(
                [
                    "hidden",
                    "rnnlab path",
                    "rnnlab",
                    "torch.nn.LSTM step",
                    "LSTMCell loop",
                    "rnnlab torch path",
                    "vs nn.LSTM",
                    "vs LSTMCell",
                ],
                rows,
            )
            + ("\n" + note if note else "")
        )
    if "precision" in results:
        r = results["precision"]
        rows = [
            [
                name,
                _ms(t),
                f"{r['chars_per_s'][name]:,.0f}",
                f"{r['ratios'][name]:.2f}" if name in r["ratios"] else "1",
            ]
            for name, t in r["times_s"].items()
        ]
        amx = "this CPU has AMX" if r["amx"] else "no AMX on this CPU"
        speedup = r.get("bf16_product_speedup")
        if speedup is not None:
            amx += f"; a bfloat16 matrix product ran {speedup:.1f}x faster than float32"
        parts.append(
            f"\n## Precision: one character-model training step ({r['label']}, embedding 64, "
            f"dropout 0.25, Adam; {amx}); ratio = time / torch.nn float32 time\n\n"
            + _table(["contender", "ms", "chars/s", "vs torch.nn float32"], rows)
        )
    if "limit" in results:
        lim = results["limit"]
        rates = ", ".join(f"{n}: {g:.0f}" for n, g in lim["matmul_gflops"].items())
        rows = [
            [
                r["label"],
                r["cell"],
                r["contender"],
                f"{r['gflops']:.1f}",
                f"{r['fraction_of_peak']:.0%}",
            ]
            for r in lim["training"]
        ]
        parts.append(
            f"\n## The limit: matmul peak {lim['peak_gflops']:.1f} GFLOP/s (square float32 "
            f"matmuls, n: GFLOP/s = {rates})\n\n"
            + (
                _table(["shape", "cell", "contender", "GFLOP/s", "of peak"], rows)
                if rows
                else "(no training rows in this run)\n"
            )
        )
    return "".join(parts)

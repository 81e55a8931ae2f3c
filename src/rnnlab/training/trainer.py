"""Training a language model with truncated BPTT, top to bottom.

:func:`train` reads the text, builds the vocabulary and the model, then repeats:
take the next (B, T) chunk of every stream, run it from the state the previous chunk
left (detached, so gradients flow back at most T steps: seeds 002/003), take the mean
cross entropy, backpropagate, clip the gradient by its global norm, and step.  Every
``eval_interval`` updates it scores the validation text, prints a sample and keeps the
best checkpoint; at the end (or on Ctrl-C) it writes ``last/``.

Python API::

    from rnnlab.training import TrainConfig, train
    result = train(TrainConfig())          # the bundled Tiny Shakespeare, defaults
    result.best_val_loss                   # nats per character
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rnnlab.data import (
    StreamBatches,
    Vocabulary,
    eval_chunks,
    load_text,
    min_tokens,
    split_train_val,
)
from rnnlab.errors import UserError
from rnnlab.models import LanguageModel
from rnnlab.training.checkpoint import save_checkpoint
from rnnlab.training.config import TrainConfig

LN2 = math.log(2.0)


@dataclass
class TrainResult:
    steps: int
    tokens: int
    train_seconds: float
    best_val_loss: float | None
    last_val_loss: float | None
    last_train_loss: float | None
    interrupted: bool
    out: Path | None
    model: LanguageModel
    vocab: Vocabulary

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.train_seconds if self.train_seconds > 0 else 0.0


def detach_state(state):
    """Cut the graph at a chunk boundary (truncated BPTT) but keep the values."""
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


@torch.no_grad()
def evaluate(model: LanguageModel, ids: torch.Tensor, batch_size: int, seq_len: int) -> float:
    """Mean cross entropy (nats per token) over ``ids``, carrying state across chunks."""
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    for x, y in eval_chunks(ids, batch_size, seq_len):
        logits, _, state = model(x, state)
        total += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"
        ).item()
        count += y.numel()
    model.train(was_training)
    return total / count


def prepare_data(config: TrainConfig, text: str | None = None):
    """Text -> (vocab, train ids, val ids), checking it is long enough for the batches."""
    if text is None:
        text = load_text(config.data.path)
    elif not text:
        raise UserError("training text is empty")
    vocab = Vocabulary.from_text(text, config.data.tokens, config.data.vocab_size)
    ids = torch.tensor(vocab.encode(text), dtype=torch.long)
    train_ids, val_ids = split_train_val(ids, config.data.val_fraction)
    B, T = config.optim.batch_size, config.optim.seq_len
    need = min_tokens(B, T)
    unit = "characters" if vocab.kind == "char" else "words"
    if len(train_ids) < need:
        total = math.ceil(need / (1 - config.data.val_fraction))
        raise UserError(
            f"text too short: {len(ids)} {unit}; --batch-size {B} x --seq-len {T} needs "
            f"{need} {unit} of training text, so at least {total} in all (the last "
            f"{config.data.val_fraction:.0%} is validation); lower --batch-size or --seq-len"
        )
    if config.data.val_fraction > 0 and len(val_ids) < 2:
        raise UserError(
            f"text too short for validation: the last {config.data.val_fraction:.0%} of "
            f"{len(ids)} {unit} leaves {len(val_ids)}; validation needs at least 2"
        )
    return vocab, train_ids, val_ids


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    o = config.optim
    if o.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
        )
    return torch.optim.Adam(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)


def sample_text(model, vocab: Vocabulary, length: int, temperature=0.8, seed=0) -> str:
    """A short sample primed with a newline (or the first token), for progress reports."""
    prime = [vocab.index.get("\n", 0)]
    gen = torch.Generator().manual_seed(seed)
    return vocab.decode(model.generate(prime, length, temperature=temperature, generator=gen))


def describe(config: TrainConfig) -> str:
    """The configuration, one group per line, as printed at the start of a run."""
    parts = []
    for group, values in config.to_json().items():
        items = ", ".join(f"{k}={v}" for k, v in values.items())
        parts.append(f"  {group}: {items}")
    return "config:\n" + "\n".join(parts)


def train(config: TrainConfig, text: str | None = None, log=print) -> TrainResult:
    """Train a language model as ``config`` says; ``text`` overrides ``config.data.path``.

    Writes ``best/`` and ``last/`` checkpoints and ``metrics.jsonl`` under
    ``config.output.out`` (nothing is written before the data and model are checked).
    Ctrl-C stops training, saves ``last/`` and returns with ``interrupted=True``.
    """
    vocab, train_ids, val_ids = prepare_data(config, text)
    config = replace(config, model=replace(config.model, vocab_size=len(vocab)))
    torch.manual_seed(config.output.seed)
    model = LanguageModel(config.model)
    optimizer = build_optimizer(model, config)
    batches = StreamBatches(train_ids, config.optim.batch_size, config.optim.seq_len)
    unit = "char" if vocab.kind == "char" else "word"

    out = Path(config.output.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config.to_json(), indent=2) + "\n")
    metrics = open(out / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
    n_params = sum(p.numel() for p in model.parameters())
    log(describe(config))
    log(
        f"data: {len(train_ids):,} training and {len(val_ids):,} validation {unit}s, "
        f"vocabulary {len(vocab)}; model: {n_params:,} parameters; "
        f"{len(batches)} chunks per epoch"
    )

    o = config.optim
    tokens_per_step = o.batch_size * o.seq_len
    state, step, chunk = None, 0, 0
    best = last_val = last_train = None
    train_seconds, interrupted = 0.0, False
    start = time.perf_counter()
    bar = tqdm(
        total=o.max_steps if o.max_steps is not None else round(o.max_time),
        unit="step" if o.max_steps is not None else "s",
        disable=None if config.output.progress else True,
        dynamic_ncols=True,
        leave=False,
    )

    def report(msg: str) -> None:
        tqdm.write(msg) if not bar.disable else log(msg)

    def validate_and_save() -> None:
        nonlocal best, last_val
        record = {"step": step, "train_loss": last_train}
        if len(val_ids) >= 2:
            last_val = evaluate(model, val_ids, o.batch_size, o.seq_len)
            record["val_loss"] = last_val
            improved = best is None or last_val < best
            report(
                f"step {step}: train {last_train:.4f}, val {last_val:.4f} nats/{unit} "
                f"({last_val / LN2:.3f} bits/{unit}), "
                f"{step * tokens_per_step / max(train_seconds, 1e-9):,.0f} {unit}s/s"
                + (" (best)" if improved else "")
            )
            if improved:
                best = last_val
                save_checkpoint(out / "best", model, config, vocab, step=step, val_loss=last_val)
        if config.output.sample_length:
            sample = sample_text(model, vocab, config.output.sample_length, seed=step)
            report(f"--- sample at step {step} ---\n{sample}\n---")
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()

    try:
        model.train()
        while True:
            elapsed = time.perf_counter() - start
            if o.max_steps is not None and step >= o.max_steps:
                break
            if o.max_time is not None and elapsed >= o.max_time:
                break
            if chunk == len(batches):  # epoch boundary: streams restart, so does state
                chunk, state = 0, None
            x, y = batches[chunk]
            t0 = time.perf_counter()
            _, loss, state = model(x, state, targets=y)
            state = detach_state(state)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if o.clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip)
            optimizer.step()
            train_seconds += time.perf_counter() - t0
            step, chunk = step + 1, chunk + 1
            last_train = loss.item()
            if not math.isfinite(last_train):
                raise UserError(
                    f"training diverged at step {step} (loss {last_train}); lower --lr "
                    "or set --clip"
                )
            bar.update(1 if o.max_steps is not None else 0)
            if o.max_steps is None:
                bar.n = min(round(time.perf_counter() - start), bar.total)
            bar.set_postfix(
                loss=f"{last_train:.3f}",
                speed=f"{step * tokens_per_step / train_seconds:,.0f} {unit}/s",
                refresh=False,
            )
            if step % config.output.eval_interval == 0:
                validate_and_save()
        if step % config.output.eval_interval != 0 and step > 0:
            validate_and_save()
    except KeyboardInterrupt:
        interrupted = True
        report(f"interrupted at step {step}; saving {out / 'last'}")
    finally:
        bar.close()
    if step > 0:
        save_checkpoint(out / "last", model, config, vocab, step=step, val_loss=last_val)
        if len(val_ids) < 2:  # no validation: the last weights are the best we know
            save_checkpoint(out / "best", model, config, vocab, step=step, val_loss=None)
    metrics.close()
    return TrainResult(
        steps=step,
        tokens=step * tokens_per_step,
        train_seconds=train_seconds,
        best_val_loss=best,
        last_val_loss=last_val,
        last_train_loss=last_train,
        interrupted=interrupted,
        out=out,
        model=model,
        vocab=vocab,
    )

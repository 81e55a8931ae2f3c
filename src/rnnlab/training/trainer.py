"""The training engine: one loop, read top to bottom, that every task trains through.

Each update: set the learning rate from the schedule; ask the task for the loss of its next
batch (for language models a truncated-BPTT window, :mod:`rnnlab.training.streams`); add the
L1/L2 penalties; backpropagate; add the gradient of the Pascanu regulariser; measure the
gradient's global norm and clip it; skip the update if anything is not finite; step.
Every ``eval_interval`` updates it validates, samples and keeps the best checkpoint; every
``checkpoint_interval`` updates (and at each validation) it saves ``last/`` with everything
``--resume`` needs.  Metrics of every update go to ``metrics.jsonl`` (and TensorBoard).

Python API::

    from rnnlab.training import TrainConfig, train
    result = train(TrainConfig())          # the bundled Tiny Shakespeare, defaults
    result.best_val_loss                   # nats per character
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rnnlab.backends import compile_notice
from rnnlab.data import Vocabulary, load_text, min_tokens, split_train_val
from rnnlab.errors import UserError
from rnnlab.models import LanguageModel
from rnnlab.training import distributed
from rnnlab.training.averaging import WeightAverage
from rnnlab.training.checkpoint import (
    is_run_directory,
    load_checkpoint,
    load_training_state,
    optimizer_state,
    resolve_last,
    restore_optimizer,
    save_checkpoint,
)
from rnnlab.training.clipping import clip_gradients
from rnnlab.training.config import TrainConfig
from rnnlab.training.precision import autocast, choose_precision
from rnnlab.training.regularizers import OmegaProbe, weight_penalty
from rnnlab.training.schedules import LRSchedule
from rnnlab.training.streams import StreamTask, detach_state, evaluate_stream

LN2 = math.log(2.0)
evaluate = evaluate_stream
__all__ = ["TrainResult", "Trainer", "detach_state", "evaluate", "prepare_data", "train"]


class TrainingDiverged(UserError):
    """Too many updates in a row had a non-finite loss or gradient."""


def _compile_notice(model, report) -> threading.Timer | None:
    """:func:`rnnlab.backends.compile_notice` for the first update, where some layer of
    the model runs the compiled path; the caller cancels it after that update."""
    try:
        compiled = any(
            m.backend_choice().name == "numba"
            for m in model.modules()
            if hasattr(m, "backend_choice")
        )
    except Exception:  # a layer that cannot say: no notice rather than no training
        return None
    return compile_notice(report, "this model") if compiled else None


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
    model: torch.nn.Module
    vocab: Vocabulary | None
    clipped_fraction: float = 0.0
    skipped_updates: int = 0
    stop_reason: str = ""

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.train_seconds if self.train_seconds > 0 else 0.0


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
    o, params = config.optim, model.parameters()
    if o.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
        )
    if o.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
        )
    if o.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)


def sample_text(model, vocab: Vocabulary, length: int, temperature=0.8, seed=0) -> str:
    """A sample primed with a newline (or the first token)."""
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


class MetricsLog:
    """metrics.jsonl in the run directory, and TensorBoard scalars when it is installed."""

    def __init__(self, out: Path, tensorboard: bool, append: bool = True):
        """``append``: continue the file (a resumed run); else start it afresh."""
        self.file = open(out / "metrics.jsonl", "a" if append else "w", encoding="utf-8")  # noqa: SIM115
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # the tensorboard package is optional
                pass
            else:
                self.writer = SummaryWriter(str(out / "tensorboard"))

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key not in ("kind", "step") and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{record['kind']}/{key}", value, record["step"])

    def flush(self) -> None:
        self.file.flush()
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()


class NullLog:
    """What ranks other than 0 log to: nothing."""

    def write(self, record: dict) -> None:
        pass

    flush = close = lambda self: None  # noqa: E731


class _Terminated(RuntimeError):
    """SIGTERM in a process of a distributed run (torchrun sends it to the survivors when
    one process dies); reported like any other failure of the process group."""


def _refuse_foreign_directory(out: Path) -> None:
    """A new run goes into a new or empty directory, or replaces an earlier run; a folder
    that holds other files (a project's own config.json, say) is refused, not overwritten."""
    try:
        entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    except OSError:
        return  # mkdir or the first write says what is wrong
    if entries and not is_run_directory(out):
        listed = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise UserError(
            f"{out} holds files ({listed}) but no rnnlab run; give --out a new or empty directory"
        )


class Trainer:
    """Runs ``task`` on ``model`` as ``config`` says; see the module docstring for one update.

    ``task`` provides ``training_loss(model) -> Tensor`` (the next batch's loss),
    ``evaluate(model) -> {"val_loss": ..., other metrics}``, ``has_validation``,
    ``tokens_per_update``, ``unit`` (what a token is, for speeds), optionally ``loss_unit``
    (what the loss is averaged over, if not ``unit``: "target token"), ``updates_per_epoch``,
    ``state_dict() -> (tensors, json)`` / ``load_state_dict`` for resumption, and optionally
    ``report(model, step) -> str | None`` shown at each validation (a sample, say).
    ``checkpointer(directory, training_state, **info)`` writes a checkpoint directory;
    ``training_state`` is None for ``best/`` and (tensors, json) for ``last/``.
    """

    def __init__(
        self,
        model,
        task,
        config: TrainConfig,
        checkpointer,
        log=print,
        handle_signals: bool = False,
    ):
        self.model, self.task, self.config = model, task, config
        self.checkpointer = checkpointer
        self.handle_signals = handle_signals
        self.out = Path(config.output.out)
        self.dist = distributed.current()
        self.log = log if self.dist.is_main else (lambda message: None)
        self.net = model  # what the task runs in training: the model, or its DDP wrapper
        if self.dist.enabled:
            task.shard(self.dist)
            # A task whose loss is not the model's forward names the module DDP must wrap.
            wrapped = task.loss_module(model) if hasattr(task, "loss_module") else model
            self.net = torch.nn.parallel.DistributedDataParallel(wrapped)
        self.optimizer = build_optimizer(model, config)
        self.average = WeightAverage(model, config.optim.ema) if config.optim.ema else None
        self.schedule = LRSchedule(config.schedule, config.optim.lr)
        self.probe = self._make_probe()
        self.step = 0
        self.resumed = False  # set by load_training_state
        self.train_seconds = 0.0  # time in updates only
        self.elapsed = 0.0  # wall time of the run, validations included
        self.best = self.last_val = self.last_train = None
        self.evals_since_best = 0
        self.clipped_steps = self.skipped_steps = self.nonfinite_streak = 0
        self.stop_requested = False
        self.unit = task.unit
        self.loss_unit = getattr(task, "loss_unit", task.unit)
        self.device = next(model.parameters()).device
        self.precision = choose_precision(config.optim.precision, self.device)

    def _make_probe(self):
        if self.config.optim.pascanu_alpha <= 0:
            return None
        layer = getattr(self.model, "rnn", None)
        form = {"RNN": "elman", "PascanuRNN": "pascanu"}.get(type(layer).__name__)
        if form is None:
            raise UserError("the Pascanu regulariser (--pascanu-alpha) needs --cell rnn or pascanu")
        try:
            return OmegaProbe(layer, form)
        except ValueError as exc:
            raise UserError(f"--pascanu-alpha: {exc} (use --layers 1)") from None

    # -- state for --resume -------------------------------------------------------------
    def training_state(self) -> tuple[dict, dict]:
        """Everything --resume needs; a collective when distributed (call on every rank)."""
        tensors, optim_meta = optimizer_state(self.optimizer)
        task_tensors, task_meta = self.task.state_dict()
        tensors.update({f"task.{k}": v for k, v in task_tensors.items()})
        average_meta = None
        if self.average is not None:
            average_tensors, average_meta = self.average.state_dict()
            tensors.update(average_tensors)
        for rank, rng in enumerate(self.dist.gather(torch.get_rng_state())):
            tensors[f"rng.torch.{rank}"] = rng
        meta = {
            "world_size": self.dist.world_size,
            "step": self.step,
            "train_seconds": self.train_seconds,
            "elapsed": self.elapsed,
            "best": self.best,
            "last_val": self.last_val,
            "last_train": self.last_train,
            "evals_since_best": self.evals_since_best,
            "clipped_steps": self.clipped_steps,
            "skipped_steps": self.skipped_steps,
            "schedule": self.schedule.state_dict(),
            "task": task_meta,
            "optimizer": optim_meta,
            "average": average_meta,
        }
        return tensors, meta

    def load_training_state(self, tensors: dict, meta: dict) -> None:
        self.resumed = True
        restore_optimizer(self.optimizer, tensors, meta["optimizer"])
        task_tensors = {k[5:]: v for k, v in tensors.items() if k.startswith("task.")}
        self.task.load_state_dict(task_tensors, meta["task"])
        own = tensors.get(f"rng.torch.{self.dist.rank}", tensors.get("rng.torch"))
        if meta.get("world_size", 1) == self.dist.world_size and own is not None:
            torch.set_rng_state(own)
        else:  # streams are reassigned exactly; random streams (dropout) start anew
            torch.manual_seed(self.config.output.seed + 7919 * self.dist.rank + meta["step"])
            self.log(
                f"resuming with {self.dist.world_size} processes instead of "
                f"{meta.get('world_size', 1)}: data streams and carried states are reassigned "
                "exactly; dropout masks are drawn from new random streams"
            )
        self.schedule.load_state_dict(meta["schedule"])
        if self.average is not None and meta.get("average") is not None:
            self.average.load_state_dict(tensors, meta["average"])
        elif self.average is not None:  # the weights were loaded after the average was made
            self.average.restart()
            self.log("the run being resumed kept no weight average: it starts from these weights")
        for key in (
            "step",
            "train_seconds",
            "elapsed",
            "best",
            "evals_since_best",
            "clipped_steps",
            "skipped_steps",
        ):
            setattr(self, key, meta[key])
        self.last_val, self.last_train = meta["last_val"], meta["last_train"]

    def save(self, name: str, **info) -> None:
        """Write a checkpoint (rank 0 only; ``last/`` gathers state from every rank)."""
        state = self.training_state() if name == "last" else None
        if self.dist.is_main:
            self.checkpointer(
                self.out / name, state, step=self.step, val_loss=self.last_val, **info
            )

    # -- one update ---------------------------------------------------------------------
    def progress(self) -> float:
        o = self.config.optim
        parts = []
        if o.max_steps is not None:
            parts.append(self.step / o.max_steps)
        if o.max_time is not None:
            parts.append(self.elapsed / o.max_time)
        return max(parts)

    def update(self) -> dict:
        o = self.config.optim
        lr = self.schedule.lr(self.step, self.progress())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        teacher_p = None
        if hasattr(self.model, "teacher_probability"):
            teacher_p = self.config.teacher.probability(self.step)
            self.model.teacher_probability = teacher_p
        with autocast(self.precision, self.device):
            loss = self.task.training_loss(self.net)
        total = loss
        if o.l1 or o.l2:
            total = total + weight_penalty(self.model.named_parameters(), o.l1, o.l2)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        omega = None
        if self.probe is not None:
            omega = self.probe.omega()
            if omega is not None:
                alpha = o.pascanu_alpha
                if o.pascanu_decay > 0:
                    alpha = alpha / (1 + self.step / o.pascanu_decay)
                weight = self.probe.layer.weight_hh_l0
                (grad,) = torch.autograd.grad(alpha * omega, weight)
                weight.grad += self.dist.average_(grad)
        clip = clip_gradients(self.model.parameters(), o.clip, o.clip_mode)
        loss_value = self.dist.mean(loss.item())  # the global batch's loss
        record = {
            "kind": "train",
            "step": self.step + 1,
            "loss": loss_value,
            "grad_norm": clip.norm,
            "clipped": clip.clipped,
            "lr": lr,
        }
        if omega is not None:
            record["omega"] = self.dist.mean(omega.item())
        if teacher_p is not None and self.config.model.cell == "jordan":
            record["teacher_p"] = teacher_p
        if math.isfinite(loss_value) and math.isfinite(clip.norm):
            self.optimizer.step()
            if self.average is not None:
                self.average.update()
            self.nonfinite_streak = 0
            self.clipped_steps += int(clip.clipped)
            self.last_train = loss_value
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            self.nonfinite_streak += 1
            record["skipped"] = True
        self.step += 1
        return record

    # -- validation ---------------------------------------------------------------------
    def validate(self, report) -> None:
        record = {"kind": "eval", "step": self.step, "train_loss": self.last_train}
        # With --ema the average is what is validated, sampled and kept as best/.
        with self.average.swapped_in() if self.average is not None else nullcontext():
            self._validate(record, report)
        self.metrics.write(record)
        self.metrics.flush()
        self.save("last")

    def _validate(self, record: dict, report) -> None:
        if self.has_validation:
            metrics = self.task.evaluate(self.model)
            self.last_val = metrics["val_loss"]
            record.update(metrics)
            improved = self.best is None or self.last_val < self.best
            if self.schedule.observe(self.last_val):
                report(
                    f"validation loss did not improve: learning rate x{self.config.schedule.gamma}"
                )
            self.evals_since_best = 0 if improved else self.evals_since_best + 1
            speed = self.step * self.task.tokens_per_update / max(self.train_seconds, 1e-9)
            u, lu = self.unit, self.loss_unit
            extra = "".join(f", {k} {v:.4f}" for k, v in metrics.items() if k != "val_loss")
            report(
                f"step {self.step}: train {self.last_train:.4f}, val {self.last_val:.4f} "
                f"nats/{lu} ({self.last_val / LN2:.3f} bits/{lu}){extra}, {speed:,.0f} {u}s/s"
                + (" (best)" if improved else "")
            )
            if improved:
                self.best = self.last_val
                self.save("best")
        text = None
        if self.dist.is_main and hasattr(self.task, "report"):
            text = self.task.report(self.model, self.step)
        if text:
            report(text)

    def monitor(self) -> None:
        """Gradient flow through time and spectral radii, logged as a "monitor" record."""
        if not hasattr(self.task, "monitor_batch") or not self.dist.is_main:
            return
        from rnnlab.analysis.monitor import snapshot  # imported only when asked for

        record = {"kind": "monitor", "step": self.step}
        record.update(snapshot(self.model, self.task.monitor_batch()))
        self.metrics.write(record)

    @property
    def has_validation(self) -> bool:
        return self.task.has_validation

    # -- the loop -----------------------------------------------------------------------
    STOP_REASONS = ("", "max_steps", "max_time", "early_stop", "interrupted")

    def _agreed_stop_reason(self) -> str | None:
        """Every rank stops at the same update: the most urgent local reason wins."""
        reason = self._stop_reason()
        if not self.dist.enabled:
            return reason
        code = self.STOP_REASONS.index(reason or "")
        t = torch.tensor([code])
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return self.STOP_REASONS[int(t)] or None

    def _stop_reason(self) -> str | None:
        o, out = self.config.optim, self.config.output
        if self.stop_requested:
            return "interrupted"
        if o.max_steps is not None and self.step >= o.max_steps:
            return "max_steps"
        if o.max_time is not None and self.elapsed >= o.max_time:
            return "max_time"
        if out.early_stop and self.evals_since_best >= out.early_stop:
            return "early_stop"
        return None

    def finished(self, reason: str) -> str:
        """Why a resumed run would stop before its first update, and what to pass instead."""
        o, out = self.config.optim, self.config.output
        if reason == "max_steps":
            return (
                f"is already at step {self.step} (max_steps {o.max_steps}); pass a larger "
                "--max-steps"
            )
        if reason == "max_time":
            return (
                f"has already run {self.elapsed:.0f} s (max_time {o.max_time:g}); pass a larger "
                "--max-time, or --max-steps alone"
            )
        return (
            f"stopped early: {self.evals_since_best} validations without improvement "
            f"(early_stop {out.early_stop}); pass a larger --early-stop, or 0"
        )

    @staticmethod
    def _on_sigterm(signum, frame):
        raise _Terminated("stopped by SIGTERM, as torchrun stops the rest when one fails")

    def _on_sigint(self, signum, frame):
        if self.stop_requested:
            print("\nrnnlab: second Ctrl-C: quitting at once", file=sys.stderr, flush=True)
            os._exit(130)
        self.stop_requested = True
        print(
            "\nrnnlab: Ctrl-C: stopping after this update and saving "
            "(Ctrl-C again to quit at once)",
            file=sys.stderr,
            flush=True,
        )

    def run(self) -> TrainResult:
        c, o = self.config, self.config.optim
        main = self.dist.is_main
        fresh = self.step == 0 and not self.resumed
        if main:
            if fresh:
                _refuse_foreign_directory(self.out)
            try:
                self.out.mkdir(parents=True, exist_ok=True)
                if fresh and (self.out / "config.json").exists():
                    self.log(
                        f"{self.out} holds an earlier run: its checkpoints and metrics are replaced"
                    )
                (self.out / "config.json").write_text(json.dumps(c.to_json(), indent=2) + "\n")
            except OSError as exc:
                raise UserError(
                    f"cannot write the run directory {self.out}: {exc.strerror}"
                ) from None
        self.metrics = (
            MetricsLog(self.out, c.output.tensorboard, append=not fresh) if main else NullLog()
        )
        bar = tqdm(
            total=o.max_steps if o.max_steps is not None else round(o.max_time),
            initial=self.step if o.max_steps is not None else round(self.elapsed),
            unit="step" if o.max_steps is not None else "s",
            disable=None if c.output.progress and main else True,
            dynamic_ncols=True,
            leave=False,
        )

        def report(msg: str) -> None:
            tqdm.write(msg) if not bar.disable else self.log(msg)

        previous_handler = previous_term = None

        def restore() -> None:  # the handlers the caller had (once)
            nonlocal previous_handler, previous_term
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
            if previous_term is not None:
                signal.signal(signal.SIGTERM, previous_term)
            previous_handler = previous_term = None

        if self.handle_signals and threading.current_thread() is threading.main_thread():
            previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
            if self.dist.enabled:  # torchrun's SIGTERM: the one-line message, not a traceback
                previous_term = signal.signal(signal.SIGTERM, self._on_sigterm)
        if o.precision != "float32":
            report(f"precision: {self.precision.reason}")
        note = getattr(self.task, "note", None)  # what the task wants the user to know
        if note:
            report(note)
        if self.average is not None:
            report(
                f"validating an exponential moving average of the weights (decay {o.ema}); "
                "best/ holds the average"
            )
        interrupted, reason = False, ""
        session_start = time.perf_counter() - self.elapsed
        first_update = _compile_notice(self.model, report)
        try:
            self.model.train()
            while (reason := self._agreed_stop_reason()) is None:
                t0 = time.perf_counter()
                record = self.update()
                if first_update is not None:
                    first_update.cancel()
                    first_update = None
                dt = time.perf_counter() - t0
                self.train_seconds += dt
                self.elapsed = time.perf_counter() - session_start
                record["tokens_per_s"] = self.task.tokens_per_update / dt
                self.metrics.write(record)
                if self.nonfinite_streak >= o.max_nonfinite:
                    self.metrics.flush()
                    raise TrainingDiverged(
                        f"stopped at step {self.step}: {self.nonfinite_streak} updates in a row "
                        f"had a non-finite loss or gradient (skipped); lower --lr or --clip. "
                        f"The last good checkpoint is in {self.out}"
                    )
                if o.max_steps is not None:
                    bar.update(1)
                else:
                    bar.n = min(round(self.elapsed), bar.total)
                speed = self.step * self.task.tokens_per_update / self.train_seconds
                bar.set_postfix(
                    loss=f"{record['loss']:.3f}", speed=f"{speed:,.0f} {self.unit}/s", refresh=False
                )
                if c.output.monitor_interval and self.step % c.output.monitor_interval == 0:
                    self.monitor()
                if self.step % c.output.eval_interval == 0:
                    self.validate(report)
                elif c.output.checkpoint_interval and self.step % c.output.checkpoint_interval == 0:
                    self.save("last")
        except KeyboardInterrupt:
            reason = "interrupted"
        except RuntimeError as exc:
            if not self.dist.enabled:
                raise
            first = str(exc).strip().splitlines()[0][:200]
            raise UserError(
                f"rank {self.dist.rank}: another process of this run failed ({first}); "
                f"resume with: rnnlab train --resume {self.out}"
            ) from None
        finally:
            if first_update is not None:  # the first update failed or was interrupted
                first_update.cancel()
            bar.close()
            if reason != "interrupted":  # else the handlers stay until last/ is saved
                restore()
        interrupted = reason == "interrupted"
        try:
            # a Ctrl-C while the final checkpoint is written is the "second Ctrl-C" of the
            # handler (quit at once, said in one line), whether or not it came in time to
            # stop an update
            if interrupted:
                report(f"interrupted at step {self.step}; saving {self.out / 'last'}")
            elif reason == "early_stop":
                report(f"early stop: no improvement in {c.output.early_stop} validations")
            if self.step > 0:
                if not interrupted and self.step % c.output.eval_interval != 0:
                    self.validate(report)
                self.save("last")
                if not self.has_validation:  # no validation: the last weights are the best
                    self.save("best")
        finally:
            restore()
        if self.probe is not None:
            self.probe.close()
        self.metrics.close()
        if self.clipped_steps or self.skipped_steps:
            report(
                f"gradient clipped in {self.clipped_steps} of {self.step} updates; "
                f"{self.skipped_steps} skipped for non-finite values"
            )
        return TrainResult(
            steps=self.step,
            tokens=round(self.step * self.task.tokens_per_update),
            train_seconds=self.train_seconds,
            best_val_loss=self.best,
            last_val_loss=self.last_val,
            last_train_loss=self.last_train,
            interrupted=interrupted,
            out=self.out,
            model=self.model,
            vocab=getattr(self.task, "vocab", None),
            clipped_fraction=self.clipped_steps / max(self.step, 1),
            skipped_updates=self.skipped_steps,
            stop_reason=reason,
        )


def train(
    config: TrainConfig,
    text: str | None = None,
    log=print,
    resume: str | Path | None = None,
    handle_signals: bool = False,
    refuse_finished: bool = False,
) -> TrainResult:
    """Train a language model as ``config`` says; ``text`` overrides ``config.data.path``.

    Writes ``best/`` and ``last/`` checkpoints, ``config.json`` and ``metrics.jsonl`` under
    ``config.output.out`` (nothing is written before the data and model are checked).
    ``resume`` continues the run in that directory from its ``last/`` checkpoint;
    ``refuse_finished``: a :class:`UserError` (before anything is written) where that run
    has already reached its max_steps, max_time or early stop, rather than validating and
    saving it again with no update made.  Ctrl-C
    stops training, saves ``last/`` and returns with ``interrupted=True``.
    """
    vocab, train_ids, val_ids = prepare_data(config, text)
    config = replace(config, model=replace(config.model, vocab_size=len(vocab)))
    if config.data.path is not None:  # so the run's config.json works from any directory
        config = replace(
            config, data=replace(config.data, path=str(Path(config.data.path).resolve()))
        )
    torch.manual_seed(config.output.seed)
    try:
        model = LanguageModel(config.model)
    except ValueError as exc:  # a combination the layers refuse, e.g. a backend and a cell
        raise UserError(str(exc)) from None
    task = StreamTask(
        train_ids,
        val_ids,
        config.optim.batch_size,
        config.optim.k1,
        config.optim.k2,
        vocab,
        config.output.sample_length,
        config.data.val_streams,
    )

    def checkpointer(directory, training_state, **info):
        save_checkpoint(directory, model, config, vocab, training_state, **info)

    trainer = Trainer(model, task, config, checkpointer, log, handle_signals)
    if resume is not None:
        tensors, meta = load_training_state(resume)
        saved_model, saved_vocab, saved_config, _ = load_checkpoint(resolve_last(resume))
        if saved_vocab != vocab:
            raise UserError(f"the training text differs from the one {resume} was trained on")
        try:
            model.load_state_dict(saved_model.state_dict())
        except RuntimeError:
            changed = [
                f"{name} {getattr(saved_config.model, name)!r} -> {getattr(config.model, name)!r}"
                for name in (f.name for f in fields(config.model))
                if getattr(saved_config.model, name) != getattr(config.model, name)
            ]
            raise UserError(
                f"cannot resume {resume} with another model shape ({'; '.join(changed)}); "
                "start a new run with --out instead"
            ) from None
        try:
            trainer.load_training_state(tensors, meta)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, UserError):
                raise
            raise UserError(
                f"cannot resume {resume}: its training state is damaged or from another "
                f"version ({type(exc).__name__}: {exc})"
            ) from None
        reason = trainer._stop_reason()
        if refuse_finished and reason is not None:
            raise UserError(f"{resume} {trainer.finished(reason)}")
        trainer.log(f"resuming {resume} at step {trainer.step}")
    else:
        _refuse_foreign_directory(trainer.out)  # before the configuration is printed
        n_params = sum(p.numel() for p in model.parameters())
        trainer.log(describe(config))
        trainer.log(
            f"data: {len(train_ids):,} training and {len(val_ids):,} validation "
            f"{trainer.unit}s, vocabulary {len(vocab)}; model: {n_params:,} parameters; "
            f"{task.updates_per_epoch} updates per epoch"
        )
    return trainer.run()

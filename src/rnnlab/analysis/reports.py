"""The experiments behind the seeds' claims about gradients, each a reproducible function.

``rnnlab diagnose report NAME`` runs one and prints its tables; each writes its plots,
``report.json`` (every number, every training run) and ``report.md`` (the tables) under
its output directory.

* :func:`vanishing` -- Elman (tanh, sigmoid, ReLU), LSTM and GRU: the gradient ratio
  ||dE/dh_0|| / ||dE/dh_T|| at T = 10, 50, 100, 200, and the gradient norm through time
  at initialisation and after training on the recall task (seed 000 eqs. 12-14, seed 002).
* :func:`exploding` -- Elman tanh with recurrent spectral radius 0.9, 1.0, 1.1, 1.5: growth
  of the gradient norm, and training with and without clipping (seed 004).
* :func:`penalties` -- seed 000's claim that L1/L2 penalties make vanishing worse.
* :func:`regulariser` -- the Pascanu et al. (2013) regulariser and the gradient-norm curve.
* :func:`surface_report` -- the one-unit error surface with and without clipping.

Two things make the numbers reproducible and their conclusions robust:

* every layer runs on the pinned backend :data:`~rnnlab.analysis.tasks.BACKEND`
  (``"fused"``, plain PyTorch), not ``"auto"``, whose choice of compiled kernel depends on
  what is installed and has changed between versions;
* float32 training on the recall task is chaotic: a last-bit difference can decide whether
  a run learns.  So every trained configuration is trained from ``seeds`` seeds
  (``seed``, ``seed + 1``, ...; each seeds both the initial weights and the training
  batches) and the tables give the median over seeds, the accuracy of every seed and how
  many seeds learnt the task (accuracy >= :data:`LEARNT`).  Tables at initialisation use
  ``seed`` alone.  The plots draw the first seed's curve thick, the others thin in the
  same colour.

Every function takes its sizes as keyword arguments; the defaults are the documented runs
(half a minute to two minutes each on two CPU cores).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rnnlab.analysis import plots
from rnnlab.analysis.diagnosis import markdown_table
from rnnlab.analysis.gradients import GradientFlow, gradient_heatmap, gradient_norms_through_time
from rnnlab.analysis.jacobians import jacobian_products
from rnnlab.analysis.spectra import power_method, recurrent_spectra
from rnnlab.analysis.surface import error_surface, gradient_descent
from rnnlab.analysis.tasks import (
    BACKEND,
    CELLS,
    History,
    make_recaller,
    recall_batch,
    train_recall,
)
from rnnlab.init import Init


@dataclass
class Report:
    name: str
    title: str
    tables: list[tuple[str, list[dict]]] = field(default_factory=list)  # (caption, rows)
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    seconds: float = 0.0
    directory: Path | None = None

    def markdown(self) -> str:
        parts = [f"### {self.title}", ""]
        for caption, rows in self.tables:
            parts += [caption, "", markdown_table(rows), ""]
        parts += self.notes
        if self.notes:
            parts.append("")
        where = f"; plots and report.json in {self.directory}" if self.directory else ""
        parts.append(f"({self.seconds:.0f} s{where})")
        return "\n".join(parts)

    def save(self, out: Path) -> None:
        """Write ``report.json`` (tables and every number) and ``report.md`` into ``out``."""
        out.mkdir(parents=True, exist_ok=True)
        self.directory = out
        self.files += [out / "report.json", out / "report.md"]
        record = {
            "name": self.name,
            "title": self.title,
            "seconds": self.seconds,
            "tables": [{"caption": c, "rows": r} for c, r in self.tables],
            "notes": self.notes,
            "files": [str(f) for f in self.files],
            "data": self.data,
        }
        text = json.dumps(_plain(record), indent=1, allow_nan=False)
        (out / "report.json").write_text(text + "\n", encoding="utf-8")
        (out / "report.md").write_text(self.markdown() + "\n", encoding="utf-8")


def _plain(x):
    """Plain JSON values: str keys, lists, None for nan and inf."""
    if isinstance(x, GradientFlow):
        return x.to_json()
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Path):
        return str(x)
    return x


def _sci(x: float) -> str:
    """A ratio that may span 300 orders of magnitude, compactly."""
    if not math.isfinite(x):
        return "-"
    if x == 0:
        return "0"
    return f"{x:.2g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.1e}"


def _rate(x: float) -> str:
    return f"{x:+.3f}" if math.isfinite(x) else "-"


def _bar(total: int, desc: str, progress: bool):
    return tqdm(total=total, desc=desc, disable=not progress, leave=False, unit="upd")


def _optimizer_name(optimizer: str) -> str:
    return {"sgd": "plain SGD", "adam": "Adam"}.get(optimizer, optimizer)


def _flow(model, length: int, batch: int, seed: int, loss: str = "last") -> GradientFlow:
    """Gradient norm through time of a recall model on a seeded batch of the task."""
    x, y = recall_batch(batch, length, torch.Generator().manual_seed(seed))
    return gradient_norms_through_time(model.rnn, x, loss=loss, readout=model.readout(y))


def _radius(model) -> float:
    return max(s.radius for s in recurrent_spectra(model))


# -- several seeds ------------------------------------------------------------------------------

SEEDS = 3  # training runs per configuration: 3 keep `report all` near three minutes
LEARNT = 0.9  # accuracy on a fresh batch from which a run counts as having learnt the task
MEASURE_SEED = 10_000  # offset of the seed of the batch that gradients are measured on


def _count(n: int, noun: str) -> str:
    """``n`` and the noun, singular for 1: "1 seed", "3 seeds"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def seed_list(seed: int, seeds: int) -> list[int]:
    """The seeds of the training runs: ``seed``, ``seed + 1``, ..., ``seeds`` of them."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive integer; got {seeds!r}")
    return list(range(seed, seed + seeds))


def _median(values: Iterable[float], log: bool = False) -> float:
    """Median of the finite values (``log``: of their logarithms, for ratios spanning
    many orders of magnitude, where an even count would otherwise average 1e-30 and 1)."""
    x = np.asarray(list(values), dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return math.nan
    if not log:
        return float(np.median(x))
    with np.errstate(divide="ignore"):
        return float(np.exp(np.median(np.log(np.abs(x)))))


def _per_seed(accuracies: list[float]) -> str:
    """Every seed's accuracy, in seed order: "100 / 89 / 25%"."""
    return " / ".join(f"{a * 100:.0f}" for a in accuracies) + "%"


def _per_seed_rates(rates: Iterable[float]) -> str:
    """Every seed's log-rate, in seed order: "+0.004 / -2.235 / +0.027"."""
    return " / ".join(_rate(r) for r in rates)


def _learnt(accuracies: list[float]) -> str:
    """How many seeds learnt the task: "2/3"."""
    return f"{sum(a >= LEARNT for a in accuracies)}/{len(accuracies)}"


def _seeds_caption(seeds: list[int]) -> str:
    first = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}"
    return (
        f"{_count(len(seeds), 'training run')} per row ({first}, each its own initial weights and "
        f"batches; backend {BACKEND!r}); a 'per seed' column lists every run in seed "
        f"order, any other number is the median over the runs; accuracy on a fresh batch "
        f"of 512, and 'learnt' counts the runs with accuracy ≥ {LEARNT:.0%}"
    )


def _seed_panels(panels: dict[str, dict[str, list]]) -> tuple[dict, dict[str, str]]:
    """Panels of curves with one entry per seed turned into the plot functions' form: the
    first seed under its label, the others under hidden labels ("_...": no legend entry),
    after all first seeds so the labelled lines take the colours in order. Also returns
    hidden label -> its label, for :func:`_recolour`."""
    flat, owner = {}, {}
    for panel, curves in panels.items():
        d = {label: runs[0] for label, runs in curves.items()}
        for label, runs in curves.items():
            for i, run in enumerate(runs[1:], 1):
                hidden = f"_{label} #{i}"
                d[hidden] = run
                owner[hidden] = label
        flat[panel] = d
    return flat, owner


def _recolour(fig, owner: dict[str, str]) -> None:
    """Draw every further seed's line thin in the colour of its first seed's line."""
    for ax in fig.axes:
        lines = {line.get_label(): line for line in ax.get_lines()}
        for label in set(owner.values()) & set(lines):
            lines[label].set_linewidth(max(lines[label].get_linewidth(), 1.6))
        for hidden, label in owner.items():
            if hidden in lines and label in lines:
                lines[hidden].set(color=lines[label].get_color(), lw=0.8, alpha=0.55)
                lines[hidden].set_zorder(lines[label].get_zorder() - 0.5)


def _pad_log_axes(fig) -> None:
    """Leave 4% of the decades free above and below on log axes, so a line that ends at
    the bottom (its gradient underflowed to exactly 0) visibly ends inside the plot."""
    for ax in fig.axes:
        if ax.get_yscale() != "log" or ax.get_label() == "<colorbar>":
            continue
        lo, hi = ax.get_ylim()
        pad = 0.04 * math.log10(hi / lo)
        ax.set_ylim(max(lo / 10**pad, 1e-300), hi * 10**pad)


def _plot_seed_flows(panels: dict[str, dict[str, list]], path: Path, title: str) -> None:
    """:func:`plots.plot_gradient_norms` with every seed: thick first seed, thin others."""
    flat, owner = _seed_panels(panels)
    fig = plots.plot_gradient_norms(flat, path, title)
    _recolour(fig, owner)
    _pad_log_axes(fig)
    # Each further title line takes height from the axes; give it back, so the long
    # y label still fits beside them.
    fig.set_figheight(fig.get_figheight() + 0.25 * title.count("\n"))
    plots._save(fig, path)


def _plot_seed_curves(panels: dict[str, dict[str, list]], path: Path, title: str, **kw) -> None:
    """:func:`plots.plot_training_curves` with every seed: thick first seed, thin others."""
    flat, owner = _seed_panels(panels)
    fig = plots.plot_training_curves(flat, path, title, **kw)
    _recolour(fig, owner)
    plots._save(fig, path)


def _seeds_note(seeds: list[int]) -> str:
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    return f"thick: seed {seeds[0]}, thin: seeds {seeds[1]}-{seeds[-1]}"


# -- 1. vanishing -------------------------------------------------------------------------------


def vanishing(
    out: Path,
    seed: int = 0,
    hidden: int = 32,
    lengths: Iterable[int] = (10, 50, 100, 200),
    batch: int = 32,
    train_length: int = 30,
    updates: int = 400,
    lr: float = 1e-2,
    cells: Iterable[str] = tuple(CELLS),
    seeds: int = SEEDS,
    progress: bool = True,
) -> Report:
    """Elman vs LSTM vs GRU on the recall task: gradient ratios at several lengths at
    initialisation (``seed``), then the gradient norm through time before and after
    training, each cell trained from ``seeds`` seeds."""
    start = time.perf_counter()
    out = Path(out)
    lengths, cells, runs_seeds = list(lengths), list(cells), seed_list(seed, seeds)
    report = Report("vanishing", "Vanishing gradients: Elman vs LSTM vs GRU")
    init_rows = []
    for cell in cells:
        model = make_recaller(cell, hidden, seed)
        row: dict = {"cell": cell}
        for T in lengths:
            flow = _flow(model, T, batch, seed)
            row[f"T = {T}"] = _sci(flow.ratio["l0"])
            report.data.setdefault("init_ratio", {}).setdefault(cell, {})[T] = flow.ratio["l0"]
        row[f"log-rate/step (T = {lengths[-1]})"] = _rate(flow.log_rate["l0"])
        init_rows.append(row)
    report.tables.append(
        (
            f"Gradient ratio ‖dE/dh_0‖ / ‖dE/dh_T‖ at initialisation (loss at the last step "
            f"only, {hidden} units, torch.nn's default init, {batch} sequences of the recall "
            f"task, seed {seed}):",
            init_rows,
        )
    )
    measure = seed + MEASURE_SEED
    training: dict[str, dict] = {}
    bar = _bar(updates * len(cells) * len(runs_seeds), "vanishing: training", progress)
    for cell in cells:
        runs = []
        for s in runs_seeds:
            model = make_recaller(cell, hidden, s)
            before = _flow(model, train_length, batch, measure)
            radius0, eig0 = _radius(model), recurrent_spectra(model)[0]
            h = train_recall(model, train_length, updates, lr=lr, clip=1.0, seed=s, progress=bar)
            runs.append(
                {
                    "seed": s,
                    "before": before,
                    "after": _flow(model, train_length, batch, measure),
                    "after_T100": _flow(model, 100, batch, measure),
                    "losses": h.losses,
                    "final_loss": h.final_loss,
                    "accuracy": h.accuracy,
                    "radius_init": radius0,
                    "radius_trained": _radius(model),
                    "_spectra": (eig0, recurrent_spectra(model)[0]),  # for the plots
                    "_model": model,
                }
            )
        training[cell] = _summary(runs)
    bar.close()
    rows = []
    for cell, t in training.items():
        m = t["median"]
        rows.append(
            {
                "cell": cell,
                "learnt": t["learnt"],
                "accuracy per seed": _per_seed(t["accuracies"]),
                "loss after (nats)": f"{m['final_loss']:.3f}",
                "log-rate at init": _rate(m["log_rate_init"]),
                "log-rate trained per seed": _per_seed_rates(
                    r["after"].log_rate["l0"] for r in t["runs"]
                ),
                f"ratio at init (T = {train_length})": _sci(m["ratio_init"]),
                f"ratio trained (T = {train_length})": _sci(m["ratio_trained"]),
                "ratio trained (T = 100)": _sci(m["ratio_trained_T100"]),
                "spectral radius init → trained": (
                    f"{m['radius_init']:.2f} → {m['radius_trained']:.2f}"
                ),
            }
        )
    report.tables.append(
        (
            f"Before and after {updates} Adam updates (lr {lr}, clip 1) on the recall task at "
            f"T = {train_length} (chance: ln 4 = 1.386 nats, 25%); log-rate = slope of "
            f"ln‖dE/dh_k‖ per step back in time; spectral radius = largest over gate blocks; "
            f"{_seeds_caption(runs_seeds)}:",
            rows,
        )
    )
    report.data["seeds"] = runs_seeds
    report.data["backend"] = BACKEND
    report.data["training"] = {cell: _without_models(t) for cell, t in training.items()}
    f = report.files
    panels = {
        "at initialisation": {
            cell: [r["before"] for r in t["runs"]] for cell, t in training.items()
        },
        f"after {updates} updates on the task": {
            f"{cell} ({t['learnt']} learnt)": [r["after"] for r in t["runs"]]
            for cell, t in training.items()
        },
    }
    f.append(out / "gradient_flow.png")
    _plot_seed_flows(
        panels,
        f[-1],
        f"Gradient norm through time, recall task, T = {train_length}, loss at the last step\n"
        f"{_count(len(runs_seeds), 'seed')} per cell ({_seeds_note(runs_seeds)})",
    )
    f.append(out / "activations.png")
    plots.plot_activation_derivatives(f[-1])
    x, y = recall_batch(batch, train_length, torch.Generator().manual_seed(measure))
    for cell in ("Elman tanh", "LSTM (forget bias 3)"):
        if cell not in training:
            continue
        first = training[cell]["runs"][0]
        model = first["_model"]
        slug = cell.lower().replace(" ", "_").replace("(", "").replace(")", "")
        heat = gradient_heatmap(model.rnn, x, readout=model.readout(y))["l0"]
        f.append(out / f"heatmap_{slug}.png")
        plots.plot_heatmap(
            heat,
            f[-1],
            f"{cell} after training (seed {first['seed']}, {first['accuracy']:.0%} recalled): "
            f"‖∂E_t/∂h_k‖",
        )
        if cell.startswith("Elman"):
            spectra = {f"before training (seed {first['seed']})": first["_spectra"][0]}
            for r in training[cell]["runs"]:
                label = f"trained, seed {r['seed']} ({r['accuracy']:.0%})"
                spectra[label] = r["_spectra"][1]
            f.append(out / f"eigenvalues_{slug}.png")
            plots.plot_eigenvalues(
                spectra, f[-1], f"{cell}: eigenvalues of W_hh\nbefore and after training"
            )
    report.seconds = time.perf_counter() - start
    report.save(out)
    return report


def _summary(runs: list[dict]) -> dict:
    """The runs of one configuration with their accuracies, how many learnt the task and
    the medians of every measured number (log-rates and ratios of the gradient flows)."""
    accuracies = [r["accuracy"] for r in runs]
    median = {
        key: _median([r[key] for r in runs])
        for key in runs[0]
        if isinstance(runs[0][key], float | int) and key != "seed"
    }
    flows = {
        "before": "init",
        "after": "trained",
        "after_T100": "trained_T100",
        "flow": "",
        "short": "short",
    }
    for key, suffix in flows.items():
        if key in runs[0]:
            tail = f"_{suffix}" if suffix else ""
            median[f"log_rate{tail}"] = _median(r[key].log_rate["l0"] for r in runs)
            median[f"ratio{tail}"] = _median((r[key].ratio["l0"] for r in runs), log=True)
            median[f"vanished{tail}"] = _median(r[key].fraction_vanished["l0"] for r in runs)
    return {
        "seeds": [r["seed"] for r in runs],
        "accuracies": accuracies,
        "learnt": _learnt(accuracies),
        "median": median,
        "runs": runs,
    }


def _without_models(summary: dict) -> dict:
    """A :func:`_summary` for report.json: every run without the objects kept for the
    plots (keys starting with "_": the trained model, its spectra)."""
    runs = [{k: v for k, v in r.items() if not k.startswith("_")} for r in summary["runs"]]
    return {**summary, "runs": runs}


# -- 2. exploding -------------------------------------------------------------------------------


def exploding(
    out: Path,
    seed: int = 0,
    hidden: int = 32,
    radii: Iterable[float] = (0.9, 1.0, 1.1, 1.5),
    lengths: Iterable[int] = (50, 100),
    batch: int = 32,
    input_stds: Iterable[float] = (0.01, 0.5),
    train_length: int = 30,
    updates: int = 300,
    lr: float = 0.5,
    clip: float = 1.0,
    surface: bool = True,
    seeds: int = SEEDS,
    progress: bool = True,
) -> Report:
    """Elman tanh with W_hh scaled to each spectral radius: gradient growth at
    initialisation (``seed``; small inputs keep the states in tanh's linear range, large
    ones saturate it), then plain SGD on the recall task with and without clipping (with
    the last input scale; ``seeds`` seeds, each run once clipped and once not);
    ``surface`` adds :func:`surface_report`."""
    start = time.perf_counter()
    out = Path(out)
    radii, lengths, input_stds = list(radii), list(lengths), list(input_stds)
    runs_seeds = seed_list(seed, seeds)
    report = Report("exploding", "Exploding gradients: spectral radius and clipping")

    def fresh(r: float, std: float, s: int = seed):
        init = Init("spectral", radius=r, std=std)
        return make_recaller("Elman tanh", hidden, s, init=init)

    growth_rows, panels = [], {}
    for std in input_stds:
        regime = "small inputs" if std < 0.1 else "saturating inputs"
        curves = panels.setdefault(f"input weights N(0, {std}²): {regime}, T = {lengths[-1]}", {})
        for r in radii:
            model = fresh(r, std)
            flows = {T: _flow(model, T, batch, seed) for T in lengths}
            curves[f"ρ = {r}"] = flows[lengths[-1]]
            x, _ = recall_batch(batch, lengths[0], torch.Generator().manual_seed(seed))
            jp = jacobian_products(model.rnn, x)
            pm = power_method(model.rnn.weight_hh_l0, steps=100)
            row = {
                "input std": f"{std}",
                "spectral radius ρ": f"{r}",
                "ln ρ (linear net)": _rate(math.log(r)),
                "power method growth/step": f"{pm.growth:.3f}",
                f"log-rate/step (T = {lengths[0]})": _rate(flows[lengths[0]].log_rate["l0"]),
                f"Jacobian σ1 log-rate (T = {lengths[0]})": _rate(jp.log_rate),
            }
            for T in lengths:
                row[f"ratio T = {T}"] = _sci(flows[T].ratio["l0"])
            growth_rows.append(row)
            report.data.setdefault("growth", {})[f"{std}/{r}"] = {
                "flows": {T: flows[T] for T in lengths},
                "jacobian": jp.to_json(),
                "power_method": pm.to_json(),
            }
    report.tables.append(
        (
            f"At initialisation: Elman tanh, {hidden} units, W_hh ~ N(0, 1) rescaled to spectral "
            f"radius ρ, input weights N(0, std²), biases 0; recall-task inputs, loss at "
            f"the last step, seed {seed}; log-rate = slope of ln‖dE/dh_k‖ per step back in "
            f"time (positive = growing):",
            growth_rows,
        )
    )
    input_std = input_stds[-1]
    modes = (("no clipping", 0.0), (f"clipped to norm {clip}", clip))
    train_rows = []
    curves_by_mode: dict[str, dict[str, dict[str, list]]] = {"loss": {}, "grad": {}}
    report.data["seeds"], report.data["backend"] = runs_seeds, BACKEND
    bar = _bar(updates * len(radii) * 2 * len(runs_seeds), "exploding: training", progress)
    for r in radii:
        for label, threshold in modes:
            runs = []
            for s in runs_seeds:
                h = train_recall(
                    fresh(r, input_std, s),
                    train_length,
                    updates,
                    lr=lr,
                    optimizer="sgd",
                    clip=threshold,
                    seed=s,
                    progress=bar,
                )
                runs.append(_sgd_run(h, s, threshold))
            t = _summary(runs)
            m = t["median"]
            train_rows.append(
                {
                    "ρ": f"{r}",
                    "clipping": label,
                    "learnt": t["learnt"],
                    "accuracy per seed": _per_seed(t["accuracies"]),
                    "final loss (nats)": f"{m['final_loss']:.3f}",
                    "worst mean loss over 10 updates": f"{m['worst_window']:.3f}",
                    "largest ‖g‖ per seed": " / ".join(_sci(x["largest_grad"]) for x in runs),
                    "median ‖g‖": _sci(m["median_grad"]),
                    "clipped updates per seed": " / ".join(f"{x['clipped']}" for x in runs),
                    "non-finite (all seeds)": f"{sum(x['nonfinite'] for x in runs)}",
                }
            )
            report.data.setdefault("training", {})[f"{r}/{label}"] = t
            for kind, key in (("loss", "losses"), ("grad", "grad_norms")):
                panel = curves_by_mode[kind].setdefault(label, {})
                panel[f"ρ = {r}"] = [x[key] for x in runs]
    bar.close()
    report.tables.append(
        (
            f"Training: plain SGD (lr {lr}) on the recall task at T = {train_length}, "
            f"{updates} updates, batch 32, input weights N(0, {input_std}²), each run with and "
            f"without clipping by global norm; {_seeds_caption(runs_seeds)}:",
            train_rows,
        )
    )
    f = report.files
    f.append(out / "growth.png")
    plots.plot_gradient_norms(
        panels,
        f[-1],
        "Elman tanh at initialisation: gradient norm through time for recurrent spectral radius ρ",
    )
    f.append(out / "training_loss.png")
    _plot_seed_curves(
        curves_by_mode["loss"],
        f[-1],
        f"Training loss with plain SGD (lr {lr}), recall task T = {train_length}; "
        f"{_seeds_note(runs_seeds)}",
    )
    f.append(out / "training_grad_norm.png")
    _plot_seed_curves(
        curves_by_mode["grad"],
        f[-1],
        f"Gradient norm before clipping, per update; {_seeds_note(runs_seeds)}",
        ylabel="global gradient norm ‖g‖ (log scale)",
        log=True,
        thresholds={label: value for label, value in modes if value},
    )
    if surface:  # the one-unit network: what clipping does on the error surface
        one_unit = surface_report(out, save=False)
        f += one_unit.files
        report.tables += one_unit.tables
        report.data["surface"] = one_unit.data
    report.seconds = time.perf_counter() - start
    report.save(out)
    return report


def _sgd_run(h: History, seed: int, threshold: float) -> dict:
    """One training run of :func:`exploding`: its curves and summary numbers."""
    g = np.asarray(h.grad_norms)
    losses = np.asarray(h.losses)
    width = min(10, len(losses))
    window = np.convolve(np.nan_to_num(losses, nan=np.inf), np.ones(width) / width, "valid")
    return {
        "seed": seed,
        "losses": h.losses,
        "grad_norms": h.grad_norms,
        "final_loss": h.final_loss,
        "accuracy": h.accuracy,
        "worst_window": float(window.max()),
        "largest_grad": float(np.nanmax(g)),
        "median_grad": float(np.nanmedian(g)),
        "clipped": int((g > threshold).sum()) if threshold else 0,
        "nonfinite": h.nonfinite,
    }


# -- 3. penalties -------------------------------------------------------------------------------

PENALTIES = {
    "none": (0.0, 0.0),
    "L2 1e-4": (0.0, 1e-4),
    "L2 1e-3": (0.0, 1e-3),
    "L1 1e-4": (1e-4, 0.0),
    "L1 1e-3": (1e-3, 0.0),
}


def penalties(
    out: Path,
    seed: int = 0,
    hidden: int = 32,
    settings: dict[str, tuple[float, float]] | None = None,
    batch: int = 32,
    train_length: int = 30,
    measure_length: int = 100,
    updates: int = 400,
    lr: float = 1e-2,
    seeds: int = SEEDS,
    progress: bool = True,
) -> Report:
    """Elman tanh trained on the recall task with no penalty, L2 and L1 (on every weight
    matrix, as ``--l1``/``--l2`` do) from ``seeds`` seeds, then its gradient flow and W_hh
    measured."""
    start = time.perf_counter()
    out = Path(out)
    settings = dict(settings or PENALTIES)
    runs_seeds = seed_list(seed, seeds)
    measure = seed + MEASURE_SEED
    report = Report("penalties", "L1/L2 penalties and vanishing gradients (seed 000)")
    report.data["seeds"], report.data["backend"] = runs_seeds, BACKEND
    rows, flows, spectra = [], {}, {}
    bar = _bar(updates * len(settings) * len(runs_seeds), "penalties: training", progress)
    for label, (l1, l2) in settings.items():
        runs = []
        for s in runs_seeds:
            model = make_recaller("Elman tanh", hidden, s)
            h = train_recall(
                model, train_length, updates, lr=lr, clip=1.0, l1=l1, l2=l2, seed=s, progress=bar
            )
            spectrum = recurrent_spectra(model)[0]
            runs.append(
                {
                    "seed": s,
                    "flow": _flow(model, measure_length, batch, measure),
                    "short": _flow(model, train_length, batch, measure),
                    "losses": h.losses,
                    "final_loss": h.final_loss,
                    "accuracy": h.accuracy,
                    "radius": spectrum.radius,
                    "norm_W_hh": float(model.rnn.weight_hh_l0.detach().norm()),
                    "_spectrum": spectrum,
                }
            )
        t = _summary(runs)
        m = t["median"]
        flows[label] = [r["flow"] for r in runs]
        spectra[f"{label}, seed {runs[0]['seed']}"] = runs[0]["_spectrum"]
        rows.append(
            {
                "penalty": label,
                "learnt": t["learnt"],
                "accuracy per seed": _per_seed(t["accuracies"]),
                "loss (nats)": f"{m['final_loss']:.3f}",
                "‖W_hh‖_F": f"{m['norm_W_hh']:.2f}",
                "spectral radius": f"{m['radius']:.3f}",
                f"log-rate/step (T = {measure_length}) per seed": _per_seed_rates(
                    r["flow"].log_rate["l0"] for r in runs
                ),
                f"ratio T = {train_length}": _sci(m["ratio_short"]),
                f"ratio T = {measure_length}": _sci(m["ratio"]),
                f"vanished steps (T = {measure_length})": f"{m['vanished']:.0%}",
            }
        )
        report.data.setdefault("training", {})[label] = {
            "l1": l1,
            "l2": l2,
            **_without_models(t),
        }
    bar.close()
    report.tables.append(
        (
            f"Elman tanh, {hidden} units, {updates} Adam updates (lr {lr}, clip 1) on the recall "
            f"task at T = {train_length}; penalty λ·Σ|w| (L1) or λ·Σw² (L2) over the weight "
            f"matrices; measured after training on a fresh batch; {_seeds_caption(runs_seeds)}:",
            rows,
        )
    )
    f = report.files
    f.append(out / "gradient_flow.png")
    _plot_seed_flows(
        {"": flows},
        f[-1],
        f"L1/L2 penalties: gradient norm through time after training\n"
        f"Elman tanh, trained at T = {train_length}, measured at T = {measure_length}\n"
        f"{_seeds_note(runs_seeds)}\n"
        f"(a line ends where the gradient underflows to exactly 0)",
    )
    f.append(out / "eigenvalues.png")
    plots.plot_eigenvalues(
        spectra, f[-1], f"Eigenvalues of W_hh after training, per penalty (seed {seed})"
    )
    report.seconds = time.perf_counter() - start
    report.save(out)
    return report


# -- 4. the Pascanu regulariser -------------------------------------------------------------


def regulariser(
    out: Path,
    seed: int = 0,
    hidden: int = 32,
    alphas: Iterable[float] = (0.0, 1.0, 4.0),
    batch: int = 32,
    train_length: int = 50,
    measure_length: int = 100,
    updates: int = 400,
    optimizer: str = "sgd",
    lr: float = 0.5,
    seeds: int = SEEDS,
    progress: bool = True,
) -> Report:
    """Elman tanh trained on the recall task with the Pascanu et al. (2013) regulariser
    Omega at strength alpha, from ``seeds`` seeds; the gradient-norm-through-time curve
    before and after.  Plain SGD by default, as in Pascanu et al.: Adam's per-weight step
    sizes would rescue the vanishing gradient by themselves and hide what Omega does."""
    start = time.perf_counter()
    out = Path(out)
    alphas = list(alphas)
    runs_seeds = seed_list(seed, seeds)
    measure = seed + MEASURE_SEED
    report = Report("regulariser", "The Pascanu regulariser and the gradient-norm curve")
    report.data["seeds"], report.data["backend"] = runs_seeds, BACKEND
    rows, flows, omegas = [], {}, {}
    inits = [_flow(make_recaller("Elman tanh", hidden, s), measure_length, batch, measure)
             for s in runs_seeds]  # fmt: skip
    flows["at initialisation"] = inits
    report.data["at initialisation"] = {"seeds": runs_seeds, "flows": inits}
    bar = _bar(updates * len(alphas) * len(runs_seeds), "regulariser: training", progress)
    for alpha in alphas:
        runs = []
        for s in runs_seeds:
            model = make_recaller("Elman tanh", hidden, s)
            h = train_recall(
                model,
                train_length,
                updates,
                lr=lr,
                optimizer=optimizer,
                clip=1.0,
                pascanu_alpha=alpha,
                seed=s,
                progress=bar,
            )
            runs.append(
                {
                    "seed": s,
                    "flow": _flow(model, measure_length, batch, measure),
                    "short": _flow(model, train_length, batch, measure),
                    "losses": h.losses,
                    "omegas": h.omegas,
                    "final_loss": h.final_loss,
                    "accuracy": h.accuracy,
                    "omega_end": float(np.mean(h.omegas[-20:])) if h.omegas else math.nan,
                    "radius": _radius(model),
                }
            )
        t = _summary(runs)
        m = t["median"]
        label = f"α = {alpha:g}" if alpha else "α = 0 (no regulariser)"
        flows[label] = [r["flow"] for r in runs]
        if runs[0]["omegas"]:
            omegas[label] = [r["omegas"] for r in runs]
        rows.append(
            {
                "α": f"{alpha:g}",
                "learnt": t["learnt"],
                "accuracy per seed": _per_seed(t["accuracies"]),
                "loss (nats)": f"{m['final_loss']:.3f}",
                f"log-rate/step (T = {measure_length}) per seed": _per_seed_rates(
                    r["flow"].log_rate["l0"] for r in runs
                ),
                f"ratio T = {train_length}": _sci(m["ratio_short"]),
                f"ratio T = {measure_length}": _sci(m["ratio"]),
                f"vanished steps (T = {measure_length})": f"{m['vanished']:.0%}",
                "Ω at the end": f"{m['omega_end']:.2f}" if alpha else "-",
                "spectral radius": f"{m['radius']:.3f}",
            }
        )
        report.data.setdefault("training", {})[label] = {"alpha": alpha, **t}
    bar.close()
    init_rate = _median(flow.log_rate["l0"] for flow in inits)
    report.tables.append(
        (
            f"Elman tanh, {hidden} units, {updates} {_optimizer_name(optimizer)} updates (lr {lr}, "
            f"clip 1) on the recall task at T = {train_length} with loss + α·Ω; measured after "
            f"training on a fresh batch (at initialisation the log-rate is {_rate(init_rate)}); "
            f"{_seeds_caption(runs_seeds)}:",
            rows,
        )
    )
    f = report.files
    f.append(out / "gradient_flow.png")
    _plot_seed_flows(
        {"": flows},
        f[-1],
        f"The Pascanu regulariser: gradient norm through time\n"
        f"Elman tanh, trained at T = {train_length}, measured at T = {measure_length}\n"
        f"{_seeds_note(runs_seeds)}",
    )
    if omegas:
        f.append(out / "omega.png")
        _plot_seed_curves(
            {"": omegas},
            f[-1],
            "The Pascanu regulariser Ω during training\n"
            "Ω = Σ_k (‖∂E/∂h_(k+1) · ∂h_(k+1)/∂h_k‖ / ‖∂E/∂h_(k+1)‖ − 1)²\n"
            f"{_seeds_note(runs_seeds)}",
            ylabel="Ω (dimensionless; 0 = every step keeps the gradient's norm)",
        )
    report.seconds = time.perf_counter() - start
    report.save(out)
    return report


# -- the one-unit error surface -------------------------------------------------------------


def surface_report(
    out: Path, lr: float = 0.5, updates: int = 200, clip: float = 1.0, save: bool = True
) -> Report:
    """The one-unit network's error surface with gradient descent from the same start,
    with and without clipping (seed 004's Figure 4, Pascanu et al.'s Figure 6)."""
    start = time.perf_counter()
    out = Path(out)
    report = Report("surface", "The error surface of the one-unit network (seed 004)")
    runs = {
        "gradient descent, no clipping": gradient_descent(lr=lr, updates=updates),
        f"clipped to norm {clip}": gradient_descent(lr=lr, updates=updates, clip=clip),
    }
    rows = []
    for label, t in runs.items():
        rows.append(
            {
                "run": label,
                "start (w, b)": f"({t.points[0][0]:.2f}, {t.points[0][1]:.2f})",
                "end (w, b)": f"({t.points[-1][0]:.2f}, {t.points[-1][1]:.2f})",
                "final E₅₀": _sci(t.errors[-1]),
                "largest ‖g‖": _sci(float(t.grad_norms.max())),
                "largest step": f"{t.largest_step:.2f}",
                "clipped updates": f"{t.clipped_steps}",
            }
        )
        report.data[label] = {
            "points": t.points.tolist(),
            "errors": t.errors.tolist(),
            "grad_norms": t.grad_norms.tolist(),
        }
    report.tables.append(
        (
            f"x_t = w·σ(x_(t−1)) + b, x_0 = 0.5, E₅₀ = (σ(x₅₀) − 0.7)²; {updates} steps of "
            f"gradient descent with learning rate {lr} from the same start:",
            rows,
        )
    )
    report.files.append(out / "surface.png")
    plots.plot_error_surface(
        error_surface(),
        runs,
        report.files[-1],
        r"One-unit RNN $x_t = w\,\sigma(x_{t-1}) + b$, $x_0 = 0.5$ (Pascanu et al. 2013, "
        "seed 004): gradient descent with and without norm clipping",
    )
    report.seconds = time.perf_counter() - start
    if save:
        report.save(out)
    return report


REPORTS = {
    "vanishing": vanishing,
    "exploding": exploding,
    "penalties": penalties,
    "regulariser": regulariser,
}


def run_reports(
    names: Iterable[str],
    base: Path | None = None,
    seed: int = 0,
    progress: bool = True,
    seeds: int = SEEDS,
) -> Iterator[Report]:
    """Run the named reports with their defaults, each trained configuration from ``seeds``
    seeds. Output: ``base`` for one report, ``base/NAME`` for several,
    ``runs/diagnose/NAME`` without ``base``."""
    names = list(names)
    seed_list(seed, seeds)  # a bad count fails before any report runs
    for name in names:
        if name not in REPORTS:
            raise ValueError(f"unknown report {name!r}; choose from {', '.join(REPORTS)}")
    for name in names:
        if base is None:
            out = Path("runs/diagnose") / name
        else:
            out = base if len(names) == 1 else base / name
        yield REPORTS[name](out, seed=seed, seeds=seeds, progress=progress)

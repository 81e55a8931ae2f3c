"""The experiments behind the seeds' claims about gradients, each a reproducible function.

``rnnlab diagnose report NAME`` runs one and prints its tables; each writes its plots,
``report.json`` (every number) and ``report.md`` (the tables) under its output directory.

* :func:`vanishing` -- Elman (tanh, sigmoid, ReLU), LSTM and GRU: the gradient ratio
  ||dE/dh_0|| / ||dE/dh_T|| at T = 10, 50, 100, 200, and the gradient norm through time
  at initialisation and after training on the recall task (seed 000 eqs. 12-14, seed 002).
* :func:`exploding` -- Elman tanh with recurrent spectral radius 0.9, 1.0, 1.1, 1.5: growth
  of the gradient norm, and training with and without clipping (seed 004).
* :func:`penalties` -- seed 000's claim that L1/L2 penalties make vanishing worse.
* :func:`regulariser` -- the Pascanu et al. (2013) regulariser and the gradient-norm curve.
* :func:`surface_report` -- the one-unit error surface with and without clipping.

Every function is seeded (same seed, same numbers on the same machine and torch build)
and takes its sizes as keyword arguments; the defaults are the documented runs (about
one to three minutes each on two CPU cores).
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
from rnnlab.analysis.tasks import CELLS, History, make_recaller, recall_batch, train_recall
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
    progress: bool = True,
) -> Report:
    """Elman vs LSTM vs GRU on the recall task: gradient ratios at several lengths at
    initialisation, then the gradient norm through time before and after training."""
    start = time.perf_counter()
    out = Path(out)
    lengths, cells = list(lengths), list(cells)
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
    before, after, trained_rows, models = {}, {}, [], {}
    bar = _bar(updates * len(cells), "vanishing: training", progress)
    for cell in cells:
        model = make_recaller(cell, hidden, seed)
        before[cell] = _flow(model, train_length, batch, seed + 1)
        radius0 = _radius(model)
        eig0 = recurrent_spectra(model)[0]
        history = train_recall(
            model, train_length, updates, lr=lr, clip=1.0, seed=seed, progress=bar
        )
        after[cell] = _flow(model, train_length, batch, seed + 1)
        long = _flow(model, 100, batch, seed + 1)
        models[cell] = (model, eig0)
        trained_rows.append(
            {
                "cell": cell,
                "loss after (nats)": f"{history.final_loss:.3f}",
                "accuracy": f"{history.accuracy:.0%}",
                "log-rate at init": _rate(before[cell].log_rate["l0"]),
                "log-rate trained": _rate(after[cell].log_rate["l0"]),
                f"ratio at init (T = {train_length})": _sci(before[cell].ratio["l0"]),
                f"ratio trained (T = {train_length})": _sci(after[cell].ratio["l0"]),
                "ratio trained (T = 100)": _sci(long.ratio["l0"]),
                "spectral radius init → trained": f"{radius0:.2f} → {_radius(model):.2f}",
            }
        )
        report.data.setdefault("training", {})[cell] = {
            "before": before[cell],
            "after": after[cell],
            "after_T100": long,
            "losses": history.losses,
            "accuracy": history.accuracy,
        }
    bar.close()
    report.tables.append(
        (
            f"Before and after {updates} Adam updates (lr {lr}, clip 1) on the recall task at "
            f"T = {train_length} (chance: ln 4 = 1.386 nats, 25%); log-rate = slope of "
            f"ln‖dE/dh_k‖ per step back in time; spectral radius = largest over gate blocks:",
            trained_rows,
        )
    )
    f = report.files
    recalled = {
        f"{cell} ({report.data['training'][cell]['accuracy']:.0%} recalled)": flow
        for cell, flow in after.items()
    }
    panels = {"at initialisation": before, f"after {updates} updates on the task": recalled}
    f.append(out / "gradient_flow.png")
    plots.plot_gradient_norms(
        panels,
        f[-1],
        f"Gradient norm through time, recall task, T = {train_length}, loss at the last step",
    )
    f.append(out / "activations.png")
    plots.plot_activation_derivatives(f[-1])
    for cell in ("Elman tanh", "LSTM (forget bias 3)"):
        if cell not in models:
            continue
        model, eig0 = models[cell]
        slug = cell.lower().replace(" ", "_").replace("(", "").replace(")", "")
        x, y = recall_batch(batch, train_length, torch.Generator().manual_seed(seed + 1))
        heat = gradient_heatmap(model.rnn, x, readout=model.readout(y))["l0"]
        f.append(out / f"heatmap_{slug}.png")
        plots.plot_heatmap(heat, f[-1], f"{cell} after training: ‖∂E_t/∂h_k‖")
        if cell.startswith("Elman"):
            f.append(out / f"eigenvalues_{slug}.png")
            plots.plot_eigenvalues(
                {"before training": eig0, "after training": recurrent_spectra(model)[0]},
                f[-1],
                f"{cell}: eigenvalues of W_hh before and after training",
            )
    report.seconds = time.perf_counter() - start
    report.save(out)
    return report


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
    progress: bool = True,
) -> Report:
    """Elman tanh with W_hh scaled to each spectral radius: gradient growth at
    initialisation (small inputs keep the states in tanh's linear range, large ones
    saturate it), then plain SGD on the recall task with and without clipping (with the
    last input scale); ``surface`` adds :func:`surface_report`."""
    start = time.perf_counter()
    out = Path(out)
    radii, lengths, input_stds = list(radii), list(lengths), list(input_stds)
    report = Report("exploding", "Exploding gradients: spectral radius and clipping")

    def fresh(r: float, std: float):
        init = Init("spectral", radius=r, std=std)
        return make_recaller("Elman tanh", hidden, seed, init=init)

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
    train_rows = []
    runs: dict[str, dict[str, History]] = {"no clipping": {}, f"clipped to norm {clip}": {}}
    bar = _bar(updates * len(radii) * 2, "exploding: training", progress)
    for r in radii:
        for label, threshold in (("no clipping", 0.0), (f"clipped to norm {clip}", clip)):
            model = fresh(r, input_std)
            h = train_recall(
                model,
                train_length,
                updates,
                lr=lr,
                optimizer="sgd",
                clip=threshold,
                seed=seed,
                progress=bar,
            )
            runs[label][f"ρ = {r}"] = h
            g = np.asarray(h.grad_norms)
            losses = np.asarray(h.losses)
            width = min(10, len(losses))
            window = np.convolve(np.nan_to_num(losses, nan=np.inf), np.ones(width) / width, "valid")
            train_rows.append(
                {
                    "ρ": f"{r}",
                    "clipping": label,
                    "final loss (nats)": f"{h.final_loss:.3f}",
                    "worst mean loss over 10 updates": f"{window.max():.3f}",
                    "accuracy": f"{h.accuracy:.0%}",
                    "largest ‖g‖": _sci(float(np.nanmax(g))),
                    "median ‖g‖": _sci(float(np.nanmedian(g))),
                    "clipped updates": f"{int((g > threshold).sum()) if threshold else 0}",
                    "non-finite": f"{h.nonfinite}",
                }
            )
            report.data.setdefault("training", {})[f"{r}/{label}"] = {
                "losses": h.losses,
                "grad_norms": h.grad_norms,
                "accuracy": h.accuracy,
            }
    bar.close()
    report.tables.append(
        (
            f"Training: plain SGD (lr {lr}) on the recall task at T = {train_length}, "
            f"{updates} updates, batch 32, input weights N(0, {input_std}²), same seed with "
            f"and without clipping by global norm:",
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
    plots.plot_training_curves(
        {k: {r: h.losses for r, h in v.items()} for k, v in runs.items()},
        f[-1],
        f"Training loss with plain SGD (lr {lr}), recall task T = {train_length}",
    )
    f.append(out / "training_grad_norm.png")
    plots.plot_training_curves(
        {k: {r: h.grad_norms for r, h in v.items()} for k, v in runs.items()},
        f[-1],
        "Gradient norm before clipping, per update",
        ylabel="global gradient norm ‖g‖ (log scale)",
        log=True,
    )
    if surface:  # the one-unit network: what clipping does on the error surface
        one_unit = surface_report(out, save=False)
        f += one_unit.files
        report.tables += one_unit.tables
        report.data["surface"] = one_unit.data
    report.seconds = time.perf_counter() - start
    report.save(out)
    return report


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
    progress: bool = True,
) -> Report:
    """Elman tanh trained on the recall task with no penalty, L2 and L1 (on every weight
    matrix, as ``--l1``/``--l2`` do), then its gradient flow and W_hh measured."""
    start = time.perf_counter()
    out = Path(out)
    settings = dict(settings or PENALTIES)
    report = Report("penalties", "L1/L2 penalties and vanishing gradients (seed 000)")
    rows, flows, spectra = [], {}, {}
    bar = _bar(updates * len(settings), "penalties: training", progress)
    for label, (l1, l2) in settings.items():
        model = make_recaller("Elman tanh", hidden, seed)
        h = train_recall(
            model, train_length, updates, lr=lr, clip=1.0, l1=l1, l2=l2, seed=seed, progress=bar
        )
        flow = _flow(model, measure_length, batch, seed + 1)
        short = _flow(model, train_length, batch, seed + 1)
        flows[label] = flow
        spectra[label] = recurrent_spectra(model)[0]
        w = model.rnn.weight_hh_l0.detach()
        rows.append(
            {
                "penalty": label,
                "‖W_hh‖_F": f"{float(w.norm()):.2f}",
                "spectral radius": f"{spectra[label].radius:.3f}",
                f"log-rate/step (T = {measure_length})": _rate(flow.log_rate["l0"]),
                f"ratio T = {train_length}": _sci(short.ratio["l0"]),
                f"ratio T = {measure_length}": _sci(flow.ratio["l0"]),
                f"vanished steps (T = {measure_length})": f"{flow.fraction_vanished['l0']:.0%}",
                "loss (nats)": f"{h.final_loss:.3f}",
                "accuracy": f"{h.accuracy:.0%}",
            }
        )
        report.data[label] = {
            "l1": l1,
            "l2": l2,
            "flow": flow,
            "losses": h.losses,
            "radius": spectra[label].radius,
        }
    bar.close()
    report.tables.append(
        (
            f"Elman tanh, {hidden} units, {updates} Adam updates (lr {lr}, clip 1) on the recall "
            f"task at T = {train_length}, seed {seed}; penalty λ·Σ|w| (L1) or λ·Σw² (L2) over "
            f"the weight matrices; measured after training on a fresh batch:",
            rows,
        )
    )
    f = report.files
    f.append(out / "gradient_flow.png")
    plots.plot_gradient_norms(
        {f"Elman tanh, trained at T = {train_length}, measured at T = {measure_length}": flows},
        f[-1],
        "L1/L2 penalties: gradient norm through time after training",
    )
    f.append(out / "eigenvalues.png")
    plots.plot_eigenvalues(spectra, f[-1], "Eigenvalues of W_hh after training, per penalty")
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
    progress: bool = True,
) -> Report:
    """Elman tanh trained on the recall task with the Pascanu et al. (2013) regulariser
    Omega at strength alpha; the gradient-norm-through-time curve before and after.  Plain
    SGD by default, as in Pascanu et al.: Adam's per-weight step sizes would rescue the
    vanishing gradient by themselves and hide what Omega does."""
    start = time.perf_counter()
    out = Path(out)
    alphas = list(alphas)
    report = Report("regulariser", "The Pascanu regulariser and the gradient-norm curve")
    rows, flows, omegas = [], {}, {}
    fresh = make_recaller("Elman tanh", hidden, seed)
    flows["at initialisation"] = _flow(fresh, measure_length, batch, seed + 1)
    bar = _bar(updates * len(alphas), "regulariser: training", progress)
    for alpha in alphas:
        model = make_recaller("Elman tanh", hidden, seed)
        h = train_recall(
            model,
            train_length,
            updates,
            lr=lr,
            optimizer=optimizer,
            clip=1.0,
            pascanu_alpha=alpha,
            seed=seed,
            progress=bar,
        )
        label = f"α = {alpha:g}" if alpha else "α = 0 (no regulariser)"
        flow = _flow(model, measure_length, batch, seed + 1)
        flows[label] = flow
        if h.omegas:
            omegas[label] = h.omegas
        rows.append(
            {
                "α": f"{alpha:g}",
                f"log-rate/step (T = {measure_length})": _rate(flow.log_rate["l0"]),
                f"ratio T = {train_length}": _sci(
                    _flow(model, train_length, batch, seed + 1).ratio["l0"]
                ),
                f"ratio T = {measure_length}": _sci(flow.ratio["l0"]),
                f"vanished steps (T = {measure_length})": f"{flow.fraction_vanished['l0']:.0%}",
                "Ω at the end": f"{np.mean(h.omegas[-20:]):.2f}" if h.omegas else "-",
                "spectral radius": f"{_radius(model):.3f}",
                "loss (nats)": f"{h.final_loss:.3f}",
                "accuracy": f"{h.accuracy:.0%}",
            }
        )
        report.data[label] = {"alpha": alpha, "flow": flow, "losses": h.losses, "omegas": h.omegas}
    bar.close()
    report.tables.append(
        (
            f"Elman tanh, {hidden} units, {updates} {_optimizer_name(optimizer)} updates (lr {lr}, "
            f"clip 1) on the recall "
            f"task at T = {train_length} with loss + α·Ω, seed {seed}; measured after training "
            f"(fresh batch; at initialisation the log-rate is "
            f"{_rate(flows['at initialisation'].log_rate['l0'])}):",
            rows,
        )
    )
    f = report.files
    f.append(out / "gradient_flow.png")
    plots.plot_gradient_norms(
        {f"Elman tanh, trained at T = {train_length}, measured at T = {measure_length}": flows},
        f[-1],
        "The Pascanu regulariser: gradient norm through time before and after training",
    )
    if omegas:
        f.append(out / "omega.png")
        plots.plot_training_curves(
            {"Ω = Σ_k (‖∂E/∂h_(k+1) · ∂h_(k+1)/∂h_k‖ / ‖∂E/∂h_(k+1)‖ − 1)²": omegas},
            f[-1],
            "The Pascanu regulariser Ω during training",
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
    plots.plot_error_surface(error_surface(), runs, report.files[-1])
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
    names: Iterable[str], base: Path | None = None, seed: int = 0, progress: bool = True
) -> Iterator[Report]:
    """Run the named reports with their defaults. Output: ``base`` for one report,
    ``base/NAME`` for several, ``runs/diagnose/NAME`` without ``base``."""
    names = list(names)
    for name in names:
        if name not in REPORTS:
            raise ValueError(f"unknown report {name!r}; choose from {', '.join(REPORTS)}")
    for name in names:
        if base is None:
            out = Path("runs/diagnose") / name
        else:
            out = base if len(names) == 1 else base / name
        yield REPORTS[name](out, seed=seed, progress=progress)

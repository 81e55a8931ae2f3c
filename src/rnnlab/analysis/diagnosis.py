"""Everything ``rnnlab diagnose`` measures on one model, as one call: numbers, plots, JSON.

:func:`diagnose` takes a recurrent stack or a language model and a batch, computes the
gradient norm through time (loss at the last step and summed), the heat map of
||dE_t/dh_k||, the Jacobian products of every layer, the eigenvalues of every W_hh and the
power method on it, writes the plots and ``diagnosis.json`` under ``out``, and returns a
:class:`Diagnosis` whose :meth:`~Diagnosis.table` is the summary the command prints.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import Tensor

from rnnlab.analysis import plots
from rnnlab.analysis.gradients import GradientFlow, gradient_heatmap, gradient_norms_through_time
from rnnlab.analysis.jacobians import JacobianProducts, jacobian_products
from rnnlab.analysis.spectra import (
    PowerIteration,
    Spectrum,
    gate_blocks,
    power_method,
    recurrent_spectra,
)
from rnnlab.analysis.unroll import direction_names, recurrent_layers

# The block of W_hh that feeds the candidate state, per gated cell: its power method is
# the closest analogue of the Elman W_hh's.
CANDIDATE_BLOCK = {"LSTM": "g", "GRU": "n"}


@dataclass
class Diagnosis:
    title: str
    last: GradientFlow
    summed: GradientFlow
    spectra: list[Spectrum]
    jacobians: dict[str, JacobianProducts]
    power: dict[str, PowerIteration]
    files: list[Path] = field(default_factory=list)

    def rows(self) -> list[dict]:
        """One summary row per layer/direction."""
        rows = []
        for name in self.last.norms:
            blocks = [s for s in self.spectra if s.name == name or s.name.startswith(name + ".")]
            radius = " ".join(
                (f"{s.name.split('.', 1)[1]} " if "." in s.name else "") + f"{s.radius:.3f}"
                for s in blocks
            )
            rate = self.last.log_rate[name]
            jp = self.jacobians.get(name)
            rows.append(
                {
                    "layer": name,
                    "spectral radius": radius or "-",
                    "log-rate/step": _num(rate, "+.4f"),
                    "factor/step": _num(math.exp(rate) if math.isfinite(rate) else math.nan, ".4f"),
                    "‖dE/dh_0‖ / ‖dE/dh_T‖": _num(self.last.ratio[name], ".3g"),
                    "vanished (<1e-6)": f"{self.last.fraction_vanished[name]:.0%}",
                    "log-rate, summed loss": _num(self.summed.log_rate[name], "+.4f"),
                    "Jacobian σ1 log-rate": _num(jp.log_rate if jp else math.nan, "+.4f"),
                }
            )
        return rows

    def table(self) -> str:
        return markdown_table(self.rows())

    def to_json(self) -> dict:
        return {
            "title": self.title,
            "gradient_norms_last": self.last.to_json(),
            "gradient_norms_sum": self.summed.to_json(),
            "spectra": [s.to_json() for s in self.spectra],
            "jacobian_products": {k: v.to_json() for k, v in self.jacobians.items()},
            "power_method": {k: v.to_json() for k, v in self.power.items()},
            "summary": self.rows(),
            "files": [str(f) for f in self.files],
        }


def _num(x: float, spec: str) -> str:
    return format(x, spec) if math.isfinite(x) else "-"


def markdown_table(rows: list[dict]) -> str:
    """A Markdown table from dicts sharing their keys (the first row's keys are the columns)."""
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def diagnose(
    target,
    inputs: Tensor,
    targets: Tensor | None = None,
    out: str | Path | None = None,
    title: str = "model",
    heatmap_layer: str | None = None,
) -> Diagnosis:
    """Measure ``target`` on ``inputs`` (see :func:`gradient_norms_through_time`); with
    ``out``, write ``gradient_norms.png``, ``heatmap.png``, ``jacobians.png``,
    ``eigenvalues.png``, ``power_method.png`` and ``diagnosis.json`` there."""
    layer = recurrent_layers(target)
    last = gradient_norms_through_time(target, inputs, targets, loss="last")
    summed = gradient_norms_through_time(target, inputs, targets, loss="sum")
    spectra = recurrent_spectra(target)
    jacobians = {
        name: jacobian_products(target, inputs, targets, layer=i, direction=suffix)
        for i, suffix, name in direction_names(layer)
    }
    power = {}
    for i, suffix, name in direction_names(layer):
        w = layer.direction_parameters(i, suffix).get("weight_hh")
        if w is None:
            continue
        wanted = CANDIDATE_BLOCK.get(type(layer).__name__, "")
        for gate, block in gate_blocks(layer, w):
            if gate == wanted and block.shape[0] == block.shape[1]:
                power[f"{name}.{gate}" if gate else name] = power_method(block, steps=60)
    result = Diagnosis(title, last, summed, spectra, jacobians, power)
    if out is not None:
        result.files = write_plots(result, target, inputs, targets, Path(out), heatmap_layer)
        path = Path(out) / "diagnosis.json"
        path.write_text(json.dumps(result.to_json(), indent=1) + "\n", encoding="utf-8")
        result.files.append(path)
    return result


def write_plots(
    d: Diagnosis, target, inputs, targets, out: Path, heatmap_layer: str | None
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    T = d.last.steps
    files = []

    def save(name: str) -> Path:
        files.append(out / name)
        return out / name

    panels = {
        f"loss at the last step only (E = E_{T})": {
            f"layer {n}": (d.last.distance, v) for n, v in d.last.norms.items()
        },
        f"summed loss (E = E_1 + … + E_{T})": {
            f"layer {n}": (d.summed.distance, v) for n, v in d.summed.norms.items()
        },
    }
    plots.plot_gradient_norms(
        panels,
        save("gradient_norms.png"),
        f"{d.title}: gradient norm through time, T = {T}",
        normalise=False,
    )
    heat = gradient_heatmap(target, inputs, targets)
    name = heatmap_layer or next(iter(heat))
    plots.plot_heatmap(heat[name], save("heatmap.png"), f"{d.title}: ‖∂E_t/∂h_k‖, layer {name}")
    plots.plot_jacobian_products(
        {f"layer {n}": jp for n, jp in d.jacobians.items()},
        save("jacobians.png"),
        f"{d.title}: singular values of the Jacobian product ∂s_T/∂s_(T−m)",
    )
    by_layer: dict[str, np.ndarray] = {}
    for s in d.spectra:
        by_layer[s.name] = s.eigenvalues
    plots.plot_eigenvalues(
        {f"W_hh {k}": v for k, v in by_layer.items()},
        save("eigenvalues.png"),
        f"{d.title}: eigenvalues of the recurrent matrices",
    )
    if d.power:
        gated = any("." in k for k in d.power)  # "l0.g": a gated cell's candidate block
        plots.plot_power_method(
            {f"W_hh {k}": v for k, v in d.power.items()},
            save("power_method.png"),
            f"{d.title}: the power method h_t = (W^t)ᵀ h_0 on the recurrent matrix"
            + (" (gated cells: its candidate block, g or n)" if gated else ""),
        )
    return files

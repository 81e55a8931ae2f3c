"""Plots of the analysis quantities, as PNG files.

Every function draws one figure with matplotlib's Agg canvas (no display, no pyplot, no
global backend switched: it works headless and leaves a notebook's backend alone), saves
it to ``path`` and returns the :class:`~matplotlib.figure.Figure`.  Every figure has a
title, axes labelled with their units and a legend, so it reads without the code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator

from rnnlab.analysis.gradients import GradientFlow
from rnnlab.analysis.jacobians import JacobianProducts
from rnnlab.analysis.spectra import PowerIteration, Spectrum
from rnnlab.analysis.surface import X0, Surface, Trajectory

DPI = 110
SIGMOID_AT_X0 = 1 / (1 + math.exp(-X0))
SIGMOID_SLOPE_AT_X0 = SIGMOID_AT_X0 * (1 - SIGMOID_AT_X0)
GRAD_LABEL = "gradient norm ‖∂E/∂h_k‖ (log scale)"
DISTANCE_LABEL = "distance back in time T − k (steps)"


def _figure(width: float = 7.0, height: float = 4.6, cols: int = 1, rows: int = 1):
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _steps_axis(axis) -> None:
    """Whole numbers only on an axis of steps (short sequences got ticks at 2.5, 7.5)."""
    axis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))


def _round_log_ticks(ax) -> None:
    """Ticks of a log y axis at round powers of ten: every decade, or every 2nd, 5th,
    10th, ... where it spans many (matplotlib's own stride started from the top, which
    gave 10^4, 10^-17, 10^-38 on a 60-decade axis)."""
    low, high = ax.get_ylim()
    if not (0 < low < high and math.isfinite(high)):
        return
    a, b = math.floor(math.log10(low)), math.ceil(math.log10(high))
    step = next((s for s in (1, 2, 3, 5, 10, 20, 25, 50, 100) if (b - a) / s <= 8), 200)
    if step == 1:
        return  # matplotlib's decades, with its minor ticks
    first = math.ceil(a / step) * step
    ax.yaxis.set_major_locator(FixedLocator([10.0**k for k in range(first, b + 1, step)]))
    ax.yaxis.set_minor_locator(NullLocator())


def _save(fig: Figure, path) -> Figure:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for ax in fig.axes:
        if ax.get_yscale() == "log":
            _round_log_ticks(ax)
    # "tight": a legend anchored outside the axes (eigenvalues) is kept whole, as is a
    # title that the equal aspect pushed up
    fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.08)
    return fig


def _positive(y) -> np.ndarray:
    """Values for a log axis: zeros and non-finite values become gaps (nan)."""
    y = np.asarray(y, dtype=float)
    return np.where(np.isfinite(y) & (y > 0), y, np.nan)


def _hidden_by(x, y, drawn: list[tuple[str, np.ndarray, np.ndarray]]) -> str | None:
    """The label of a line already on the axes that the line ``(x, y)`` would cover (the
    same x and y within 0.1%: at a plot's resolution one line), else None.  Such a line
    is drawn dashed and says whose twin it is, so a reader sees both (clipping that never
    fired, two cells that start alike)."""
    for label, dx, dy in drawn:
        if dx.shape == x.shape and np.array_equal(dx, x):
            if np.allclose(dy, y, rtol=1e-3, atol=0, equal_nan=True):
                return label
    return None


def _line(ax, x, y, label: str, drawn: list, **style) -> None:
    """``ax.plot`` of one labelled line, dashed over its twin when it would hide one
    (:func:`_hidden_by`); ``drawn`` collects the axes' lines."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    twin = _hidden_by(x, y, drawn)
    drawn.append((label, x, y))
    if twin is not None:
        style = {**style, "ls": (0, (4, 3))}
        label = f"{label} (the same as {twin})"
    ax.plot(x, y, label=label, **style)


Curve = GradientFlow | tuple[Sequence[float], Sequence[float]]


def _xy(curve: Curve, layer: str | None) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(curve, GradientFlow):
        name = layer or next(iter(curve.norms))
        return curve.distance, curve.norms[name]
    x, y = curve
    return np.asarray(x, dtype=float), np.asarray(y, dtype=float)


def plot_gradient_norms(
    panels: Mapping[str, Mapping[str, Curve]],
    path,
    title: str,
    layer: str | None = None,
    normalise: bool = True,
    ylabel: str | None = None,
) -> Figure:
    """Gradient norm against distance in time, one panel per key of ``panels`` (e.g. "at
    initialisation", "after training"), one line per label.  A curve is a
    :class:`GradientFlow` (its ``layer``, default the first) or an ``(x, y)`` pair.
    ``normalise`` divides each line by its value at distance 0, so lines start at 1 and
    their slopes compare directly."""
    fig, axes = _figure(width=5.2 * len(panels) + 1.0, cols=len(panels))
    ymin = ymax = None
    for ax, (panel, curves) in zip(axes[0], panels.items(), strict=True):
        drawn: list = []
        for i, (label, curve) in enumerate(curves.items()):
            x, y = _xy(curve, layer)
            if normalise:
                y = y / y[np.argmin(x)] if y[np.argmin(x)] > 0 else y
            y = _positive(y)
            _line(ax, x, y, label, drawn, color=f"C{i}", lw=1.8)
            if np.isfinite(y).any():
                lo, hi = np.nanmin(y), np.nanmax(y)
                ymin = lo if ymin is None else min(ymin, lo)
                ymax = hi if ymax is None else max(ymax, hi)
        ax.set_yscale("log")
        ax.set_title(panel)
        ax.set_xlabel(DISTANCE_LABEL)
        _steps_axis(ax.xaxis)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(
        ylabel
        or (GRAD_LABEL.replace("(log", "/ value at T − k = 0 (log") if normalise else GRAD_LABEL)
    )
    if ymin is not None:
        for ax in axes[0]:
            ax.set_ylim(max(ymin / 3, 1e-300), ymax * 3)
    fig.suptitle(title)
    return _save(fig, path)


def plot_error_surface(
    surface: Surface, trajectories: Mapping[str, Trajectory], path, title: str | None = None
) -> Figure:
    """The one-unit network's error E_50 over (w, b) (left) and the norm of its gradient
    (right), log colour scales, with the descent paths drawn on both."""
    fig, axes = _figure(width=13.0, height=5.6, cols=2)
    err = np.clip(surface.error, 1e-8, None)
    grad = np.clip(surface.grad_norm, 1e-8, None)
    layers = [
        (
            err,
            LogNorm(vmin=1e-6, vmax=err.max()),
            "viridis",
            "error E₅₀ = (σ(x₅₀) − 0.7)² (log scale)",
            "Error E₅₀: the valley (dark line) runs beside a cliff",
        ),
        (
            grad,
            LogNorm(vmin=1e-4, vmax=max(grad.max(), 1.0)),
            "inferno",
            "gradient norm ‖∂E₅₀/∂(w, b)‖ (log scale)",
            "Gradient norm: it peaks on the wall (dashed), a ridge thinner than the grid",
        ),
    ]
    styles = [("#ff3030", 3.2), ("white", 1.3), ("orange", 1.0)]
    w_wall = surface.w[surface.w * SIGMOID_SLOPE_AT_X0 > 1]
    for ax, (values, norm, cmap, bar, panel) in zip(axes[0], layers, strict=True):
        mesh = ax.pcolormesh(
            surface.w, surface.b, values, norm=norm, cmap=cmap, shading="auto", rasterized=True
        )
        fig.colorbar(mesh, ax=ax, label=bar)
        ax.plot(
            w_wall,
            X0 - w_wall * SIGMOID_AT_X0,
            color="cyan",
            ls="--",
            lw=1.6,
            path_effects=[patheffects.withStroke(linewidth=3.2, foreground="black")],
            label="the wall: x₀ on the unstable fixed point",
        )
        for (label, traj), (color, lw) in zip(trajectories.items(), styles, strict=False):
            p = traj.points
            ax.plot(
                p[:, 0],
                p[:, 1],
                "-",
                color=color,
                lw=lw,
                marker="o",
                ms=lw,
                label=f"{label}: ends at E = {traj.errors[-1]:.2g}",
            )
            ax.plot(p[-1, 0], p[-1, 1], marker="X", color=color, ms=12, mec="black", ls="none")
            jump = int(np.argmax(np.linalg.norm(np.diff(p, axis=0), axis=1)))
            if traj.clip is None and traj.grad_norms[jump] > 5 * np.median(traj.grad_norms):
                mid = (p[jump] + p[jump + 1]) / 2
                ax.annotate(
                    f"one step with ‖g‖ = {traj.grad_norms[jump]:.3g}",
                    xy=mid,
                    xytext=(mid[0] + 0.4, mid[1] - 0.6),
                    color="white",
                    fontsize=8,
                    arrowprops=dict(arrowstyle="->", color="white"),
                )
        start = next(iter(trajectories.values())).points[0]
        ax.plot(
            *start,
            marker="*",
            color="yellow",
            ms=16,
            mec="black",
            ls="none",
            label="common start; ✕ = where a run ends",
        )
        ax.set_xlim(surface.w[0], surface.w[-1])
        ax.set_ylim(surface.b[0], surface.b[-1])
        ax.set_xlabel("recurrent weight w (dimensionless)")
        ax.set_ylabel("bias b (dimensionless)")
        ax.set_title(panel, fontsize=10)
        ax.legend(loc="lower left", fontsize=8, framealpha=0.95, facecolor="0.72")  # white shows
    fig.suptitle(
        title
        or "One-unit RNN x_t = w·σ(x_{t−1}) + b, x₀ = 0.5 (Pascanu et al. 2013, seed 004): "
        "gradient descent with and without norm clipping"
    )
    return _save(fig, path)


def plot_activation_derivatives(path, repeats: Sequence[int] = (1, 2, 3, 5, 10)) -> Figure:
    """Seed 002, figures 5 and 6: the derivatives of sigmoid, tanh and ReLU, and a sigmoid
    applied repeatedly, whose slope flattens towards nothing."""
    fig, axes = _figure(width=11, height=4.4, cols=2)
    x = np.linspace(-6, 6, 1201)
    sig = 1 / (1 + np.exp(-x))
    ax = axes[0][0]
    ax.plot(x, sig * (1 - sig), label="sigmoid′(x) = σ(1 − σ), max 0.25", lw=2)
    ax.plot(x, 1 - np.tanh(x) ** 2, label="tanh′(x) = 1 − tanh², max 1", lw=2)
    ax.plot(x, (x > 0).astype(float), label="ReLU′(x) = [x > 0]", lw=2)
    ax.set_title("Derivatives of the activations (seed 002, figure 5)")
    ax.set_xlabel("pre-activation x (dimensionless)")
    ax.set_ylabel("derivative dφ/dx (dimensionless)")
    ax.set_ylim(-0.05, 1.1)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[0][1]
    for n in repeats:
        y = x.copy()
        for _ in range(n):
            y = 1 / (1 + np.exp(-y))
        slope = np.gradient(y, x).max()
        ax.plot(x, y, label=f"σ applied {n}× (max slope {slope:.2g})", lw=2)
    ax.set_title("A sigmoid applied repeatedly flattens out (seed 002, figure 6)")
    ax.set_xlabel("input x (dimensionless)")
    ax.set_ylabel("σ(σ(…σ(x))) (dimensionless)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_eigenvalues(spectra: Mapping[str, Spectrum | np.ndarray], path, title: str) -> Figure:
    """Eigenvalues on the complex plane with the unit circle; one colour per label (e.g.
    "before training", "after training")."""
    fig, axes = _figure(width=6.2, height=6.6 + 0.15 * len(spectra))
    ax = axes[0][0]
    t = np.linspace(0, 2 * math.pi, 400)
    ax.plot(np.cos(t), np.sin(t), "k--", lw=1, label="unit circle |λ| = 1")
    reach = 1.0
    markers = ["o", "x", "^", "+"]
    for i, (label, s) in enumerate(spectra.items()):
        eig = s.eigenvalues if isinstance(s, Spectrum) else np.asarray(s)
        rho = float(np.abs(eig).max())
        marker, color = markers[i % len(markers)], f"C{i}"
        hollow = marker in "o^"
        style = {"facecolors": "none", "edgecolors": color} if hollow else {"color": color}
        ax.scatter(
            eig.real,
            eig.imag,
            s=24,
            marker=marker,
            linewidths=1.2,
            label=f"{label} (ρ = {rho:.3f})",
            **style,
        )
        reach = max(reach, rho)
    lim = 1.1 * reach
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel("real part Re λ")
    ax.set_ylabel("imaginary part Im λ")
    ax.set_title(title)
    # Below the axes, so no eigenvalue hides behind it.
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    return _save(fig, path)


def plot_heatmap(matrix: np.ndarray, path, title: str) -> Figure:
    """||dE_t/dh_k|| over loss step t (rows) and state step k (columns), log colours."""
    fig, axes = _figure(width=6.8, height=5.6)
    ax = axes[0][0]
    m = np.ma.masked_invalid(np.where(matrix > 0, matrix, np.nan))
    T, K = matrix.shape
    vmax = float(m.max()) if m.count() else 1.0
    vmin = max(float(m.min()) if m.count() else 1e-12, vmax * 1e-16)
    mesh = ax.pcolormesh(
        np.arange(K + 1) - 0.5,
        np.arange(1, T + 2) - 0.5,
        m,
        norm=LogNorm(vmin=vmin, vmax=vmax),
        cmap="magma",
        shading="flat",
        rasterized=True,
    )
    clipped = bool(m.count()) and float(m.min()) < vmin
    fig.colorbar(
        mesh,
        ax=ax,
        extend="min" if clipped else "neither",
        label="‖∂E_t/∂h_k‖ (log scale" + (", clipped at 1e-16 × max)" if clipped else ")"),
    )
    ax.plot([1, T], [1, T], color="tab:cyan", lw=1.2, ls="--", label="k = t: the loss's own step")
    ax.set_xlabel("state step k (steps)")
    _steps_axis(ax.xaxis)
    ax.set_ylabel("loss step t (steps)")
    _steps_axis(ax.yaxis)
    ax.set_title(title + "\n(blank where k > t: a later state cannot change E_t)", fontsize=10)
    ax.set_xlim(-0.5, K - 0.5)
    ax.set_ylim(0.5, T + 0.5)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_jacobian_products(products: Mapping[str, JacobianProducts], path, title: str) -> Figure:
    """Leading singular values of ds_T/ds_{T−m} against the lag m."""
    fig, axes = _figure()
    ax = axes[0][0]
    for i, (label, jp) in enumerate(products.items()):
        sv = jp.singular_values
        ax.plot(
            jp.lags,
            _positive(sv[:, 0]),
            color=f"C{i}",
            lw=2,
            label=f"{label}: σ_1 (rate {jp.log_rate:+.3f}/step)",
        )
        for j in range(1, sv.shape[1]):
            ax.plot(
                jp.lags,
                _positive(sv[:, j]),
                color=f"C{i}",
                lw=1,
                ls=":",
                label=f"{label}: σ_2 … σ_{sv.shape[1]} (dotted)" if j == 1 else None,
            )
    ax.set_yscale("log")
    ax.set_xlabel("lag t − k (steps)")
    _steps_axis(ax.xaxis)
    ax.set_ylabel("singular values of ∂s_t/∂s_k (log scale)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_power_method(runs: Mapping[str, PowerIteration], path, title: str) -> Figure:
    """||h_t|| of h_t = (W^t)^T h_0 against t, with the line rho^t for comparison."""
    fig, axes = _figure(width=11, height=4.4, cols=2)
    ax, ax2 = axes[0]
    for i, (label, pm) in enumerate(runs.items()):
        t = np.arange(len(pm.norms))
        ax.plot(
            t,
            _positive(pm.norms),
            color=f"C{i}",
            lw=2,
            label=f"{label}: measured growth {pm.growth:.3f}/step",
        )
        ax.plot(
            t,
            pm.norms[0] * pm.radius**t,
            color=f"C{i}",
            lw=1,
            ls="--",
            label=f"{label}: ρ(W)^t, ρ = {pm.radius:.3f}",
        )
        ax2.plot(t, pm.alignment, color=f"C{i}", lw=2, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("step t")
    _steps_axis(ax.xaxis)
    ax.set_ylabel("‖h_t‖ (log scale)")
    ax.set_title("Norm of h_t = (W^t)ᵀ h_0")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax2.set_ylim(0, 1.05)
    ax2.set_xlabel("step t")
    _steps_axis(ax2.xaxis)
    ax2.set_ylabel("|cos| between h_t and the leading eigenspace")
    ax2.set_title("h_t turns towards the leading eigenvector\n(slowly when |λ₂| is close to |λ₁|)")
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def plot_training_curves(
    panels: Mapping[str, Mapping[str, Sequence[float]]],
    path,
    title: str,
    ylabel: str = "training loss (nats)",
    log: bool = False,
    thresholds: Mapping[str, float] | None = None,
) -> Figure:
    """Per-update quantities (loss, gradient norm) against updates: one panel per key of
    ``panels``, one line per label, shared y axis.  Non-finite values (a diverged update)
    are marked with a red x along the top.  ``thresholds``: a dashed line at that value
    in the panel of that name (the clipping threshold)."""
    fig, axes = _figure(width=5.4 * len(panels) + 0.8, cols=len(panels))
    finite = [np.asarray(v, dtype=float) for curves in panels.values() for v in curves.values()]
    finite = np.concatenate([v[np.isfinite(v)] for v in finite] or [np.zeros(1)])
    top = float(finite.max()) if finite.size else 1.0
    for ax, (panel, curves) in zip(axes[0], panels.items(), strict=True):
        drawn: list = []
        for i, (label, values) in enumerate(curves.items()):
            y = np.asarray(values, dtype=float)
            steps = np.arange(1, len(y) + 1)
            finite_y = np.where(np.isfinite(y), y, np.nan)
            _line(ax, steps, finite_y, label, drawn, color=f"C{i}", lw=1.2)
            bad = ~np.isfinite(y)
            if bad.any():
                ax.plot(
                    steps[bad],
                    np.full(bad.sum(), top),
                    "x",
                    color="red",
                    ms=6,
                    label=f"{label}: non-finite ({bad.sum()} updates)",
                )
        if thresholds and panel in thresholds:
            ax.axhline(
                thresholds[panel], color="black", ls="--", lw=1,
                label=f"threshold {thresholds[panel]:g}",
            )  # fmt: skip
        if log:
            ax.set_yscale("log")
        ax.set_title(panel)
        ax.set_xlabel("update (steps of gradient descent)")
        _steps_axis(ax.xaxis)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(ylabel)
    if len(panels) > 1:
        lo = float(finite.min()) if finite.size else 0.0
        for ax in axes[0]:
            ax.set_ylim((max(lo, 1e-12) / 2, top * 2) if log else (min(0, lo), top * 1.05))
    fig.suptitle(title)
    return _save(fig, path)

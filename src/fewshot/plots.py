"""Figures of the report, one function per figure, each from plain arrays to a PNG file.

Nothing here reads runs or the store (that is :mod:`fewshot.report`), so every figure
can be drawn from any source, e.g. model-selection results computed elsewhere.

Figures are drawn on :class:`matplotlib.figure.Figure` objects rendered by the Agg
canvas, never through ``pyplot``: no global figure state, no GUI backend, nothing to
close, whatever backend the user's matplotlib is configured with.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import ConfigError
from .io import atomic_path

DPI = 110
# Every accuracy axis runs from ACCURACY_ORIGIN to 100 %: bars and lines then compare by
# length across panels and figures (an axis cut at 60 % makes 70 look twice 65).
ACCURACY_ORIGIN = 0.0
ACCURACY_AXIS = f"axis from {ACCURACY_ORIGIN:g} %"


def _figure(rows: int = 1, cols: int = 1, *, width: float = 5.2, height: float = 3.6,
            width_ratios: Sequence[float] | None = None):
    """A figure and its axes as a flat list (Agg canvas; imports matplotlib lazily)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("figures need matplotlib: pip install 'fewshot[report]'") from None
    total = sum(width_ratios) if width_ratios else cols
    fig = Figure(figsize=(width * total, height * rows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, width_ratios=width_ratios)
    return fig, [ax for row in axes for ax in row]


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


# -- learning curves ----------------------------------------------------------------------

@dataclass
class Curve:
    """One run's history: ``train`` rows ``[step, loss, score]``, ``val`` rows ``[step, score, ci95]``.

    The score is the run's ``metric``: accuracy in %, or mean squared error (regression).
    """

    label: str
    train: Sequence[Sequence[float]] = field(default_factory=list)
    val: Sequence[Sequence[float]] = field(default_factory=list)
    metric: str = "accuracy"
    color: str | None = None  # a matplotlib colour; default: by position


def _note(ax, text: str, y: float = 0.5) -> None:
    """Say in the panel itself why it shows little or nothing: never an unexplained empty panel."""
    ax.text(0.5, y, text, transform=ax.transAxes, ha="center", va="center", fontsize=8, wrap=True,
            bbox={"boxstyle": "round", "facecolor": "lightyellow", "edgecolor": "darkorange", "alpha": 0.9})


def learning_curves(curves: Sequence[Curve], path: str | Path, *, score_title: str | None = None) -> Path:
    """Meta-training loss, and validation accuracy with its 95% interval as a band.

    A run without validation shows its training-episode accuracy instead, dashed and
    labelled so; ``score_title`` titles that panel (by default it says which of the two
    it shows).
    """
    fig, (loss_ax, acc_ax) = _figure(1, 2)
    for i, curve in enumerate(curves):
        color = curve.color or f"C{i % 10}"
        label = curve.label if curve.metric == "accuracy" else f"{curve.label} ({curve.metric})"
        train = np.asarray(curve.train, dtype=float).reshape(-1, 3)
        # Short runs log few points: mark them, or a single one would not show.
        marker = "o" if len(train) < 20 else None
        if len(train):
            loss_ax.plot(train[:, 0], train[:, 1], color=color, marker=marker, markersize=3, label=label)
        val = np.asarray(curve.val, dtype=float).reshape(-1, 3)
        if len(val):
            ci = np.nan_to_num(val[:, 2])
            acc_ax.plot(val[:, 0], val[:, 1], color=color, marker="o", markersize=3, label=label)
            acc_ax.fill_between(val[:, 0], val[:, 1] - ci, val[:, 1] + ci, color=color, alpha=0.2, linewidth=0)
        elif len(train):
            acc_ax.plot(train[:, 0], train[:, 2], color=color, linestyle="--", marker=marker, markersize=3,
                        label=f"{label} (training episodes; no validation split)")
    loss_ax.set(title="meta-training loss", xlabel="step", ylabel="loss (mean over logged steps)")
    accuracy_only = all(c.metric == "accuracy" for c in curves)
    if score_title is None:
        score = "accuracy" if accuracy_only else "score"
        validated = [bool(len(c.val)) for c in curves]
        score_title = (f"validation {score} (band: 95% CI)" if all(validated) else
                       f"training-episode {score} (no validation split)" if not any(validated) else
                       f"validation {score} (solid, band: 95% CI); training-episode {score} (dashed)")
    acc_ax.set(title=score_title, xlabel="step",
               ylabel=f"accuracy (%, {ACCURACY_AXIS})" if accuracy_only else " or ".join(sorted({c.metric for c in curves})))
    if accuracy_only:
        acc_ax.set_ylim(ACCURACY_ORIGIN, 100.0)
    once = [f"{c.label}: step {int(np.asarray(c.val, dtype=float).reshape(-1, 3)[0, 0])}" for c in curves
            if len(np.asarray(c.val, dtype=float).reshape(-1, 3)) == 1]
    if once:  # a single validation is a dot, not a curve: say why
        acc_ax.text(0.03, 0.03, "validated once (" + "; ".join(once) + "): a curve needs\n--val-every below --episodes",
                    transform=acc_ax.transAxes, fontsize=7, va="bottom")
    for ax, what in ((loss_ax, "loss"), (acc_ax, "score")):
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=7)
        else:
            _note(ax, f"no data because no run logged a training {what}")
    return _save(fig, path)


# -- comparisons ------------------------------------------------------------------------

@dataclass
class Bars:
    """Methods on one suite of identical episodes: labels, mean accuracies, 95% half-widths."""

    title: str
    labels: Sequence[str]
    accuracy: Sequence[float]
    ci95: Sequence[float]
    colors: Sequence[str] | None = None  # one per bar; default: by position


def comparison(panels: Sequence[Bars], path: str | Path) -> Path:
    """One panel per episode suite: mean accuracy per method with 95% CI error bars."""
    if not panels:
        raise ConfigError("a comparison figure needs at least one suite of results")
    cols = min(2, len(panels))
    rows = math.ceil(len(panels) / cols)
    tallest = max(len(p.labels) for p in panels)
    fig, axes = _figure(rows, cols, width=5.2, height=max(2.2, 0.45 * tallest + 1.2))
    for ax, panel in zip(axes, panels):
        y = np.arange(len(panel.labels))
        acc = np.asarray(panel.accuracy, dtype=float)
        ci = np.nan_to_num(np.asarray(panel.ci95, dtype=float))
        colors = list(panel.colors) if panel.colors else [f"C{i % 10}" for i in y]
        ax.barh(y, acc, xerr=ci, color=colors, alpha=0.8, capsize=4)
        for yi, a, c in zip(y, acc, ci):
            ax.text(a + c + 0.5, yi, f"{a:.1f} ± {c:.1f}", va="center", fontsize=8)
        ax.set_yticks(y, list(panel.labels), fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(ACCURACY_ORIGIN, 118.0)  # room right of 100 % for the value labels
        ax.set_xticks(np.arange(ACCURACY_ORIGIN, 100.1, 20.0))
        ax.set_title(textwrap.fill(panel.title, 60), fontsize=9 if len(panel.title) > 60 else None)
        ax.set(xlabel=f"accuracy (%, {ACCURACY_AXIS}), error bar: 95% CI")
        ax.grid(axis="x", alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    return _save(fig, path)


@dataclass
class Series:
    """Accuracy of one method at several values of x (shots or ways)."""

    label: str
    x: Sequence[float]
    accuracy: Sequence[float]
    ci95: Sequence[float]
    color: str | None = None  # default: by position
    linestyle: str = "-"


def accuracy_against(series: Sequence[Series], path: str | Path, *, xlabel: str, title: str,
                     ticks_at_values: bool = True, ylabel: str | None = None) -> Path:
    """Accuracy ± 95% CI of each method against ``x`` (e.g. shots per class, or ways).

    ``ticks_at_values`` puts a tick at every x that occurs (right for a few shots or
    ways); ``False`` leaves the ticks to matplotlib (a continuous x such as CPU time).
    ``ylabel`` names another score (e.g. a return): its axis is not accuracy's.
    """
    if not series:
        raise ConfigError(f"'{title}' needs at least one series of results")
    fig, (ax,) = _figure()
    for i, s in enumerate(series):
        order = np.argsort(np.asarray(s.x, dtype=float))
        x = np.asarray(s.x, dtype=float)[order]
        acc = np.asarray(s.accuracy, dtype=float)[order]
        ci = np.nan_to_num(np.asarray(s.ci95, dtype=float)[order])
        ax.errorbar(x, acc, yerr=ci, marker="o", capsize=3, color=s.color or f"C{i % 10}", linestyle=s.linestyle,
                    label=s.label)
    if ticks_at_values:
        xs = sorted({float(v) for s in series for v in s.x})
        ax.set_xticks(xs, [f"{v:g}" for v in xs])
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel or f"accuracy (%, {ACCURACY_AXIS}), error bar: 95% CI")
    if ylabel is None:
        ax.set_ylim(ACCURACY_ORIGIN, 100.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


# -- embeddings -------------------------------------------------------------------------

@dataclass
class EmbeddingPanel:
    """2-D points (``(n, 2)``) coloured by integer ``labels``, titled e.g. by checkpoint.

    ``names[k]`` names class ``k`` in the legend (default: "class k").
    """

    title: str
    points: np.ndarray
    labels: np.ndarray
    names: Sequence[str] | None = None


def embedding_map(rows: Sequence[tuple[str, Sequence[EmbeddingPanel]]], path: str | Path, *,
                  projection: str = "PCA") -> Path:
    """A grid: one row per run (``(row label, panels)``), one panel per checkpoint."""
    if not rows or not any(panels for _, panels in rows):
        raise ConfigError("an embedding map needs at least one panel")
    cols = max(len(panels) for _, panels in rows)
    # A last, narrow column holds each row's legend, where it hides no point.
    fig, axes = _figure(len(rows), cols + 1, width=3.4, height=3.2, width_ratios=[1.0] * cols + [0.8])
    for r, (row_label, panels) in enumerate(rows):
        for c in range(cols):
            ax = axes[r * (cols + 1) + c]
            if c >= len(panels):
                ax.set_visible(False)
                continue
            panel = panels[c]
            labels = np.asarray(panel.labels)
            for k in np.unique(labels):
                mask = labels == k
                name = panel.names[int(k)] if panel.names else f"class {int(k)}"
                ax.scatter(panel.points[mask, 0], panel.points[mask, 1], s=12, color=f"C{int(k) % 10}",
                           label=_shorten(name), alpha=0.85, linewidths=0)
            ax.set_title(panel.title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(row_label, fontsize=9)
        key = axes[r * (cols + 1) + cols]
        key.axis("off")
        if panels:
            handles, names = axes[r * (cols + 1)].get_legend_handles_labels()
            key.legend(handles, names, fontsize=7, loc="center left", frameon=False)
    fig.suptitle(f"query examples of one fixed test episode, embedded by the backbone ({projection} to 2-D)",
                 fontsize=10)
    return _save(fig, path)


def _shorten(name: str, limit: int = 28) -> str:
    """``name``, its middle elided past ``limit`` characters (class names can be paths)."""
    return name if len(name) <= limit else f"{name[: limit // 2 - 1]}…{name[-(limit // 2):]}"


# -- model selection ----------------------------------------------------------------------

def model_selection(predicted: Sequence[float], true: Sequence[float], regret: Sequence[float],
                    path: str | Path, *, tasks: Sequence[str] | None = None,
                    predicted_label: str = "predicted accuracy (%)") -> Path:
    """Predicted against true accuracy (one point per candidate), and regret per task.

    ``regret[t]`` is how far (in accuracy points) the selected candidate of task ``t`` is
    below the best candidate of that task; ``predicted`` and ``true`` are parallel
    arrays over every (task, candidate) pair.
    """
    predicted, true = np.asarray(predicted, dtype=float), np.asarray(true, dtype=float)
    regret = np.asarray(regret, dtype=float)
    if len(predicted) != len(true) or not len(predicted):
        raise ConfigError("model selection needs as many predicted as true accuracies, at least one")
    fig, (scatter_ax, regret_ax) = _figure(1, 2)
    scatter_ax.scatter(predicted, true, s=18, color="C0")
    low = float(min(predicted.min(), true.min())) - 2
    high = float(max(predicted.max(), true.max())) + 2
    scatter_ax.plot([low, high], [low, high], color="grey", linestyle=":", linewidth=1, label="predicted = true")
    if len(predicted) > 2 and np.std(predicted) > 0 and np.std(true) > 0:
        from scipy.stats import kendalltau

        tau = kendalltau(predicted, true).statistic
        scatter_ax.text(0.03, 0.95, f"Kendall τ = {tau:.2f}", transform=scatter_ax.transAxes, va="top", fontsize=8)
    scatter_ax.set(title="predicted against true accuracy", xlabel=predicted_label, ylabel="true accuracy (%)")
    scatter_ax.legend(fontsize=7, loc="lower right")
    scatter_ax.grid(alpha=0.3)
    names = list(tasks) if tasks is not None else []
    if len(names) != len(regret) or max(map(len, names), default=0) > 12:
        names = [str(i + 1) for i in range(len(regret))]  # long names go in the caller's table
    x = np.arange(len(regret))
    regret_ax.bar(x, regret, color="C3", alpha=0.8)
    # A zero regret is a bar of no height: a mark shows that the task is there.
    regret_ax.plot(x, regret, "o", color="C3", markersize=4 if regret.any() else 7)
    if not len(regret):
        _note(regret_ax, "no data because no task has\na selection to score")
    elif not regret.any():
        regret_ax.set_ylim(-0.5, 1.0)
        _note(regret_ax, "regret 0 on every task:\nthe selected candidate was the best", y=0.75)
    regret_ax.set_xticks(x, names, rotation=45 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center",
                         fontsize=7)
    mean = float(regret.mean()) if len(regret) else math.nan
    regret_ax.set(title=f"regret per task (mean {mean:.2f} points)", xlabel="task",
                  ylabel="best true − selected true (points)")
    regret_ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)

"""Loss curves of a pretraining run: ``python -m autogluon_tfm plot-loss runs/x`` -> ``runs/x/loss.png``."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np


def _read_columns(path: Path) -> dict[str, list[str]]:
    with path.open(newline="") as handle:
        columns: dict[str, list[str]] = defaultdict(list)
        for row in csv.DictReader(handle):
            for key, value in row.items():
                columns[key].append(value)
    return columns


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (shorter windows at the start), so the curve starts at the first step."""
    if window <= 1 or values.size == 0:
        return values
    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    ends = np.arange(1, values.size + 1)
    starts = np.maximum(0, ends - window)
    return (cumulative[ends] - cumulative[starts]) / (ends - starts)


def plot_loss(run_dir: str | Path, out: str | Path | None = None, window: int | None = None) -> Path:
    """Plot ``<run_dir>/log.csv`` (raw and smoothed training loss, learning rate) and, if present,
    ``<run_dir>/eval.csv`` (one panel per metric, one line per dataset) into ``out`` (default
    ``<run_dir>/loss.png``). Returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on training machines
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    log_path = run_dir / "log.csv"
    if not log_path.exists():
        raise FileNotFoundError(f"{log_path} not found: is {run_dir} a pretraining run directory?")
    log = _read_columns(log_path)
    if not log.get("step"):
        raise ValueError(f"{log_path} has no rows yet")
    steps = np.asarray(log["step"], dtype=float)
    loss = np.asarray(log["loss"], dtype=float)
    lr = np.asarray(log["lr"], dtype=float)
    window = window or max(1, len(steps) // 50)

    eval_path = run_dir / "eval.csv"
    evals = _read_columns(eval_path) if eval_path.exists() else {}
    metrics = list(dict.fromkeys(evals.get("metric", [])))
    fig, axes = plt.subplots(1 + len(metrics), 1, figsize=(8, 3.2 * (1 + len(metrics))), squeeze=False)
    ax = axes[0, 0]
    ax.plot(steps, loss, color="tab:blue", alpha=0.25, linewidth=0.8, label="loss")
    ax.plot(steps, smooth(loss, window), color="tab:blue", linewidth=1.6, label=f"loss ({window}-step mean)")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    lr_axis = ax.twinx()
    lr_axis.plot(steps, lr, color="tab:gray", linewidth=0.8, linestyle="--", label="lr")
    lr_axis.set_ylabel("learning rate")
    handles = ax.get_legend_handles_labels()[0] + lr_axis.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper right", fontsize=8)

    # One colour per dataset in every panel.
    datasets = list(dict.fromkeys(evals.get("dataset", [])))
    colors = {name: f"C{i % 10}" for i, name in enumerate(datasets)}
    for row, metric in enumerate(metrics, start=1):
        ax = axes[row, 0]
        selected = [i for i, m in enumerate(evals["metric"]) if m == metric]
        for dataset in dict.fromkeys(evals["dataset"][i] for i in selected):
            points = [(float(evals["step"][i]), float(evals["value"][i])) for i in selected
                      if evals["dataset"][i] == dataset]
            ax.plot(*zip(*points), marker="o", markersize=3, label=dataset, color=colors[dataset])
        ax.set_xlabel("step")
        ax.set_ylabel(f"eval {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out) if out is not None else run_dir / "loss.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

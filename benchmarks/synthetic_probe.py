"""Synthetic probe: can a network find the informative columns of a table?

    OMP_NUM_THREADS=1 python benchmarks/synthetic_probe.py --checkpoints mitra-clf-small tabpfnv2-clf-small \
        mitra-reg-small --out benchmarks/results/synthetic_probe.md

Binary tables of N(0, 1) columns whose label is a simple function of one or two of them: one informative column
among 0-7 columns of pure noise, a comparison of two columns (``x0 > x1``, which no function of the row's values *as a
set* can answer), a sum, and an xor. Each cell is the mean cross-entropy of one flat network call (no ensemble, no
preprocessing) on ``--n-test`` test rows with ``--n-train`` training rows as context, over ``--tables`` tables; the
class prior scores ln 2 = 0.693. Regression checkpoints get the same kind of tables with a continuous target (one
column among noise, a difference, a sum, a product, plus N(0, 0.1^2) noise) and are scored by the normalised test
error, MSE / variance of the test targets of the network's mean prediction (predicting the training mean scores
about 1, a perfect fit 0.01, the noise). Seconds per checkpoint, so it can run after every pretraining session: dev-set
log loss mixes many effects, this probe isolates one (ignoring columns that carry no signal, telling columns apart).

``--fit-fresh PRESET`` first trains a freshly initialised network of a pretraining preset (``mitra-small``, ...) on
tables of the comparison task alone (``x_a > x_b`` for a random pair of 3 columns, 16 tables of 128 + 64 rows per
step, Adam) and prints its loss every 100 steps: whether the architecture can learn to tell columns apart at all,
apart from what a prior taught the shipped weights.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

if __name__ == "__main__":  # import the helpers as the `benchmarks` package (see classification.py)
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent)] + [entry for entry in sys.path if Path(entry or ".").resolve() != _here]

import numpy as np
import torch
import torch.nn.functional as F

from autogluon_tfm.checkpoints import load_network, network_task

Label = Callable[[np.ndarray], np.ndarray]
# name -> (number of columns, labelling function of the columns)
TASKS: dict[str, tuple[int, Label]] = {
    "x0>0, 1 col": (1, lambda X: X[:, 0] > 0),
    "x0>0, 2 cols": (2, lambda X: X[:, 0] > 0),
    "x0>0, 4 cols": (4, lambda X: X[:, 0] > 0),
    "x0>0, 8 cols": (8, lambda X: X[:, 0] > 0),
    "x0>x1": (2, lambda X: X[:, 0] > X[:, 1]),
    "x0+x1>0": (2, lambda X: X[:, 0] + X[:, 1] > 0),
    "xor": (2, lambda X: (X[:, 0] > 0) ^ (X[:, 1] > 0)),
}
# Regression targets (noise of standard deviation REGRESSION_NOISE is added).
REGRESSION_TASKS: dict[str, tuple[int, Label]] = {
    "y=x0, 1 col": (1, lambda X: X[:, 0]),
    "y=x0, 4 cols": (4, lambda X: X[:, 0]),
    "y=x0, 8 cols": (8, lambda X: X[:, 0]),
    "y=x0-x1": (2, lambda X: X[:, 0] - X[:, 1]),
    "y=x0+x1": (2, lambda X: X[:, 0] + X[:, 1]),
    "y=x0*x1": (2, lambda X: X[:, 0] * X[:, 1]),
}
REGRESSION_NOISE = 0.1


@torch.no_grad()
def probe(network: torch.nn.Module, n_train: int, n_test: int, n_tables: int, seed: int = 0) -> dict[str, float]:
    """Mean test cross-entropy of ``network`` on every task of :data:`TASKS` (same tables for every network)."""
    network.eval()
    scores = {}
    for index, (name, (n_columns, label)) in enumerate(TASKS.items()):
        rng = np.random.default_rng([seed, index])
        losses = []
        for _ in range(n_tables):
            X = rng.normal(size=(n_train + n_test, n_columns)).astype(np.float32)
            y = torch.as_tensor(label(X).astype(np.int64))[None]
            logits = network(torch.as_tensor(X)[None], y[:, :n_train])[0, :, :2].float()
            losses.append(F.cross_entropy(logits, y[0, n_train:]).item())
        scores[name] = float(np.mean(losses))
    return scores


@torch.no_grad()
def probe_regression(network: torch.nn.Module, n_train: int, n_test: int, n_tables: int,
                     seed: int = 0) -> dict[str, float]:
    """Mean normalised test error (MSE / variance of the test targets) of a regression ``network``'s mean
    prediction on every task of :data:`REGRESSION_TASKS`; targets are scaled as the network was trained."""
    from autogluon_tfm.inference.regression_heads import regression_head_for
    from autogluon_tfm.nn.losses import scale_targets

    network.eval()
    head = regression_head_for(network)
    scaling = getattr(network, "regression_target_scaling", "zscore")
    scores = {}
    for index, (name, (n_columns, target)) in enumerate(REGRESSION_TASKS.items()):
        rng = np.random.default_rng([seed, 100 + index])
        errors = []
        for _ in range(n_tables):
            X = rng.normal(size=(n_train + n_test, n_columns)).astype(np.float32)
            y = torch.as_tensor(target(X) + REGRESSION_NOISE * rng.normal(size=len(X)), dtype=torch.float32)[None]
            y = scale_targets(y, n_train, scaling)
            raw = network(torch.as_tensor(X)[None], y[:, :n_train])[0].float().numpy()
            predicted, actual = head.mean(head.prepare(raw)), y[0, n_train:].numpy()
            errors.append(float(np.mean((predicted - actual) ** 2) / np.var(actual)))
        scores[name] = float(np.mean(errors))
    return scores


def fit_fresh(preset: str, steps: int, lr: float = 1e-3, seed: int = 0) -> list[tuple[int, float]]:
    """Train a fresh ``preset`` network on ``x_a > x_b`` tables of 3 columns; ``(step, smoothed loss)`` every 100
    steps."""
    from autogluon_tfm.pretrain.column_rules import warm_up_columns
    from autogluon_tfm.pretrain.trainer import MODEL_PRESET_ARCH, PretrainConfig, build_network

    if preset not in MODEL_PRESET_ARCH:
        raise ValueError(f"Unknown pretraining preset {preset!r}; choose from {sorted(MODEL_PRESET_ARCH)}")
    torch.manual_seed(seed)
    network = build_network(PretrainConfig(arch=MODEL_PRESET_ARCH[preset], model=preset))
    curve = warm_up_columns(network, steps, lr=lr, seed=seed, n_columns=(3, 3), comparison_share=1.0)
    for step, loss in curve:
        print(f"{preset} fresh, x_a > x_b: step {step} loss {loss:.3f}", flush=True)
    return curve


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", nargs="+",
                        default=["tabicl-clf-small", "tabpfnv2-clf-small", "mitra-clf-small"],
                        help="classification or regression checkpoints: shipped names or paths (run checkpoints too)")
    parser.add_argument("--n-train", type=int, default=300)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--tables", type=int, default=5, help="tables per task")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fit-fresh", default=None, metavar="PRESET",
                        help="also train a fresh network of this pretraining preset on x_a > x_b tables")
    parser.add_argument("--fit-steps", type=int, default=601)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    curve = fit_fresh(args.fit_fresh, args.fit_steps) if args.fit_fresh else []
    setting = f"{args.n_train} training rows, {args.n_test} test rows, {args.tables} tables per task"
    tables = {
        "classification": (TASKS, probe, "test cross-entropy (lower is better)", "class prior", math.log(2)),
        "regression": (REGRESSION_TASKS, probe_regression,
                       "normalised test error, MSE / variance of the test targets (lower is better)",
                       "training mean", 1.0),
    }
    rows: dict[str, list[str]] = {task: [] for task in tables}
    for checkpoint in args.checkpoints:
        network = load_network(checkpoint)
        task = network_task(network)
        tasks, score, *_ = tables[task]
        scores = score(network, args.n_train, args.n_test, args.tables)
        rows[task].append(f"| {checkpoint} | " + " | ".join(f"{scores[name]:.3f}" for name in tasks) + " |")
        print(f"{task}: {rows[task][-1]}", flush=True)
    lines, sections = [], []
    for task, (tasks, _, metric, baseline, baseline_score) in tables.items():
        if not rows[task]:
            continue
        table = [
            "| checkpoint | " + " | ".join(tasks) + " |",
            "|---|" + "---:|" * len(tasks),
            f"| {baseline} | " + " | ".join(f"{baseline_score:.3f}" for _ in tasks) + " |",
            *rows[task],
        ]
        lines += table
        sections.append(f"{task.capitalize()}: {setting}, one flat network call; {metric}.\n\n" + "\n".join(table))
    print("\n\n".join(sections), flush=True)
    if args.out:
        fresh = ""
        if curve:
            fresh = (f"\nA fresh `{args.fit_fresh}` trained on x_a > x_b tables (smoothed training loss): "
                     + ", ".join(f"step {step} {loss:.3f}" for step, loss in curve) + ".\n")
        Path(args.out).write_text("\n\n".join(sections) + "\n" + fresh)
    return lines


if __name__ == "__main__":
    main()

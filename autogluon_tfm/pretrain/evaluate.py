"""Periodic evaluation during pretraining: the current network in ICL mode on a few real dev datasets and on
held-out synthetic tables, printed as a small table and appended to ``<out>/eval.csv``.

Real datasets come from the repository's ``benchmarks.datasets`` loaders, imported lazily (the package never imports
``benchmarks`` at import time); pass ``loader=`` to use other data. The network is evaluated through the package's
own estimators (``TFMClassifier`` / ``TFMRegressor`` with ``checkpoint=<the module>``, one ensemble member) so the
numbers mean what they mean at inference.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Small dev datasets shipped inside scikit-learn: no extra packages, seconds to evaluate on a CPU.
DEFAULT_EVAL_DATASETS: dict[str, tuple[str, ...]] = {
    "classification": ("breast_cancer", "wine", "iris"),
    "regression": ("diabetes",),
}
EVAL_COLUMNS = ("step", "dataset", "metric", "value")
# Held-out synthetic tables are drawn from this offset of the run's seed: never the training stream's seeds.
_SYNTHETIC_SEED_OFFSET = 1_000_003

Loader = Callable[[str], tuple[Any, Any]]


def benchmark_loader(name: str) -> tuple[Any, Any]:
    """``(X, y)`` of a dev dataset from ``benchmarks.datasets`` (seed-0 shuffle), imported only when called."""
    try:
        from benchmarks.datasets import load_dataset
    except ImportError as error:
        raise ImportError(
            "Evaluating on real datasets needs the repository's `benchmarks` package importable (run from the "
            "repository root, or set PYTHONPATH to it); otherwise pass --eval-datasets none (synthetic tables only) "
            f"or give pretrain() an evaluator with its own loader. ({error})"
        ) from error
    X, y, _ = load_dataset(name, seed=0)
    return X, y


class PretrainEvaluator:
    """``evaluator(net, step) -> rows`` with rows ``{"step", "dataset", "metric", "value"}``.

    Real datasets: the first ``max_train`` rows are the context, the next ``max_test`` rows are scored (accuracy and
    log-loss for classification, R² and RMSE for regression). Synthetic: ``synthetic_tables`` tables of the run's
    prior drawn once from a held-out seed, scored by the pretraining loss (and accuracy for classification).
    """

    def __init__(
        self,
        model: str,
        task: str,
        prior: str,
        datasets: Sequence[str] | None = None,
        synthetic_tables: int = 16,
        synthetic_rows: int = 256,
        synthetic_features: int = 10,
        max_train: int = 512,
        max_test: int = 512,
        device: str = "cpu",
        seed: int = 0,
        loader: Loader | None = None,
    ):
        if task not in DEFAULT_EVAL_DATASETS:
            raise ValueError(f"task must be one of {sorted(DEFAULT_EVAL_DATASETS)}, got {task!r}")
        self.model = model  # architecture name for the estimators ("tabicl", "tabpfnv2", "mitra")
        self.task = task
        self.datasets = tuple(DEFAULT_EVAL_DATASETS[task] if datasets is None else datasets)
        self.max_train, self.max_test = max_train, max_test
        self.device = device
        self.loader = loader or benchmark_loader
        self._data: dict[str, tuple[Any, Any, Any, Any]] = {}
        self._synthetic = []
        if synthetic_tables > 0:
            from autogluon_tfm.prior import PriorSampler

            sampler = PriorSampler(prior, seed=seed + _SYNTHETIC_SEED_OFFSET)
            # Batches of 4 tables with a fixed shape: the same tables at every evaluation of the run.
            n_train = max(2, synthetic_rows * 2 // 3)
            for start in range(0, synthetic_tables, 4):
                size = min(4, synthetic_tables - start)
                self._synthetic.append(
                    sampler.sample_batch(size, synthetic_rows, max_features=synthetic_features, n_train=n_train)
                )

    def _split(self, name: str) -> tuple[Any, Any, Any, Any]:
        if name not in self._data:
            X, y = self.loader(name)
            n_train = min(self.max_train, len(y) // 2)
            end = min(len(y), n_train + self.max_test)
            self._data[name] = (X.iloc[:n_train], y.iloc[:n_train], X.iloc[n_train:end], y.iloc[n_train:end])
        return self._data[name]

    def _real(self, net: torch.nn.Module, name: str) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, log_loss, mean_squared_error, r2_score

        from autogluon_tfm.inference import TFMClassifier, TFMRegressor

        X_train, y_train, X_test, y_test = self._split(name)
        kwargs = dict(model=self.model, checkpoint=net, n_estimators=1, device=self.device, random_state=0)
        if self.task == "classification":
            estimator = TFMClassifier(**kwargs).fit(X_train, y_train)
            proba = estimator.predict_proba(X_test)
            predicted = estimator.classes_[proba.argmax(1)]
            return {
                "accuracy": float(accuracy_score(y_test, predicted)),
                "log_loss": float(log_loss(y_test, proba, labels=estimator.classes_)),
            }
        estimator = TFMRegressor(**kwargs).fit(X_train, y_train)
        predicted = estimator.predict(X_test)
        return {
            "r2": float(r2_score(y_test, predicted)),
            "rmse": float(math.sqrt(mean_squared_error(y_test, predicted))),
        }

    @torch.no_grad()
    def _synthetic_scores(self, net: torch.nn.Module) -> dict[str, float]:
        from autogluon_tfm.pretrain.trainer import task_loss

        losses, correct, total = [], 0, 0
        for batch in self._synthetic:
            losses.append(float(task_loss(net, batch, self.device, self.task)) * batch.batch_size)
            if self.task == "classification":
                kwargs = {"d": batch.d.to(self.device)} if getattr(net, "arch", "") in ("tabpfn_v2", "mitra") else {}
                n = batch.n_train
                logits = net(batch.X.to(self.device), batch.y[:, :n].to(self.device), **kwargs).float().cpu()
                # Only the table's own classes compete (the estimators do the same).
                classes = torch.arange(logits.shape[-1])[None, None, :] < batch.n_classes[:, None, None]
                predicted = logits.masked_fill(~classes, float("-inf")).argmax(-1)
                correct += int((predicted == batch.y[:, n:].long()).sum())
                total += predicted.numel()
        scores = {"loss": sum(losses) / max(1, sum(b.batch_size for b in self._synthetic))}
        if total:
            scores["accuracy"] = correct / total
        return scores

    def __call__(self, net: torch.nn.Module, step: int) -> list[dict[str, Any]]:
        was_training = net.training
        net.eval()
        rows: list[dict[str, Any]] = []
        # The estimators log one INFO line per fit: noise in a training log that prints its own table.
        inference_logger = logging.getLogger("autogluon_tfm.inference")
        level = inference_logger.level
        inference_logger.setLevel(max(level, logging.WARNING))
        try:
            if self._synthetic:
                for metric, value in self._synthetic_scores(net).items():
                    rows.append({"step": step, "dataset": "synthetic", "metric": metric, "value": value})
            for name in self.datasets:
                for metric, value in self._real(net, name).items():
                    rows.append({"step": step, "dataset": name, "metric": metric, "value": value})
        finally:
            net.train(was_training)
            inference_logger.setLevel(level)
        return rows


def format_eval_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows of one evaluation as a small text table: one line per dataset, one column per metric."""
    if not rows:
        return "(no evaluation rows)"
    metrics = list(dict.fromkeys(row["metric"] for row in rows))
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    values = {(row["dataset"], row["metric"]): row["value"] for row in rows}
    width = max(len("dataset"), *(len(d) for d in datasets))
    lines = [f"eval @ step {rows[0]['step']}", "  ".join(["dataset".ljust(width), *(m.rjust(9) for m in metrics)])]
    for dataset in datasets:
        cells = [f"{values[(dataset, m)]:9.4f}" if (dataset, m) in values else " " * 9 for m in metrics]
        lines.append("  ".join([dataset.ljust(width), *cells]))
    return "\n".join(lines)


def append_eval_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Append rows to ``eval.csv`` (header on creation)."""
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=EVAL_COLUMNS)
        if new:
            writer.writeheader()
        for row in rows:
            value = row["value"]
            writer.writerow({**row, "value": f"{value:.6g}" if np.isfinite(value) else "nan"})

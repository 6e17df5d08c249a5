"""Classification benchmark: TabICL, TabPFNv2 and Mitra (autogluon_tfm.TFMClassifier) vs RandomForest, LightGBM and
the class prior.

For every classification development dataset (see ``benchmarks/datasets.py``) and every seed: rows are shuffled,
split 70/30 stratified, the train part is subsampled (stratified) to at most ``--max-train`` rows and the test part
to at most ``--max-test`` rows; each method is fitted and scored on the same split. Results go to a markdown report
(``--out``) and a CSV of raw per-seed rows next to it (same name, ``.csv``).

Example::

    python benchmarks/classification.py --seeds 5 --max-train 2000 --max-test 2000 \\
        --out benchmarks/results/classification.md
    python benchmarks/classification.py --quick --methods rf,lgbm,majority
    # random tiny networks: plumbing check only
    python benchmarks/classification.py --quick --checkpoint tiny --checkpoint-tabpfnv2 tiny --checkpoint-mitra tiny
    # new methods only, merged with the other methods' rows of an earlier run with the same split settings
    python benchmarks/classification.py --methods tabpfnv2,mitra --max-test 1000 \\
        --merge-csv benchmarks/results/classification.csv

A method that fails on a dataset/seed is recorded as an error for that cell; the run goes on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    # Run as a script, Python puts benchmarks/ first on sys.path, where datasets.py would shadow any installed
    # package called `datasets`. Import the benchmark helpers as the `benchmarks` package from the repo root instead.
    _script_dir = Path(__file__).resolve().parent
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _script_dir]
    sys.path.insert(0, str(_script_dir.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks import _common  # noqa: E402
from benchmarks._common import PREPROCESSING, TFM_LABELS, TREE_LABELS, ReportTables, Split, count_wins  # noqa: E402
from benchmarks.datasets import DATASETS  # noqa: E402

METHOD_LABELS = {**TFM_LABELS, **TREE_LABELS, "majority": "Majority"}
METHODS = tuple(METHOD_LABELS)
QUICK_DATASETS = ("iris", "breast_cancer", "credit_approval")  # small; credit_approval exercises categoricals
PROBA_CLIP = 1e-7  # log loss: probabilities are clipped to [1e-7, 1] and renormalised
REACH_TOLERANCE = 0.005  # a TFM "reaches" RF when its accuracy >= RF accuracy - this


# ------------------------------------------------------------------------------------------------------ splitting
def _stratified_subset(indices: np.ndarray, codes: np.ndarray, size: int, seed: int) -> np.ndarray:
    """At most ``size`` of ``indices``, stratified by class when every class can be kept, else uniformly."""
    from sklearn.model_selection import train_test_split

    if len(indices) <= size:
        return indices
    _, counts = np.unique(codes[indices], return_counts=True)
    stratify = codes[indices] if counts.min() >= 2 and size >= len(counts) else None
    try:
        subset, _ = train_test_split(indices, train_size=size, random_state=seed, stratify=stratify)
    except ValueError:  # a class too rare for the requested size: fall back to a plain random subset
        return _common.random_subset(indices, size, seed)
    return np.sort(subset)


def make_split(
    X: pd.DataFrame, codes: np.ndarray, seed: int, test_fraction: float, max_train: int, max_test: int
) -> Split:
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(codes))
    _, counts = np.unique(codes, return_counts=True)
    stratify = codes if counts.min() >= 2 else None
    train_idx, test_idx = train_test_split(indices, test_size=test_fraction, random_state=seed, stratify=stratify)
    train_idx = _stratified_subset(train_idx, codes, max_train, seed)
    test_idx = _stratified_subset(test_idx, codes, max_test, seed)
    return Split.take(X, codes, train_idx, test_idx)


# -------------------------------------------------------------------------------------------------------- metrics
def full_probabilities(proba: np.ndarray, model_classes: np.ndarray, n_classes: int) -> np.ndarray:
    """Place a model's probability columns (for the classes it saw in training) into all ``n_classes`` columns."""
    proba = np.asarray(proba, dtype=float)
    model_classes = np.asarray(model_classes)
    if proba.ndim != 2 or proba.shape[1] != len(model_classes):
        raise ValueError(f"predict_proba gave shape {proba.shape} for {len(model_classes)} classes")
    if not np.all(np.isfinite(proba)):
        raise ValueError("predict_proba returned non-finite values")
    full = np.zeros((proba.shape[0], n_classes))
    full[:, model_classes.astype(int)] = proba
    return full


def score(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    accuracy = float(np.mean(proba.argmax(axis=1) == y_true))
    clipped = np.clip(proba, PROBA_CLIP, 1.0)
    clipped /= clipped.sum(axis=1, keepdims=True)
    log_loss = float(-np.mean(np.log(clipped[np.arange(len(y_true)), y_true])))
    roc_auc = float("nan")
    if proba.shape[1] == 2 and len(np.unique(y_true)) == 2:
        roc_auc = float(roc_auc_score(y_true, proba[:, 1]))
    return {"accuracy": accuracy, "log_loss": log_loss, "roc_auc": roc_auc}


class ClassificationBenchmark(_common.Benchmark):
    task = "classification"
    title = "Classification benchmark (development datasets)"
    labels = METHOD_LABELS
    size_columns = {"n_train": "train", "n_test": "test", "n_features": "feat", "n_classes": "classes"}
    metric_columns = ("accuracy", "log_loss", "roc_auc")
    quick_datasets = QUICK_DATASETS
    split_text = "stratified {train}/{test} after a seeded shuffle (stratified subsample)"
    preprocessing = (
        f"{PREPROCESSING}; Majority: class prior as probabilities. Log loss clips probabilities at {PROBA_CLIP:g}"
    )

    def prepare(self, X: pd.DataFrame, y: pd.Series, seed: int, args: argparse.Namespace) -> tuple[Split, dict]:
        """Targets become class codes 0..k-1 of the full dataset."""
        classes, codes = np.unique(y.to_numpy(), return_inverse=True)
        split = make_split(X, codes, seed, args.test_fraction, args.max_train, args.max_test)
        return split, {"n_classes": len(classes)}

    def evaluate(self, model: Any, split: Split, sizes: dict[str, int]) -> dict[str, float]:
        proba, seconds = _common.fit_predict(model, split, "predict_proba")
        proba = full_probabilities(proba, model.classes_, sizes["n_classes"])
        return {**score(split.y_test, proba), **seconds}

    def tables(self, report: ReportTables) -> list[str]:
        binary = [dataset for dataset in report.datasets if DATASETS[dataset].task == "binary"]
        return [
            *self.accuracy_log_loss_tables(report),
            *report.table("ROC AUC, binary datasets (higher is better)", "roc_auc", True, binary),
        ]

    @staticmethod
    def accuracy_log_loss_tables(report: ReportTables) -> list[str]:
        return [
            *report.table("Accuracy (higher is better)", "accuracy", True),
            *report.table("Log loss (lower is better)", "log_loss", False),
        ]

    def summary(self, report: ReportTables) -> list[str]:
        """The summary lines of every TFM (:meth:`method_summary`), then the mean ranks by log loss and accuracy."""
        lines = []
        for method in report.tfms():
            lines += self.method_summary(report, method, METHOD_LABELS[method])
        lines.append(report.rank_line("log loss", "log_loss", higher_is_better=False))
        lines.append(report.rank_line("accuracy", "accuracy", higher_is_better=True))
        return lines

    def method_summary(self, report: ReportTables, method: str, label: str) -> list[str]:
        lines = []
        accuracy, log_loss = report.means["accuracy"], report.means["log_loss"]
        if "majority" in report.methods:
            won, n = count_wins(accuracy, method, "majority", higher_is_better=True)
            won_ll, n_ll = count_wins(log_loss, method, "majority", higher_is_better=False)
            lines.append(
                f"- {label} beats the majority class on {won}/{n} datasets by accuracy and on {won_ll}/{n_ll} "
                "by log loss."
            )
        if "rf" in report.methods:
            reached, n = count_wins(accuracy, method, "rf", higher_is_better=True, tolerance=REACH_TOLERANCE)
            lines.append(
                f"- {label} reaches RF's accuracy ({label} >= RF - {REACH_TOLERANCE}) on {reached}/{n} datasets."
            )
        return lines


BENCHMARK = ClassificationBenchmark()
parse_args = BENCHMARK.parse_args
main = BENCHMARK.main

if __name__ == "__main__":
    sys.exit(main())

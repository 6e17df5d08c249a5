"""Regression benchmark: TabICL, TabPFNv2 and Mitra (autogluon_tfm.TFMRegressor) vs RandomForest, LightGBM and the
training-target mean.

For every regression development dataset (see ``benchmarks/datasets.py``) and every seed: rows are shuffled, split
70/30, the train part is subsampled to at most ``--max-train`` rows and the test part to at most ``--max-test`` rows
(uniformly); each method is fitted and scored on the same split. Metrics are RMSE and R² on the original target
scale, and the seconds of fit and predict. Results go to a markdown report (``--out``) and a CSV of raw per-seed rows
next to it (same name, ``.csv``).

Example::

    python benchmarks/regression.py --seeds 5 --max-train 2000 --max-test 2000 --out benchmarks/results/regression.md
    python benchmarks/regression.py --quick --methods rf,lgbm,mean
    # random tiny networks: plumbing check only
    python benchmarks/regression.py --quick --checkpoint tiny --checkpoint-tabpfnv2 tiny --checkpoint-mitra tiny

A method that fails on a dataset/seed is recorded as an error for that cell; the run goes on. ``--merge-csv`` joins
the rows of methods run earlier (same split settings), as in ``classification.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # import the helpers as the `benchmarks` package (see classification.py)
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent)] + [entry for entry in sys.path if Path(entry or ".").resolve() != _here]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks import _common  # noqa: E402
from benchmarks._common import PREPROCESSING, TFM_LABELS, TREE_LABELS, ReportTables, Split, count_wins  # noqa: E402

METHOD_LABELS = {**TFM_LABELS, **TREE_LABELS, "mean": "Mean"}
METHODS = tuple(METHOD_LABELS)
QUICK_DATASETS = ("diabetes", "hitters_salary", "sacramento_prices")  # small; the last two have categoricals


def make_split(X: pd.DataFrame, y: np.ndarray, seed: int, test_fraction: float, max_train: int, max_test: int) -> Split:
    from sklearn.model_selection import train_test_split

    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=test_fraction, random_state=seed)
    train_idx = _common.random_subset(train_idx, max_train, seed)
    test_idx = _common.random_subset(test_idx, max_test, seed)
    return Split.take(X, y, train_idx, test_idx)


def score(y_true: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """RMSE and R² (1 - SSE / SST around the test mean; NaN for a constant test target)."""
    prediction = np.asarray(prediction, dtype=float).reshape(-1)
    if prediction.shape != y_true.shape:
        raise ValueError(f"predict gave shape {prediction.shape} for {len(y_true)} rows")
    if not np.all(np.isfinite(prediction)):
        raise ValueError("predict returned non-finite values")
    sse = float(np.sum((prediction - y_true) ** 2))
    sst = float(np.sum((y_true - y_true.mean()) ** 2))
    return {"rmse": float(np.sqrt(sse / len(y_true))), "r2": 1.0 - sse / sst if sst > 0 else float("nan")}


class RegressionBenchmark(_common.Benchmark):
    task = "regression"
    title = "Regression benchmark (development datasets)"
    labels = METHOD_LABELS
    size_columns = {"n_train": "train", "n_test": "test", "n_features": "feat"}
    metric_columns = ("rmse", "r2")
    quick_datasets = QUICK_DATASETS
    split_text = "{train}/{test} after a seeded shuffle (uniform subsample)"
    preprocessing = f"{PREPROCESSING}; Mean: mean of the training targets. RMSE and R² on the original target scale"

    def prepare(self, X: pd.DataFrame, y: pd.Series, seed: int, args: argparse.Namespace) -> tuple[Split, dict]:
        split = make_split(X, y.to_numpy(dtype=float), seed, args.test_fraction, args.max_train, args.max_test)
        return split, {}

    def evaluate(self, model: Any, split: Split, sizes: dict[str, int]) -> dict[str, float]:
        prediction, seconds = _common.fit_predict(model, split, "predict")
        return {**score(split.y_test, prediction), **seconds}

    def summary(self, report: ReportTables) -> list[str]:
        lines = []
        for method in report.tfms():
            beaten = []
            for other in (m for m in ("lgbm", "rf", "mean") if m in report.methods):
                won, n = count_wins(report.means["rmse"], method, other, higher_is_better=False)
                beaten.append(f"beats {METHOD_LABELS[other]} on RMSE on {won}/{n} datasets")
            if beaten:
                lines.append(f"- {METHOD_LABELS[method]} " + "; ".join(beaten) + ".")
        lines.append(report.rank_line("RMSE", "rmse", higher_is_better=False))
        return lines

    def tables(self, report: ReportTables) -> list[str]:
        return [
            *report.table("RMSE (lower is better)", "rmse", False),
            *report.table("R² (higher is better)", "r2", True),
        ]


BENCHMARK = RegressionBenchmark()
parse_args = BENCHMARK.parse_args
main = BENCHMARK.main

if __name__ == "__main__":
    sys.exit(main())

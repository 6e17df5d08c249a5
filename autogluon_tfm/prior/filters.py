"""Learnability filter: drop synthetic tables whose labels a quick tree ensemble cannot predict from the features.

Many SCM draws are (near) pure noise; with a small pretraining budget they teach the network only class frequencies
(or, for regression, the shape of the target's marginal distribution). Like TabICLv2's prior, tables are kept only
when extra-trees fitted on the train part beat the majority class (regression: the training mean, by R²) on the
test part (a few are kept anyway, so the network still sees noise and stays calibrated on it).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.ensemble import ExtraTreesClassifier, ExtraTreesRegressor


def learnability_gain(X: torch.Tensor, y: torch.Tensor, n_train: int, seed: int, max_rows: int = 256) -> float:
    """Test accuracy of extra-trees (10 trees, depth 6) minus that of the majority class of the train part."""
    X_np, y_np = X.numpy(), y.numpy().astype(np.int64)
    train = np.arange(n_train)[:max_rows]
    test = np.arange(n_train, len(y_np))[:max_rows]
    model = ExtraTreesClassifier(n_estimators=10, max_depth=6, n_jobs=1, random_state=seed)
    model.fit(X_np[train], y_np[train])
    accuracy = float((model.predict(X_np[test]) == y_np[test]).mean())
    majority = float((y_np[test] == np.bincount(y_np[train]).argmax()).mean())
    return accuracy - majority


def regression_learnability_gain(X: torch.Tensor, y: torch.Tensor, n_train: int, seed: int, max_rows: int = 256) -> float:
    """Test R² of extra-trees (10 trees, depth 6) against the training mean: 1 - MSE(trees) / MSE(train mean).

    Measured on 64 tables of 256 rows each of ``tabicl_mix_regression`` (no filter), RandomForest(100) reaches a
    test R² below 0.1 on 61% of them (median -0.04): most unfiltered regression tables are noise.
    """
    X_np, y_np = X.numpy(), y.numpy().astype(np.float64)
    train = np.arange(n_train)[:max_rows]
    test = np.arange(n_train, len(y_np))[:max_rows]
    model = ExtraTreesRegressor(n_estimators=10, max_depth=6, n_jobs=1, random_state=seed)
    model.fit(X_np[train], y_np[train])
    baseline = float(np.mean((y_np[test] - y_np[train].mean()) ** 2))
    if baseline <= 0:
        return 0.0
    return 1.0 - float(np.mean((model.predict(X_np[test]) - y_np[test]) ** 2)) / baseline


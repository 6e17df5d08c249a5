"""Temperature scaling of class probabilities, fitted on in-context out-of-fold predictions.

Small pretrained networks are often underconfident on real tables: the shipped TabPFN v2 weights put 0.54 log loss
on image_segment at 92 % accuracy. One temperature ``t`` per fitted table, ``p_t = softmax(log(p) / t)``, fixes
most of that without changing which class wins (argmax and ROC AUC are unchanged). ``t`` is fitted on predictions
for training rows the network did not see as context: a few folds of the training rows are each predicted with
the other rows as context (in-context learning needs no training, so each fold costs one pass of the network
over the training rows). With an average of members' logits, ``p_t`` equals the softmax of the averaged logits at
``t`` times the estimator's ``softmax_temperature``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar

from autogluon_tfm.inference.hierarchical import softmax

__all__ = ["apply_temperature", "calibration_folds", "clipped_log_loss", "fit_temperature", "row_log_losses"]

#: At most this many training rows are predicted out of fold (a random subset on larger tables).
CALIBRATION_MAX_ROWS = 1024
#: A fold holds at most this share of the training rows, so every fold's context keeps the rest (>= 2/3).
MAX_FOLD_SHARE = 1 / 3
#: Fewer training rows than this: too few to fit a temperature on, so none is fitted (``t = 1``).
MIN_CALIBRATION_ROWS = 20
#: Range the fitted temperature is searched in.
TEMPERATURE_BOUNDS = (0.05, 20.0)
# Probabilities are clipped here before the log (as the benchmarks' log loss does), so one confident miss cannot
# decide the temperature alone.
_PROBA_FLOOR = 1e-7


def apply_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """Rows of ``proba`` rescaled as ``softmax(log(proba) / temperature)`` (float64; ``temperature=1``: unchanged)."""
    proba = np.asarray(proba, dtype=np.float64)
    if temperature == 1.0:
        return proba
    return softmax(np.log(np.maximum(proba, np.finfo(np.float64).tiny)), temperature)


def row_log_losses(proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Negative log of each row's probability of its label (column index), clipped at ``_PROBA_FLOOR``."""
    picked = proba[np.arange(len(labels)), labels]
    return -np.log(np.clip(picked, _PROBA_FLOOR, 1.0))


def clipped_log_loss(proba: np.ndarray, labels: np.ndarray) -> float:
    """Mean of :func:`row_log_losses`."""
    return float(np.mean(row_log_losses(proba, labels)))


def fit_temperature(proba: np.ndarray, labels: np.ndarray) -> float:
    """The temperature in ``TEMPERATURE_BOUNDS`` that minimises the log loss of ``apply_temperature(proba, t)``
    against ``labels`` (class ids = column indices of ``proba``)."""
    proba = np.asarray(proba, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if proba.ndim != 2 or len(proba) != len(labels) or len(labels) == 0:
        raise ValueError(f"fit_temperature needs (n, k) probabilities and n labels; got {proba.shape} and {labels.shape}.")
    low, high = (math.log(bound) for bound in TEMPERATURE_BOUNDS)
    result = minimize_scalar(
        lambda log_t: clipped_log_loss(apply_temperature(proba, math.exp(log_t)), labels),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-3},
    )
    temperature = math.exp(float(result.x))
    # Keep t = 1 unless the fit is really better: a flat optimum should not move the probabilities.
    if clipped_log_loss(apply_temperature(proba, temperature), labels) >= clipped_log_loss(proba, labels):
        return 1.0
    return temperature


def calibration_folds(n_rows: int, seed: int | None) -> list[np.ndarray]:
    """Row indices of the held-out folds: ``min(n_rows, CALIBRATION_MAX_ROWS)`` random rows in as few folds as keep
    each fold within ``MAX_FOLD_SHARE`` of the rows (none below ``MIN_CALIBRATION_ROWS`` rows).

    Every fold costs one prediction with (most of) the training rows as context, which dominates the cost, so large
    tables get a single fold of 1,024 rows and small ones three folds that cover every row.
    """
    if n_rows < MIN_CALIBRATION_ROWS:
        return []
    n_held_out = min(n_rows, CALIBRATION_MAX_ROWS)
    n_folds = math.ceil(n_held_out / (MAX_FOLD_SHARE * n_rows) - 1e-9)
    rows = np.random.default_rng(seed).permutation(n_rows)[:n_held_out]
    return [np.sort(fold) for fold in np.array_split(rows, n_folds)]

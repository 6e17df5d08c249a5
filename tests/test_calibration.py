"""Temperature scaling fitted on in-context out-of-fold predictions (autogluon_tfm.inference.calibration)."""

from __future__ import annotations

import numpy as np
import pytest

from autogluon_tfm.inference.calibration import (
    CALIBRATION_MAX_ROWS,
    MAX_FOLD_SHARE,
    MIN_CALIBRATION_ROWS,
    apply_temperature,
    calibration_folds,
    fit_temperature,
)


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def test_apply_temperature_keeps_argmax_and_sums_to_one():
    proba = _softmax(np.random.default_rng(0).normal(size=(50, 4)))
    np.testing.assert_array_equal(apply_temperature(proba, 1.0), proba)
    for temperature in (0.3, 2.5):
        scaled = apply_temperature(proba, temperature)
        np.testing.assert_allclose(scaled.sum(axis=1), 1.0, atol=1e-12)
        np.testing.assert_array_equal(scaled.argmax(axis=1), proba.argmax(axis=1))
    # t < 1 sharpens, t > 1 flattens; a zero probability stays (about) zero instead of becoming NaN.
    assert apply_temperature(proba, 0.3).max(axis=1).min() > proba.max(axis=1).min()
    assert apply_temperature(proba, 2.5).max(axis=1).max() < proba.max(axis=1).max()
    assert np.isfinite(apply_temperature(np.array([[1.0, 0.0]]), 0.5)).all()


@pytest.mark.parametrize("true_temperature", [0.4, 2.0])
def test_fit_temperature_recovers_the_miscalibration(true_temperature):
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=2.0, size=(6000, 3))
    truth = _softmax(logits)
    labels = np.array([rng.choice(3, p=row) for row in truth])
    # The model reports softmax(logits / true_temperature): under- (t < 1) or overconfident (t > 1) by that factor.
    reported = _softmax(logits / (1 / true_temperature))
    fitted = fit_temperature(reported, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.1)


def test_fit_temperature_keeps_one_when_nothing_improves():
    uniform = np.full((30, 3), 1 / 3)
    assert fit_temperature(uniform, np.arange(30) % 3) == 1.0
    with pytest.raises(ValueError, match="fit_temperature"):
        fit_temperature(uniform, np.arange(10) % 3)


@pytest.mark.parametrize("n_rows", [MIN_CALIBRATION_ROWS, 150, 2000, 10_000])
def test_calibration_folds_are_disjoint_and_leave_most_rows_as_context(n_rows):
    folds = calibration_folds(n_rows, seed=0)
    rows = np.concatenate(folds)
    assert len(rows) == len(np.unique(rows)) == min(n_rows, CALIBRATION_MAX_ROWS)
    assert rows.min() >= 0 and rows.max() < n_rows
    assert all(len(fold) <= MAX_FOLD_SHARE * n_rows + 1 for fold in folds)
    assert calibration_folds(MIN_CALIBRATION_ROWS - 1, seed=0) == []

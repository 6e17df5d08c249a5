"""Post-processing of raw SCM tables: feature cleaning and regression-target -> class conversion.

Features: random categorical conversion of some columns -> robust outlier clipping -> removal of constant columns
-> standardization (clipped to +-feature_clip) -> random column permutation (-> optional missing values).
Target: robust outlier clipping -> standardization -> (regression) optional right-skewed warp or counts,
re-standardized; (classification) random class boundaries, dense class ids,
random class permutation, and row swaps that guarantee every class appears in the train part (and in the test part).

Statistics are computed in float64 because raw SCM outputs can reach ~1e15 (exp activations), whose squares
overflow float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from autogluon_tfm.prior.config import PriorConfig
from autogluon_tfm.prior.random_utils import PriorRandom

_MIN_STD = 1e-6
# Category-code ordering is kept for this share of converted feature columns (ordinal-looking categoricals).
_ORDERED_CATEGORIES_PROB = 0.3
_CLASS_ASSIGNMENT_TRIES = 5


@dataclass
class ProcessedTable:
    X: torch.Tensor  # (T, d) float32, standardized, no constant column
    y: torch.Tensor  # (T,) float32: class ids 0..n_classes-1, or standardized regression target
    n_classes: int  # 0 for regression


def _column_mean_std(x: torch.Tensor, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column mean and unbiased std of ``x (T, d)``, optionally over the rows where ``weights`` is 1."""
    if weights is None:
        weights = torch.ones_like(x)
    count = weights.sum(0)
    mean = (x * weights).sum(0) / count.clamp(min=1)
    variance = ((x - mean).square() * weights).sum(0) / (count - 1).clamp(min=1)
    return mean, variance.sqrt()


def clip_outliers(x: torch.Tensor, threshold: float = 4.0) -> torch.Tensor:
    """Clamp each column of ``x (T, d)`` to ``robust_mean +- threshold * robust_std``.

    Two stages: the robust statistics are computed on the rows within ``threshold`` stds of the plain mean, so
    that a few huge outliers do not inflate the bounds that are meant to catch them.
    """
    mean, std = _column_mean_std(x)
    inliers = ((x - mean).abs() <= threshold * std).to(x.dtype)
    robust_mean, robust_std = _column_mean_std(x, inliers)
    # A column with < 2 inliers has no usable robust std: fall back to the plain statistics.
    too_few = inliers.sum(0) < 2
    robust_mean = torch.where(too_few, mean, robust_mean)
    robust_std = torch.where(too_few, std, robust_std)
    return x.clamp(min=robust_mean - threshold * robust_std, max=robust_mean + threshold * robust_std)


def standardize(x: torch.Tensor, clip: float = 100.0) -> torch.Tensor:
    """Per-column z-score (std floored at 1e-6), clipped to ``[-clip, clip]``."""
    mean, std = _column_mean_std(x)
    return ((x - mean) / std.clamp(min=_MIN_STD)).clamp(-clip, clip)


def non_constant_columns(x: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the columns of ``x (T, d)`` that take more than one value."""
    return x.amax(0) > x.amin(0)


def dense_codes(codes: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Map integer codes to ``0..k-1`` preserving their order; returns the codes and ``k``."""
    values, inverse = torch.unique(codes, return_inverse=True)
    return inverse, int(values.numel())


def discretize(values: torch.Tensor, n_bins: int, mode: str, rng: PriorRandom) -> torch.Tensor:
    """Cut a 1-D tensor into at most ``n_bins`` ordered bins with random boundaries.

    ``"rank"``: boundaries are the values of random rows (bins follow the data's quantiles);
    ``"value"``: boundaries are N(0, 1) draws (meaningful for standardized input; bins may be empty).
    """
    if n_bins < 2:
        raise ValueError(f"n_bins must be >= 2, got {n_bins}")
    if mode == "rank":
        boundaries = values[rng.randint(0, values.shape[0], (n_bins - 1,))]
    elif mode == "value":
        boundaries = rng.randn(n_bins - 1).to(values.dtype)
    else:
        raise ValueError(f"mode must be 'rank' or 'value', got {mode!r}")
    return (values[:, None] > boundaries[None, :]).sum(1)


def shuffle_codes(codes: torch.Tensor, n_codes: int, rng: PriorRandom, keep_order_prob: float) -> torch.Tensor:
    """Randomly permute dense codes ``0..n_codes-1``; with ``keep_order_prob`` keep the order (randomly reversed)."""
    if rng.bernoulli(keep_order_prob):
        return n_codes - 1 - codes if rng.bernoulli(0.5) else codes
    return rng.randperm(n_codes)[codes]


def convert_random_columns_to_categorical(x: torch.Tensor, rng: PriorRandom, config: PriorConfig) -> torch.Tensor:
    """With probability ``categorical_prob``, turn a random subset of columns into integer category codes
    (Gamma(1, 10) categories, at least 2, cut at rank boundaries, codes in random order). Returns a new tensor."""
    if not rng.bernoulli(config.categorical_prob):
        return x
    column_prob = rng.uniform()
    convert = rng.np.random(x.shape[1]) < column_prob
    if not convert.any():
        return x
    x = x.clone()
    n_categories = rng.np.gamma(1.0, 10.0, size=x.shape[1]).round().clip(2, config.max_categories).astype(int)
    for column in convert.nonzero()[0]:
        codes, n_present = dense_codes(discretize(x[:, column], int(n_categories[column]), "rank", rng))
        codes = shuffle_codes(codes, n_present, rng, _ORDERED_CATEGORIES_PROB)
        x[:, column] = codes.to(x.dtype)
    return x


def imbalanced_bins(values: torch.Tensor, n_bins: int, rng: PriorRandom, config: PriorConfig) -> torch.Tensor:
    """Cut a 1-D tensor into ``n_bins`` ordered bins whose shares are Dirichlet(alpha) draws, alpha log-uniform in
    ``config.imbalance_concentration``; every share is floored at 2 rows so that small classes can still be split
    between the train and test parts (ties in ``values`` may still merge bins)."""
    alpha = rng.log_uniform(*config.imbalance_concentration)
    shares = rng.np.dirichlet(np.full(n_bins, alpha))
    floor = 2.0 / values.shape[0]
    if n_bins * floor < 1.0:
        shares = shares * (1.0 - n_bins * floor) + floor
    cut_points = torch.from_numpy(np.cumsum(shares)[:-1]).clamp(0.0, 1.0).to(values.dtype)
    boundaries = torch.quantile(values, cut_points)
    return (values[:, None] > boundaries[None, :]).sum(1)


def assign_classes(y: torch.Tensor, n_classes: int, rng: PriorRandom, config: PriorConfig) -> tuple[torch.Tensor, int]:
    """Turn a standardized continuous target into class ids ``0..k-1`` (``k <= n_classes``: empty bins vanish)."""
    # imbalance_prob == 0 (every older config) draws nothing here, so their tables stay exactly the same.
    if config.imbalance_prob > 0 and rng.bernoulli(config.imbalance_prob):
        codes, n_present = dense_codes(imbalanced_bins(y, n_classes, rng, config))
    else:
        mode = config.class_assignments[rng.integer(0, len(config.class_assignments) - 1)]
        codes, n_present = dense_codes(discretize(y, n_classes, mode, rng))
    return shuffle_codes(codes, n_present, rng, config.ordered_classes_prob), n_present


def _swap_in_missing_classes(
    current: torch.Tensor, order: torch.Tensor, part: slice, other: slice, keep_other_complete: bool, rng: PriorRandom
) -> bool:
    """In place: for each class absent from rows ``part``, swap one of its rows from ``other`` with a ``part`` row
    whose class occurs there at least twice. With ``keep_other_complete`` only take a row from ``other`` if its
    class occurs there at least twice. Returns False when some class cannot be brought in."""
    n_classes = int(current.max()) + 1
    part_start, other_start = part.start, other.start
    part_counts = torch.bincount(current[part], minlength=n_classes)
    other_counts = torch.bincount(current[other], minlength=n_classes)
    for missing_class in (part_counts == 0).nonzero().flatten().tolist():
        if keep_other_complete and other_counts[missing_class] < 2:
            return False
        source_rows = other_start + (current[other] == missing_class).nonzero().flatten()
        donor_rows = part_start + (part_counts[current[part]] >= 2).nonzero().flatten()
        if source_rows.numel() == 0 or donor_rows.numel() == 0:
            return False
        source = int(source_rows[rng.integer(0, source_rows.numel() - 1)])
        donor = int(donor_rows[rng.integer(0, donor_rows.numel() - 1)])
        donor_class = int(current[donor])
        part_counts[donor_class] -= 1
        part_counts[missing_class] += 1
        other_counts[missing_class] -= 1
        other_counts[donor_class] += 1
        order[[donor, source]] = order[[source, donor]]
        current[[donor, source]] = current[[source, donor]]
    return True


def order_rows_for_split(
    labels: torch.Tensor, n_train: int, rng: PriorRandom, classes_in_test: bool
) -> torch.Tensor | None:
    """A row order in which every class of ``labels`` occurs among the first ``n_train`` rows and, if
    ``classes_in_test``, also among the remaining rows.

    Rows are i.i.d., so the identity order already is a random split; missing classes are brought in by swapping
    single rows. Returns ``None`` when impossible (more classes than rows in a part, or, with ``classes_in_test``,
    a class with a single row).
    """
    n_rows = labels.shape[0]
    n_classes = int(labels.max()) + 1
    if n_classes > n_train or (classes_in_test and n_classes > n_rows - n_train):
        return None
    order = torch.arange(n_rows)
    current = labels.clone()
    train_part, test_part = slice(0, n_train), slice(n_train, n_rows)
    if not _swap_in_missing_classes(current, order, train_part, test_part, False, rng):
        return None
    if classes_in_test and not _swap_in_missing_classes(current, order, test_part, train_part, True, rng):
        return None
    return order


def inject_missing_values(x: torch.Tensor, rng: PriorRandom, config: PriorConfig) -> torch.Tensor:
    """With probability ``nan_prob``, set cells of ``x (T, d)`` to NaN; the expected share of missing cells is at
    most ``fraction ~ U[0, max_nan_fraction]``.

    ``nan_mode="cells"``: every cell with probability ``fraction`` (MCAR). ``"mixed"``: one pattern per table:
    MCAR cells; MCAR in a random subset of the columns, each with its own rate; or missing-not-at-random, where a
    column's values above (or below) its median go missing (real data loses large incomes, rare measurements...).
    """
    if not rng.bernoulli(config.nan_prob):
        return x
    fraction = rng.uniform(0.0, config.max_nan_fraction)
    if config.nan_mode == "cells":
        return x.masked_fill(rng.rand(*x.shape) < fraction, float("nan"))
    n_rows, n_columns = x.shape
    pattern = rng.integer(0, 2)
    if pattern == 0:
        probability = torch.full((1, n_columns), fraction)
    elif pattern == 1:
        chosen = rng.rand(n_columns) < rng.uniform(0.1, 1.0)
        if not bool(chosen.any()):
            chosen[rng.integer(0, n_columns - 1)] = True
        # Rates scaled so that the table's overall share stays <= fraction, capped so no column is always missing.
        rates = fraction * n_columns / int(chosen.sum()) * (0.5 + 0.5 * rng.rand(n_columns))
        probability = (rates * chosen).clamp(max=0.9)[None, :]
    else:
        high_side = rng.rand(n_columns) < 0.5
        above = x > x.median(dim=0, keepdim=True).values
        side = torch.where(high_side[None, :], above, ~above)
        # About half the rows are on the missing side, at twice the rate: an expected share of ~fraction.
        probability = side * (2.0 * fraction * (0.5 + 0.5 * rng.rand(1, n_columns)))
    return x.masked_fill(rng.rand(n_rows, n_columns) < probability, float("nan"))


def warp_regression_target(target: torch.Tensor, rng: PriorRandom, config: PriorConfig) -> torch.Tensor | None:
    """With ``config.target_warp_prob``: the standardized ``target (T,)`` made right-skewed (``exp(s * y)``), for a
    share ``target_count_prob`` of those then drawn as Poisson counts around it; re-standardized. ``None`` if the
    counts came out constant. Otherwise ``target`` unchanged."""
    # No draw at all when off, so the older named configs replay exactly the same tables.
    if config.target_warp_prob <= 0 or not rng.bernoulli(config.target_warp_prob):
        return target
    warped = torch.exp(rng.uniform(*config.target_warp_scale) * target[:, None])
    if rng.bernoulli(config.target_count_prob):
        rate = warped * (rng.log_uniform(*config.target_count_mean) / warped.mean())
        warped = torch.poisson(rate, generator=rng.torch)
        if not bool(non_constant_columns(warped).all()):
            return None
    return standardize(warped, config.feature_clip)[:, 0]


def replace_with_irrelevant_columns(features: torch.Tensor, rng: PriorRandom, config: PriorConfig) -> torch.Tensor:
    """With ``config.irrelevant_feature_prob``: a copy of ``features (T, d)`` in which a share
    ``config.irrelevant_feature_fraction`` of the columns (at least one, never all) are row-shuffled copies of random
    columns, so they keep a real column's marginal distribution but carry nothing about the target. Otherwise (and
    for a single column) ``features`` unchanged."""
    # No draw at all when off, so the older named configs replay exactly the same tables.
    n_rows, n_columns = features.shape
    if config.irrelevant_feature_prob <= 0 or n_columns < 2 or not rng.bernoulli(config.irrelevant_feature_prob):
        return features
    share = rng.uniform(*config.irrelevant_feature_fraction)
    n_irrelevant = min(n_columns - 1, max(1, round(share * n_columns)))
    replaced = features.clone()
    for column in rng.randperm(n_columns)[:n_irrelevant].tolist():
        source = rng.integer(0, n_columns - 1)
        replaced[:, column] = features[rng.randperm(n_rows), source]
    return replaced


def postprocess_table(
    X: torch.Tensor, y: torch.Tensor, n_train: int, n_classes: int, rng: PriorRandom, config: PriorConfig
) -> ProcessedTable | None:
    """Clean one raw SCM table ``X (T, d), y (T,)``; ``None`` if it is unusable (non-finite values, no varying
    feature, constant target, or class bins that cannot be split as required, see :func:`order_rows_for_split`)."""
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(f"expected X (T, d) and y (T,), got {tuple(X.shape)} and {tuple(y.shape)}")
    if not 1 <= n_train < X.shape[0]:
        raise ValueError(f"n_train must be in [1, T), got {n_train} with T={X.shape[0]}")
    if not (torch.isfinite(X).all() and torch.isfinite(y).all()):
        return None
    features = convert_random_columns_to_categorical(X.double(), rng, config)
    features = clip_outliers(features, config.outlier_threshold)
    varying = non_constant_columns(features)
    if not bool(varying.any()):
        return None
    features = standardize(features[:, varying], config.feature_clip)
    features = replace_with_irrelevant_columns(features, rng, config)
    if config.permute_features:
        features = features[:, rng.randperm(features.shape[1])]

    target = clip_outliers(y.double()[:, None], config.outlier_threshold)
    if not bool(non_constant_columns(target).all()):
        return None
    target = standardize(target, config.feature_clip)[:, 0]

    if config.task == "regression":
        target = warp_regression_target(target, rng, config)
        if target is None:
            return None
        return ProcessedTable(inject_missing_values(features, rng, config).float(), target.float(), 0)

    # Redrawing boundaries is much cheaper than redrawing the whole SCM when the bins are unusable.
    for _ in range(_CLASS_ASSIGNMENT_TRIES):
        labels, n_present = assign_classes(target, n_classes, rng, config)
        if n_present < 2:
            continue
        # The test part only has to hold every class when it has room for all of them (tiny tables).
        classes_in_test = config.classes_in_test and n_present <= X.shape[0] - n_train
        order = order_rows_for_split(labels, n_train, rng, classes_in_test)
        if order is not None:
            break
    else:
        return None
    features, labels = features[order], labels[order]
    return ProcessedTable(inject_missing_values(features, rng, config).float(), labels.float(), n_present)

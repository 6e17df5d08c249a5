"""How to read a regression network's output, and how targets are scaled for it.

Each network family predicts the (scaled) target differently:

- TabICL: ``K`` quantiles at levels ``1/(K+1) .. K/(K+1)`` (:class:`QuantileHead`);
- TabPFN v2: logits of a bar distribution over buckets with edges ``net.borders`` (:class:`BarDistributionHead`);
- Mitra: one number, a point prediction (:class:`ScalarHead`).

A head turns one member's raw output ``(n_rows, n_out)`` into an array that can be averaged over ensemble members
(``prepare``: sorted quantiles, bucket probabilities, the value), then reads the mean and quantiles from that
average. Everything here works in the network's scaled target space; :class:`TargetScaler` maps to and from it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import erfinv, softmax

__all__ = [
    "BarDistributionHead",
    "QuantileHead",
    "RegressionHead",
    "ScalarHead",
    "TargetScaler",
    "regression_head_for",
    "validate_quantile_levels",
]

TARGET_SCALINGS = ("zscore", "minmax")


def validate_quantile_levels(quantiles) -> np.ndarray:
    """Quantile levels as a 1-D float64 array, each strictly between 0 and 1."""
    levels = np.atleast_1d(np.asarray(quantiles, dtype=np.float64))
    if levels.ndim != 1 or levels.size == 0:
        raise ValueError(f"quantiles must be a non-empty 1-D sequence of levels in (0, 1), got {quantiles!r}.")
    if not np.all((levels > 0) & (levels < 1)):
        raise ValueError(f"quantile levels must lie strictly between 0 and 1, got {levels.tolist()}.")
    return levels


class RegressionHead:
    """Interface: ``prepare`` one member's raw output, average prepared arrays, then read ``mean`` / ``quantiles``."""

    #: Width of the raw network output per row.
    n_out: int
    #: Whether the head describes a distribution (so quantiles can be read from it).
    supports_quantiles: bool = True

    def prepare(self, raw: np.ndarray) -> np.ndarray:
        """``(..., n_out)`` raw output -> array that is averaged over members."""
        raise NotImplementedError

    def mean(self, prepared: np.ndarray) -> np.ndarray:
        """``(..., k)`` prepared -> ``(...)`` mean of the predicted distribution (linear in ``prepared``)."""
        raise NotImplementedError

    def quantiles(self, prepared: np.ndarray, levels: np.ndarray) -> np.ndarray:
        """``(n, k)`` prepared -> ``(n, len(levels))`` quantiles, non-decreasing along the levels."""
        raise NotImplementedError


class QuantileHead(RegressionHead):
    """``K`` predicted quantiles at levels ``i / (K + 1)``, ``i = 1..K`` (TabICL).

    Crossing quantiles are repaired by sorting. The mean is the mean of the sorted quantiles (evenly spaced levels);
    quantiles between the predicted levels interpolate linearly; below the first / above the last level the inverse
    CDF continues with exponential tails whose slope matches the outermost segment, so it is continuous, monotone and
    unbounded towards levels 0 and 1. Averaging members' sorted quantiles and reading a quantile from the average
    equals averaging the members' quantiles (the map is linear in the quantile values).
    """

    def __init__(self, n_quantiles: int):
        if n_quantiles < 1:
            raise ValueError(f"A quantile head needs at least one quantile, got {n_quantiles}.")
        self.n_out = int(n_quantiles)
        self.levels = np.arange(1, self.n_out + 1, dtype=np.float64) / (self.n_out + 1)

    def prepare(self, raw: np.ndarray) -> np.ndarray:
        return np.sort(np.asarray(raw, dtype=np.float64), axis=-1)

    def mean(self, prepared: np.ndarray) -> np.ndarray:
        return prepared.mean(axis=-1)

    def quantiles(self, prepared: np.ndarray, levels: np.ndarray) -> np.ndarray:
        values = np.asarray(prepared, dtype=np.float64)
        if self.n_out == 1:  # a single quantile carries no spread
            return np.repeat(values, len(levels), axis=1)
        knots = self.levels
        out = np.empty((values.shape[0], len(levels)))
        for j, level in enumerate(levels):
            if level < knots[0]:
                slope = (values[:, 1] - values[:, 0]) / (knots[1] - knots[0])
                out[:, j] = values[:, 0] + slope * knots[0] * math.log(level / knots[0])
            elif level > knots[-1]:
                slope = (values[:, -1] - values[:, -2]) / (knots[-1] - knots[-2])
                out[:, j] = values[:, -1] - slope * (1 - knots[-1]) * math.log((1 - level) / (1 - knots[-1]))
            else:
                left = min(int(np.searchsorted(knots, level, side="right")) - 1, self.n_out - 2)
                t = (level - knots[left]) / (knots[left + 1] - knots[left])
                out[:, j] = values[:, left] + t * (values[:, left + 1] - values[:, left])
        return out


class BarDistributionHead(RegressionHead):
    """Logits of a bar distribution over buckets ``[borders[i], borders[i+1])`` (TabPFN v2).

    Members' bucket probabilities are averaged (a mixture). The mean uses bucket midpoints, except in the two outer
    buckets, which stand for unbounded half-normal tails starting at the inner border with half their mass within
    the bucket width. Quantiles invert the cumulative bucket probabilities, linearly within a bucket.
    """

    def __init__(self, borders: torch.Tensor | np.ndarray):
        borders = np.asarray(borders.detach().cpu() if isinstance(borders, torch.Tensor) else borders, np.float64)
        if borders.ndim != 1 or borders.size < 2:
            raise ValueError(f"borders must be a 1-D array of at least 2 bucket edges, got shape {borders.shape}.")
        if not np.all(np.isfinite(borders)) or not np.all(np.diff(borders) > 0):
            raise ValueError("borders must be finite and strictly increasing.")
        self.borders = borders
        self.widths = np.diff(borders)
        self.n_out = len(self.widths)
        bucket_means = borders[:-1] + self.widths / 2
        if self.n_out >= 2:
            # Half-normal with P(tail <= width) = 1/2: scale = width / (sqrt(2) * erfinv(1/2)); mean = scale*sqrt(2/pi)
            tail_mean = np.sqrt(2 / np.pi) / (np.sqrt(2) * erfinv(0.5))
            bucket_means[0] = borders[1] - self.widths[0] * tail_mean
            bucket_means[-1] = borders[-2] + self.widths[-1] * tail_mean
        self.bucket_means = bucket_means

    def prepare(self, raw: np.ndarray) -> np.ndarray:
        return softmax(np.asarray(raw, dtype=np.float64), axis=-1)

    def mean(self, prepared: np.ndarray) -> np.ndarray:
        return prepared @ self.bucket_means

    def quantiles(self, prepared: np.ndarray, levels: np.ndarray) -> np.ndarray:
        probs = np.asarray(prepared, dtype=np.float64)
        cumulative = np.cumsum(probs, axis=1)
        rows = np.arange(len(probs))
        out = np.empty((len(probs), len(levels)))
        for j, level in enumerate(levels):
            # First bucket whose cumulative probability reaches the level (the last one if rounding falls short).
            bucket = np.minimum((cumulative < level).sum(axis=1), self.n_out - 1)
            mass = probs[rows, bucket]
            below = cumulative[rows, bucket] - mass
            fraction = np.clip(np.divide(level - below, mass, out=np.full_like(mass, 0.5), where=mass > 0), 0, 1)
            out[:, j] = self.borders[bucket] + fraction * self.widths[bucket]
        return out


class ScalarHead(RegressionHead):
    """One number per row: a point prediction (Mitra). No distribution, hence no quantiles."""

    n_out = 1
    supports_quantiles = False

    def __init__(self, model_name: str = "this network"):
        self.model_name = model_name

    def prepare(self, raw: np.ndarray) -> np.ndarray:
        return np.asarray(raw, dtype=np.float64)[..., :1]

    def mean(self, prepared: np.ndarray) -> np.ndarray:
        return prepared[..., 0]

    def quantiles(self, prepared: np.ndarray, levels: np.ndarray) -> np.ndarray:
        raise ValueError(
            f"{self.model_name} has a scalar regression head (one point prediction per row, no distribution), so "
            f"quantiles cannot be predicted; use predict(), or model='tabicl' / 'tabpfnv2' for quantiles."
        )


def regression_head_for(network: torch.nn.Module) -> RegressionHead:
    """The head matching a regression network: a ``borders`` buffer -> bar distribution, ``num_quantiles`` ->
    quantiles, a single output -> scalar."""
    borders = getattr(network, "borders", None)
    if borders is not None:
        return BarDistributionHead(borders)
    n_quantiles = getattr(network, "num_quantiles", None)
    if n_quantiles:
        return QuantileHead(int(n_quantiles))
    n_out = getattr(network, "n_out", None)
    if n_out is None:
        n_out = getattr(network, "config", {}).get("dim_output")
    if n_out == 1:
        return ScalarHead(f"model {getattr(network, 'arch', type(network).__name__)!r}")
    raise ValueError(
        f"Cannot tell how to read the regression output of {type(network).__name__}: it has no `borders` (bar "
        f"distribution), no `num_quantiles` (quantiles) and is not a single-output network."
    )


class TargetScaler:
    """Affine map of the target into the space the network was trained on, and back.

    ``"zscore"``: ``(y - mean) / std`` (population std; TabICL, TabPFN v2). ``"minmax"``: ``(y - min) / (max - min)``
    over the training targets (Mitra). A constant target has no scale; callers predict the constant instead.
    """

    def __init__(self, method: str = "zscore"):
        if method not in TARGET_SCALINGS:
            raise ValueError(f"Unknown target scaling {method!r}; expected one of {TARGET_SCALINGS}.")
        self.method = method

    def fit(self, y: np.ndarray) -> TargetScaler:
        y = np.asarray(y, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below as a clear error
            if self.method == "zscore":
                self.offset_, self.scale_ = float(y.mean()), float(y.std())
            else:
                self.offset_, self.scale_ = float(y.min()), float(y.max() - y.min())
        if not (math.isfinite(self.offset_) and math.isfinite(self.scale_)):
            raise ValueError("The target's range is too large to scale in float64 (overflow); rescale y.")
        return self

    @property
    def is_constant(self) -> bool:
        return self.scale_ == 0

    def transform(self, y: np.ndarray) -> np.ndarray:
        return (np.asarray(y, dtype=np.float64) - self.offset_) / self.scale_

    def inverse_transform(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(z, dtype=np.float64) * self.scale_ + self.offset_

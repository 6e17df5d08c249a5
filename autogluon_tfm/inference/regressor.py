"""scikit-learn regressor around an in-context-learning tabular network (TabICL, TabPFN v2 or Mitra).

``fit`` encodes and remembers the training table and scales the target into the space the network was trained on
(z-score for TabICL / TabPFN v2, min-max for Mitra); ``predict`` runs the network on (training rows + test rows) for
every ensemble member (normalisation variant x feature order), reads each member's predicted distribution through
the network's regression head, averages over members and maps back to the target's scale. With
``fine_tune="full" | "lora"`` (or when ``fine_tune="auto"`` and the weights' card recommends it, as the shipped
Mitra weights' does), ``fit`` also finetunes a copy of the network on the training table
(:mod:`autogluon_tfm.finetune`) and predicts with it afterwards.
"""

from __future__ import annotations

import logging
import numbers
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import RegressorMixin
from tqdm.auto import tqdm

from autogluon_tfm.inference.base import InContextEstimator, resolve_device, resolve_precision
from autogluon_tfm.inference.preprocessing import TableEncoder
from autogluon_tfm.inference.regression_heads import (
    RegressionHead,
    TargetScaler,
    regression_head_for,
    validate_quantile_levels,
)

__all__ = ["TFMRegressor"]

logger = logging.getLogger(__name__)


def _label_like_error(kind: str, examples: list) -> ValueError:
    return ValueError(
        f"y holds {kind} (e.g. {examples}), which look like class labels; TFMRegressor needs numeric targets. "
        f"Use TFMClassifier for classification, or convert y to numbers if it really is a regression target."
    )


def _validate_targets(y: Any, n_rows: int) -> np.ndarray:
    """``y`` -> new float64 1-D array of finite numbers (the caller's object is never modified)."""
    if y is None:
        raise ValueError("y is None; a regressor needs one numeric target per row of X.")
    if isinstance(y, pd.DataFrame):
        if y.shape[1] != 1:
            raise ValueError(f"y must be 1-D (one target per row); got a DataFrame with {y.shape[1]} columns.")
        y = y.iloc[:, 0]
    if isinstance(y, (pd.Series, pd.Index)):
        dtype = y.dtype
        if isinstance(dtype, pd.CategoricalDtype):
            raise _label_like_error("categories", list(dtype.categories[:3]))
        if pd.api.types.is_bool_dtype(dtype):
            raise _label_like_error("booleans", [True, False])
        if pd.api.types.is_numeric_dtype(dtype):
            y = y.to_numpy(dtype=np.float64, na_value=np.nan)  # nullable Int64 / Float64 with <NA> included
        else:
            y = y.to_numpy(dtype=object)
    array = np.asarray(y)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array.ravel()
    if array.ndim != 1:
        raise ValueError(f"y must be 1-D (one target per row), got shape {array.shape}.")
    if len(array) != n_rows:
        raise ValueError(f"X and y have different lengths: X has {n_rows} rows, y has {len(array)} targets.")
    kind = array.dtype.kind
    if kind in "US":
        raise _label_like_error("strings", array[:3].tolist())
    if kind == "b":
        raise _label_like_error("booleans", array[:3].tolist())
    if kind == "O":
        present = [v for v in array if v is not None and v is not pd.NA and not (isinstance(v, float) and v != v)]
        strings = [v for v in present if isinstance(v, (str, bytes))]
        if strings:
            raise _label_like_error("strings", strings[:3])
        if any(isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) for v in present):
            odd = [v for v in present if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real)]
            raise ValueError(f"y must hold real numbers; got values such as {odd[:3]}.")
        array = np.array([np.nan if v is None or v is pd.NA else float(v) for v in array], dtype=np.float64)
    elif kind not in "iuf":
        raise ValueError(f"y must hold real numbers, got dtype {array.dtype}.")
    targets = np.array(array, dtype=np.float64)  # always a copy
    bad = ~np.isfinite(targets)
    if bad.any():
        positions = np.flatnonzero(bad)[:5].tolist()
        raise ValueError(
            f"y contains {int(bad.sum())} missing or infinite targets (NaN/inf), e.g. at rows {positions}; "
            f"drop or impute those rows."
        )
    return targets


class TFMRegressor(RegressorMixin, InContextEstimator):
    """Tabular foundation-model regressor (in-context learning), scikit-learn compatible.

    Args:
        model: ``"tabicl"`` (999 quantiles), ``"tabpfnv2"`` (bar distribution) or ``"mitra"`` (point prediction).
        checkpoint: ``"default"`` (an official regression checkpoint in the local cache, else shipped weights), a
            shipped weights name, a checkpoint path, or a ``torch.nn.Module`` following the network protocol (used
            as is: not copied, but may be moved to ``device``). Must be a regression network of ``model``.
        n_estimators: number of ensemble members (fewer on tiny tables, see ``build_ensemble``; Mitra keeps one per
            class relabelling, as it ignores column order and monotone normalisations).
        norm_methods: normalisation variants cycled over members; from ``NORM_METHODS``.
        feat_shuffle: feature-order strategy: ``"latin"``, ``"shift"``, ``"random"`` or ``"none"``.
        categorical_order: how categorical columns are numbered: ``"target"`` ranks a column's categories by their
            smoothed mean training target (see :class:`~autogluon_tfm.inference.preprocessing.TableEncoder`),
            ``"lexical"`` in sorted order (the official TabICL encoding); ``"auto"`` = ``"target"``.
        outlier_threshold: soft-clip features beyond this many standard deviations.
        feature_compression: ``"auto"``, ``"select"``, ``"none"``, a number of principal components or
            ``"top<k>"``: feed the network the leading principal components of wide tables, or their k most
            important columns, instead of all their columns (see
            :class:`~autogluon_tfm.inference.base.InContextEstimator`). ``"select"`` scores the held-out rows by RMSE.
        batch_size: ensemble members per network call.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, or a ``torch.device``.
        precision: ``"auto"`` (bf16 autocast on CUDA, fp32 on CPU), ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast).
        random_state: seed of the ensemble configuration (int for reproducible members).
        verbose: show progress bars (finetuning and prediction).
        fine_tune, fine_tune_steps, learning_rate, lora_rank, lora_alpha, lora_dropout, lora_target_modules,
            validation_fraction, time_limit: finetuning in ``fit`` (shared with ``TFMClassifier``, described in
            :class:`~autogluon_tfm.inference.base.InContextEstimator`). Each step scales the targets by its context
            rows and trains the head's loss (TabICL: pinball over the quantiles; TabPFN v2: bar-distribution
            cross-entropy; Mitra: squared error); early stopping watches the same loss of the ensemble prediction on
            the validation rows. A constant target is never finetuned (it is predicted exactly).

    ``predict`` returns the mean of the predicted distribution averaged over members (Mitra: the point predictions
    averaged, clipped to the training targets' range); ``predict_quantiles`` the
    quantiles of the members' averaged distribution (TabICL: members' quantiles averaged; TabPFN v2: mixture of the
    members' bar distributions). A constant target (including a single training row) is predicted exactly, without
    running the network.

    Fitted attributes: ``n_features_in_``, ``feature_names_in_`` (DataFrame input), ``encoder_``, ``preprocessor_``,
    ``members_``, ``network_``, ``checkpoint_path_``, ``device_``, ``precision_``, ``head_`` (how the network's
    output is read), ``target_scaler_`` (None for a constant target), ``constant_target_`` (the constant, else
    None), ``y_train_`` (scaled training targets), ``feature_compression_`` (principal components fed to the network,
    ``"top<k>"`` for k selected columns, None: all encoded columns), ``compressor_``, ``feature_compression_scores_`` (held-out RMSE of ``"select"``,
    else None), ``fine_tune_`` / ``fine_tune_steps_`` / ``validation_fraction_`` (the finetuning mode, step budget
    and held-out share used; None: in-context learning only), ``fine_tune_report_`` (a
    :class:`autogluon_tfm.finetune.FinetuneReport`, or None without finetuning).
    """

    _task = "regression"

    def __init__(
        self,
        model: str = "tabicl",
        checkpoint: str | Path | torch.nn.Module = "default",
        n_estimators: int = 8,
        norm_methods: Sequence[str] = ("none", "power"),
        feat_shuffle: str = "latin",
        categorical_order: str = "auto",
        outlier_threshold: float = 4.0,
        feature_compression: str | int | None = "auto",
        batch_size: int = 8,
        device: str | torch.device = "auto",
        precision: str = "auto",
        random_state: int | None = 0,
        verbose: bool = False,
        fine_tune: str | None = "auto",
        fine_tune_steps: int | str = "auto",
        learning_rate: float | str = "auto",
        lora_rank: int = 8,
        lora_alpha: float = 16.0,
        lora_dropout: float = 0.05,
        lora_target_modules: Sequence[str] | None = None,
        validation_fraction: float | str = "auto",
        time_limit: float | None = None,
    ):
        self.model = model
        self.checkpoint = checkpoint
        self.n_estimators = n_estimators
        self.norm_methods = norm_methods
        self.feat_shuffle = feat_shuffle
        self.categorical_order = categorical_order
        self.outlier_threshold = outlier_threshold
        self.feature_compression = feature_compression
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self.random_state = random_state
        self.verbose = verbose
        self.fine_tune = fine_tune
        self.fine_tune_steps = fine_tune_steps
        self.learning_rate = learning_rate
        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha
        self.lora_dropout = lora_dropout
        self.lora_target_modules = lora_target_modules
        self.validation_fraction = validation_fraction
        self.time_limit = time_limit

    # ------------------------------------------------------------------------------------------------------- fit
    def fit(self, X: Any, y: Any, X_val: Any = None, y_val: Any = None) -> TFMRegressor:
        """Encode and remember the training table and its scaled targets (no network forward).

        With ``fine_tune`` set, also finetune a copy of the network; ``X_val`` / ``y_val`` (optional) are the rows its
        early stopping watches (else ``validation_fraction`` of the training rows). Without ``fine_tune`` they are
        ignored.
        """
        fit_start = time.monotonic()
        norm_methods = self._validate_common_params()
        self._validate_fine_tune_params()
        seed = self._random_seed()
        frame = self._as_table(X, "X")
        n_rows, n_columns = frame.shape
        if n_rows == 0:
            raise ValueError("X is empty (0 rows); at least one training row is needed.")
        if n_columns == 0:
            raise ValueError("X has 0 columns; at least one feature is required.")
        targets = _validate_targets(y, n_rows)

        # Everything that can fail on the network (missing weights, wrong model or task) fails before any state is
        # set, whatever the data.
        device = resolve_device(self.device)
        self.device_ = device
        self.precision_ = resolve_precision(self.precision, device)
        self.network_, self.checkpoint_path_ = self._load_network()
        self._resolve_fine_tune()
        self.head_: RegressionHead = regression_head_for(self.network_)

        self.n_features_in_ = n_columns
        if isinstance(X, pd.DataFrame):
            self.feature_names_in_ = np.asarray(frame.columns, dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_  # refit on an array: forget names of a previous DataFrame fit
        order = "target" if self.categorical_order == "auto" else self.categorical_order
        self.encoder_ = TableEncoder(categorical_order=order).fit(frame, targets)
        X_encoded = self.encoder_.transform(frame)
        n_components, _ = self._choose_feature_compression(frame, targets, X_encoded.shape[1], seed)
        self._fit_features(X_encoded, targets, n_components, norm_methods, seed, n_classes=1, class_shift=False)

        if np.all(targets == targets[0]):  # includes a single training row: nothing to learn but the value
            self.constant_target_: float | None = float(targets[0])
            self.target_scaler_: TargetScaler | None = None
            self.y_train_ = np.zeros_like(targets)
        else:
            self.constant_target_ = None
            scaling = getattr(self.network_, "regression_target_scaling", "zscore")
            self.target_scaler_ = TargetScaler(scaling).fit(targets)
            self.y_train_ = self.target_scaler_.transform(targets)
        self._reset_train_cache()
        self.fine_tune_report_ = None
        if self.fine_tune_ is not None:
            self._run_fine_tune(X_val, y_val, seed, fit_start)
        logger.info(
            "TFMRegressor fitted: %d rows, %d features (%d after encoding/filtering), %d members, head=%s, "
            "target scaling=%s, device=%s, precision=%s, checkpoint=%s",
            n_rows,
            n_columns,
            self.preprocessor_.n_features_out_,
            len(self.members_),
            type(self.head_).__name__,
            "constant" if self.target_scaler_ is None else self.target_scaler_.method,
            self.device_,
            self.precision_,
            self.checkpoint_path_,
        )
        return self

    def _held_out_losses(
        self, frame: pd.DataFrame, targets: np.ndarray, seed: int | None, feature_compression: str | int
    ) -> tuple[np.ndarray, None] | None:
        """Per-row squared errors of in-context predictions of held-out training rows with ``feature_compression``."""
        squared_errors = [
            (fold_model.predict(frame.iloc[fold]) - targets[fold]) ** 2
            for fold, fold_model in self._held_out_estimators(
                frame, targets, seed, feature_compression=feature_compression
            )
        ]
        if not squared_errors:
            return None
        return np.concatenate(squared_errors), None

    @staticmethod
    def _held_out_score(losses: np.ndarray) -> float:
        """RMSE."""
        return float(np.sqrt(np.mean(losses)))

    def _run_fine_tune(self, X_val: Any, y_val: Any, seed: int | None, fit_start: float) -> None:
        """Finetune on the training table (targets in the scaled space of ``y_train_``)."""
        from autogluon_tfm.finetune import RegressionFinetuneData, target_bins

        if (X_val is None) != (y_val is None):
            raise ValueError("Pass both X_val and y_val, or neither.")
        validation = None
        if X_val is not None:
            frame = self._validate_predict_input(X_val)
            targets = _validate_targets(y_val, len(frame))
            if len(frame) and self.target_scaler_ is not None:
                validation = (self._preprocessed_by_method(frame), self.target_scaler_.transform(targets))
        if self.constant_target_ is not None:
            logger.log(
                self._skip_log_level(),
                "The training target is constant (predicted exactly without the network); not finetuning.",
            )
            return

        strata = target_bins(self.y_train_)
        task_args = {"network": self.network_}
        self._fine_tune(self.y_train_, strata, validation, RegressionFinetuneData, task_args, seed, fit_start)

    # ------------------------------------------------------------------------------------------------- predict
    def predict(self, X: Any) -> np.ndarray:
        """Predicted mean per row, shape ``(n_rows,)``, float64, in the target's original scale."""
        frame = self._validate_predict_input(X)
        if self.constant_target_ is not None:
            return np.full(len(frame), self.constant_target_)
        if len(frame) == 0:
            return np.zeros(0)
        head = self.head_
        scaled_mean = self._average_over_members(frame, lambda raw: head.mean(head.prepare(raw))[..., None])[:, 0]
        if self.target_scaler_.method == "minmax":
            # Mitra's point predictions live where its training targets were scaled to, [0, 1]; beyond that lies no
            # training target at all (e.g. negative counts on a heavy-tailed count target), so they are clipped.
            scaled_mean = np.clip(scaled_mean, 0.0, 1.0)
        return self.target_scaler_.inverse_transform(scaled_mean)

    def predict_quantiles(self, X: Any, quantiles: Sequence[float] = (0.1, 0.5, 0.9)) -> np.ndarray:
        """Predicted quantiles, shape ``(n_rows, len(quantiles))``, non-decreasing along the levels.

        Needs a head that predicts a distribution (TabICL quantiles, TabPFN v2 bar distribution); Mitra's scalar
        head raises a ``ValueError``. Levels must lie strictly between 0 and 1. Memory: the members' averaged
        distribution is held for every test row (``n_rows x n_out`` float64, e.g. 5,000 buckets for TabPFN v2), so
        predict very large test sets in slices.
        """
        levels = validate_quantile_levels(quantiles)
        frame = self._validate_predict_input(X)
        if not self.head_.supports_quantiles:
            self.head_.quantiles(np.zeros((0, self.head_.n_out)), levels)  # raises the head's explanation
        if self.constant_target_ is not None:
            return np.full((len(frame), len(levels)), self.constant_target_)
        if len(frame) == 0:
            return np.zeros((0, len(levels)))
        averaged = self._average_over_members(frame, self.head_.prepare)
        return self.target_scaler_.inverse_transform(self.head_.quantiles(averaged, levels))

    def _average_over_members(self, frame: pd.DataFrame, reduce) -> np.ndarray:
        """Mean over members of ``reduce(raw member output)``: ``(n_rows, k)`` float64 in the scaled target space."""
        X_test = self._encode(frame)
        network = self._network_on_device()
        n_chunks = -(-len(X_test) // self.max_test_rows_per_forward)
        batch_size = self._member_batch_size(network, len(self.y_train_), self.preprocessor_.n_features_out_)
        n_calls = sum(-(-len(group) // batch_size) for _, group in self._member_groups())
        expected_width = self.head_.n_out

        def checked_reduce(output: np.ndarray) -> np.ndarray:
            if output.shape[-1] != expected_width:
                raise ValueError(
                    f"The network returned {output.shape[-1]} values per row, but its regression head expects "
                    f"{expected_width}; the network does not follow the regression protocol."
                )
            return reduce(output)

        total = None
        with (
            self._eval_mode(network),
            tqdm(total=n_calls * n_chunks, desc="TFMRegressor", disable=not self.verbose, leave=False) as progress,
        ):
            for method, members in self._member_groups():
                X_train_method = self.preprocessor_.train_transformed_[method]
                X_test_method = self.preprocessor_.transform(X_test, method)
                for start in range(0, len(members), batch_size):
                    batch = members[start : start + batch_size]
                    orders = [member.feature_order for member in batch]
                    X_train_batch = np.stack([X_train_method[:, order] for order in orders])
                    y_batch = np.broadcast_to(self.y_train_, (len(batch), len(self.y_train_)))
                    reduced = self._forward(
                        network,
                        X_train_batch,
                        y_batch,
                        X_test_method,
                        orders,
                        progress,
                        reduce=checked_reduce,
                        cache_key=(method, start, len(batch)),
                    )
                    batch_sum = reduced.sum(axis=0)
                    total = batch_sum if total is None else total + batch_sum
        return total / len(self.members_)

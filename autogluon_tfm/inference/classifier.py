"""scikit-learn classifier around an in-context-learning tabular network (TabICL-style inference pipeline).

``fit`` only encodes and remembers the training table (in-context learning: no gradient step, no forward pass);
``predict_proba`` runs the network on (training rows + test rows) for every ensemble member and averages.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from autogluon_tfm.inference.ensemble import FEATURE_SHUFFLE_METHODS, EnsembleMember, build_ensemble
from autogluon_tfm.inference.hierarchical import build_class_tree, hierarchical_proba, softmax
from autogluon_tfm.inference.preprocessing import NORM_METHODS, EnsemblePreprocessor, TableEncoder, as_frame

__all__ = ["TFMClassifier"]

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Hierarchical members turn probabilities back into logits as temperature * log(p + eps) so that logit averaging
# across members and the final softmax(avg / temperature) treat them like ordinary members.
_HIERARCHICAL_LOG_EPS = 1e-6


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"Invalid device {device!r}: {error}") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available; use device='auto' or 'cpu'.")
    return resolved


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> bf16 autocast on CUDA (fp16 where bf16 is unsupported), fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; expected one of {PRECISIONS}.")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


class TFMClassifier(ClassifierMixin, BaseEstimator):
    """Tabular foundation-model classifier (in-context learning), scikit-learn compatible.

    Args:
        model: architecture name passed to ``resolve_checkpoint`` (e.g. ``"tabicl"``).
        checkpoint: ``"default"``, a shipped weights name, a checkpoint path, or a ``torch.nn.Module`` following the
            network protocol (used as is: it is not copied, but may be moved to ``device``).
        n_estimators: number of ensemble members (fewer on tiny tables, see ``build_ensemble``).
        norm_methods: normalisation variants cycled over members; from ``NORM_METHODS``.
        feat_shuffle: feature-order strategy: ``"latin"``, ``"shift"``, ``"random"`` or ``"none"``.
        class_shift: circularly shift class ids per member.
        outlier_threshold: soft-clip features beyond this many standard deviations.
        softmax_temperature: probabilities are ``softmax(averaged logits / softmax_temperature)``.
        average_logits: average members' logits (True) or their probabilities (False).
        batch_size: ensemble members per network call.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, or a ``torch.device``.
        precision: ``"auto"`` (bf16 autocast on CUDA, fp32 on CPU), ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast).
        random_state: seed of the ensemble configuration (int for reproducible members).
        verbose: show a progress bar during prediction.

    Fitted attributes: ``classes_``, ``n_classes_``, ``n_features_in_``, ``feature_names_in_`` (DataFrame input),
    ``encoder_``, ``preprocessor_``, ``members_``, ``network_``, ``checkpoint_path_``, ``device_``, ``precision_``,
    ``y_train_``, ``class_tree_`` (None unless there are more classes than the network's ``max_classes``).
    """

    # Test rows per network call; training rows are always all present. Bounds memory for large test sets.
    max_test_rows_per_forward: int = 50_000

    def __init__(
        self,
        model: str = "tabicl",
        checkpoint: str | Path | torch.nn.Module = "default",
        n_estimators: int = 8,
        norm_methods: Sequence[str] = ("none", "power"),
        feat_shuffle: str = "latin",
        class_shift: bool = True,
        outlier_threshold: float = 4.0,
        softmax_temperature: float = 0.9,
        average_logits: bool = True,
        batch_size: int = 8,
        device: str | torch.device = "auto",
        precision: str = "auto",
        random_state: int | None = 0,
        verbose: bool = False,
    ):
        self.model = model
        self.checkpoint = checkpoint
        self.n_estimators = n_estimators
        self.norm_methods = norm_methods
        self.feat_shuffle = feat_shuffle
        self.class_shift = class_shift
        self.outlier_threshold = outlier_threshold
        self.softmax_temperature = softmax_temperature
        self.average_logits = average_logits
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------------------------------------ validation
    def _validate_params(self) -> tuple[str, ...]:
        norm_methods = (self.norm_methods,) if isinstance(self.norm_methods, str) else tuple(self.norm_methods)
        if not norm_methods:
            raise ValueError("norm_methods must name at least one normalisation method.")
        unknown = [method for method in norm_methods if method not in NORM_METHODS]
        if unknown:
            raise ValueError(f"Unknown norm_methods {unknown}; expected a subset of {NORM_METHODS}.")
        if self.feat_shuffle not in FEATURE_SHUFFLE_METHODS:
            raise ValueError(f"Unknown feat_shuffle {self.feat_shuffle!r}; expected one of {FEATURE_SHUFFLE_METHODS}.")
        for name in ("n_estimators", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not self.softmax_temperature > 0:
            raise ValueError(f"softmax_temperature must be > 0, got {self.softmax_temperature!r}.")
        if not self.outlier_threshold > 0:
            raise ValueError(f"outlier_threshold must be > 0, got {self.outlier_threshold!r}.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"Unknown precision {self.precision!r}; expected one of {PRECISIONS}.")
        return norm_methods

    def _random_seed(self) -> int | None:
        if self.random_state is None or isinstance(self.random_state, (int, np.integer)):
            return None if self.random_state is None else int(self.random_state)
        if isinstance(self.random_state, np.random.RandomState):
            return int(self.random_state.randint(np.iinfo(np.int32).max))
        raise ValueError(f"random_state must be an int, None or a numpy RandomState, got {self.random_state!r}.")

    @staticmethod
    def _as_table(X: Any, what: str) -> pd.DataFrame:
        if X is None:
            raise ValueError(f"{what} is None; expected a 2-D table (DataFrame or array).")
        if isinstance(X, pd.Series):
            raise ValueError(f"{what} is a pandas Series (1-D); pass a DataFrame, e.g. X.to_frame().")
        if hasattr(X, "toarray") and not isinstance(X, pd.DataFrame):  # scipy sparse
            X = X.toarray()
        if not isinstance(X, pd.DataFrame):
            array = np.asarray(X)
            if array.ndim != 2:
                raise ValueError(
                    f"{what} must be 2-D (rows x features), got shape {array.shape}; "
                    "reshape a single feature with X.reshape(-1, 1) or a single row with X.reshape(1, -1)."
                )
        frame = as_frame(X)
        if frame.columns.has_duplicates:
            duplicated = list(frame.columns[frame.columns.duplicated()].unique())
            raise ValueError(f"{what} has duplicated column names: {duplicated}.")
        return frame

    @staticmethod
    def _validate_labels(y: Any, n_rows: int) -> np.ndarray:
        if y is None:
            raise ValueError("y is None; a classifier needs one label per row of X.")
        y_array = np.asarray(y)
        if y_array.ndim == 2 and y_array.shape[1] == 1:
            y_array = y_array.ravel()
        if y_array.ndim != 1:
            raise ValueError(f"y must be 1-D (one label per row), got shape {y_array.shape}.")
        if len(y_array) != n_rows:
            raise ValueError(f"X and y have different lengths: X has {n_rows} rows, y has {len(y_array)} labels.")
        if y_array.dtype.kind in "fc":
            bad = ~np.isfinite(y_array)
        else:
            bad = pd.isna(pd.Series(y_array, dtype=object)).to_numpy()
        if bad.any():
            positions = np.flatnonzero(bad)[:5].tolist()
            raise ValueError(
                f"y contains {int(bad.sum())} missing or infinite labels (NaN/inf), e.g. at rows {positions}."
            )
        check_classification_targets(y_array)
        return y_array

    # ------------------------------------------------------------------------------------------------------- fit
    def fit(self, X: Any, y: Any) -> TFMClassifier:
        """Encode and remember the training table (no network forward: the network learns in context)."""
        norm_methods = self._validate_params()
        seed = self._random_seed()
        frame = self._as_table(X, "X")
        n_rows, n_columns = frame.shape
        if n_rows == 0:
            raise ValueError("X is empty (0 rows); at least two rows with two different classes are needed.")
        if n_columns == 0:
            raise ValueError("X has 0 columns; at least one feature is required.")
        y_array = self._validate_labels(y, n_rows)

        label_encoder = LabelEncoder()
        y_encoded = label_encoder.fit_transform(y_array).astype(np.int64)
        self.classes_ = label_encoder.classes_
        self.n_classes_ = len(self.classes_)
        if self.n_classes_ < 2:
            raise ValueError(f"y has a single class ({self.classes_[0]!r}); a classifier needs at least two classes.")

        self.n_features_in_ = n_columns
        if isinstance(X, pd.DataFrame):
            self.feature_names_in_ = np.asarray(frame.columns, dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_  # refit on an array: forget names of a previous DataFrame fit

        self.encoder_ = TableEncoder().fit(frame)
        X_encoded = self.encoder_.transform(frame)
        self.preprocessor_ = EnsemblePreprocessor(norm_methods, self.outlier_threshold, seed).fit(X_encoded)
        self.y_train_ = y_encoded
        self.members_: list[EnsembleMember] = build_ensemble(
            n_features=self.preprocessor_.n_features_out_,
            n_classes=self.n_classes_,
            n_estimators=int(self.n_estimators),
            norm_methods=norm_methods,
            feat_shuffle=self.feat_shuffle,
            class_shift=bool(self.class_shift),
            random_state=seed,
        )

        self.device_ = resolve_device(self.device)
        self.precision_ = resolve_precision(self.precision, self.device_)
        self.network_, self.checkpoint_path_ = self._load_network()
        max_classes = int(getattr(self.network_, "max_classes", 0) or 0)
        if max_classes < 2:
            raise ValueError(
                f"The network from checkpoint {self.checkpoint_path_!r} is not a classifier "
                f"(max_classes={max_classes}); use a classification checkpoint."
            )
        self.class_tree_ = (
            build_class_tree(range(self.n_classes_), max_classes) if self.n_classes_ > max_classes else None
        )
        logger.info(
            "TFMClassifier fitted: %d rows, %d features (%d after encoding/filtering), %d classes%s, %d members, "
            "device=%s, precision=%s, checkpoint=%s",
            n_rows,
            n_columns,
            self.preprocessor_.n_features_out_,
            self.n_classes_,
            f" (hierarchical, {self.class_tree_.count_nodes()} nodes)" if self.class_tree_ is not None else "",
            len(self.members_),
            self.device_,
            self.precision_,
            self.checkpoint_path_,
        )
        return self

    def _load_network(self) -> tuple[torch.nn.Module, str]:
        if isinstance(self.checkpoint, torch.nn.Module):
            return self.checkpoint.to(self.device_), f"<{type(self.checkpoint).__name__} module>"
        from autogluon_tfm.checkpoints import load_network, resolve_checkpoint

        path = resolve_checkpoint(self.model, "classification", str(self.checkpoint))
        return load_network(path, device=str(self.device_)), str(path)

    # ------------------------------------------------------------------------------------------------- predict
    def _validate_predict_input(self, X: Any) -> pd.DataFrame:
        check_is_fitted(self, "members_")
        frame = self._as_table(X, "X")
        fitted_names = getattr(self, "feature_names_in_", None)
        if isinstance(X, pd.DataFrame) and fitted_names is not None:
            columns = list(frame.columns)
            missing = [name for name in fitted_names if name not in set(columns)]
            extra = [name for name in columns if name not in set(fitted_names)]
            if missing or extra:
                details = []
                if missing:
                    details.append(f"missing columns {missing}")
                if extra:
                    details.append(f"unexpected columns {extra}")
                raise ValueError(f"X does not have the columns seen in fit: {'; '.join(details)}.")
            if columns != list(fitted_names):
                frame = frame.loc[:, list(fitted_names)]  # same columns, other order: select by name (a new frame)
        elif frame.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {frame.shape[1]} columns, but the classifier was fitted with {self.n_features_in_}."
            )
        return frame

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape ``(n_rows, n_classes)``, float64, rows summing to 1 (order of ``classes_``)."""
        frame = self._validate_predict_input(X)
        if len(frame) == 0:
            return np.zeros((0, self.n_classes_))
        X_test = self.encoder_.transform(frame)
        network = self._network_on_device()
        n_chunks = -(-len(X_test) // self.max_test_rows_per_forward)
        if self.class_tree_ is not None:
            n_calls = len(self.members_) * (self.class_tree_.count_nodes() - self._count_single_class_leaves())
        else:
            n_calls = sum(-(-len(group) // int(self.batch_size)) for _, group in self._member_groups())
        total = np.zeros((len(X_test), self.n_classes_))
        with (
            self._eval_mode(network),
            tqdm(total=n_calls * n_chunks, desc="TFMClassifier", disable=not self.verbose, leave=False) as progress,
        ):
            for method, members in self._member_groups():
                X_train_method = self.preprocessor_.train_transformed_[method]
                X_test_method = self.preprocessor_.transform(X_test, method)
                if self.class_tree_ is not None:
                    for member in members:
                        total += self._hierarchical_member(network, member, X_train_method, X_test_method, progress)
                    continue
                for start in range(0, len(members), int(self.batch_size)):
                    batch = members[start : start + int(self.batch_size)]
                    total += self._flat_members(network, batch, X_train_method, X_test_method, progress)
        average = total / len(self.members_)
        proba = softmax(average, self.softmax_temperature) if self.average_logits else average
        return proba / proba.sum(axis=1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        """Most probable class label per row (labels as given in ``fit``)."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def _member_groups(self) -> Iterator[tuple[str, list[EnsembleMember]]]:
        for method, group in itertools.groupby(self.members_, key=lambda member: member.norm_method):
            yield method, list(group)

    def _count_single_class_leaves(self) -> int:
        return sum(len(leaf.classes) == 1 for leaf in self.class_tree_.leaves())

    def _member_output(self, logits: np.ndarray, member: EnsembleMember) -> np.ndarray:
        """Member logits in the member's label space -> contribution in original class order (float64)."""
        logits = logits[:, member.class_pattern].astype(np.float64)
        return logits if self.average_logits else softmax(logits, self.softmax_temperature)

    def _flat_members(
        self,
        network: torch.nn.Module,
        members: list[EnsembleMember],
        X_train: np.ndarray,
        X_test: np.ndarray,
        progress: tqdm,
    ) -> np.ndarray:
        orders = [member.feature_order for member in members]
        X_train_batch = np.stack([X_train[:, order] for order in orders])
        y_batch = np.stack([member.class_pattern[self.y_train_] for member in members])
        logits = self._forward(network, X_train_batch, y_batch, X_test, orders, progress)
        logits = logits[..., : self.n_classes_]
        return sum(self._member_output(member_logits, member) for member_logits, member in zip(logits, members))

    def _hierarchical_member(
        self,
        network: torch.nn.Module,
        member: EnsembleMember,
        X_train: np.ndarray,
        X_test: np.ndarray,
        progress: tqdm,
    ) -> np.ndarray:
        X_train_member = X_train[:, member.feature_order]
        y_member = member.class_pattern[self.y_train_]

        def node_logits(rows: np.ndarray, labels: np.ndarray, n_labels: int) -> np.ndarray:
            logits = self._forward(
                network, X_train_member[rows][None], labels[None], X_test, [member.feature_order], progress
            )
            return logits[0]

        proba = hierarchical_proba(
            node_logits,
            y_member,
            n_classes=self.n_classes_,
            n_test=len(X_test),
            max_classes=int(network.max_classes),
            softmax_temperature=self.softmax_temperature,
            tree=self.class_tree_,
        )[:, member.class_pattern]
        if self.average_logits:
            return self.softmax_temperature * np.log(proba + _HIERARCHICAL_LOG_EPS)
        return proba

    def _forward(
        self,
        network: torch.nn.Module,
        X_train_batch: np.ndarray,
        y_batch: np.ndarray,
        X_test: np.ndarray,
        feature_orders: list[np.ndarray],
        progress: tqdm,
    ) -> np.ndarray:
        """Run the network on ``(members, n_train + test chunk, H)``; returns ``(members, n_test, n_out)`` float32.

        Test rows are fed in chunks of ``max_test_rows_per_forward`` (the network keeps test rows independent, so
        chunking does not change results); each member's test rows get that member's feature order.
        """
        device = self.device_
        autocast_dtype = _AUTOCAST_DTYPES[self.precision_]
        autocast = (
            torch.autocast(device_type=device.type, dtype=autocast_dtype)
            if autocast_dtype is not None
            else contextlib.nullcontext()
        )
        outputs = []
        with torch.no_grad(), autocast:
            train = torch.from_numpy(np.ascontiguousarray(X_train_batch, dtype=np.float32)).to(device)
            labels = torch.from_numpy(np.ascontiguousarray(y_batch, dtype=np.float32)).to(device)
            for start in range(0, len(X_test), self.max_test_rows_per_forward):
                chunk = X_test[start : start + self.max_test_rows_per_forward]
                test = np.stack([chunk[:, order] for order in feature_orders]).astype(np.float32)
                X_full = torch.cat([train, torch.from_numpy(test).to(device)], dim=1)
                outputs.append(network(X_full, labels).float().cpu().numpy())
                progress.update(1)
        return np.concatenate(outputs, axis=1)

    def to(self, device: str | torch.device) -> TFMClassifier:
        """Move the fitted estimator to ``device`` (e.g. "cpu" before saving, "cuda" after loading)."""
        check_is_fitted(self, "network_")
        self.device = str(device)
        self.device_ = resolve_device(device)
        self.precision_ = resolve_precision(self.precision, self.device_)
        self.network_.to(self.device_)
        return self

    def _network_on_device(self) -> torch.nn.Module:
        # The network may have been moved to CPU by pickling (``__getstate__``); move it back.
        return self.network_.to(self.device_)

    @staticmethod
    @contextlib.contextmanager
    def _eval_mode(network: torch.nn.Module) -> Iterator[None]:
        # Inference needs eval mode (dropout off), but the module may be shared with a finetuning loop: restore.
        was_training = network.training
        network.eval()
        try:
            yield
        finally:
            network.train(was_training)

    # ------------------------------------------------------------------------------------------------- pickling
    def __getstate__(self) -> dict:
        # Weights travel with the pickle; keep them on CPU so the pickle loads on machines without the device.
        # This moves the live network too; the next prediction moves it back to ``device_``.
        network = self.__dict__.get("network_")
        if network is not None:
            network.to("cpu")
        return super().__getstate__()

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if "device_" not in self.__dict__:
            return
        if self.device == "auto":
            self.device_ = resolve_device("auto")
        elif self.device_.type == "cuda" and not torch.cuda.is_available():
            logger.warning("TFMClassifier was fitted on %s but CUDA is not available here; using CPU.", self.device_)
            self.device_ = torch.device("cpu")
        self.precision_ = resolve_precision(self.precision, self.device_)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

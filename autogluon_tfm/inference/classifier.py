"""scikit-learn classifier around an in-context-learning tabular network (TabICL-style inference pipeline).

``fit`` only encodes and remembers the training table (in-context learning: no gradient step, no forward pass);
``predict_proba`` runs the network on (training rows + test rows) for every ensemble member and averages. With
``fine_tune="full" | "lora"`` (or when ``fine_tune="auto"`` and the weights' card recommends it), ``fit`` also
finetunes a copy of the network on the training table (:mod:`autogluon_tfm.finetune`) and predicts with it
afterwards.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import ClassifierMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import type_of_target
from tqdm.auto import tqdm

from autogluon_tfm.inference.base import (  # noqa: F401 - resolve_*, PRECISIONS, FINE_TUNE_MODES re-exported
    FINE_TUNE_MODES,
    PRECISIONS,
    InContextEstimator,
    resolve_device,
    resolve_precision,
    supports_train_cache,
)
from autogluon_tfm.inference.calibration import apply_temperature, fit_temperature, row_log_losses
from autogluon_tfm.inference.ensemble import EnsembleMember
from autogluon_tfm.inference.hierarchical import build_class_tree, hierarchical_proba, proba_to_logits, softmax
from autogluon_tfm.inference.preprocessing import TableEncoder

__all__ = ["TFMClassifier"]

logger = logging.getLogger(__name__)


@dataclass
class _NodeStates:
    """One class-tree node's ICL training-row states (a train cache entry, see ``InContextEstimator._train_cache``)."""

    states: list[torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.states)


class TFMClassifier(ClassifierMixin, InContextEstimator):
    """Tabular foundation-model classifier (in-context learning), scikit-learn compatible.

    Args:
        model: architecture name passed to ``resolve_checkpoint`` (e.g. ``"tabicl"``).
        checkpoint: ``"default"``, a shipped weights name, a checkpoint path, or a ``torch.nn.Module`` following the
            network protocol (used as is: it is not copied, but may be moved to ``device``; finetuning trains a copy).
        n_estimators: number of ensemble members (fewer on tiny tables, see ``build_ensemble``; Mitra keeps one per
            class relabelling, as it ignores column order and monotone normalisations).
        norm_methods: normalisation variants cycled over members; from ``NORM_METHODS``.
        feat_shuffle: feature-order strategy: ``"latin"``, ``"shift"``, ``"random"`` or ``"none"``.
        categorical_order: how categorical columns are numbered: ``"target"`` ranks a column's categories by their
            smoothed rate of the second class (binary labels only; see
            :class:`~autogluon_tfm.inference.preprocessing.TableEncoder`), ``"lexical"`` in sorted order (the
            official TabICL encoding); ``"auto"`` = ``"target"`` for two classes, ``"lexical"`` for more.
        class_shift: circularly shift class ids per member.
        outlier_threshold: soft-clip features beyond this many standard deviations.
        softmax_temperature: probabilities are ``softmax(averaged logits / softmax_temperature)``.
        average_logits: average members' logits (True) or their probabilities (False).
        max_classes_per_call: most classes one network call decides between (2..the network's ``max_classes``).
            More classes go through a class tree (hierarchical prediction) whose nodes have at most this many
            groups. ``"auto"``: the value the weights' card recommends (``inference_defaults``; the shipped TabICL
            weights are far better at few-way decisions), else the network's ``max_classes``.
        calibrate: fit a temperature for the predicted probabilities in ``fit``
            (:mod:`~autogluon_tfm.inference.calibration`): a few folds of (at most 1,024) training rows are predicted
            in context from the other training rows, and the temperature that minimises their log loss rescales
            every later ``predict_proba`` (the predicted classes do not change). Costs one to three network passes
            over the training rows at fit time. ``"auto"``: when the weights' card recommends it (the shipped
            TabPFNv2 and Mitra weights, which are underconfident), else not; ``True`` / ``False``: always / never.
            In-context only: with finetuning the training rows are no longer unseen, so ``"auto"`` skips it,
            ``True`` is refused with an explicit ``fine_tune`` and turns off the finetuning ``fine_tune="auto"``
            would take from the card.
        feature_compression: ``"auto"``, ``"select"``, ``"none"``, a number of principal components or
            ``"top<k>"``: feed the network the leading principal components of wide tables, or their k most
            important columns, instead of all their columns (see
            :class:`~autogluon_tfm.inference.base.InContextEstimator`). ``"select"`` scores the held-out rows by log
            loss, after the calibration temperature when calibrating, and calibration reuses that pass.
        batch_size: ensemble members per network call.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, or a ``torch.device``.
        precision: ``"auto"`` (bf16 autocast on CUDA, fp32 on CPU), ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast).
        random_state: seed of the ensemble configuration (int for reproducible members).
        verbose: show progress bars (finetuning and prediction).
        fine_tune, fine_tune_steps, learning_rate, lora_rank, lora_alpha, lora_dropout, lora_target_modules,
            validation_fraction, time_limit: finetuning in ``fit`` (shared with ``TFMRegressor``, described in
            :class:`~autogluon_tfm.inference.base.InContextEstimator`).

    Finetuning early-stops on the log loss of the ensemble prediction on the validation rows. ``classes_`` come from
    ``y`` only; validation rows with other labels are ignored. With more classes than ``max_classes_per_call_``
    (hierarchical prediction), each step trains one node of the class tree (group or class labels of that node's
    rows, at most ``max_classes_per_call_`` of them), and validation scores the hierarchical prediction.

    Fitted attributes: ``classes_``, ``n_classes_``, ``n_features_in_``, ``feature_names_in_`` (DataFrame input),
    ``encoder_``, ``preprocessor_``, ``members_``, ``network_``, ``checkpoint_path_``, ``device_``, ``precision_``,
    ``y_train_``, ``max_classes_per_call_``, ``class_tree_`` (None unless there are more classes than that),
    ``calibration_temperature_`` (1.0 when not calibrated), ``feature_compression_`` (principal components fed to the
    network, ``"top<k>"`` for k selected columns, None: all encoded columns), ``compressor_``, ``feature_compression_scores_`` (held-out losses of
    ``"select"``, else None),
    ``fine_tune_`` / ``fine_tune_steps_`` / ``validation_fraction_`` (the finetuning mode, step budget and
    held-out share used; None: in-context learning only),
    ``fine_tune_report_`` (a :class:`autogluon_tfm.finetune.FinetuneReport`, or None without finetuning).
    """

    _task = "classification"
    #: How a target-aware TabICL (v2) embeds columns with more classes than ``max_classes``: ``"per_node"`` runs the
    #: whole network per class-tree node on that node's rows and labels (the labels stay within what the weights
    #: were trained on); ``"mixed_radix"`` follows the official tabicl 2.x (rows encoded once per member with
    #: mixed-radix label digits, only the ICL stage per node: much cheaper, but the project's shipped weights lose
    #: most of their accuracy with it, see tests/test_many_class_predictor.py). Networks whose column embedding
    #: ignores labels (v1) always encode rows once: both ways give the same result there.
    many_class_encoding: str = "per_node"

    def __init__(
        self,
        model: str = "tabicl",
        checkpoint: str | Path | torch.nn.Module = "default",
        n_estimators: int = 8,
        norm_methods: Sequence[str] = ("none", "power"),
        feat_shuffle: str = "latin",
        categorical_order: str = "auto",
        class_shift: bool = True,
        outlier_threshold: float = 4.0,
        softmax_temperature: float = 0.9,
        average_logits: bool = True,
        max_classes_per_call: int | str = "auto",
        calibrate: bool | str = "auto",
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
        self.class_shift = class_shift
        self.outlier_threshold = outlier_threshold
        self.softmax_temperature = softmax_temperature
        self.average_logits = average_logits
        self.max_classes_per_call = max_classes_per_call
        self.calibrate = calibrate
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

    # ------------------------------------------------------------------------------------------------ validation
    def _validate_params(self) -> tuple[str, ...]:
        norm_methods = self._validate_common_params()  # shared with TFMRegressor (inference/base.py)
        if not self.softmax_temperature > 0:
            raise ValueError(f"softmax_temperature must be > 0, got {self.softmax_temperature!r}.")
        cap = self.max_classes_per_call
        if cap != "auto" and (isinstance(cap, bool) or not isinstance(cap, (int, np.integer)) or cap < 2):
            raise ValueError(f"max_classes_per_call must be 'auto' or an integer >= 2, got {cap!r}.")
        if not (self.calibrate == "auto" or isinstance(self.calibrate, (bool, np.bool_))):
            raise ValueError(f"calibrate must be 'auto', True or False, got {self.calibrate!r}.")
        self._validate_fine_tune_params()
        if self.calibrate is True and self.fine_tune not in (None, "auto"):
            raise ValueError(
                "calibrate=True fits a temperature on training rows the network has not learned from, but "
                f"fine_tune={self.fine_tune!r} trains on them; use calibrate='auto' (skips it when finetuning) or False."
            )
        return norm_methods

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
                f"y contains {int(bad.sum())} missing or infinite labels (NaN/inf), e.g. at rows {positions}; "
                f"drop those rows or give them a label."
            )
        # scikit-learn's error blames continuous values even for mixed-type labels: say what is wrong, what to do.
        target_type = type_of_target(y_array)
        if target_type == "continuous":
            examples = [value for value in pd.unique(y_array) if value != np.round(value)][:3]
            raise ValueError(
                f"y holds continuous (non-integer) values (e.g. {examples}), which look like a regression target; "
                f"TFMClassifier needs class labels. Use TFMRegressor for regression, or convert y to strings or "
                f"integers (e.g. y.astype(str)) if these values really are class labels."
            )
        if target_type not in ("binary", "multiclass"):
            label_types = sorted({type(value).__name__ for value in y_array.tolist()})
            raise ValueError(
                f"y holds labels of mixed or unsupported types ({', '.join(label_types)}); give every label the same "
                f"type, e.g. y.astype(str)."
            )
        return y_array

    # ------------------------------------------------------------------------------------------------------- fit
    def fit(self, X: Any, y: Any, X_val: Any = None, y_val: Any = None) -> TFMClassifier:
        """Encode and remember the training table (no network forward: the network learns in context).

        With ``fine_tune`` set, also finetune a copy of the network; ``X_val`` / ``y_val`` (optional) are the rows its
        early stopping watches (else ``validation_fraction`` of the training rows). Without ``fine_tune`` they are
        ignored.
        """
        fit_start = time.monotonic()
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

        # Everything that can fail on the network (missing weights, wrong model or task) fails before any state is
        # set from the data.
        self.device_ = resolve_device(self.device)
        self.precision_ = resolve_precision(self.precision, self.device_)
        self.network_, self.checkpoint_path_ = self._load_network()
        self._resolve_fine_tune()
        max_classes = int(getattr(self.network_, "max_classes", 0) or 0)
        if max_classes < 2:
            raise ValueError(
                f"The network from checkpoint {self.checkpoint_path_!r} is not a classifier "
                f"(max_classes={max_classes}); use a classification checkpoint."
            )
        cap = self.max_classes_per_call_ = self._resolve_max_classes_per_call(max_classes)
        self.class_tree_ = build_class_tree(range(self.n_classes_), cap) if self.n_classes_ > cap else None

        self.n_features_in_ = n_columns
        if isinstance(X, pd.DataFrame):
            self.feature_names_in_ = np.asarray(frame.columns, dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_  # refit on an array: forget names of a previous DataFrame fit

        order = self.categorical_order
        if order == "auto":  # a binary label has one target axis to rank by; several classes have none
            order = "target" if self.n_classes_ == 2 else "lexical"
        elif order == "target" and self.n_classes_ != 2:
            raise ValueError(
                f'categorical_order="target" ranks categories by the rate of the second class and needs a binary '
                f"label; y has {self.n_classes_} classes. Use 'auto' or 'lexical'."
            )
        self.encoder_ = TableEncoder(categorical_order=order).fit(frame, y_encoded if order == "target" else None)
        X_encoded = self.encoder_.transform(frame)
        n_components, held_out_temperature = self._choose_feature_compression(
            frame, y_encoded, X_encoded.shape[1], seed
        )
        self._fit_features(
            X_encoded, y_encoded, n_components, norm_methods, seed, self.n_classes_, bool(self.class_shift)
        )
        self.y_train_ = y_encoded
        self._reset_train_cache()
        self.fine_tune_report_ = None
        if self.fine_tune_ is not None:
            self._run_fine_tune(label_encoder, X_val, y_val, seed, fit_start)
        self.calibration_temperature_ = 1.0
        if self._resolve_calibrate():
            if held_out_temperature is not None:  # fitted on the held-out pass of the chosen feature view
                self.calibration_temperature_ = held_out_temperature
            else:
                self.calibration_temperature_ = self._fit_calibration_temperature(frame, y_encoded, seed)
        logger.info(
            "TFMClassifier fitted: %d rows, %d features (%d after encoding/filtering), %d classes%s, %d members, "
            "calibration temperature %.3g, device=%s, precision=%s, checkpoint=%s",
            n_rows,
            n_columns,
            self.preprocessor_.n_features_out_,
            self.n_classes_,
            f" (hierarchical, {self.class_tree_.count_nodes()} nodes)" if self.class_tree_ is not None else "",
            len(self.members_),
            self.calibration_temperature_,
            self.device_,
            self.precision_,
            self.checkpoint_path_,
        )
        return self

    def _resolve_calibrate(self) -> bool:
        """``calibrate`` as a bool: ``"auto"`` follows the weights' card (``inference_defaults["calibrate"]``) and
        is off when finetuning."""
        if self.calibrate != "auto":
            return bool(self.calibrate)
        recommended = self._card_defaults().get("calibrate", False)
        return bool(recommended) and self.fine_tune_ is None

    def _held_out_proba(
        self, frame: pd.DataFrame, y_encoded: np.ndarray, seed: int | None, **overrides: Any
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """In-context probabilities of held-out training rows (``calibration_folds``, uncalibrated) and their class
        ids; None when no row could be held out."""
        probas, labels = [], []
        for fold, fold_model in self._held_out_estimators(frame, y_encoded, seed, calibrate=False, **overrides):
            # Rows of a class missing from the fold's context cannot be scored by any temperature: left out.
            seen = np.isin(y_encoded[fold], fold_model.classes_)
            proba = np.zeros((int(seen.sum()), self.n_classes_))
            proba[:, fold_model.classes_] = fold_model.predict_proba(frame.iloc[fold[seen]])
            probas.append(proba)
            labels.append(y_encoded[fold[seen]])
        if not probas or not sum(len(part) for part in labels):
            return None
        return np.concatenate(probas), np.concatenate(labels)

    @staticmethod
    def _can_fit_context(targets: np.ndarray) -> bool:
        return len(np.unique(targets)) >= 2

    def _held_out_losses(
        self, frame: pd.DataFrame, targets: np.ndarray, seed: int | None, feature_compression: str | int
    ) -> tuple[np.ndarray, float | None] | None:
        """Per-row held-out log losses with ``feature_compression`` (after the temperature fitted on them when
        calibrating) and that temperature (None when not calibrating)."""
        held_out = self._held_out_proba(frame, targets, seed, feature_compression=feature_compression)
        if held_out is None:
            return None
        proba, labels = held_out
        temperature = fit_temperature(proba, labels) if self._resolve_calibrate() else None
        if temperature is not None:
            proba = apply_temperature(proba, temperature)
        return row_log_losses(proba, labels), temperature

    @staticmethod
    def _held_out_score(losses: np.ndarray) -> float:
        return float(np.mean(losses))

    def _fit_calibration_temperature(self, frame: pd.DataFrame, y_encoded: np.ndarray, seed: int | None) -> float:
        """Temperature fitted on out-of-fold in-context predictions of (some of) the training rows; 1.0 when the
        table is too small (see :mod:`~autogluon_tfm.inference.calibration`)."""
        held_out = self._held_out_proba(frame, y_encoded, seed, feature_compression=self.feature_compression_ or "none")
        if held_out is None:
            logger.info("Not calibrating: %d training rows are too few to hold any out.", len(y_encoded))
            return 1.0
        return fit_temperature(*held_out)

    def _resolve_max_classes_per_call(self, max_classes: int) -> int:
        """``max_classes_per_call`` as a number: ``"auto"`` reads the weights' recommendation (``inference_defaults``
        of the card, set on the network by ``load_network``)."""
        cap = self.max_classes_per_call
        if cap == "auto":
            recommended = self._card_defaults().get("max_classes_per_call")
            return min(int(recommended), max_classes) if recommended else max_classes
        if cap > max_classes:
            raise ValueError(
                f"max_classes_per_call={cap} exceeds what the network handles in one call (max_classes={max_classes}); "
                f"use at most {max_classes}, or 'auto'."
            )
        return int(cap)

    def _run_fine_tune(
        self, label_encoder: LabelEncoder, X_val: Any, y_val: Any, seed: int | None, fit_start: float
    ) -> None:
        """Finetune on the training table; validation rows with labels outside ``classes_`` are dropped."""
        from autogluon_tfm.finetune import ClassificationFinetuneData

        if (X_val is None) != (y_val is None):
            raise ValueError("Pass both X_val and y_val, or neither.")
        validation = None
        if X_val is not None:
            frame = self._validate_predict_input(X_val)
            labels = self._validate_labels(y_val, len(frame))
            known = np.isin(labels, self.classes_)
            if not known.all():
                logger.warning(
                    "Ignoring %d validation rows whose labels are not among the training classes.", (~known).sum()
                )
            if known.any():
                validation = (
                    self._preprocessed_by_method(frame.iloc[np.flatnonzero(known)]),
                    label_encoder.transform(labels[known]).astype(np.int64),
                )
            else:
                logger.warning("No usable validation rows; holding out part of the training rows instead.")

        task_args = dict(
            n_classes=self.n_classes_,
            class_shift=bool(self.class_shift),
            softmax_temperature=self.softmax_temperature,
            max_classes=self.max_classes_per_call_,
        )
        y_train = self.y_train_  # class ids: also the strata of an internal validation split
        self._fine_tune(y_train, y_train, validation, ClassificationFinetuneData, task_args, seed, fit_start)

    # ------------------------------------------------------------------------------------------------- predict
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape ``(n_rows, n_classes)``, float64, rows summing to 1 (order of ``classes_``)."""
        frame = self._validate_predict_input(X)
        if len(frame) == 0:
            return np.zeros((0, self.n_classes_))
        X_test = self._encode(frame)
        network = self._network_on_device()
        n_chunks = -(-len(X_test) // self.max_test_rows_per_forward)
        batch_size = self._member_batch_size(network, len(self.y_train_), self.preprocessor_.n_features_out_)
        if self.class_tree_ is not None:
            n_calls = len(self.members_) * (self.class_tree_.count_nodes() - self._count_single_class_leaves())
        else:
            n_calls = sum(-(-len(group) // batch_size) for _, group in self._member_groups())
        total = np.zeros((len(X_test), self.n_classes_))
        with (
            self._eval_mode(network),
            tqdm(total=n_calls * n_chunks, desc="TFMClassifier", disable=not self.verbose, leave=False) as progress,
        ):
            for method, members in self._member_groups():
                X_train_method = self.preprocessor_.train_transformed_[method]
                X_test_method = self.preprocessor_.transform(X_test, method)
                if self.class_tree_ is not None:
                    for index, member in enumerate(members):
                        total += self._hierarchical_member(
                            network, member, X_train_method, X_test_method, progress, cache_key=(method, index)
                        )
                    continue
                for start in range(0, len(members), batch_size):
                    batch = members[start : start + batch_size]
                    total += self._flat_members(
                        network, batch, X_train_method, X_test_method, progress, cache_key=(method, start, len(batch))
                    )
        average = total / len(self.members_)
        proba = softmax(average, self.softmax_temperature) if self.average_logits else average
        return apply_temperature(proba / proba.sum(axis=1, keepdims=True), self.calibration_temperature_)

    def predict(self, X: Any) -> np.ndarray:
        """Most probable class label per row (labels as given in ``fit``)."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def __setstate__(self, state: dict) -> None:
        # Estimators pickled before calibration existed predict with their probabilities as they were.
        state.setdefault("calibrate", False)
        if "classes_" in state:
            state.setdefault("calibration_temperature_", 1.0)
        super().__setstate__(state)

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
        cache_key: Any = None,
    ) -> np.ndarray:
        orders = [member.feature_order for member in members]
        X_train_batch = np.stack([X_train[:, order] for order in orders])
        y_batch = np.stack([member.class_pattern[self.y_train_] for member in members])
        logits = self._forward(network, X_train_batch, y_batch, X_test, orders, progress, cache_key=cache_key)
        logits = logits[..., : self.n_classes_]
        return sum(self._member_output(member_logits, member) for member_logits, member in zip(logits, members))

    def _shares_row_encoding(self, network: torch.nn.Module) -> bool:
        if self.many_class_encoding not in ("per_node", "mixed_radix"):
            raise ValueError(f"Unknown many_class_encoding {self.many_class_encoding!r}; use 'per_node' or 'mixed_radix'.")
        target_aware = bool(getattr(getattr(network, "col_embedder", None), "target_aware", False))
        has_icl_states = all(callable(getattr(network, name, None)) for name in ("icl_train_states", "icl_from_states"))
        return (
            supports_train_cache(network)
            and has_icl_states
            and (not target_aware or self.many_class_encoding == "mixed_radix")
        )

    def _hierarchical_member(
        self,
        network: torch.nn.Module,
        member: EnsembleMember,
        X_train: np.ndarray,
        X_test: np.ndarray,
        progress: tqdm,
        cache_key: Any = None,
    ) -> np.ndarray:
        """One member's contribution with more classes than the network's ``max_classes`` (a tree of calls).

        With a shared row encoding (see ``many_class_encoding``) the network encodes training and test rows once
        (the column embedding sees all classes through mixed-radix label digits, as the official TabICL does) and
        runs only the ICL stage per tree node on the node's training rows. Otherwise the network runs fully per
        node on the node's rows and labels.
        """
        X_train_member = X_train[:, member.feature_order]
        y_member = member.class_pattern[self.y_train_]

        def node_key(rows: np.ndarray) -> Any:
            # A node is identified by its training rows (the class tree is fixed at fit), so a repeated prediction
            # finds each node's train cache again.
            return None if cache_key is None else (cache_key, "node", rows.tobytes())

        if self._shares_row_encoding(network):
            R_train, R_test = self._encode_cached(
                network, X_train_member, y_member, X_test, member.feature_order, cache_key
            )
            step = self._test_chunk_rows(network, 1, X_train.shape[1])

            def node_logits(rows: np.ndarray, labels: np.ndarray, n_labels: int) -> np.ndarray:
                def build() -> _NodeStates:
                    node_train = R_train[:, torch.from_numpy(rows).to(R_train.device)]
                    y_node = torch.from_numpy(labels.astype(np.float32))[None].to(R_train.device)
                    return _NodeStates(network.icl_train_states(node_train, y_node))

                parts = []
                with torch.no_grad(), self._autocast():
                    key = node_key(rows)  # a repeated prediction runs the ICL stage on the test rows only
                    states = build() if key is None else self._train_cache(network, ("icl", key), build)
                    for start in range(0, R_test.shape[1], step):
                        parts.append(network.icl_from_states(R_test[:, start : start + step], states.states)[0])
                progress.update(-(-len(X_test) // self.max_test_rows_per_forward))
                return torch.cat(parts).float().cpu().numpy()

        else:

            def node_logits(rows: np.ndarray, labels: np.ndarray, n_labels: int) -> np.ndarray:
                logits = self._forward(
                    network, X_train_member[rows][None], labels[None], X_test, [member.feature_order], progress,
                    cache_key=node_key(rows),
                )
                return logits[0]

        proba = hierarchical_proba(
            node_logits,
            y_member,
            n_classes=self.n_classes_,
            n_test=len(X_test),
            max_classes=self.max_classes_per_call_,
            softmax_temperature=self.softmax_temperature,
            tree=self.class_tree_,
        )[:, member.class_pattern]
        if self.average_logits:
            return proba_to_logits(proba, self.softmax_temperature)
        return proba

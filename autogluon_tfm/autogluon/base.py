"""Shared AutoGluon adapter for the project's in-context-learning estimators.

One base class serves every architecture (TabICL now, TabPFNv2 and Mitra later). It translates AutoGluon's world
(hyperparameters, ``ag.`` params, CPU/GPU resources, bagging folds, save/load, devices) into estimator arguments and
back; all model logic lives in :mod:`autogluon_tfm.inference`. A concrete model class only declares the AutoGluon
class attributes and ``estimator_model_name``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
from autogluon.common.utils.pandas_utils import get_approximate_df_mem_usage
from autogluon.tabular.models.abstract.abstract_torch_model import AbstractTorchModel

from autogluon_tfm.autogluon.persistence import (
    DEFAULT_STORE_WEIGHTS_MAX_MB,
    WeightsReference,
    load_referenced_network,
    store_by_reference,
    validate_store_weights,
)

logger = logging.getLogger(__name__)

# Finetuning may use this share of the time AutoGluon gives a fit; the rest covers encoding and AutoGluon's own
# validation prediction after the fit.
_FINE_TUNE_TIME_SHARE = 0.9

# Hyperparameters the adapter decides itself; a user value would silently fight AutoGluon's resource handling.
_ADAPTER_OWNED_PARAMS = {
    "device": "the device follows the GPUs AutoGluon allocates; use `ag.num_gpus` (0 = CPU) instead",
}


def limits(max_rows: int | None, max_features: int | None) -> dict[str, Any]:
    """``params_aux`` of a TFM adapter: AutoGluon skips the model cleanly on larger data (``ag.max_rows`` /
    ``ag.max_features`` override them per fit). No ``max_classes``: more than 10 classes run hierarchically."""
    return {
        "max_rows": max_rows,
        "max_features": max_features,
        # No prediction chunking by AutoGluon: every chunk would re-encode the whole training context, while the
        # estimator already batches its ensemble members internally.
        "max_batch_size": None,
    }


@contextmanager
def torch_num_threads(num_threads: int | None) -> Iterator[None]:
    """Run a block with ``torch.set_num_threads(num_threads)`` and always restore the previous value.

    AutoGluon gives each model a CPU budget and its test helpers assert that fitting leaves global torch state
    unchanged, so the thread count must never leak out of a fit.
    """
    import torch

    threads_before = torch.get_num_threads()
    changed = num_threads is not None and int(num_threads) >= 1 and int(num_threads) != threads_before
    if changed:
        torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        if torch.get_num_threads() != threads_before:
            torch.set_num_threads(threads_before)


class _ForwardToLogger(logging.Handler):
    """Re-emit records through another logger (its level and handlers decide whether they are shown)."""

    def __init__(self, target: logging.Logger) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        if self.target.isEnabledFor(record.levelno):
            self.target.handle(record)


@contextmanager
def forward_logs_to_autogluon(logger_name: str) -> Iterator[None]:
    """While the block runs, show ``logger_name``'s records through AutoGluon's logger, so that they follow the
    predictor's ``verbosity`` (INFO at verbosity >= 2) like AutoGluon's own model logs."""
    source = logging.getLogger(logger_name)
    handler = _ForwardToLogger(logging.getLogger("autogluon"))
    level_before = source.level
    source.addHandler(handler)
    if source.getEffectiveLevel() > logging.INFO:
        source.setLevel(logging.INFO)  # let INFO records reach the handler; AutoGluon's level filters them
    try:
        yield
    finally:
        source.removeHandler(handler)
        source.setLevel(level_before)


class TFMBaseModel(AbstractTorchModel):
    """AutoGluon model wrapping an ``autogluon_tfm`` estimator: :class:`autogluon_tfm.TFMClassifier` for binary and
    multiclass problems, :class:`autogluon_tfm.TFMRegressor` for regression and quantile problems.

    Hyperparameters are the estimators' constructor arguments (``checkpoint``, ``n_estimators``, ``norm_methods``,
    ``softmax_temperature``, ``batch_size``, ``precision``, ...); one hyperparameter dict serves every problem type:
    arguments that only one estimator has (``softmax_temperature``, ``class_shift``, ``average_logits``,
    ``calibrate`` are classification-only) are ignored for the other. ``checkpoint`` takes ``"default"`` (resolved per task), a
    shipped weights name, a path, or a dict ``{"classification": ..., "regression": ...}`` (a missing task means
    ``"default"``); an explicit checkpoint must hold a network of this model for the problem's task, otherwise the
    fit fails with a clear error. ``random_state`` is AutoGluon's seed (per fold in bags). ``device`` is not a
    hyperparameter: any GPU share AutoGluon allocates (``ag.num_gpus``) means ``"cuda"``, else ``"cpu"``.

    Saving (``ag.`` parameters, see :mod:`autogluon_tfm.autogluon.persistence`): a network up to
    ``ag.store_weights_max_mb`` (default 50) megabytes, e.g. the shipped weights, and every finetuned network are
    stored inside the saved model, so the predictor predicts in a fresh process without network access or cache. A
    larger unmodified checkpoint (a full-size official one) is stored by reference: its name, path and sha256; loading
    finds it at that path or by name in the current cache, and raises a clear error if it is missing or changed.
    ``ag.store_weights=True`` always stores the weights, ``False`` stores every unmodified checkpoint by reference.
    Saving always moves the network to CPU first, so a model fitted on a GPU loads on a machine without CUDA.

    Finetuning (every problem type: ``fine_tune="full" | "lora"`` with ``fine_tune_steps``, ``learning_rate``,
    ``lora_*``, or the default ``fine_tune="auto"`` when the weights' card recommends it, as the shipped Mitra cards
    do; quantile problems finetune the regression network with its own head loss): the fit early-stops on
    AutoGluon's validation rows (``X_val``, the out-of-fold rows in a bag) within
    AutoGluon's ``time_limit`` and records the step it kept as the trained ``fine_tune_steps``; fits without
    validation rows (``refit_full``, the refit of ``refit_folds``) train that many steps without early stopping, as
    AutoGluon does for its other early-stopped models.
    """

    #: ``model=`` argument of the estimator, i.e. the network architecture (set by each subclass).
    estimator_model_name: str | None = None
    # Memory model of `_estimate_memory_usage_static` / `_estimate_gpu_memory_usage_static`, per architecture; the
    # values of each subclass are calibrated with benchmarks/memory.py (benchmarks/results/memory.md).
    #: fp32 weights (+ buffers) of the official full-size network, in bytes.
    network_bytes_estimate: int = 200 * 1024**2
    #: Width of the per-token embedding that dominates activation memory.
    embedding_dim_estimate: int = 128
    #: Embedding-wide fp32 vectors alive per token at the peak of one inference call (residual stream, normalised
    #: copy, attention projections, the feed-forward hidden layer before and after its activation, ...).
    activation_vectors_per_token: float = 16.0
    #: Input features embedded into one token (TabPFNv2 embeds feature pairs) ...
    features_per_token: int = 1
    #: ... and the extra tokens of every row (label / CLS tokens).
    extra_tokens_per_row: int = 1
    #: Transformer blocks whose activations a finetuning step keeps for the backward pass (per-token blocks only).
    num_blocks_estimate: int = 12
    #: Embedding-wide fp32 vectors per training-row token of a kept key/value cache (0: no such cache).
    kv_cache_vectors_per_token: float = 0.0

    # The shipped networks are small and built for CPU use; AutoGluon's "GPU strongly recommended" warning (meant
    # for full-size official checkpoints) would mislead here. A GPU is still used by default when present.
    gpu_strongly_recommended: bool = False
    seed_name = "random_state"
    default_num_gpus = 1
    default_resources_physical_cores_only = True
    # Quantile problems need a distributional regression head; a model whose head predicts one value (Mitra)
    # drops "quantile" in its subclass.
    _supported_problem_types = ["binary", "multiclass", "regression", "quantile"]
    _default_auxiliary_params_extra = {
        **limits(max_rows=100_000, max_features=2_000),
        # How a saved model keeps its network (see the class docstring and persistence.py).
        "store_weights": "auto",
        "store_weights_max_mb": DEFAULT_STORE_WEIGHTS_MAX_MB,
    }
    _default_ag_args_ensemble_extra = {
        # Sequential by measurement (benchmarks/fold_strategy.py, benchmarks/results/fold_strategy.md): a fold fit
        # only stores the context and the OOF prediction is one forward pass that already uses every core, so
        # parallel folds save little, while ray's start-up (tens of seconds, ~1.7 GB of extra processes on the
        # 2-core dev machine) made parallel_local 4-10x slower in wall time on 500-1,500-row tables, with identical
        # scores. On a GPU the same holds a fortiori (each worker adds a process, a CUDA context and a network
        # load; AutoGluon's built-in TabICL/TabPFN/TabDPT wrappers choose sequential too). Deliberately not set via
        # `fold_fitting_strategy_cpu/_gpu`: those would override a user's `ag.ens.fold_fitting_strategy`.
        "fold_fitting_strategy": "sequential_local",
        # Serve one model fit on all rows instead of k fold models: one forward pass per prediction, and the
        # full data as context.
        "refit_folds": True,
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._fit_device: str | None = None  # resolved device of the last fit / set_device
        # Set while `save` pickles the model: the checkpoint reference that replaces the network in the pickle.
        self._saving_reference: WeightsReference | None = None
        #: After loading a model saved by reference: that reference (the network was reloaded from it).
        self.weights_reference: WeightsReference | None = None

    def _ag_params(self) -> set[str]:
        return {"store_weights", "store_weights_max_mb"}

    # ------------------------------------------------------------------------------------------------ params
    def _set_default_params(self) -> None:
        default_params = {"n_estimators": 8}
        for name, value in default_params.items():
            self._set_default_param_value(name, value)

    def _task(self) -> str:
        """``"classification"`` or ``"regression"``: the kind of network this model's problem type needs."""
        if self.problem_type not in self._supported_problem_types:
            raise ValueError(
                f"{type(self).__name__} does not support problem_type={self.problem_type!r}; "
                f"supported: {self._supported_problem_types}"
            )
        return "classification" if self.problem_type in ("binary", "multiclass") else "regression"

    def _get_estimator_cls(self) -> type:
        """The estimator class for this model's problem type."""
        from autogluon_tfm.inference import TFMClassifier, TFMRegressor

        return TFMClassifier if self._task() == "classification" else TFMRegressor

    @staticmethod
    def _estimator_param_names() -> set[str]:
        from autogluon_tfm.inference import TFMClassifier, TFMRegressor

        return set(TFMClassifier._get_param_names()) | set(TFMRegressor._get_param_names())

    def _get_estimator_kwargs(self, device: str) -> dict[str, Any]:
        """Translate this model's hyperparameters into estimator constructor arguments (params are not mutated)."""
        if self.estimator_model_name is None:
            raise ValueError(f"{type(self).__name__} must set the class attribute `estimator_model_name`.")
        estimator_cls = self._get_estimator_cls()
        kwargs = self._get_model_params()  # a copy: AutoGluon's params must stay untouched
        for name, reason in _ADAPTER_OWNED_PARAMS.items():
            if name in kwargs:
                raise ValueError(f"Hyperparameter {name!r} is not supported by {type(self).__name__}: {reason}.")
        model_name = kwargs.pop("model", self.estimator_model_name)
        if model_name != self.estimator_model_name:
            raise ValueError(
                f"{type(self).__name__} always runs model={self.estimator_model_name!r}, got model={model_name!r}; "
                f"use the AutoGluon model class of that architecture instead."
            )
        known_names = self._estimator_param_names()
        unknown = sorted(set(kwargs) - known_names)
        if unknown:
            valid = sorted(known_names - {"model", *_ADAPTER_OWNED_PARAMS})
            raise ValueError(f"Unknown hyperparameter(s) for {type(self).__name__}: {unknown}. Valid: {valid}")
        # One hyperparameter dict serves every problem type: drop what this task's estimator does not take.
        task_names = set(estimator_cls._get_param_names())
        ignored = sorted(set(kwargs) - task_names)
        if ignored:
            logger.info("%s: hyperparameters %s do not apply to %s; ignored", self.name, ignored, self.problem_type)
        kwargs = {name: value for name, value in kwargs.items() if name in task_names}
        if isinstance(kwargs.get("checkpoint"), dict):
            kwargs["checkpoint"] = self._checkpoint_for_task(kwargs["checkpoint"])
        kwargs["model"] = self.estimator_model_name
        kwargs["device"] = device
        return kwargs

    def _checkpoint_for_task(self, checkpoints: dict) -> Any:
        """``{"classification": ..., "regression": ...}`` -> the entry for this problem's task (``"default"`` if
        absent)."""
        unknown = sorted(set(checkpoints) - {"classification", "regression"})
        if unknown:
            raise ValueError(
                f"checkpoint dict keys must be 'classification' and/or 'regression', got unknown keys {unknown}."
            )
        return checkpoints.get(self._task(), "default")

    # ---------------------------------------------------------------------------------------- preprocessing
    def _preprocess(self, X: pd.DataFrame, is_train: bool = False, **kwargs: Any) -> pd.DataFrame:
        """Hand the estimator a DataFrame whose categorical columns stay pandas ``category``.

        The estimator encodes categoricals itself (NaN included), so nothing is label-encoded here. A categorical
        column that is entirely missing in one batch (e.g. an out-of-fold split in a bag) keeps its ``category``
        dtype and categories: the estimator sees an ordinary column of missing values.
        """
        return super()._preprocess(X, **kwargs)

    # --------------------------------------------------------------------------------------------------- fit
    def _fit(
        self,
        X: pd.DataFrame,
        y: pd.Series,
        X_val: pd.DataFrame | None = None,
        y_val: pd.Series | None = None,
        time_limit: float | None = None,
        num_cpus: int | None = 1,
        num_gpus: float | None = 0,
        **kwargs: Any,
    ) -> None:
        # In-context fitting only stores the training context: X_val / y_val / time_limit matter to finetuning only.
        ag_params = self._get_ag_params()
        validate_store_weights(ag_params.get("store_weights"), ag_params.get("store_weights_max_mb"))
        device = self._resolve_fit_device(num_gpus=num_gpus or 0)
        estimator_kwargs = self._get_estimator_kwargs(device=device)
        X = self.preprocess(X, is_train=True)
        fit_kwargs: dict[str, Any] = {}
        # "auto" (the estimators' default) finetunes when the weights' card says so: give it what finetuning needs;
        # in-context learning ignores the validation rows and the time limit.
        fine_tune = estimator_kwargs.get("fine_tune", "auto") is not None
        if fine_tune:
            if X_val is not None and y_val is not None:
                fit_kwargs = {"X_val": self.preprocess(X_val), "y_val": y_val}
            else:
                # A refit without validation rows: exactly `fine_tune_steps` steps (the trained value of the fits
                # that had validation rows, see `params_trained` below).
                estimator_kwargs["validation_fraction"] = 0.0
            if time_limit is not None:
                budget = max(_FINE_TUNE_TIME_SHARE * float(time_limit), 1e-3)
                user_limit = estimator_kwargs.get("time_limit")
                estimator_kwargs["time_limit"] = budget if user_limit is None else min(float(user_limit), budget)
        estimator = self._get_estimator_cls()(**estimator_kwargs)
        from autogluon_tfm.checkpoints import CheckpointMismatchError

        with torch_num_threads(num_cpus), forward_logs_to_autogluon("autogluon_tfm.finetune"):
            try:
                estimator.fit(X, y, **fit_kwargs)
            except CheckpointMismatchError as error:
                raise CheckpointMismatchError(
                    f"{error} ({type(self).__name__}, problem_type={self.problem_type!r}.) To use one hyperparameter "
                    f"dict for several problem types, pass checkpoint={{'classification': ..., 'regression': ...}}."
                ) from error
        report = getattr(estimator, "fine_tune_report_", None)
        if fine_tune and report is not None:
            # What a refit without validation rows should train (AutoGluon averages it over bag folds).
            self.params_trained["fine_tune_steps"] = int(report.best_step)
        self.model = estimator
        self._fit_device = device

    # ----------------------------------------------------------------------------------------------- predict
    def _predict_proba(self, X: pd.DataFrame, **kwargs: Any) -> np.ndarray:
        """Class probabilities; for regression the predicted means ``(n,)``, for quantile problems the predicted
        quantiles at ``quantile_levels`` ``(n, n_levels)`` (what AutoGluon expects from ``_predict_proba``)."""
        X = self.preprocess(X, **kwargs)
        if self.problem_type == "regression":
            return np.asarray(self.model.predict(X))
        if self.problem_type == "quantile":
            return np.asarray(self.model.predict_quantiles(X, quantiles=self.quantile_levels))
        y_pred_proba = np.asarray(self.model.predict_proba(X))
        y_pred_proba = self._align_to_all_classes(y_pred_proba)
        return self._convert_proba_to_unified_form(y_pred_proba)

    def _align_to_all_classes(self, y_pred_proba: np.ndarray) -> np.ndarray:
        """Place the estimator's columns at AutoGluon's class ids; classes absent from the fit data get 0.

        AutoGluon labels are 0..num_classes-1, but a bagging fold can miss a rare class, and the estimator then only
        knows the classes it has seen.
        """
        num_classes = self.num_classes
        seen_classes = np.asarray(self.model.classes_)
        if num_classes is None or len(seen_classes) == num_classes:
            return y_pred_proba
        aligned = np.zeros((y_pred_proba.shape[0], num_classes), dtype=y_pred_proba.dtype)
        aligned[:, seen_classes.astype(int)] = y_pred_proba
        return aligned

    # ------------------------------------------------------------------------------------------------ device
    def get_device(self) -> str:
        """Device type ("cpu" / "cuda") the fitted estimator runs on."""
        device = getattr(self.model, "device_", None) or self._fit_device or "cpu"
        return self.to_torch_device(str(device)).type

    def _set_device(self, device: str) -> None:
        """Move the fitted estimator (and its network) to ``device``; AutoGluon calls this with "cpu" before saving
        and with the best available device after loading."""
        self.model.to(device)
        self._fit_device = self.to_torch_device(device).type

    # ---------------------------------------------------------------------------------------------- save/load
    def save(self, path: str | None = None, verbose: bool = True) -> str:
        """Save as AutoGluon does, with the network either inside the pickle or replaced by a reference to its
        checkpoint (``ag.store_weights`` / ``ag.store_weights_max_mb``)."""
        if self.model is not None:
            ag_params = self._get_ag_params()
            self._saving_reference = store_by_reference(
                self.model, ag_params.get("store_weights", "auto"), ag_params.get("store_weights_max_mb")
            )
            if self._saving_reference is not None:
                reference = self._saving_reference
                logger.log(15, "%s: network stored by reference to %s (sha256 %s...)", self.name, reference.path,
                           reference.sha256[:16])
        try:
            return super().save(path=path, verbose=verbose)
        finally:
            self._saving_reference = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        reference = state.pop("_saving_reference", None)
        state["_saving_reference"] = None
        if reference is not None and self.model is not None:
            # A shallow stand-in for the estimator without its network (the live estimator keeps it).
            light = object.__new__(type(self.model))
            light.__dict__.update({k: v for k, v in self.model.__dict__.items() if k != "network_"})
            state["model"] = light
            state["weights_reference"] = reference
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        reference = state.get("weights_reference")
        if reference is not None and self.model is not None and "network_" not in self.model.__dict__:
            # Reload the network now, so a missing or changed checkpoint fails at load with a clear message.
            self.model.network_ = load_referenced_network(
                reference, self.estimator_model_name, self._task(), owner=f"{self.name} ({type(self).__name__})"
            )

    # ------------------------------------------------------------------------------------------------ memory
    # Process baseline: Python + torch + autogluon_tfm + AutoGluon imports (~420 MB measured) plus what the first fit
    # adds whatever the data (lazy imports, thread pools, allocator caches: ~200-300 MB measured).
    _MEMORY_OVERHEAD_BYTES = 800 * 1024**2
    # CUDA context + caching-allocator slack, outside ``torch.cuda.max_memory_allocated``.
    _CUDA_CONTEXT_BYTES = 600 * 1024**2
    # Margin on the activation term (allocator fragmentation; measurement noise; the benchmark's one-block stand-ins
    # for the slow full-depth networks).
    _MEMORY_SAFETY_FACTOR = 1.25
    # Test rows assumed next to the training context when AutoGluon passes no ``X_val``: a quarter of the rows
    # (AutoGluon's holdout share; a bag fold predicts 1/k of the rows it is given).
    _ESTIMATE_TEST_ROW_SHARE = 0.25
    # Finetuning: copy of the network + gradients + two AdamW moments + best-weights snapshot, and one step of
    # ``rows_per_step`` rows (autogluon_tfm.finetune.FinetuneConfig) whose activations are kept for the backward pass.
    _FINE_TUNE_NETWORK_COPIES = 5
    _FINE_TUNE_ROWS_PER_STEP = 1024

    @staticmethod
    def _explicit_gpu_count(num_gpus: Any) -> float | None:
        """``num_gpus`` as AutoGluon passes it to a fit's memory checks; None when absent or not a number."""
        if num_gpus is None or isinstance(num_gpus, (str, bool)):
            return None
        return max(float(num_gpus), 0.0)

    @classmethod
    def _activation_bytes_estimate(
        cls, X: pd.DataFrame, hyperparameters: dict | None, X_val: pd.DataFrame | None = None, num_classes: Any = None
    ) -> tuple[int, int]:
        """(inference activations, finetuning extra) in bytes, with the safety factor, for the memory estimates.

        Inference: one network call holds ``members_per_call x (train + test rows) x tokens_per_row`` tokens, each
        with ``activation_vectors_per_token`` fp32 vectors of ``embedding_dim_estimate`` floats at its peak. Members
        are batched per normalisation method, ``batch_size`` at a time (``autogluon_tfm.inference``), so a call holds
        ``min(batch_size, ceil(n_estimators / len(norm_methods)))`` members. Test rows are ``X_val``'s, else
        ``_ESTIMATE_TEST_ROW_SHARE`` of the training rows, at most ``max_test_rows_per_forward`` per call.
        """
        from autogluon_tfm.inference.base import InContextEstimator, whole_table_activation_bytes

        hyperparameters = hyperparameters or {}
        n_rows, n_features = X.shape
        n_test = len(X_val) if X_val is not None else int(np.ceil(cls._ESTIMATE_TEST_ROW_SHARE * n_rows))
        n_test = min(n_test, InContextEstimator.max_test_rows_per_forward)
        tokens_per_row = -(-max(n_features, 1) // cls.features_per_token) + cls.extra_tokens_per_row

        def activations(n_members: int, rows: int) -> int:
            return whole_table_activation_bytes(
                n_members, rows, tokens_per_row, cls.embedding_dim_estimate, cls.activation_vectors_per_token
            )

        members = cls._members_per_call(hyperparameters)
        kept_caches = cls._kept_kv_cache_bytes(n_rows, tokens_per_row, hyperparameters, num_classes)
        if kept_caches:  # training rows alone, then test rows against their cached keys/values
            inference = max(activations(members, n_rows), activations(members, n_test))
        else:  # training and test rows in one call
            inference = activations(members, n_rows + n_test)
        fine_tune = 0.0
        # fine_tune="auto" (the default) finetunes only weights whose card recommends it: the shipped small ones,
        # whose finetuning needs far less than the full-size inference estimated here.
        if hyperparameters.get("fine_tune", "auto") not in (None, "auto"):
            step_rows = min(n_rows, cls._FINE_TUNE_ROWS_PER_STEP)
            fine_tune = cls._FINE_TUNE_NETWORK_COPIES * cls.network_bytes_estimate + cls._MEMORY_SAFETY_FACTOR * (
                activations(1, step_rows) * cls.num_blocks_estimate
            )
        return int(cls._MEMORY_SAFETY_FACTOR * inference) + kept_caches, int(fine_tune)

    @classmethod
    def _kept_kv_cache_bytes(
        cls, n_rows: int, tokens_per_row: int, hyperparameters: dict, num_classes: Any = None
    ) -> int:
        """Training-row keys/values the estimator keeps between predictions (TabPFN v2, Mitra): every member's,
        within the cache budget, when one call's caches fit ``memory_budget_bytes`` (else none are built).

        With more classes than one call decides, every class-tree node keeps its own cache; the nodes of one tree
        level split the training rows, so a member keeps about one full cache per level.
        """
        if not cls.kv_cache_vectors_per_token:
            return 0
        from autogluon_tfm.inference.base import InContextEstimator, train_cache_budget

        per_member = int(4 * n_rows * tokens_per_row * cls.kv_cache_vectors_per_token * cls.embedding_dim_estimate)
        if cls._members_per_call(hyperparameters) * per_member > InContextEstimator.memory_budget_bytes:
            return 0
        n_members = int(hyperparameters.get("n_estimators", 8))
        levels = cls._class_tree_levels(num_classes, hyperparameters.get("max_classes_per_call", "auto"))
        return min(levels * n_members * per_member, train_cache_budget(InContextEstimator.train_cache_max_bytes))

    @staticmethod
    def _class_tree_levels(num_classes: Any, max_classes_per_call: Any) -> int:
        """Levels of network calls in the class tree of ``num_classes`` classes (1: one call, no tree).

        ``"auto"`` counts 2 classes per call, what the shipped weights' cards say (an official checkpoint's 10 gives
        fewer levels: the estimate errs high).
        """
        from autogluon_tfm.inference.hierarchical import build_class_tree

        if not isinstance(num_classes, (int, np.integer)) or num_classes <= 2:
            return 1
        per_call = 2 if max_classes_per_call == "auto" else max(int(max_classes_per_call), 2)

        def depth(node) -> int:  # nodes along the longest path that call the network (single-class leaves do not)
            if node.is_leaf:
                return int(len(node.classes) > 1)
            return 1 + max(depth(child) for child in node.children)

        return max(depth(build_class_tree(range(int(num_classes)), per_call)), 1)

    @staticmethod
    def _members_per_call(hyperparameters: dict, max_by_memory: int | None = None) -> int:
        """Ensemble members in one network call: members run per normalisation method, ``batch_size`` at a time
        (``autogluon_tfm.inference``), and TabICL also caps them by its memory budget (``max_by_memory``)."""
        norm_methods = hyperparameters.get("norm_methods", ("none", "power"))
        n_methods = 1 if isinstance(norm_methods, str) else max(len(norm_methods), 1)
        n_estimators = int(hyperparameters.get("n_estimators", 8))
        members = min(int(hyperparameters.get("batch_size", 8)), -(-n_estimators // n_methods))
        return max(1, members if max_by_memory is None else min(members, max_by_memory))

    @classmethod
    def _estimate_memory_usage_static(
        cls,
        *,
        X: pd.DataFrame,
        hyperparameters: dict | None = None,
        X_val: pd.DataFrame | None = None,
        num_gpus: float | None = None,
        **kwargs: Any,
    ) -> int:
        """Peak RAM (bytes) of a process that fits and predicts once (AutoGluon's OOF / validation prediction),
        used by AutoGluon to skip a fit or to lower the number of folds fitted in parallel.

        ``overhead + network + 4 x DataFrame + 1.25 x activations (+ finetuning)``, with the activations of one
        network call from :meth:`_activation_bytes_estimate` (linear in rows x features). A fit on a GPU
        (``num_gpus > 0``, passed by AutoGluon's per-fit check) keeps the activations on the device, so they are
        left out here (see :meth:`_estimate_gpu_memory_usage_static`). Calibrated against the peak RSS of fresh
        processes (``benchmarks/memory.py``, results in ``benchmarks/results/memory.md``): 1.2-1.55x of the measured
        peak across 500-8,000 rows x 10-50 features.
        """
        activation_bytes, fine_tune_bytes = cls._activation_bytes_estimate(
            X, hyperparameters, X_val, kwargs.get("num_classes")
        )
        if cls._explicit_gpu_count(num_gpus):
            activation_bytes, fine_tune_bytes = 0, 0  # finetuning's network copies live on the device too
        data_bytes = 4 * int(get_approximate_df_mem_usage(X).sum())
        return int(
            cls._MEMORY_OVERHEAD_BYTES + cls.network_bytes_estimate + data_bytes + activation_bytes + fine_tune_bytes
        )

    @classmethod
    def _estimate_gpu_memory_usage_static(
        cls, *, X: pd.DataFrame, hyperparameters: dict | None = None, **kwargs
    ) -> int:
        """Peak VRAM (bytes) of a fit + prediction on a GPU: ``CUDA context + network + 1.25 x activations
        (+ finetuning)``, the same activation model as :meth:`_estimate_memory_usage_static` (fp32 activations are
        assumed even under bf16 autocast, whose residual stream stays fp32). AutoGluon calls it only for fits that
        get a GPU; 0 when ``num_gpus=0`` is passed explicitly. The activation constants come from CPU measurements
        (``benchmarks/memory.py``; run with ``--device cuda`` to check against ``torch.cuda.max_memory_allocated``).
        """
        if cls._explicit_gpu_count(kwargs.get("num_gpus")) == 0:
            return 0
        activation_bytes, fine_tune_bytes = cls._activation_bytes_estimate(
            X, hyperparameters, kwargs.get("X_val"), kwargs.get("num_classes")
        )
        return int(cls._CUDA_CONTEXT_BYTES + cls.network_bytes_estimate + activation_bytes + fine_tune_bytes)

    # -------------------------------------------------------------------------------------------------- tags
    def _more_tags(self) -> dict:
        # In-context models simply use all rows as context when refit on the full data.
        return {"can_refit_full": True}

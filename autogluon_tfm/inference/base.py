"""What the in-context-learning estimators share: devices and precision, input checks, loading the network, feeding
it (training rows + test rows) per ensemble member, moving and pickling.

:class:`InContextEstimator` holds the common machinery; :class:`~autogluon_tfm.inference.TFMClassifier` and
:class:`~autogluon_tfm.inference.TFMRegressor` add the task-specific target handling and output aggregation.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from autogluon_tfm.inference.calibration import calibration_folds
from autogluon_tfm.inference.ensemble import FEATURE_SHUFFLE_METHODS, EnsembleMember, build_ensemble
from autogluon_tfm.inference.preprocessing import (
    CATEGORICAL_ORDERS,
    NORM_METHODS,
    EnsemblePreprocessor,
    ImportanceSelector,
    PCACompressor,
    as_frame,
)

__all__ = [
    "FEATURE_COMPRESSION_MODES",
    "DEFAULT_FINE_TUNE_STEPS",
    "DEFAULT_VALIDATION_FRACTION",
    "FINE_TUNE_MODES",
    "PRECISIONS",
    "SELECT_PCA_COMPONENTS",
    "SELECT_STANDARD_ERRORS",
    "SELECT_TOP_COLUMN_COUNTS",
    "InContextEstimator",
    "resolve_device",
    "resolve_precision",
]

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
FINE_TUNE_MODES = (None, "full", "lora")
#: ``fine_tune_steps="auto"`` / ``validation_fraction="auto"`` of weights whose card does not say.
DEFAULT_FINE_TUNE_STEPS = 200
DEFAULT_VALIDATION_FRACTION = 0.2
FEATURE_COMPRESSION_MODES = ("auto", "select", "none")
#: ``feature_compression="select"`` compares the encoded columns with this many principal components (measured on
#: the dev datasets: 16 components helped wide tables, 32 often kept too much noise).
SELECT_PCA_COMPONENTS = 16
#: ... and with as many of its columns as each of these counts below the table's width, those extra-trees rank most
#: important (``feature_compression="top<k>"``). Measured with TabPFNv2 on 15 dev tables of 4-16 columns (seed 0):
#: the 4 or 8 most important columns beat all columns on 12 of them (letter 1.48 -> 1.09, credit_approval
#: 0.364 -> 0.328), since the small shipped networks do not learn to ignore weak columns.
SELECT_TOP_COLUMN_COUNTS = (16, 8, 4)
#: A compressed view replaces the columns only when its held-out loss is lower by more than this many standard errors
#: of the mean per-row difference: on small tables the held-out rows are few and the lowest of five losses is often
#: luck (TabICL on wine, 124 rows: 8 columns scored 0.050 vs 0.066 held out, then 0.069 vs 0.040 on the test rows).
SELECT_STANDARD_ERRORS = 1.0
# Whether precision="auto" picks bf16 autocast on CPUs with native bf16 matmuls (see ``resolve_precision``).
AUTO_BF16_ON_CPU = False


def top_column_count(value: str) -> int | None:
    """``"top<k>"`` (k >= 1) -> k; any other string -> None."""
    match = re.fullmatch(r"top([1-9][0-9]*)", value)
    return int(match.group(1)) if match else None


def select_candidates(n_encoded_features: int) -> list[int | str | None]:
    """The views ``feature_compression="select"`` compares on a table of ``n_encoded_features`` columns: None (the
    columns), ``SELECT_PCA_COMPONENTS`` components when the table is wider than that, and ``"top<k>"`` for each of
    ``SELECT_TOP_COLUMN_COUNTS`` below the width."""
    candidates: list[int | str | None] = [None]
    if n_encoded_features > SELECT_PCA_COMPONENTS:
        candidates.append(SELECT_PCA_COMPONENTS)
    candidates += [f"top{k}" for k in SELECT_TOP_COLUMN_COUNTS if k < n_encoded_features]
    return candidates


def _clearly_lower(losses: np.ndarray, reference: np.ndarray) -> bool:
    """Whether per-row ``losses`` are lower than ``reference``'s on the same rows by more than
    ``SELECT_STANDARD_ERRORS`` standard errors of the mean paired difference."""
    difference = np.asarray(losses, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    standard_error = difference.std(ddof=1) / np.sqrt(len(difference)) if len(difference) > 1 else 0.0
    return float(difference.mean() + SELECT_STANDARD_ERRORS * standard_error) < 0.0


def _compression_name(compression: int | str | None) -> str:
    """Key of ``feature_compression_scores_``: ``"columns"``, ``"pca16"`` or ``"top<k>"``."""
    if compression is None:
        return "columns"
    return compression if isinstance(compression, str) else f"pca{compression}"


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


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX or AVX512-BF16): there bf16 autocast pays, elsewhere it is
    emulated and slower than fp32. Read from /proc/cpuinfo flags, else from torch's CPU capability checks."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
        return "amx_bf16" in flags or "avx512_bf16" in flags
    except OSError:
        checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


@functools.cache
def _warn_slow_low_precision(precision: str) -> None:
    """Once per process: low-precision autocast on a CPU that emulates it (measured ~140x slower than fp32 matmul
    on an AVX2-only CPU, benchmarks/results/speed.md)."""
    logger.warning(
        "precision=%r on a CPU without native bf16 (no AMX / AVX512-BF16): autocast is emulated there and runs far "
        "slower than fp32. Use precision='auto' (fp32 on this CPU).", precision,
    )


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> bf16 autocast on CUDA (fp16 where bf16 is unsupported), fp32 elsewhere.

    CPUs with native bf16 (``cpu_has_fast_bf16``) stay fp32 for now although bf16 measured 1.3-1.7x faster for
    full-size TabICL (1.0-1.1x for the shipped small weights) with >= 99.6 % argmax agreement: several tests compare
    default-precision predictions across batch layouts at 1e-6, which bf16 rounding breaks (see speed.md).
    ``AUTO_BF16_ON_CPU = True`` switches it on."""
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; expected one of {PRECISIONS}.")
    if precision != "auto":
        if device.type == "cpu" and precision in ("bf16", "fp16") and not cpu_has_fast_bf16():
            _warn_slow_low_precision(precision)
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and AUTO_BF16_ON_CPU and cpu_has_fast_bf16():
        return "bf16"
    return "fp32"


def supports_train_cache(network: torch.nn.Module) -> bool:
    """Whether ``network`` can run its training rows once and then only test rows (``TabICL``'s split API)."""
    return all(callable(getattr(network, name, None)) for name in ("build_train_cache", "forward_with_cache"))


def supports_kv_cache(network: torch.nn.Module) -> bool:
    """Whether ``network`` can keep its training rows' attention keys/values and then run only test rows
    (``build_kv_cache`` / ``forward_with_kv_cache`` / ``kv_cache_nbytes`` of ``TabPFNv2`` and ``Mitra``)."""
    names = ("build_kv_cache", "forward_with_kv_cache", "kv_cache_nbytes")
    return all(callable(getattr(network, name, None)) for name in names)


def _total_memory_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:  # psutil comes with AutoGluon; without it assume a small machine
        return 8 * 1024**3


def _available_memory_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return None


# Embedding-wide fp32 vectors alive per token at the peak of a whole-table call (measured with benchmarks/memory.py;
# the AutoGluon adapters' memory estimates read the same values).
ACTIVATION_VECTORS_PER_TOKEN = {"tabpfn_v2": 11.0, "mitra": 13.0}
# Share of the available RAM one network call may plan to use before prediction refuses to start.
_MEMORY_GUARD_SHARE = 0.9


def whole_table_activation_bytes(
    n_members: int, n_rows: int, tokens_per_row: int, dim: int, vectors_per_token: float
) -> int:
    """fp32 bytes at the peak of one call that runs ``n_members`` tables of ``n_rows`` (train + test) rows at once:
    ``vectors_per_token`` embedding-wide vectors per token (the memory model of the guard below and of the
    AutoGluon adapters' estimates)."""
    return int(4 * vectors_per_token * dim * n_members * n_rows * tokens_per_row)


def check_memory(required_bytes: int, what: str) -> None:
    """Raise a clear ``MemoryError`` before a CPU network call that would not fit in the available RAM (the
    machine would swap or the process be killed mid-way instead)."""
    available = _available_memory_bytes()
    if available is None or required_bytes <= _MEMORY_GUARD_SHARE * available:
        return
    raise MemoryError(
        f"{what} needs about {required_bytes / 1024**3:.1f} GB of working memory, but only "
        f"{available / 1024**3:.1f} GB are available. Use fewer training rows (subsample the context) or features, "
        f"a smaller batch_size / n_estimators, a GPU (device='cuda'), or a machine with more memory."
    )


def tabicl_member_bytes(n_train: int, n_groups: int, col_dim: int, row_dim: int, n_icl_blocks: int) -> int:
    """fp32 bytes one TabICL member holds while its training rows run (memory plan of the estimators and the
    AutoGluon memory estimate): column-stage output (G x n x E), row representations and every ICL block's
    training-row states (n x D each), with a few working copies."""
    return 4 * n_train * (n_groups * col_dim + (n_icl_blocks + 6) * row_dim)


def tabicl_cache_bytes(n_train: int, row_dim: int, n_icl_blocks: int) -> int:
    """fp32 bytes of one member's kept train cache: row representations + the ICL states of every block."""
    return 4 * n_train * (n_icl_blocks + 1) * row_dim


def train_cache_budget(train_cache_max_bytes: int | None = None) -> int:
    """Bytes of train caches kept between predictions: the given cap, else a quarter of RAM, at most 8 GiB."""
    if train_cache_max_bytes is not None:
        return int(train_cache_max_bytes)
    return min(_total_memory_bytes() // 4, 8 * 1024**3)


def _is_fraction(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and 0 <= value < 1


def _is_count(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0


# Finetuning parameters that may be "auto" besides fine_tune: (valid value?, what is expected).
_FINE_TUNE_AUTO_PARAMS = {
    "fine_tune_steps": (_is_count, "a non-negative integer"),
    "validation_fraction": (_is_fraction, "a number in [0, 1)"),
}


class InContextEstimator(BaseEstimator):
    """Base of the scikit-learn estimators that run a network following the network protocol.

    Subclasses set :attr:`_task` and use the fitted attributes ``members_``, ``network_``, ``device_``,
    ``precision_``, ``n_features_in_`` and ``feature_names_in_`` (DataFrame input). Parameters read here:
    ``model``, ``checkpoint``, ``n_estimators``, ``norm_methods``, ``feat_shuffle``, ``categorical_order``,
    ``outlier_threshold``, ``feature_compression``, ``batch_size``, ``device``, ``precision``, ``random_state``,
    ``verbose``, and the finetuning parameters both estimators share.

    ``feature_compression`` feeds the network fewer columns than the encoded table has: an int ``k`` always uses
    the ``k`` leading principal components (:class:`~autogluon_tfm.inference.preprocessing.PCACompressor`),
    ``"top<k>"`` always the ``k`` columns that extra-trees on the training rows rank most important
    (:class:`~autogluon_tfm.inference.preprocessing.ImportanceSelector`); ``"select"`` decides per table, on tables
    with more than ``min(SELECT_TOP_COLUMN_COUNTS)`` encoded columns: a few folds of (at most 1,024) training rows
    are predicted in context from the other rows, once from all columns, once from ``SELECT_PCA_COMPONENTS``
    components (wider tables only) and once from the ``k`` most important columns for each ``k`` of
    ``SELECT_TOP_COLUMN_COUNTS`` below the width (:func:`select_candidates`); the view with the lowest held-out
    loss (log loss, RMSE; ``feature_compression_scores_``) is kept if it beats the columns by more than
    ``SELECT_STANDARD_ERRORS`` standard errors of the per-row difference, else the columns are; ``"none"`` never compresses;
    ``"auto"`` does what the weights' card recommends (``inference_defaults``), else ``"none"``.
    ``feature_compression_`` is what was used: a number of components, ``"top<k>"``, or None (all columns).

    Finetuning parameters:

    - ``fine_tune``: ``None`` (in-context learning only), ``"full"`` (all weights) or ``"lora"`` (LoRA adapters,
      merged into the weights afterwards): finetune a copy of the network on the training table in ``fit``;
      ``"auto"`` (default) does what the weights' card recommends (``inference_defaults["fine_tune"]``: the shipped
      Mitra weights are finetuned, as AutoGluon's own Mitra is), else ``None``; ``fine_tune_`` is what was used;
    - ``fine_tune_steps``: maximum finetuning steps (one sampled context/query task of ~1,024 rows per step);
      ``"auto"`` = the card's ``inference_defaults["fine_tune_steps"]``, else ``DEFAULT_FINE_TUNE_STEPS``;
    - ``learning_rate``: peak AdamW learning rate of finetuning; ``"auto"`` = for the shipped weights the best of
      the learning-rate sweeps (5e-4 full, 2e-3 LoRA), 1e-4 for any other checkpoint;
    - ``lora_rank``, ``lora_alpha``, ``lora_dropout``: LoRA adapter settings (``fine_tune="lora"``);
    - ``lora_target_modules``: names of the ``nn.Linear`` layers that get adapters; ``None`` = attention projections
      and feed-forward layers (``autogluon_tfm.finetune.DEFAULT_LORA_TARGETS``);
    - ``validation_fraction``: share of the training rows held out (stratified by class, or by target quantile bin
      for regression) for early stopping when ``fit`` gets no ``X_val``; 0 = no early stopping (exactly
      ``fine_tune_steps`` steps); ``"auto"`` = the card's ``inference_defaults["validation_fraction"]``, else
      ``DEFAULT_VALIDATION_FRACTION`` (the shipped Mitra regression weights: 0, see their card);
    - ``time_limit``: seconds for ``fit`` (finetuning stops early to respect it); ``None`` = no limit.

    Finetuning early-stops on the validation loss of the ensemble prediction (up to 4 members, training rows as
    context), measured before the first step and every 5 steps, and keeps the best weights seen, the pretrained ones
    included; ``fine_tune_report_`` (a :class:`autogluon_tfm.finetune.FinetuneReport`, None without finetuning) says
    what happened. The finetuned network is ``network_``: predictions and pickles use it.
    """

    #: ``"classification"`` or ``"regression"``: the kind of network this estimator needs.
    _task: str = "classification"
    # Test rows per network call; training rows are always all present. Bounds memory for large test sets.
    max_test_rows_per_forward: int = 50_000
    # Working memory one network call aims at (bytes). Networks with a train cache (TabICL) size member batches,
    # column/row chunks and test chunks from it; others use ``batch_size`` and ``max_test_rows_per_forward``, and
    # TabPFN v2 / Mitra keep their training rows' keys/values only when those fit in it.
    memory_budget_bytes: int = 4 * 1024**3
    # Train caches kept between predictions (bytes; None = a quarter of the machine's memory, at most 8 GiB).
    # A cache beyond the budget still serves the prediction that built it (all its test chunks), then is dropped.
    train_cache_max_bytes: int | None = None

    # ------------------------------------------------------------------------------------------------ validation
    def _validate_common_params(self) -> tuple[str, ...]:
        """Check the parameters every estimator has; returns the normalisation methods as a tuple."""
        norm_methods = (self.norm_methods,) if isinstance(self.norm_methods, str) else tuple(self.norm_methods)
        if not norm_methods:
            raise ValueError("norm_methods must name at least one normalisation method.")
        unknown = [method for method in norm_methods if method not in NORM_METHODS]
        if unknown:
            raise ValueError(f"Unknown norm_methods {unknown}; expected a subset of {NORM_METHODS}.")
        if self.feat_shuffle not in FEATURE_SHUFFLE_METHODS:
            raise ValueError(f"Unknown feat_shuffle {self.feat_shuffle!r}; expected one of {FEATURE_SHUFFLE_METHODS}.")
        if self.categorical_order not in ("auto", *CATEGORICAL_ORDERS):
            raise ValueError(
                f"Unknown categorical_order {self.categorical_order!r}; expected 'auto' or one of {CATEGORICAL_ORDERS}."
            )
        for name in ("n_estimators", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not self.outlier_threshold > 0:
            raise ValueError(f"outlier_threshold must be > 0, got {self.outlier_threshold!r}.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"Unknown precision {self.precision!r}; expected one of {PRECISIONS}.")
        self._validate_feature_compression()
        return norm_methods

    def _validate_feature_compression(self) -> None:
        value = self.feature_compression
        if value is None or (isinstance(value, str) and value in FEATURE_COMPRESSION_MODES):
            return
        if isinstance(value, str) and top_column_count(value) is not None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(
                f"feature_compression must be one of {FEATURE_COMPRESSION_MODES}, None, a positive number of "
                f"principal components or 'top<k>' (the k most important columns, e.g. 'top16'), got {value!r}."
            )

    def _validate_fine_tune_params(self) -> None:
        """Check the finetuning parameters (all of them unless ``fine_tune=None``) before any work."""
        if self.fine_tune != "auto" and self.fine_tune not in FINE_TUNE_MODES:
            raise ValueError(f"Unknown fine_tune {self.fine_tune!r}; expected 'auto' or one of {FINE_TUNE_MODES}.")
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(f"time_limit must be > 0 seconds or None, got {self.time_limit!r}.")
        if self.fine_tune is None:
            return
        for name, (valid, expected) in _FINE_TUNE_AUTO_PARAMS.items():
            value = getattr(self, name)
            if not (value == "auto" if isinstance(value, str) else valid(value)):
                raise ValueError(f"{name} must be 'auto' or {expected}, got {value!r}.")
        # Validates the remaining finetuning settings ("auto" may still resolve to in-context learning).
        self._fine_tune_config("full" if self.fine_tune == "auto" else self.fine_tune, DEFAULT_FINE_TUNE_STEPS)

    def _card_defaults(self) -> dict[str, Any]:
        """The loaded weights' ``inference_defaults`` (their card's recommendations; empty without a card), which
        every ``"auto"`` parameter follows."""
        return getattr(self.network_, "inference_defaults", None) or {}

    def _resolve_fine_tune(self) -> None:
        """Set ``fine_tune_`` / ``fine_tune_steps_`` / ``validation_fraction_`` from the parameters and, for
        ``"auto"``, the loaded weights' card. Calibration needs rows the network has not learned from, so an explicit
        ``calibrate=True`` turns the card's finetuning off."""
        recommended = self._card_defaults()

        def from_card(name: str, default: Any, valid: Any, expected: str) -> Any:
            value = recommended.get(name, default)
            if not valid(value):
                raise ValueError(
                    f"The weights' card recommends {name}={value!r}, expected {expected}; fix the card's "
                    f"inference_defaults or pass {name} explicitly."
                )
            return value

        mode = self.fine_tune
        if mode == "auto":
            mode = from_card("fine_tune", None, FINE_TUNE_MODES.__contains__, f"one of {FINE_TUNE_MODES}")
            if mode is not None and getattr(self, "calibrate", None) is True:
                logger.info("calibrate=True: not finetuning (the card's fine_tune=%r), calibrating instead.", mode)
                mode = None
        defaults = {"fine_tune_steps": DEFAULT_FINE_TUNE_STEPS, "validation_fraction": DEFAULT_VALIDATION_FRACTION}
        values = {
            name: from_card(name, defaults[name], valid, expected) if getattr(self, name) == "auto" else getattr(self, name)
            for name, (valid, expected) in _FINE_TUNE_AUTO_PARAMS.items()
        }
        self.fine_tune_: str | None = mode
        self.fine_tune_steps_: int | None = None if mode is None else int(values["fine_tune_steps"])
        self.validation_fraction_: float | None = None if mode is None else float(values["validation_fraction"])
        if mode is not None and self.fine_tune == "auto":
            logger.info(
                "Finetuning as the weights' card recommends: fine_tune=%r, %d steps, validation_fraction %g.",
                mode, self.fine_tune_steps_, self.validation_fraction_,
            )

    def _skip_log_level(self) -> int:
        """Skipped finetuning is worth a warning when the user asked for it, not when the card's "auto" did."""
        return logging.INFO if self.fine_tune == "auto" else logging.WARNING

    def _fine_tune_config(self, mode: str, steps: int, time_limit: float | None = None):
        from autogluon_tfm.finetune import DEFAULT_LORA_TARGETS, FinetuneConfig

        targets = self.lora_target_modules
        if isinstance(targets, str):
            targets = (targets,)
        return FinetuneConfig(
            mode=mode,
            max_steps=steps,
            learning_rate=self._learning_rate(mode),
            lora_rank=self.lora_rank,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            lora_target_modules=DEFAULT_LORA_TARGETS if targets is None else tuple(targets),
            time_limit=time_limit,
        )

    def _learning_rate(self, mode: str) -> Any:
        """``learning_rate`` for finetuning ``mode``, with ``"auto"`` resolved by the weights in use (before fit: for
        the shipped ones)."""
        from autogluon_tfm.checkpoints import SHIPPED_DIR, list_shipped
        from autogluon_tfm.finetune import (
            OTHER_WEIGHTS_LEARNING_RATE,
            SHIPPED_WEIGHTS_LEARNING_RATE,
            SHIPPED_WEIGHTS_LORA_LEARNING_RATE,
        )

        if not (isinstance(self.learning_rate, str) and self.learning_rate == "auto"):
            return self.learning_rate
        source = getattr(self, "checkpoint_path_", None)
        shipped = source is None or source in list_shipped() or Path(source).resolve().parent == SHIPPED_DIR.resolve()
        if not shipped:
            return OTHER_WEIGHTS_LEARNING_RATE
        return SHIPPED_WEIGHTS_LORA_LEARNING_RATE if mode == "lora" else SHIPPED_WEIGHTS_LEARNING_RATE

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
            raise ValueError(
                f"{what} has duplicated column names: {duplicated}; rename them so that every column name is unique "
                f"(e.g. X.columns = [f'{{name}}_{{i}}' for i, name in enumerate(X.columns)])."
            )
        return frame

    # ------------------------------------------------------------------------------------------------- network
    def _load_network(self) -> tuple[torch.nn.Module, str]:
        """The network for ``model`` / ``checkpoint`` on ``device_``, checked to match the model and the task."""
        from autogluon_tfm.checkpoints import check_network, load_network, model_architecture, resolve_checkpoint

        model_architecture(self.model)  # unknown model names fail here, whatever the checkpoint
        if isinstance(self.checkpoint, torch.nn.Module):
            network, source = self.checkpoint.to(self.device_), f"<{type(self.checkpoint).__name__} module>"
        else:
            source = resolve_checkpoint(self.model, self._task, str(self.checkpoint))
            network = load_network(source, device=str(self.device_))
        check_network(network, self.model, self._task, source=f"checkpoint {source!r}")
        return network, str(source)

    # ------------------------------------------------------------------------------------------------ features
    def _encode(self, frame: pd.DataFrame) -> np.ndarray:
        """Rows of a checked table encoded (and compressed, when ``compressor_`` is set) as the network sees them
        before normalisation."""
        X_encoded = self.encoder_.transform(frame)
        return X_encoded if self.compressor_ is None else self.compressor_.transform(X_encoded)

    def _resolve_feature_compression(self) -> str | int | None:
        """``feature_compression`` with ``"auto"`` resolved through the weights' card: ``"select"``, a number of
        components, or None (no compression)."""
        value = self.feature_compression
        if value == "auto":
            value = self._card_defaults().get("feature_compression", "none")
        return None if value is None or value == "none" else value

    def _fit_features(
        self, X_encoded: np.ndarray, targets: np.ndarray, compression: int | str | None, norm_methods: Sequence[str],
        seed: int | None, n_classes: int, class_shift: bool,
    ) -> None:
        """Fit the compression (principal components, ``"top<k>"`` columns or None), the normalisations and the
        ensemble members on the encoded training rows."""
        self.feature_compression_ = compression
        self.compressor_ = None
        n_top = top_column_count(compression) if isinstance(compression, str) else None
        if n_top is not None:
            self.compressor_ = ImportanceSelector(n_top, self._task, random_state=seed).fit(X_encoded, targets)
            X_encoded = self.compressor_.transform(X_encoded)
            self.feature_compression_ = f"top{len(self.compressor_.columns_)}"
        elif compression is not None:
            self.compressor_ = PCACompressor(compression, seed).fit(X_encoded)
            X_encoded = self.compressor_.transform(X_encoded)
            self.feature_compression_ = self.compressor_.n_components_
        feat_shuffle = self.feat_shuffle
        if getattr(self.network_, "ignores_column_order_and_scale", False):
            # Members differing in feature order or a monotone normalisation would repeat one output (Mitra: 8
            # regression members vs 1 agree to 3e-4 of the target's std): keep one normalisation and one order, so
            # members differ by class relabelling only (a regressor has one member).
            norm_methods, feat_shuffle = tuple(norm_methods)[:1], "none"
        self.preprocessor_ = EnsemblePreprocessor(norm_methods, self.outlier_threshold, seed).fit(X_encoded)
        self.members_: list[EnsembleMember] = build_ensemble(
            n_features=self.preprocessor_.n_features_out_,
            n_classes=n_classes,
            n_estimators=int(self.n_estimators),
            norm_methods=norm_methods,
            feat_shuffle=feat_shuffle,
            class_shift=class_shift,
            random_state=seed,
        )

    def _choose_feature_compression(
        self, frame: pd.DataFrame, targets: np.ndarray, n_encoded_features: int, seed: int | None
    ) -> tuple[int | str | None, Any]:
        """The compression to use (a number of components, ``"top<k>"``, None: the columns) and what the held-out
        pass of that choice left for later steps (None when nothing was held out; see ``_held_out_losses``)."""
        self.feature_compression_scores_: dict[str, float] | None = None
        setting = self._resolve_feature_compression()
        if setting != "select":
            return setting, None
        candidates = select_candidates(n_encoded_features)
        if len(candidates) == 1:
            return None, None
        scored = {}
        for candidate in candidates:
            result = self._held_out_losses(frame, targets, seed, "none" if candidate is None else candidate)
            if result is None:  # nothing could be held out (too few rows, or every fold's context has one class)
                return None, None
            scored[candidate] = result
        self.feature_compression_scores_ = {
            _compression_name(candidate): self._held_out_score(losses) for candidate, (losses, _) in scored.items()
        }
        best = min(scored, key=lambda candidate: self.feature_compression_scores_[_compression_name(candidate)])
        lowest = best
        if best is not None and not _clearly_lower(scored[best][0], scored[None][0]):
            best = None
        logger.info(
            "feature_compression='select': held-out loss %s -> %s%s",
            ", ".join(f"{name} {score:.4g}" for name, score in self.feature_compression_scores_.items()),
            _compression_name(best),
            "" if best == lowest else f" ({_compression_name(lowest)} not lower by a standard error)",
        )
        return best, scored[best][1]

    def _held_out_losses(
        self, frame: pd.DataFrame, targets: np.ndarray, seed: int | None, feature_compression: str | int
    ) -> tuple[np.ndarray, Any] | None:
        """Per-row losses of in-context predictions of held-out training rows (``calibration_folds``, the same rows
        in the same order for every ``feature_compression``), and anything the subclass keeps from that pass; None
        if no row could be held out."""
        raise NotImplementedError

    @staticmethod
    def _held_out_score(losses: np.ndarray) -> float:
        """The held-out loss of a view (``feature_compression_scores_``) from its per-row losses."""
        raise NotImplementedError

    def _held_out_estimators(
        self, frame: pd.DataFrame, targets: np.ndarray, seed: int | None, **overrides: Any
    ) -> Iterator[tuple[np.ndarray, InContextEstimator]]:
        """Per fold of ``calibration_folds``: the held-out row indices and a copy of this estimator (same network,
        in-context learning only, ``overrides`` applied) fitted on the other rows. Folds whose other rows cannot be
        fitted on (``_can_fit_context``) are skipped."""
        params = {
            **self.get_params(deep=False), "checkpoint": self.network_, "verbose": False, "fine_tune": None,
            **overrides,
        }
        for fold in calibration_folds(len(targets), seed):
            context = np.setdiff1d(np.arange(len(targets)), fold, assume_unique=True)
            if self._can_fit_context(targets[context]):
                yield fold, type(self)(**params).fit(frame.iloc[context], targets[context])

    @staticmethod
    def _can_fit_context(targets: np.ndarray) -> bool:
        return True

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

    # ---------------------------------------------------------------------------------------------- finetuning
    def _preprocessed_by_method(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Rows of a checked table (e.g. validation rows) encoded and preprocessed for every normalisation method."""
        X_encoded = self._encode(frame)
        methods = self.preprocessor_.train_transformed_
        return {method: self.preprocessor_.transform(X_encoded, method) for method in methods}

    def _fine_tune(
        self,
        y_train: np.ndarray,
        strata: np.ndarray,
        validation: tuple[Mapping[str, np.ndarray], np.ndarray] | None,
        data_cls: type,
        task_args: dict[str, Any],
        seed: int | None,
        fit_start: float,
    ) -> None:
        """Finetune a copy of ``network_`` (a module given as ``checkpoint`` is never modified) and keep it.

        ``y_train`` are the targets of the preprocessed training rows; ``validation`` the preprocessed validation
        rows per method and their targets, or None: then ``validation_fraction`` of the training rows is held out,
        stratified by ``strata`` (class ids, or target bins). The task's data object is
        ``data_cls(X_train, y_train, X_val=..., y_val=..., members=..., feat_shuffle=..., **task_args)`` (a
        :class:`autogluon_tfm.finetune.TableFinetuneData`).
        """
        from autogluon_tfm.finetune import finetune, stratified_split

        X_train = self.preprocessor_.train_transformed_
        X_val, y_val = validation if validation is not None else (None, None)
        if validation is None and self.validation_fraction_ > 0:
            rng = np.random.default_rng(seed)
            train_rows, val_rows = stratified_split(strata, len(strata), self.validation_fraction_, rng)
            if len(val_rows) == 0 or len(train_rows) < 2:
                logger.log(
                    self._skip_log_level(), "Too few rows (%d) to hold out validation rows; skipping finetuning.",
                    len(y_train),
                )
                return
            X_val = {method: X[val_rows] for method, X in X_train.items()}
            y_val = y_train[val_rows]
            X_train = {method: X[train_rows] for method, X in X_train.items()}
            y_train = y_train[train_rows]
        if len(y_train) < 2:
            logger.log(self._skip_log_level(), "Too few training rows (%d) to finetune; skipping finetuning.", len(y_train))
            return
        data = data_cls(
            X_train,
            y_train,
            X_val=X_val,
            y_val=y_val,
            members=self.members_,
            feat_shuffle=self.feat_shuffle != "none",
            **task_args,
        )
        time_left = None
        if self.time_limit is not None:
            time_left = max(float(self.time_limit) - (time.monotonic() - fit_start), 0.0)
        self.network_, self.fine_tune_report_ = finetune(
            self.network_,
            data,
            self._fine_tune_config(self.fine_tune_, self.fine_tune_steps_, time_limit=time_left),
            device=self.device_,
            precision=self.precision_,
            seed=seed,
            verbose=bool(self.verbose),
        )

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
                f"X has {frame.shape[1]} columns, but the {type(self).__name__} was fitted with {self.n_features_in_}."
            )
        return frame

    def _member_groups(self) -> Iterator[tuple[str, list[EnsembleMember]]]:
        for method, group in itertools.groupby(self.members_, key=lambda member: member.norm_method):
            yield method, list(group)

    def _autocast(self) -> contextlib.AbstractContextManager:
        autocast_dtype = AUTOCAST_DTYPES[self.precision_]
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_.type, dtype=autocast_dtype)

    # ------------------------------------------------------------------------------ memory plan and train caches
    def _tabicl_sizes(self, network: torch.nn.Module, n_features: int) -> tuple[int, int, int, int]:
        """(columns per row G, column width E, tokens per row C+G, row width D) of a TabICL-like network."""
        config = getattr(network, "config", {})
        E = int(config.get("embed_dim", 128))
        C = int(config.get("row_num_cls", 4))
        group = config.get("col_feature_group", "same")
        G = -(-n_features // int(config.get("col_feature_group_size", 3))) if group == "valid" else n_features
        return G, E, C + G, C * E

    def _member_batch_size(self, network: torch.nn.Module, n_train: int, n_features: int) -> int:
        """Members per network call: ``batch_size``, fewer when one member's training rows need a lot of memory.

        For a cached network, one member holds its column-stage output (G x n x E), its row representations and
        the ICL states of every block (n x D each) at once (fp32 bytes).
        """
        if not supports_train_cache(network):
            return int(self.batch_size)
        G, E, _, D = self._tabicl_sizes(network, n_features)
        n_icl = int(getattr(network, "config", {}).get("icl_num_blocks", 12))
        per_member = tabicl_member_bytes(n_train, G, E, D, n_icl)
        return int(max(1, min(int(self.batch_size), self.memory_budget_bytes // max(per_member, 1))))

    def _chunks(self, network: torch.nn.Module, n_members: int, n_rows: int, n_features: int) -> dict[str, int]:
        """Column and row chunks that keep one stage's activations near a quarter of ``memory_budget_bytes``."""
        G, E, tokens, _ = self._tabicl_sizes(network, n_features)
        share = self.memory_budget_bytes // 4
        # ~6 live (rows, E) tensors per column in the set transformer; ~8 (tokens, E) per row in the row transformer
        return {
            "col_chunk": int(max(1, share // max(6 * 4 * n_rows * E, 1))),
            "row_chunk": int(max(n_members, share // (8 * 4 * tokens * E))),
        }

    def _test_chunk_rows(self, network: torch.nn.Module, n_members: int, n_features: int) -> int:
        """Test rows per cached call: each test row costs its own activations only (~0.25 MB per member at G=50)."""
        G, E, tokens, D = self._tabicl_sizes(network, n_features)
        per_row = 4 * n_members * (6 * G * E + 8 * tokens * E + 8 * D)
        return int(max(256, min(self.max_test_rows_per_forward, (self.memory_budget_bytes // 4) // per_row)))

    def _reset_train_cache(self) -> None:
        """Forget cached training-row work (a new fit, another device or precision)."""
        self.__dict__["train_cache_"] = {}

    def _cache_budget(self) -> int:
        return train_cache_budget(self.train_cache_max_bytes)

    def _train_cache(self, network: torch.nn.Module, key: Any, build: Callable[[], Any]) -> Any:
        """The cache stored under ``key`` for this network/device/precision, else ``build()`` (kept within budget)."""
        caches = self.__dict__.setdefault("train_cache_", {})
        full_key = (id(network), str(self.device_), self.precision_, key)
        cache = caches.get(full_key)
        if cache is None:
            cache = build()
            used = sum(entry.nbytes for entry in caches.values())
            if used + cache.nbytes <= self._cache_budget():
                caches[full_key] = cache
        return cache

    def _forward(
        self,
        network: torch.nn.Module,
        X_train_batch: np.ndarray,
        y_batch: np.ndarray,
        X_test: np.ndarray,
        feature_orders: Sequence[np.ndarray],
        progress: tqdm,
        reduce: Callable[[np.ndarray], np.ndarray] | None = None,
        cache_key: Any = None,
    ) -> np.ndarray:
        """Run the network on ``(members, n_train + test chunk, H)``; returns ``(members, n_test, n_out)`` float32.

        Test rows are fed in chunks of ``max_test_rows_per_forward`` (the network keeps test rows independent, so
        chunking does not change results); each member's test rows get that member's feature order. ``reduce``, if
        given, maps each chunk's ``(members, chunk, n_out)`` output to ``(members, chunk, k)`` before the chunks are
        joined, so wide outputs (thousands of logits per row) need not be kept for every test row.

        A network with a train cache (TabICL; TabPFN v2's key/value cache) runs the training rows once per call and
        every test chunk against the cache; with a ``cache_key`` the cache is kept for the next prediction
        (``train_cache_max_bytes``).
        """
        if supports_train_cache(network):
            return self._forward_cached(
                network, X_train_batch, y_batch, X_test, feature_orders, progress, reduce, cache_key
            )
        device = self.device_
        if device.type == "cpu":
            self._check_whole_table_memory(network, X_train_batch.shape, min(len(X_test), self.max_test_rows_per_forward))
        # TabPFN v2 / Mitra keep their training rows' keys/values (when one call's fit the memory budget): the
        # training rows then run once per call, or once per fit with a ``cache_key``, and each test chunk alone.
        use_kv = supports_kv_cache(network) and network.kv_cache_nbytes(*X_train_batch.shape) <= self.memory_budget_bytes
        outputs = []
        with torch.no_grad(), self._autocast():
            train = torch.from_numpy(np.ascontiguousarray(X_train_batch, dtype=np.float32)).to(device)
            labels = torch.from_numpy(np.ascontiguousarray(y_batch, dtype=np.float32)).to(device)
            if use_kv:

                def build():
                    return network.build_kv_cache(train, labels)

                cache = build() if cache_key is None else self._train_cache(network, ("kv", cache_key), build)
            for start in range(0, len(X_test), self.max_test_rows_per_forward):
                chunk = X_test[start : start + self.max_test_rows_per_forward]
                test = torch.from_numpy(np.stack([chunk[:, order] for order in feature_orders]).astype(np.float32))
                if use_kv:
                    output = network.forward_with_kv_cache(test.to(device), cache)
                else:
                    output = network(torch.cat([train, test.to(device)], dim=1), labels)
                output = output.float().cpu().numpy()
                outputs.append(output if reduce is None else reduce(output))
                progress.update(1)
        return np.concatenate(outputs, axis=1)

    def _forward_cached(
        self, network: torch.nn.Module, X_train_batch: np.ndarray, y_batch: np.ndarray, X_test: np.ndarray,
        feature_orders: Sequence[np.ndarray], progress: tqdm, reduce: Callable[[np.ndarray], np.ndarray] | None,
        cache_key: Any,
    ) -> np.ndarray:
        """:meth:`_forward` for a network with a train cache (same arguments): training rows once, then test chunks."""
        n_members, _, n_features = X_train_batch.shape
        outputs = []
        with torch.no_grad(), self._autocast():

            def build():
                return self._build_train_cache(network, X_train_batch, y_batch, with_icl=True)

            cache = build() if cache_key is None else self._train_cache(network, ("flat", cache_key), build)
            step = self._test_chunk_rows(network, n_members, n_features)
            chunks = self._chunks(network, n_members, min(step, len(X_test)), n_features)
            for start in range(0, len(X_test), step):
                chunk = X_test[start : start + step]
                test = torch.from_numpy(np.stack([chunk[:, order] for order in feature_orders]).astype(np.float32))
                output = network.forward_with_cache(test.to(self.device_), cache, **chunks).float().cpu().numpy()
                outputs.append(output if reduce is None else reduce(output))
        progress.update(-(-len(X_test) // self.max_test_rows_per_forward))  # the units the caller counted
        return np.concatenate(outputs, axis=1)

    def _check_whole_table_memory(self, network: torch.nn.Module, train_shape: tuple, n_test: int) -> None:
        """:func:`check_memory` for a network that runs training and test rows in one call (TabPFN v2, Mitra)."""
        vectors = ACTIVATION_VECTORS_PER_TOKEN.get(getattr(network, "arch", ""))
        config = getattr(network, "config", {})
        dim = config.get("embed_dim", config.get("dim"))
        if vectors is None or dim is None:
            return
        n_members, n_train, n_features = train_shape
        tokens_per_row = -(-n_features // int(config.get("features_per_group", 1))) + 1  # + the target token
        required = whole_table_activation_bytes(n_members, n_train + n_test, tokens_per_row, dim, vectors)
        check_memory(
            required,
            f"{type(self).__name__}: {n_members} ensemble member(s) on {n_train} training + {n_test} test rows x "
            f"{n_features} features",
        )

    def _build_train_cache(
        self, network: torch.nn.Module, X_train_batch: np.ndarray, y_batch: np.ndarray, with_icl: bool
    ) -> Any:
        """``network.build_train_cache`` on ``(members, n_train, H)`` training rows, chunked by the memory plan."""
        n_members, n_train, n_features = X_train_batch.shape
        if self.device_.type == "cpu":
            G, E, _, D = self._tabicl_sizes(network, n_features)
            n_icl = int(getattr(network, "config", {}).get("icl_num_blocks", 12))
            states = n_members * tabicl_member_bytes(n_train, G, E, D, n_icl)
            check_memory(  # + the column / row stage chunks, each at most a quarter of the budget
                states + min(self.memory_budget_bytes // 2, states),
                f"{type(self).__name__}: {n_members} ensemble member(s) on {n_train} training rows x "
                f"{n_features} features",
            )
        train = torch.from_numpy(np.ascontiguousarray(X_train_batch, dtype=np.float32)).to(self.device_)
        labels = torch.from_numpy(np.ascontiguousarray(y_batch, dtype=np.float32)).to(self.device_)
        chunks = self._chunks(network, n_members, n_train, n_features)
        return network.build_train_cache(train, labels, with_icl=with_icl, **chunks)

    def _encode_cached(
        self,
        network: torch.nn.Module,
        X_train_member: np.ndarray,
        y_member: np.ndarray,
        X_test: np.ndarray,
        feature_order: np.ndarray,
        cache_key: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Row representations ``(R_train (1, n, D), R_test (1, m, D))`` of one member, the training rows' part cached.

        For hierarchical classification: the column and row stages run once per member, every tree node reuses them.
        """
        n_features = X_train_member.shape[1]
        with torch.no_grad(), self._autocast():

            def build():
                return self._build_train_cache(network, X_train_member[None], y_member[None], with_icl=False)

            cache = self._train_cache(network, ("rows", cache_key), build)
            step = self._test_chunk_rows(network, 1, n_features)
            parts = []
            for start in range(0, len(X_test), step):
                chunk = torch.from_numpy(np.ascontiguousarray(X_test[start : start + step, feature_order][None]))
                chunk = chunk.to(self.device_, torch.float32)
                chunks = self._chunks(network, 1, chunk.shape[1], n_features)
                parts.append(network.encode_test_rows(chunk, cache, **chunks))
        return cache.R_train, torch.cat(parts, dim=1)

    # ------------------------------------------------------------------------------------------ device, pickling
    def to(self, device: str | torch.device) -> InContextEstimator:
        """Move the fitted estimator to ``device`` (e.g. "cpu" before saving, "cuda" after loading)."""
        check_is_fitted(self, "network_")
        self.device = str(device)
        self.device_ = resolve_device(device)
        self.precision_ = resolve_precision(self.precision, self.device_)
        self.network_.to(self.device_)
        self._reset_train_cache()
        return self

    def __getstate__(self) -> dict:
        # Weights travel with the pickle; keep them on CPU so the pickle loads on machines without the device.
        # This moves the live network too; the next prediction moves it back to ``device_``.
        network = self.__dict__.get("network_")
        if network is not None:
            network.to("cpu")
        state = dict(super().__getstate__())  # a copy: the live estimator keeps its cache
        state.pop("train_cache_", None)  # derived from the weights and the training rows: rebuilt on demand
        return state

    def __setstate__(self, state: dict) -> None:
        # Estimators pickled before categorical_order existed numbered every categorical in sorted order.
        state.setdefault("categorical_order", "lexical")
        # ... and before feature compression existed fed the encoded columns.
        state.setdefault("feature_compression", "none")
        if "encoder_" in state:
            state.setdefault("compressor_", None)
            state.setdefault("feature_compression_", None)
            state.setdefault("feature_compression_scores_", None)
        super().__setstate__(state)
        if "device_" not in self.__dict__:
            return
        if self.device == "auto":
            self.device_ = resolve_device("auto")
        elif self.device_.type == "cuda" and not torch.cuda.is_available():
            logger.warning(
                "%s was fitted on %s but CUDA is not available here; using CPU.", type(self).__name__, self.device_
            )
            self.device_ = torch.device("cpu")
        self.precision_ = resolve_precision(self.precision, self.device_)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

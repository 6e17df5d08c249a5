"""AutoGluon model ``TABICL`` backed by the project's TabICL network and estimator."""

from __future__ import annotations

from typing import Any

import pandas as pd

from autogluon_tfm.autogluon.base import TFMBaseModel
from autogluon_tfm.inference.base import (
    InContextEstimator,
    tabicl_cache_bytes,
    tabicl_member_bytes,
    train_cache_budget,
)

# The official full-size network the estimate assumes (ARCHITECTURES.md 1.1): column width E, row width D = 4 x E.
_FULL_COL_DIM, _FULL_ROW_DIM, _FULL_ICL_BLOCKS = 128, 512, 12


class TabICLModel(TFMBaseModel):
    """TabICL (column set-transformer -> row transformer -> in-context transformer) from ``autogluon_tfm``.

    Replaces AutoGluon's built-in ``TABICL`` entry once :mod:`autogluon_tfm` is imported. Unlike the built-in
    wrapper it needs no ``tabicl`` package and no download: by default it uses an official TabICL checkpoint already
    in the local Hugging Face cache, else the project's shipped weights; ``checkpoint=`` takes a name or a path.
    Handles more than 10 classes (hierarchical classification).

    Example::

        import autogluon_tfm  # registers TABICL
        from autogluon.tabular import TabularPredictor

        TabularPredictor(label="y").fit(train, hyperparameters={"TABICL": {"n_estimators": 8}})
    """

    ag_key = "TABICL"
    ag_name = "TabICL"
    ag_priority = 65
    estimator_model_name = "tabicl"
    # Memory model (TFMBaseModel._estimate_memory_usage_static), calibrated with benchmarks/memory.py: 27.6M fp32
    # parameters; one 128-wide embedding per cell, ~14 vectors per cell at the peak (in the column embedding; the
    # row stage's 4 CLS tokens and the per-row ICL stage come after it and need less).
    network_bytes_estimate = 110 * 1024**2
    embedding_dim_estimate = 128
    activation_vectors_per_token = 14.0
    features_per_token = 1
    extra_tokens_per_row = 0
    num_blocks_estimate = 6  # column (3) + row (3) blocks act per cell; the 12 ICL blocks act per row

    @classmethod
    def _activation_bytes_estimate(
        cls, X: pd.DataFrame, hyperparameters: dict | None, X_val: pd.DataFrame | None = None, num_classes: Any = None
    ) -> tuple[int, int]:
        """The linear model of :class:`TFMBaseModel`, capped by TabICL's memory plan.

        TabICL inference runs the column and row stages in chunks of about a quarter of ``memory_budget_bytes``
        each, batches members so their training-row states fit the budget, and keeps train caches up to the cache
        budget. The linear model alone grows without bound (225 GB at 100K x 50, so AutoGluon would skip a table
        well inside ``ag.max_rows``); the cap is ``1.25 x (members per call x member states + 2 stage chunks) +
        kept caches``. With a class tree every node keeps its cache (about one full cache per tree level).
        """
        linear, fine_tune = super()._activation_bytes_estimate(X, hyperparameters, X_val, num_classes)
        hyperparameters = hyperparameters or {}
        n_rows, n_features = X.shape
        budget = int(InContextEstimator.memory_budget_bytes)
        per_member = tabicl_member_bytes(n_rows, n_features, _FULL_COL_DIM, _FULL_ROW_DIM, _FULL_ICL_BLOCKS)
        working = cls._members_per_call(hyperparameters, budget // per_member) * per_member + budget // 2
        levels = cls._class_tree_levels(num_classes, hyperparameters.get("max_classes_per_call", "auto"))
        caches = min(
            levels
            * int(hyperparameters.get("n_estimators", 8))
            * tabicl_cache_bytes(n_rows, _FULL_ROW_DIM, _FULL_ICL_BLOCKS),
            train_cache_budget(InContextEstimator.train_cache_max_bytes),
        )
        capped = int(cls._MEMORY_SAFETY_FACTOR * working + caches)
        return min(linear, capped), fine_tune

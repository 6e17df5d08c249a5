"""AutoGluon model ``TABICL`` backed by the project's TabICL network and estimator."""

from __future__ import annotations

from autogluon_tfm.autogluon.base import TFMBaseModel


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

"""AutoGluon model ``MITRA`` backed by the project's Mitra (Tab2D) network and estimator."""

from __future__ import annotations

from autogluon_tfm.autogluon.base import TFMBaseModel, limits
from autogluon_tfm.inference.base import ACTIVATION_VECTORS_PER_TOKEN


class MitraModel(TFMBaseModel):
    """Mitra (2D row/column attention over every cell, quantile embedding) from ``autogluon_tfm``.

    Replaces AutoGluon's built-in ``MITRA`` entry once :mod:`autogluon_tfm` is imported. By default it uses an
    official Mitra directory already in the local Hugging Face cache, else the project's shipped weights;
    ``checkpoint=`` takes a name or a path. Problem types: binary, multiclass (more than 10 classes
    hierarchically) and regression; not quantile, because Mitra's regression head predicts one value per row.

    Example::

        import autogluon_tfm  # registers MITRA
        from autogluon.tabular import TabularPredictor

        TabularPredictor(label="y").fit(train, hyperparameters={"MITRA": {"n_estimators": 8}})
    """

    ag_key = "MITRA"
    ag_name = "Mitra"
    ag_priority = 55
    estimator_model_name = "mitra"
    # Memory model (TFMBaseModel._estimate_memory_usage_static), calibrated with benchmarks/memory.py: 75.7M fp32
    # parameters; one 512-wide token per feature + the label token, ~13 vectors per token at the peak (the
    # 2,048-wide feed-forward hidden layer before and after GELU is 8 of them).
    network_bytes_estimate = 290 * 1024**2
    embedding_dim_estimate = 512
    activation_vectors_per_token = ACTIVATION_VECTORS_PER_TOKEN["mitra"]
    features_per_token = 1
    extra_tokens_per_row = 1
    num_blocks_estimate = 24  # 12 layers of two attention blocks (across rows, across features)
    kv_cache_vectors_per_token = 24.0  # keys + values of every head (2 x dim) in each of 12 layers
    # Attention over every cell: memory and time grow with rows x features (the official limits of the architecture).
    _default_auxiliary_params_extra = limits(max_rows=10_000, max_features=500)
    _supported_problem_types = ["binary", "multiclass", "regression"]

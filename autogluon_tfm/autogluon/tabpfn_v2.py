"""AutoGluon model ``TABPFNV2`` backed by the project's TabPFN v2 network and estimator."""

from __future__ import annotations

from autogluon_tfm.autogluon.base import TFMBaseModel, limits
from autogluon_tfm.inference.base import ACTIVATION_VECTORS_PER_TOKEN


class TabPFNv2Model(TFMBaseModel):
    """TabPFN v2 (alternating attention over features and rows of every cell) from ``autogluon_tfm``.

    A new key next to AutoGluon's built-in ``REALTABPFN-V2``: it needs no ``tabpfn`` package and no download. By
    default it uses an official TabPFN v2 checkpoint already in the local cache (tabpfn's cache directory or the
    Hugging Face cache), else the project's shipped weights; ``checkpoint=`` takes a name or a path. Problem types:
    binary, multiclass (more than 10 classes hierarchically), regression and quantile (bar-distribution head).

    Example::

        import autogluon_tfm  # registers TABPFNV2
        from autogluon.tabular import TabularPredictor

        TabularPredictor(label="y").fit(train, hyperparameters={"TABPFNV2": {"n_estimators": 8}})
    """

    ag_key = "TABPFNV2"
    ag_name = "TabPFNv2"
    ag_priority = 60
    estimator_model_name = "tabpfnv2"
    # Memory model (TFMBaseModel._estimate_memory_usage_static), calibrated with benchmarks/memory.py: 7.2M fp32
    # parameters; one 192-wide token per feature pair + the target token, ~11 vectors per token at the peak.
    network_bytes_estimate = 30 * 1024**2
    embedding_dim_estimate = 192
    activation_vectors_per_token = ACTIVATION_VECTORS_PER_TOKEN["tabpfn_v2"]
    features_per_token = 2
    extra_tokens_per_row = 1
    num_blocks_estimate = 12
    kv_cache_vectors_per_token = 4.0  # first-head keys + values (2 x 32 floats) per token in each of 12 blocks
    # Attention over every cell: memory and time grow with rows x features (the official limits of the architecture).
    _default_auxiliary_params_extra = limits(max_rows=10_000, max_features=500)

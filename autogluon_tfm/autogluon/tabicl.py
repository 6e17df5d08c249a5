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
    network_bytes_estimate = 120 * 1024**2  # official TabICL classifier: ~27M fp32 parameters + buffers


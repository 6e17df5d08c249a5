"""Ready ``hyperparameters`` dicts that mix the foundation models with AutoGluon's GBDTs.

``TabularPredictor.fit`` trains models in order of priority (highest first) and stops starting new ones when the
time limit runs out. The TFMs get priorities above the GBDTs here, so a tight ``time_limit`` never cuts them:
in-context fitting costs almost nothing and the expensive part (predicting the validation rows) is bounded.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["PORTFOLIOS", "get_hyperparameters"]

# Fit order: TFMs first (cheap to fit), then the GBDTs AutoGluon would fit anyway.
_TFM_PRIORITY = {"TABICL": 120, "TABPFNV2": 110, "MITRA": 100}


def _tfm(key: str, **params: Any) -> dict[str, Any]:
    suffix = params.pop("name_suffix", None)
    ag_args: dict[str, Any] = {"priority": _TFM_PRIORITY[key] - (5 if suffix else 0)}
    if suffix:
        ag_args["name_suffix"] = suffix
    return {**params, "ag_args": ag_args}


PORTFOLIOS: dict[str, dict[str, Any]] = {
    # One TFM and two GBDTs: the quickest mix that still ensembles diverse models.
    "fast": {
        "TABICL": _tfm("TABICL"),
        "GBM": {},
        "CAT": {},
    },
    # All three TFMs with their weights' defaults (in context; the shipped Mitra regression weights finetune, see
    # fine_tune="auto") and the standard GBDTs.
    "medium": {
        "TABICL": _tfm("TABICL"),
        "TABPFNV2": _tfm("TABPFNV2"),
        "MITRA": _tfm("MITRA"),
        "GBM": [{}, {"extra_trees": True, "ag_args": {"name_suffix": "XT"}}],
        "CAT": {},
        "XGB": {},
    },
    # Adds a fully finetuned variant of each TFM (early-stopped on the bag's out-of-fold rows) and more members.
    "best_quality": {
        "TABICL": [_tfm("TABICL", n_estimators=16), _tfm("TABICL", fine_tune="full", name_suffix="_FT")],
        "TABPFNV2": [_tfm("TABPFNV2", n_estimators=16), _tfm("TABPFNV2", fine_tune="full", name_suffix="_FT")],
        # In context explicitly: fine_tune="auto" would finetune the shipped Mitra regression weights twice.
        "MITRA": [
            _tfm("MITRA", n_estimators=16, fine_tune=None), _tfm("MITRA", fine_tune="full", name_suffix="_FT")
        ],
        "GBM": [{}, {"extra_trees": True, "ag_args": {"name_suffix": "XT"}}],
        "CAT": {},
        "XGB": {},
        "RF": {},
        "XT": {},
    },
}


def get_hyperparameters(name: str = "medium") -> dict[str, Any]:
    """A fresh copy of a named portfolio for ``TabularPredictor.fit(hyperparameters=...)``.

    ``"fast"``: TabICL + LightGBM + CatBoost. ``"medium"``: TabICL, TabPFNv2 and Mitra with their weights' defaults
    (in context; finetuned where the card says so, as for the shipped Mitra regression weights) + LightGBM (plain
    and extra-trees), CatBoost, XGBoost. ``"best_quality"``: each TFM in context with 16 members and fully finetuned,
    plus the GBDTs, RandomForest and ExtraTrees; use it with bagging (``presets="best_quality"``).

    Example::

        import autogluon_tfm
        from autogluon.tabular import TabularPredictor

        TabularPredictor(label="y").fit(train, hyperparameters=autogluon_tfm.get_hyperparameters("fast"))
    """
    if name not in PORTFOLIOS:
        raise ValueError(f"Unknown portfolio {name!r}; choose one of {sorted(PORTFOLIOS)}.")
    return copy.deepcopy(PORTFOLIOS[name])

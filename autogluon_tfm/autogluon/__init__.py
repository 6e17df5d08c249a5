"""AutoGluon integration: thin ``AbstractModel`` adapters around the estimators, plus registry glue."""

from __future__ import annotations

from autogluon_tfm.autogluon.base import TFMBaseModel
from autogluon_tfm.autogluon.mitra import MitraModel
from autogluon_tfm.autogluon.persistence import CheckpointReferenceError
from autogluon_tfm.autogluon.portfolio import get_hyperparameters
from autogluon_tfm.autogluon.registry import register, unregister
from autogluon_tfm.autogluon.tabicl import TabICLModel
from autogluon_tfm.autogluon.tabpfn_v2 import TabPFNv2Model

__all__ = [
    "CheckpointReferenceError",
    "MitraModel",
    "TFMBaseModel",
    "TabICLModel",
    "TabPFNv2Model",
    "get_hyperparameters",
    "register",
    "unregister",
]

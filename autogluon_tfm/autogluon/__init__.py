"""AutoGluon integration: thin ``AbstractModel`` adapters around the estimators, plus registry glue."""

from __future__ import annotations

from autogluon_tfm.autogluon.base import TFMBaseModel
from autogluon_tfm.autogluon.registry import register, unregister
from autogluon_tfm.autogluon.tabicl import TabICLModel

__all__ = ["TFMBaseModel", "TabICLModel", "register", "unregister"]

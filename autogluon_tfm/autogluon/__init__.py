"""AutoGluon integration: thin ``AbstractModel`` adapters around the estimators, plus registry glue.

``TabICLModel`` / ``TFMBaseModel`` import AutoGluon, so they are loaded on first access; ``register`` /
``unregister`` only import AutoGluon when called.
"""

from __future__ import annotations

from autogluon_tfm.autogluon.registry import register, register_on_import, unregister

__all__ = ["TFMBaseModel", "TabICLModel", "register", "register_on_import", "unregister"]

_LAZY = {
    "TFMBaseModel": "autogluon_tfm.autogluon.base",
    "TabICLModel": "autogluon_tfm.autogluon.tabicl",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'autogluon_tfm.autogluon' has no attribute {name!r}")

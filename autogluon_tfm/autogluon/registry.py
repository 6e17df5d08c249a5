"""Put the project's models into AutoGluon's model registry (and take them out again).

``import autogluon_tfm`` calls :func:`register`, so the string keys ``"TABICL"``, ``"TABPFNV2"`` and ``"MITRA"`` resolve to this project's models
in every process that imported the package.
"""

from __future__ import annotations

import logging

from autogluon.tabular.registry import ag_model_registry

from autogluon_tfm.autogluon.mitra import MitraModel
from autogluon_tfm.autogluon.tabicl import TabICLModel
from autogluon_tfm.autogluon.tabpfn_v2 import TabPFNv2Model

logger = logging.getLogger(__name__)

OUR_MODELS: tuple[type, ...] = (TabICLModel, TabPFNv2Model, MitraModel)

# ag_key -> the built-in class we replaced (restored by unregister()).
_replaced: dict[str, type] = {}


def register() -> list[str]:
    """Make AutoGluon's keys (``TABICL`` ...) resolve to this project's models; idempotent.

    Built-in classes under the same keys are removed from ``ag_model_registry`` and remembered for
    :func:`unregister`. Process-global: every ``hyperparameters`` dict or preset naming the key uses our model from
    now on. Logs one INFO line when something changed. Returns the keys that resolve to our models.
    """
    key_to_cls = ag_model_registry.key_to_cls_map()
    changes = []
    for model_cls in OUR_MODELS:
        key = model_cls.ag_key
        current = key_to_cls.get(key)
        if current is model_cls:
            continue
        if current is not None:
            ag_model_registry.remove(current)
            if not current.__module__.startswith("autogluon_tfm."):
                _replaced[key] = current
            changes.append(f"{key} (replacing {current.__module__}.{current.__name__})")
        else:
            changes.append(key)
        ag_model_registry.add(model_cls)
    if changes:
        logger.info(
            "autogluon_tfm: AutoGluon model keys now use autogluon_tfm's models: %s; autogluon_tfm.unregister() "
            "restores the built-ins.",
            ", ".join(changes),
        )
    return [model_cls.ag_key for model_cls in OUR_MODELS]


def unregister() -> None:
    """Undo :func:`register`: remove this project's models and restore the built-in classes; idempotent."""
    key_to_cls = ag_model_registry.key_to_cls_map()
    for model_cls in OUR_MODELS:
        key = model_cls.ag_key
        if key_to_cls.get(key) is model_cls:
            ag_model_registry.remove(model_cls)
        builtin = _replaced.pop(key, None)
        if builtin is not None and key not in ag_model_registry.key_to_cls_map():
            ag_model_registry.add(builtin)

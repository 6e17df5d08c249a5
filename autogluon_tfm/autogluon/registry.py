"""Put the project's models into AutoGluon's model registry (and take them out again).

``import autogluon_tfm`` calls :func:`register`, so the string keys ``"TABICL"``, ``"TABPFNV2"`` and ``"MITRA"``
resolve to this project's models in every process that imported the package.

AutoGluon has no plugin entry points, so a fresh worker process only knows these keys if something it unpickles
imports ``autogluon_tfm``. Parallel fold workers unpickle our model objects, which does. DyStack's sub-fit is
different: the ray worker receives only the ``hyperparameters`` dict with its string keys, and an unknown key makes
AutoGluon drop the whole sub-fit with a warning. :func:`register` therefore routes AutoGluon's sub-fit function
through :func:`_dystack_with_plugins`, which ray pickles by reference to this module: unpickling it in the worker
imports ``autogluon_tfm`` (registering the keys) before the sub-fit reads the hyperparameters.
"""

from __future__ import annotations

import logging
from typing import Any

from autogluon.tabular.predictor import predictor as _predictor_module
from autogluon.tabular.registry import ag_model_registry

from autogluon_tfm.autogluon.mitra import MitraModel
from autogluon_tfm.autogluon.tabicl import TabICLModel
from autogluon_tfm.autogluon.tabpfn_v2 import TabPFNv2Model

logger = logging.getLogger(__name__)

OUR_MODELS: tuple[type, ...] = (TabICLModel, TabPFNv2Model, MitraModel)

# ag_key -> the built-in class we replaced (restored by unregister()).
_replaced: dict[str, type] = {}


# AutoGluon's own DyStack sub-fit function, wrapped by `_dystack_with_plugins` (None if this AutoGluon has none).
_AUTOGLUON_DYSTACK = getattr(_predictor_module, "_dystack", None)


def _dystack_with_plugins(*args: Any, **kwargs: Any) -> Any:
    """AutoGluon's DyStack sub-fit, run after ``autogluon_tfm`` is imported (see the module docstring)."""
    import autogluon_tfm  # noqa: F401  (registers the keys in a fresh worker; a no-op in this process)

    return _AUTOGLUON_DYSTACK(*args, **kwargs)


def _route_dystack_through_plugins(enable: bool) -> None:
    if _AUTOGLUON_DYSTACK is None:
        if enable:
            logger.warning(
                "autogluon_tfm: this AutoGluon version has no DyStack sub-fit hook; with dynamic_stacking=True pass "
                "the model classes as hyperparameter keys (e.g. {autogluon_tfm.TabICLModel: {}}) instead of strings."
            )
        return
    _predictor_module._dystack = _dystack_with_plugins if enable else _AUTOGLUON_DYSTACK


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
    _route_dystack_through_plugins(True)
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
    _route_dystack_through_plugins(False)

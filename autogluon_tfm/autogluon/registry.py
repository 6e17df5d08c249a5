"""Put the project's models into AutoGluon's model registry (and take them out again).

``import autogluon_tfm`` calls :func:`register_on_import`: if AutoGluon's registry is already imported the models are
registered at once, otherwise a tiny import hook registers them the moment ``autogluon.tabular.registry`` is first
imported. So the package import stays cheap for estimator-only users (AutoGluon is never imported for them), while a
``TabularPredictor`` always sees the replaced keys.
"""

from __future__ import annotations

import importlib
import importlib.abc
import logging
import sys
from types import ModuleType

logger = logging.getLogger(__name__)

_AG_REGISTRY_MODULE = "autogluon.tabular.registry"

# ag_key -> (module, class name) of this project's model; imported only when registering, because importing a
# model module imports AutoGluon.
_MODEL_CLASS_PATHS: dict[str, tuple[str, str]] = {
    "TABICL": ("autogluon_tfm.autogluon.tabicl", "TabICLModel"),
}

# ag_key -> the class the key resolved to before we registered (None if the key was free); restored by unregister().
_replaced: dict[str, type | None] = {}

# True once registration was asked for (by `import autogluon_tfm` or register()) and not undone by unregister().
_registration_requested = False

_ADAPTER_MODULES = ("autogluon_tfm.autogluon.base", *(module for module, _ in _MODEL_CLASS_PATHS.values()))


def _our_model_classes() -> list[type]:
    classes = []
    for module_name, class_name in _MODEL_CLASS_PATHS.values():
        classes.append(getattr(importlib.import_module(module_name), class_name))
    return classes


def _is_ours(model_cls: type) -> bool:
    return model_cls.__module__.startswith("autogluon_tfm.")


def _ag_registry():
    # `ag_model_registry` is read off the already-imported module when possible: inside the import hook the parent
    # package `autogluon.tabular` may still be initialising.
    module = sys.modules.get(_AG_REGISTRY_MODULE) or importlib.import_module(_AG_REGISTRY_MODULE)
    return module.ag_model_registry


def register() -> list[str]:
    """Make AutoGluon's keys (``TABICL`` ...) resolve to this project's models; idempotent.

    Built-in classes registered under the same keys are removed from ``ag_model_registry`` and remembered so that
    :func:`unregister` can restore them. This is process-global: every ``hyperparameters`` / preset that names the
    key uses our model from now on. Logs one INFO line when something changed.

    Returns:
        The keys that now resolve to this project's models.
    """
    global _registration_requested
    _registration_requested = True
    registry = _ag_registry()
    key_to_cls = registry.key_to_cls_map()
    changes = []
    for model_cls in _our_model_classes():
        key = model_cls.ag_key
        current = key_to_cls.get(key)
        if current is model_cls:
            continue
        if current is not None:
            registry.remove(current)
        # A stale class of ours (e.g. after a module reload) is not what unregister() should bring back.
        if current is not None and not _is_ours(current):
            _replaced[key] = current
            changes.append(f"{key} (replacing {current.__module__}.{current.__name__})")
        else:
            _replaced.setdefault(key, None)
            changes.append(key)
        registry.add(model_cls)
    if changes:
        logger.info(
            "autogluon_tfm: AutoGluon model keys now use autogluon_tfm's models: %s; autogluon_tfm.unregister() "
            "restores the built-ins.",
            ", ".join(changes),
        )
    return list(_MODEL_CLASS_PATHS)


def unregister() -> None:
    """Undo :func:`register`: remove this project's models and restore the built-in classes; idempotent.

    Also cancels a pending registration (if AutoGluon's registry has not been imported yet).
    """
    global _registration_requested
    _registration_requested = False
    _remove_hook()
    if _AG_REGISTRY_MODULE not in sys.modules:
        return
    registry = _ag_registry()
    key_to_cls = registry.key_to_cls_map()
    for key in list(_MODEL_CLASS_PATHS):
        current = key_to_cls.get(key)
        if current is not None and _is_ours(current):
            registry.remove(current)
        builtin = _replaced.pop(key, None)
        if builtin is not None and key not in registry.key_to_cls_map():
            registry.add(builtin)


# ----------------------------------------------------------------------------------------------------- import hook
class _LoaderThenRegister(importlib.abc.Loader):
    """Wraps the real loader of ``autogluon.tabular.registry``: executes it, then registers our models."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        register_when_ready()

    def __getattr__(self, name: str):
        # e.g. get_resource_reader, is_package, get_source: behave like the real loader
        return getattr(self._loader, name)


class _RegisterOnImportFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder that only intercepts ``autogluon.tabular.registry`` and removes itself after one use."""

    def find_spec(self, fullname: str, path, target=None):
        if fullname != _AG_REGISTRY_MODULE:
            return None
        _remove_hook()
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is None:
                continue
            spec = find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _LoaderThenRegister(spec.loader)
                return spec
        return None


_hook: _RegisterOnImportFinder | None = None


def _remove_hook() -> None:
    global _hook
    if _hook is not None and _hook in sys.meta_path:
        sys.meta_path.remove(_hook)
    _hook = None


def _module_initializing(name: str) -> bool:
    # importlib marks a module's spec `_initializing` while its code runs (CPython's circular-import bookkeeping).
    spec = getattr(sys.modules.get(name), "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def register_when_ready(finished_module: str | None = None) -> None:
    """Register if it was requested, AutoGluon's registry exists and no adapter module is half-imported.

    Importing an adapter module (``base``, ``tabicl`` ...) can itself be what first imports AutoGluon's registry,
    e.g. when a saved predictor is unpickled in a fresh process. Registering at that moment would import the
    half-executed adapter module, so registration is deferred: every adapter module calls this as its last line
    (passing its own name), and the last one to finish registers.
    """
    if not _registration_requested or _AG_REGISTRY_MODULE not in sys.modules:
        return
    if any(_module_initializing(name) for name in _ADAPTER_MODULES if name != finished_module):
        return
    try:
        register()
    except Exception as err:  # never break AutoGluon's own import because of the plugin
        logger.warning("autogluon_tfm: could not register the AutoGluon models: %r", err)


def register_on_import() -> None:
    """Register now if AutoGluon's registry is already imported, else as soon as it is imported."""
    global _hook, _registration_requested
    _registration_requested = True
    if _AG_REGISTRY_MODULE in sys.modules:
        register_when_ready()
        return
    if _hook is None:
        _hook = _RegisterOnImportFinder()
        sys.meta_path.insert(0, _hook)

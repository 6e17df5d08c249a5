"""autogluon-tfm: tabular foundation models (TabICL-, TabPFNv2- and Mitra-style) for AutoGluon.

Importing the package registers the AutoGluon models (``TABICL`` ...) in AutoGluon's model registry,
replacing the built-in entries of the same key; :func:`unregister` restores them.
"""

from __future__ import annotations

__version__ = "0.1.0"

from autogluon_tfm.autogluon import register, unregister  # these two do not import AutoGluon
from autogluon_tfm.autogluon.registry import register_on_import as _register_on_import
from autogluon_tfm.checkpoints import load_network
from autogluon_tfm.inference import TFMClassifier

__all__ = ["TFMClassifier", "TabICLModel", "load_network", "register", "unregister", "__version__"]

# Registers the AutoGluon models now if AutoGluon's registry is already imported, else the moment it is imported,
# so that `import autogluon_tfm` stays cheap for estimator-only users.
_register_on_import()


def __getattr__(name: str):
    # The model classes import AutoGluon, so they are loaded on first access.
    if name in ("TabICLModel",):
        from autogluon_tfm import autogluon as _ag

        return getattr(_ag, name)
    raise AttributeError(f"module 'autogluon_tfm' has no attribute {name!r}")

"""autogluon-tfm: tabular foundation models (TabICL-, TabPFNv2- and Mitra-style) for AutoGluon.

Importing the package registers the AutoGluon models (``TABICL`` ...) in AutoGluon's model registry, replacing the
built-in entries of the same key (``TABICL``, ``MITRA``; ``TABPFNV2`` is new) (one INFO log line); :func:`unregister` restores them.
"""

from __future__ import annotations

__version__ = "0.1.0"

from autogluon_tfm.autogluon import MitraModel, TabICLModel, TabPFNv2Model, get_hyperparameters, register, unregister
from autogluon_tfm.checkpoints import load_network
from autogluon_tfm.inference import TFMClassifier, TFMRegressor

__all__ = [
    "MitraModel",
    "TFMClassifier",
    "TFMRegressor",
    "TabICLModel",
    "TabPFNv2Model",
    "load_network",
    "register",
    "unregister",
    "__version__",
    "get_hyperparameters",
]

register()

"""Torch networks only (no scikit-learn, no AutoGluon). Every network follows the network protocol of DESIGN.md:
``forward(X (B, T, H), y_train (B, n)) -> (B, T - n, n_out)`` for the test rows."""

from autogluon_tfm.nn.mitra import Mitra
from autogluon_tfm.nn.tabicl import TabICL
from autogluon_tfm.nn.tabpfn_v2 import TabPFNv2

ARCHITECTURES = {"tabicl": TabICL, "tabpfn_v2": TabPFNv2, "mitra": Mitra}

__all__ = ["ARCHITECTURES", "Mitra", "TabICL", "TabPFNv2"]

"""Torch networks only (no scikit-learn, no AutoGluon). Every network follows the network protocol of DESIGN.md:
``forward(X (B, T, H), y_train (B, n)) -> (B, T - n, n_out)`` for the test rows."""

from autogluon_tfm.nn.tabicl import TabICL

ARCHITECTURES = {"tabicl": TabICL}

__all__ = ["ARCHITECTURES", "TabICL"]

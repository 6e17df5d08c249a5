"""scikit-learn estimators that run in-context-learning tabular networks (encode -> ensemble -> network -> average)."""

from autogluon_tfm.inference.classifier import TFMClassifier

__all__ = ["TFMClassifier"]

"""scikit-learn estimators that run in-context-learning tabular networks (encode -> ensemble -> network -> average)."""

from autogluon_tfm.inference.classifier import TFMClassifier
from autogluon_tfm.inference.regressor import TFMRegressor

__all__ = ["TFMClassifier", "TFMRegressor"]

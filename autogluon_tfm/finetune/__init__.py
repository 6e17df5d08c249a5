"""Finetuning of the in-context tabular networks on a user's table: full or LoRA, with early stopping.

Entry point: :func:`finetune` (network + :class:`ClassificationFinetuneData` or :class:`RegressionFinetuneData` +
:class:`FinetuneConfig`); the estimators call it from ``fit`` when ``fine_tune="full" | "lora"``.
"""

from autogluon_tfm.finetune.data import (
    ClassificationFinetuneData,
    FinetuneData,
    RegressionFinetuneData,
    StepBatch,
    TableFinetuneData,
    stratified_split,
    target_bins,
)
from autogluon_tfm.finetune.lora import DEFAULT_LORA_TARGETS, add_lora, merge_lora
from autogluon_tfm.finetune.trainer import (
    FINETUNE_MODES,
    OTHER_WEIGHTS_LEARNING_RATE,
    SHIPPED_WEIGHTS_LEARNING_RATE,
    SHIPPED_WEIGHTS_LORA_LEARNING_RATE,
    FinetuneConfig,
    FinetuneReport,
    finetune,
)

__all__ = [
    "DEFAULT_LORA_TARGETS",
    "FINETUNE_MODES",
    "OTHER_WEIGHTS_LEARNING_RATE",
    "SHIPPED_WEIGHTS_LEARNING_RATE",
    "SHIPPED_WEIGHTS_LORA_LEARNING_RATE",
    "ClassificationFinetuneData",
    "FinetuneConfig",
    "FinetuneData",
    "FinetuneReport",
    "RegressionFinetuneData",
    "StepBatch",
    "TableFinetuneData",
    "add_lora",
    "finetune",
    "merge_lora",
    "stratified_split",
    "target_bins",
]

"""What a finetuning step and a validation pass see: sampled in-context tasks built from a preprocessed table.

The trainer (:mod:`autogluon_tfm.finetune.trainer`) knows nothing about tables; it asks a data object for
``sample_step`` / ``loss`` / ``validation_loss``. :class:`ClassificationFinetuneData` builds them from the estimator's
preprocessed training matrices (one per normalisation method) so that finetuning sees the same inputs as prediction.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from autogluon_tfm.inference.ensemble import EnsembleMember

__all__ = ["ClassificationFinetuneData", "FinetuneData", "StepBatch", "stratified_split"]


@dataclass
class StepBatch:
    """One in-context task for a gradient step: ``network(X, y_context)`` predicts the query rows.

    Attributes:
        X: ``(B, n_context + n_query, H)`` float32, context rows first.
        y_context: ``(B, n_context)`` float32 labels of the context rows, as the network expects them.
        y_query: ``(B, n_query)`` int64 targets of the query rows (in the same label space as ``y_context``).
    """

    X: Tensor
    y_context: Tensor
    y_query: Tensor

    def to(self, device: torch.device) -> StepBatch:
        return StepBatch(self.X.to(device), self.y_context.to(device), self.y_query.to(device))


class FinetuneData(Protocol):
    """What :func:`autogluon_tfm.finetune.finetune` needs from a task (classification now, regression later)."""

    has_validation: bool

    def sample_step(self, rng: np.random.Generator, rows_per_step: int, query_fraction: float) -> StepBatch: ...

    def loss(self, outputs: Tensor, batch: StepBatch) -> Tensor: ...

    def validation_loss(self, network: nn.Module, device: torch.device, autocast_dtype: torch.dtype | None) -> float:
        ...


def stratified_split(
    y: np.ndarray, n_rows: int, query_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw about ``n_rows`` rows of ``y`` (all when fewer) and split them into (context, query) index arrays.

    Every class keeps its share of rows (at least one), and every class with at least two drawn rows has rows on both
    sides; a class drawn once stays in the context, so the network always sees every class it is asked to predict.
    """
    n_total = len(y)
    take_fraction = min(1.0, n_rows / n_total)
    context, query = [], []
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        n_taken = min(len(rows), max(1, int(round(len(rows) * take_fraction))))
        rows = rows[:n_taken]
        n_query = min(n_taken - 1, int(round(n_taken * query_fraction)))
        if n_taken >= 2:
            n_query = max(n_query, 1)
        query.append(rows[:n_query])
        context.append(rows[n_query:])
    return rng.permutation(np.concatenate(context)), rng.permutation(np.concatenate(query))


class ClassificationFinetuneData:
    """Context/query tasks and ensemble validation for a classification table.

    Args:
        X_train: preprocessed training rows per normalisation method (``{method: (n, H)}``), the rows steps sample.
        y_train: class ids ``0..n_classes-1`` of those rows.
        n_classes: number of classes of the table (the network's logits are sliced to it).
        X_val / y_val: preprocessed validation rows per method and their class ids; ``None`` = no validation.
        members: the estimator's ensemble members; validation averages the logits of up to ``max_eval_members`` of
            them (methods taken in turn), with all of ``X_train`` as context, exactly as prediction does.
        feat_shuffle: draw a random feature order per step (else the identity).
        class_shift: draw a random circular shift of the class ids per step (else the identity).
        softmax_temperature: validation probabilities are ``softmax(mean logits / softmax_temperature)``.
        max_eval_members: cap on members in a validation pass (its cost is that of a prediction with them).
        max_val_rows_per_forward: validation rows per network call (bounds memory).
    """

    def __init__(
        self,
        X_train: Mapping[str, np.ndarray],
        y_train: np.ndarray,
        n_classes: int,
        X_val: Mapping[str, np.ndarray] | None = None,
        y_val: np.ndarray | None = None,
        members: Sequence[EnsembleMember] = (),
        feat_shuffle: bool = True,
        class_shift: bool = True,
        softmax_temperature: float = 0.9,
        max_eval_members: int = 4,
        max_val_rows_per_forward: int = 4096,
    ):
        if not X_train:
            raise ValueError("X_train must hold the preprocessed rows of at least one normalisation method.")
        self.methods = list(X_train)
        self.X_train = {method: np.asarray(X, dtype=np.float32) for method, X in X_train.items()}
        self.y_train = np.asarray(y_train, dtype=np.int64)
        self.n_classes = int(n_classes)
        n_rows = {len(X) for X in self.X_train.values()}
        if n_rows != {len(self.y_train)}:
            raise ValueError(f"X_train has {sorted(n_rows)} rows per method but y_train has {len(self.y_train)}.")
        if len(self.y_train) < 2:
            raise ValueError("Finetuning needs at least two training rows (one context row and one query row).")
        self.n_features = next(iter(self.X_train.values())).shape[1]
        self.has_validation = X_val is not None and y_val is not None and len(y_val) > 0
        if self.has_validation:
            missing = [member.norm_method for member in members if member.norm_method not in X_val]
            if missing or not members:
                raise ValueError(f"Validation needs members whose methods are in X_val; missing {sorted(set(missing))}.")
            self.X_val = {method: np.asarray(X, dtype=np.float32) for method, X in X_val.items()}
            self.y_val = np.asarray(y_val, dtype=np.int64)
            self.eval_members = self._spread_members(members, max_eval_members)
        self.feat_shuffle = bool(feat_shuffle)
        self.class_shift = bool(class_shift)
        self.softmax_temperature = float(softmax_temperature)
        self.max_val_rows_per_forward = int(max_val_rows_per_forward)

    @staticmethod
    def _spread_members(members: Sequence[EnsembleMember], limit: int) -> list[EnsembleMember]:
        """Up to ``limit`` members, taking the normalisation methods in turn, regrouped by method."""
        groups = [list(group) for _, group in itertools.groupby(members, key=lambda member: member.norm_method)]
        interleaved = [member for batch in itertools.zip_longest(*groups) for member in batch if member is not None]
        chosen = interleaved[: max(int(limit), 1)]
        method_rank = {method: rank for rank, method in enumerate(dict.fromkeys(m.norm_method for m in chosen))}
        return sorted(chosen, key=lambda member: method_rank[member.norm_method])

    # -------------------------------------------------------------------------------------------------- steps
    def sample_step(self, rng: np.random.Generator, rows_per_step: int, query_fraction: float) -> StepBatch:
        """A fresh task: random normalisation method, feature order and class shift, stratified context/query."""
        method = self.methods[int(rng.integers(len(self.methods)))]
        order = rng.permutation(self.n_features) if self.feat_shuffle else np.arange(self.n_features)
        shift = int(rng.integers(self.n_classes)) if self.class_shift else 0
        pattern = (np.arange(self.n_classes) - shift) % self.n_classes  # same convention as the ensemble members
        context, query = stratified_split(self.y_train, rows_per_step, query_fraction, rng)
        rows = np.concatenate([context, query])
        X = self.X_train[method][rows][:, order]
        labels = pattern[self.y_train]
        return StepBatch(
            X=torch.from_numpy(np.ascontiguousarray(X))[None],
            y_context=torch.from_numpy(labels[context].astype(np.float32))[None],
            y_query=torch.from_numpy(labels[query])[None],
        )

    def loss(self, outputs: Tensor, batch: StepBatch) -> Tensor:
        """Cross-entropy of the query rows over the table's classes (logits beyond ``n_classes`` are ignored)."""
        logits = outputs[..., : self.n_classes].float()
        return F.cross_entropy(logits.reshape(-1, self.n_classes), batch.y_query.reshape(-1))

    # -------------------------------------------------------------------------------------------- validation
    @torch.no_grad()
    def validation_logits(
        self, network: nn.Module, device: torch.device, autocast_dtype: torch.dtype | None = None
    ) -> np.ndarray:
        """Ensemble-averaged logits ``(n_val, n_classes)`` of the validation rows (network in eval mode)."""
        if not self.has_validation:
            raise ValueError("No validation rows were given.")
        was_training = network.training
        network.eval()
        total = np.zeros((len(self.y_val), self.n_classes))
        try:
            for method, group in itertools.groupby(self.eval_members, key=lambda member: member.norm_method):
                members = list(group)
                orders = [member.feature_order for member in members]
                context = torch.from_numpy(np.stack([self.X_train[method][:, order] for order in orders])).to(device)
                labels = np.stack([member.class_pattern[self.y_train] for member in members]).astype(np.float32)
                labels = torch.from_numpy(labels).to(device)
                X_val = self.X_val[method]
                for start in range(0, len(X_val), self.max_val_rows_per_forward):
                    chunk = X_val[start : start + self.max_val_rows_per_forward]
                    test = torch.from_numpy(np.stack([chunk[:, order] for order in orders])).to(device)
                    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                        outputs = network(torch.cat([context, test], dim=1), labels)
                    outputs = outputs[..., : self.n_classes].float().cpu().numpy().astype(np.float64)
                    for member_logits, member in zip(outputs, members):
                        # The member's output for original class c sits at position class_pattern[c].
                        total[start : start + len(chunk)] += member_logits[:, member.class_pattern]
        finally:
            network.train(was_training)
        return total / len(self.eval_members)

    def validation_loss(
        self, network: nn.Module, device: torch.device, autocast_dtype: torch.dtype | None = None
    ) -> float:
        """Log loss of the ensemble prediction on the validation rows (``inf`` when the network outputs NaN)."""
        logits = torch.from_numpy(self.validation_logits(network, device, autocast_dtype) / self.softmax_temperature)
        loss = float(F.cross_entropy(logits, torch.from_numpy(self.y_val)))
        return loss if np.isfinite(loss) else float("inf")

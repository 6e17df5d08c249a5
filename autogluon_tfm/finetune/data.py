"""What a finetuning step and a validation pass see: sampled in-context tasks built from a preprocessed table.

The trainer (:mod:`autogluon_tfm.finetune.trainer`) knows nothing about tables; it asks a data object for
``sample_step`` / ``loss`` / ``validation_loss``. :class:`ClassificationFinetuneData` and
:class:`RegressionFinetuneData` build them from the estimator's preprocessed training matrices (one per normalisation
method) so that finetuning sees the same inputs as prediction; what they share (rows per method, validation rows,
ensemble members for validation, feature orders) lives in :class:`TableFinetuneData`.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from autogluon_tfm.inference.ensemble import EnsembleMember
from autogluon_tfm.inference.hierarchical import build_class_tree, hierarchical_proba, proba_to_logits
from autogluon_tfm.inference.regression_heads import BarDistributionHead, regression_head_for
from autogluon_tfm.nn.losses import regression_loss, scale_targets

__all__ = [
    "ClassificationFinetuneData",
    "FinetuneData",
    "RegressionFinetuneData",
    "StepBatch",
    "TableFinetuneData",
    "stratified_split",
    "target_bins",
]


@dataclass
class StepBatch:
    """One in-context task for a gradient step: ``network(X, y_context)`` predicts the query rows.

    Attributes:
        X: ``(B, n_context + n_query, H)`` float32, context rows first.
        y_context: ``(B, n_context)`` float32 labels of the context rows, as the network expects them.
        y_query: ``(B, n_query)`` targets of the query rows in the same space as ``y_context``: int64 class ids
            (classification) or float32 scaled targets (regression).
        n_labels: classification: how many labels the task has (the logits are sliced to it); ``None`` otherwise.
    """

    X: Tensor
    y_context: Tensor
    y_query: Tensor
    n_labels: int | None = None

    def to(self, device: torch.device) -> StepBatch:
        return StepBatch(self.X.to(device), self.y_context.to(device), self.y_query.to(device), self.n_labels)


class FinetuneData(Protocol):
    """What :func:`autogluon_tfm.finetune.finetune` needs from a task (classification or regression)."""

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


def target_bins(y: np.ndarray, n_bins: int = 10) -> np.ndarray:
    """Quantile bin ids of a regression target (ties share a bin), to stratify splits with :func:`stratified_split`:
    both sides then cover the target's range, and the lowest and highest values are always in the context."""
    y = np.asarray(y, dtype=np.float64)
    edges = np.unique(np.quantile(y, np.linspace(0, 1, n_bins + 1)[1:-1]))
    bins = np.searchsorted(edges, y, side="right")
    # The extreme values get bins of their own, so a step's context spans the whole range and never is constant.
    bins[y == y.min()] = -1
    bins[y == y.max()] = n_bins + 1
    return bins


class TableFinetuneData:
    """What the classification and regression tasks share: the preprocessed rows, the validation rows and the
    ensemble members a validation pass uses, and the per-step choice of normalisation method and feature order.

    Args:
        X_train: preprocessed training rows per normalisation method (``{method: (n, H)}``), the rows steps sample.
        y_train: targets of those rows (class ids, or regression targets).
        X_val / y_val: preprocessed validation rows per method and their targets; ``None`` = no validation.
        members: the estimator's ensemble members; validation averages over up to ``max_eval_members`` of them
            (methods taken in turn), with all of ``X_train`` as context, as prediction does.
        feat_shuffle: draw a random feature order per step (else the identity).
        max_eval_members: cap on members in a validation pass (its cost is that of a prediction with them).
        max_val_rows_per_forward: validation rows per network call (bounds memory).
    """

    _y_dtype: type = np.int64

    def __init__(
        self,
        X_train: Mapping[str, np.ndarray],
        y_train: np.ndarray,
        X_val: Mapping[str, np.ndarray] | None = None,
        y_val: np.ndarray | None = None,
        members: Sequence[EnsembleMember] = (),
        feat_shuffle: bool = True,
        max_eval_members: int = 4,
        max_val_rows_per_forward: int = 4096,
    ):
        if not X_train:
            raise ValueError("X_train must hold the preprocessed rows of at least one normalisation method.")
        self.methods = list(X_train)
        self.X_train = {method: np.asarray(X, dtype=np.float32) for method, X in X_train.items()}
        self.y_train = np.asarray(y_train, dtype=self._y_dtype)
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
            self.y_val = np.asarray(y_val, dtype=self._y_dtype)
            self.eval_members = self._spread_members(members, max_eval_members)
        self.feat_shuffle = bool(feat_shuffle)
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
    def _step_view(self, rng: np.random.Generator) -> tuple[str, np.ndarray]:
        """A random normalisation method and feature order for one step."""
        method = self.methods[int(rng.integers(len(self.methods)))]
        order = rng.permutation(self.n_features) if self.feat_shuffle else np.arange(self.n_features)
        return method, order

    def _step_features(self, method: str, order: np.ndarray, rows: np.ndarray) -> Tensor:
        """``(1, len(rows), H)`` float32: the step's rows of ``method`` in feature ``order``."""
        return torch.from_numpy(np.ascontiguousarray(self.X_train[method][rows][:, order]))[None]

    # -------------------------------------------------------------------------------------------- validation
    def _require_validation(self) -> None:
        if not self.has_validation:
            raise ValueError("No validation rows were given.")

    def _eval_member_groups(self) -> Iterator[tuple[str, list[EnsembleMember]]]:
        for method, group in itertools.groupby(self.eval_members, key=lambda member: member.norm_method):
            yield method, list(group)

    @staticmethod
    @contextlib.contextmanager
    def _evaluating(network: nn.Module) -> Iterator[None]:
        """Eval mode and no gradients for a validation pass; the network's mode is restored afterwards."""
        was_training = network.training
        network.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            network.train(was_training)

    def _validation_outputs(
        self,
        network: nn.Module,
        device: torch.device,
        autocast_dtype: torch.dtype | None,
        method: str,
        orders: Sequence[np.ndarray],
        labels: np.ndarray,
        context_rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """Network outputs ``(len(orders), n_val, n_out)`` float64 for the validation rows of ``method``.

        Member ``k`` sees the training rows ``context_rows`` (all when ``None``) labelled ``labels[k]`` and the
        validation rows, both in feature order ``orders[k]``; validation rows go in chunks of
        ``max_val_rows_per_forward``.
        """
        X_train = self.X_train[method] if context_rows is None else self.X_train[method][context_rows]
        context = torch.from_numpy(np.stack([X_train[:, order] for order in orders])).to(device)
        labels = torch.from_numpy(np.array(labels, dtype=np.float32)).to(device)  # a writable copy
        X_val = self.X_val[method]
        chunks = []
        for start in range(0, len(X_val), self.max_val_rows_per_forward):
            chunk = X_val[start : start + self.max_val_rows_per_forward]
            test = torch.from_numpy(np.stack([chunk[:, order] for order in orders])).to(device)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                outputs = network(torch.cat([context, test], dim=1), labels)
            chunks.append(outputs.float().cpu().numpy().astype(np.float64))
        return np.concatenate(chunks, axis=1)


class ClassificationFinetuneData(TableFinetuneData):
    """Context/query tasks and ensemble validation for a classification table.

    Args (besides those of :class:`TableFinetuneData`):
        n_classes: number of classes of the table.
        class_shift: draw a random circular shift of the class ids per step (else the identity).
        softmax_temperature: validation probabilities are ``softmax(mean logits / softmax_temperature)``.
        max_classes: most labels one network call handles; ``None`` = ``n_classes``. With more classes than this,
            the classes form the hierarchical classifier's tree (:func:`build_class_tree`, on the step's shifted
            class ids, as an ensemble member does at prediction) and each step trains one of its nodes: the node's
            rows, labelled by child group (internal node) or by class (leaf), which is exactly the <= ``max_classes``
            task the node runs at prediction. Validation is then the log loss of the hierarchical prediction.
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
        max_classes: int | None = None,
    ):
        super().__init__(X_train, y_train, X_val, y_val, members, feat_shuffle, max_eval_members,
                         max_val_rows_per_forward)
        self.n_classes = int(n_classes)
        self.class_shift = bool(class_shift)
        self.softmax_temperature = float(softmax_temperature)
        self.max_classes = self.n_classes if max_classes is None else int(max_classes)
        self.class_tree = build_class_tree(range(self.n_classes), max(self.max_classes, 2))
        # Every node that asks the network something (all but single-class leaves); just the root when flat.
        self.step_nodes = [node for node in self.class_tree.nodes() if node.n_labels >= 2]

    @property
    def hierarchical(self) -> bool:
        return not self.class_tree.is_leaf

    # -------------------------------------------------------------------------------------------------- steps
    def sample_step(self, rng: np.random.Generator, rows_per_step: int, query_fraction: float) -> StepBatch:
        """A fresh task: random normalisation method, feature order and class shift, stratified context/query (and,
        above ``max_classes`` classes, a random node of the class tree)."""
        method, order = self._step_view(rng)
        shift = int(rng.integers(self.n_classes)) if self.class_shift else 0
        pattern = (np.arange(self.n_classes) - shift) % self.n_classes  # same convention as the ensemble members
        labels = pattern[self.y_train]
        node, rows = self.class_tree, np.arange(len(labels))
        if len(self.step_nodes) > 1:
            drawn = self.step_nodes[int(rng.integers(len(self.step_nodes)))]
            drawn_rows = np.flatnonzero(np.isin(labels, drawn.classes))
            if np.bincount(self.y_train[drawn_rows]).max(initial=0) >= 2:  # else no query row: train the root
                node, rows = drawn, drawn_rows
        node_labels = node.local_labels(labels[rows])
        context, query = stratified_split(self.y_train[rows], rows_per_step, query_fraction, rng)
        return StepBatch(
            X=self._step_features(method, order, rows[np.concatenate([context, query])]),
            y_context=torch.from_numpy(node_labels[context].astype(np.float32))[None],
            y_query=torch.from_numpy(node_labels[query])[None],
            n_labels=node.n_labels,
        )

    def loss(self, outputs: Tensor, batch: StepBatch) -> Tensor:
        """Cross-entropy of the query rows over the task's labels (logits beyond them are ignored)."""
        n_labels = self.n_classes if batch.n_labels is None else batch.n_labels
        logits = outputs[..., :n_labels].float()
        return F.cross_entropy(logits.reshape(-1, n_labels), batch.y_query.reshape(-1))

    # -------------------------------------------------------------------------------------------- validation
    def validation_logits(
        self, network: nn.Module, device: torch.device, autocast_dtype: torch.dtype | None = None
    ) -> np.ndarray:
        """Ensemble-averaged logits ``(n_val, n_classes)`` of the validation rows (network in eval mode); for a
        hierarchical task, the members' pseudo-logits ``temperature * log(p)`` as the classifier averages them."""
        self._require_validation()
        total = np.zeros((len(self.y_val), self.n_classes))
        with self._evaluating(network):
            for method, members in self._eval_member_groups():
                if self.hierarchical:
                    for member in members:
                        total += self._hierarchical_logits(network, device, autocast_dtype, method, member)
                    continue
                labels = np.stack([member.class_pattern[self.y_train] for member in members])
                orders = [member.feature_order for member in members]
                outputs = self._validation_outputs(network, device, autocast_dtype, method, orders, labels)
                for member_logits, member in zip(outputs[..., : self.n_classes], members):
                    # The member's output for original class c sits at position class_pattern[c].
                    total += member_logits[:, member.class_pattern]
        return total / len(self.eval_members)

    def _hierarchical_logits(
        self,
        network: nn.Module,
        device: torch.device,
        autocast_dtype: torch.dtype | None,
        method: str,
        member: EnsembleMember,
    ) -> np.ndarray:
        def node_logits(rows: np.ndarray, labels: np.ndarray, n_labels: int) -> np.ndarray:
            orders = [member.feature_order]
            return self._validation_outputs(network, device, autocast_dtype, method, orders, labels[None], rows)[0]

        proba = hierarchical_proba(
            node_logits,
            member.class_pattern[self.y_train],
            n_classes=self.n_classes,
            n_test=len(self.y_val),
            max_classes=self.max_classes,
            softmax_temperature=self.softmax_temperature,
            tree=self.class_tree,
        )[:, member.class_pattern]
        return proba_to_logits(proba, self.softmax_temperature)

    def validation_loss(
        self, network: nn.Module, device: torch.device, autocast_dtype: torch.dtype | None = None
    ) -> float:
        """Log loss of the ensemble prediction on the validation rows (``inf`` when the network outputs NaN)."""
        logits = torch.from_numpy(self.validation_logits(network, device, autocast_dtype) / self.softmax_temperature)
        loss = float(F.cross_entropy(logits, torch.from_numpy(self.y_val)))
        return loss if np.isfinite(loss) else float("inf")


class RegressionFinetuneData(TableFinetuneData):
    """Context/query tasks and ensemble validation for a regression table.

    Each step draws about ``rows_per_step`` rows (stratified by target quantile bins, :func:`target_bins`), splits
    them into context and query rows and scales the targets by the context rows' statistics, as
    :class:`~autogluon_tfm.inference.TFMRegressor` scales them by its training rows at prediction (the network's
    ``regression_target_scaling``: ``"zscore"``, or ``"minmax"`` for Mitra). The loss is the network head's training
    loss (:func:`autogluon_tfm.nn.losses.regression_loss`: pinball over TabICL's quantiles, bar-distribution
    cross-entropy for TabPFN v2, squared error for Mitra).

    Validation: all training rows as context, the validation rows as queries, targets scaled by the training rows;
    the members' outputs are averaged as the regressor averages them (sorted quantiles, bucket probabilities, point
    predictions) and scored with the same loss (lower is better).

    Args:
        X_train / y_train: as for :class:`TableFinetuneData` (``y_train``: the regression targets, any scale).
        network: the regression network being finetuned; its head (``borders``, ``num_quantiles``) and
            ``regression_target_scaling`` define the loss and the scaling (only these attributes are read).
        **table_args: the other arguments of :class:`TableFinetuneData` (``X_val``, ``y_val``, ``members``, ...).
    """

    _y_dtype = np.float64

    def __init__(self, X_train: Mapping[str, np.ndarray], y_train: np.ndarray, network: nn.Module, **table_args):
        super().__init__(X_train, y_train, **table_args)
        if not np.all(np.isfinite(self.y_train)) or np.ptp(self.y_train) == 0:
            raise ValueError("Regression finetuning needs finite, non-constant training targets.")
        self.network = network
        self.head = regression_head_for(network)
        self.target_scaling = getattr(network, "regression_target_scaling", "zscore")
        self.strata = target_bins(self.y_train)
        if self.has_validation:
            y_all = torch.from_numpy(np.concatenate([self.y_train, self.y_val]))[None]
            scaled = scale_targets(y_all, len(self.y_train), self.target_scaling)[0].numpy()
            self.y_train_scaled = scaled[: len(self.y_train)].astype(np.float32)
            self.y_val_scaled = scaled[len(self.y_train) :].astype(np.float32)

    # -------------------------------------------------------------------------------------------------- steps
    def sample_step(self, rng: np.random.Generator, rows_per_step: int, query_fraction: float) -> StepBatch:
        """A fresh task: random normalisation method and feature order, context/query rows stratified by target bin,
        targets scaled by the context rows."""
        method, order = self._step_view(rng)
        context, query = stratified_split(self.strata, rows_per_step, query_fraction, rng)
        rows = np.concatenate([context, query])
        y = scale_targets(torch.from_numpy(self.y_train[rows])[None], len(context), self.target_scaling).float()
        return StepBatch(
            X=self._step_features(method, order, rows),
            y_context=y[:, : len(context)],
            y_query=y[:, len(context) :],
        )

    def loss(self, outputs: Tensor, batch: StepBatch) -> Tensor:
        """The head's loss of the query rows (pinball / bar-distribution cross-entropy / squared error)."""
        return regression_loss(self.network, outputs, batch.y_query)

    # -------------------------------------------------------------------------------------------- validation
    def validation_prediction(
        self, network: nn.Module, device: torch.device, autocast_dtype: torch.dtype | None = None
    ) -> np.ndarray:
        """Members' averaged head outputs ``(n_val, n_out)`` for the validation rows (the head's ``prepare`` space:
        sorted quantiles, bucket probabilities or the point prediction), in the scaled target space."""
        self._require_validation()
        total = np.zeros((len(self.y_val), self.head.n_out))
        with self._evaluating(network):
            for method, members in self._eval_member_groups():
                labels = np.broadcast_to(self.y_train_scaled, (len(members), len(self.y_train_scaled)))
                orders = [member.feature_order for member in members]
                outputs = self._validation_outputs(network, device, autocast_dtype, method, orders, labels)
                total += self.head.prepare(outputs).sum(axis=0)
        return total / len(self.eval_members)

    def validation_loss(
        self, network: nn.Module, device: torch.device, autocast_dtype: torch.dtype | None = None
    ) -> float:
        """The head's loss of the ensemble prediction on the validation rows (``inf`` when it is not finite)."""
        averaged = self.validation_prediction(network, device, autocast_dtype)
        if isinstance(self.head, BarDistributionHead):  # averaged bucket probabilities -> log-probabilities
            averaged = np.log(np.maximum(averaged, 1e-30))
        output = torch.from_numpy(averaged)[None]
        loss = float(regression_loss(self.network, output, torch.from_numpy(self.y_val_scaled)[None]))
        return loss if np.isfinite(loss) else float("inf")

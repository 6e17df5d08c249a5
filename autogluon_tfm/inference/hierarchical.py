"""Hierarchical classification for more classes than a network's ``max_classes``.

The sorted classes are split recursively into at most ``max_classes`` contiguous groups of (nearly) even size until
every group fits the network. At an internal node the network is asked which group a test row belongs to, given the
node's training rows labelled by group id; at a leaf it is asked for the class within the group. A class's
probability is the product of the probabilities along its root-to-leaf path, so the rows of the result sum to 1.

This works with any network that follows the protocol (it only needs to handle <= ``max_classes`` labels), at the
price of one network call per tree node.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ClassNode", "build_class_tree", "hierarchical_proba", "proba_to_logits", "softmax"]

# Probabilities become logits as temperature * log(p + eps), so that members built from probabilities (hierarchical
# ones) average with ordinary members' logits and go through the same softmax(average / temperature).
_LOG_EPS = 1e-6

# Signature of the network call used by the tree: (indices of the node's training rows, their labels in
# 0..n_labels-1, n_labels) -> logits of every test row, shape (n_test, >= n_labels).
NodeLogitsFn = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable softmax over the last axis (float64)."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled = scaled - scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=-1, keepdims=True)


def proba_to_logits(proba: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Pseudo-logits ``temperature * log(proba + 1e-6)`` whose ``softmax(. / temperature)`` is (about) ``proba``."""
    return temperature * np.log(proba + _LOG_EPS)


@dataclass
class ClassNode:
    """A node of the class tree: the sorted class ids it covers and its child groups (none for a leaf)."""

    classes: np.ndarray
    children: list[ClassNode] = field(default_factory=list)

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def leaves(self) -> list[ClassNode]:
        return [self] if self.is_leaf else [leaf for child in self.children for leaf in child.leaves()]

    def count_nodes(self) -> int:
        return 1 + sum(child.count_nodes() for child in self.children)

    def nodes(self) -> list[ClassNode]:
        """This node and all nodes below it (depth first)."""
        return [self, *(node for child in self.children for node in child.nodes())]

    @property
    def n_labels(self) -> int:
        """How many labels the network tells apart at this node: child groups, or classes at a leaf."""
        return len(self.children) if self.children else len(self.classes)

    def local_labels(self, labels: np.ndarray) -> np.ndarray:
        """Class ids (all among :attr:`classes`) -> the labels the network sees at this node, in
        ``0..n_labels-1``: the child group holding the class, or the class's position at a leaf."""
        labels = np.asarray(labels, dtype=np.int64)
        if self.is_leaf:
            return np.searchsorted(self.classes, labels)
        group_starts = np.array([child.classes[0] for child in self.children])  # children: contiguous, in order
        return np.searchsorted(group_starts, labels, side="right") - 1


def build_class_tree(classes: Sequence[int], max_classes: int) -> ClassNode:
    """Split sorted ``classes`` into ``min(ceil(K / max_classes), max_classes)`` contiguous groups, recursively.

    Group sizes are as even as possible (earlier groups take the extra class), e.g. 11 -> 6 + 5, 30 -> 3 x 10,
    150 -> 10 x 15 -> 10 x (8 + 7).
    """
    if max_classes < 2:
        raise ValueError(f"max_classes must be >= 2 for hierarchical classification, got {max_classes}.")
    classes = np.sort(np.asarray(classes, dtype=np.int64))
    n_classes = len(classes)
    if n_classes <= max_classes:
        return ClassNode(classes)
    n_groups = min(math.ceil(n_classes / max_classes), max_classes)
    children, start = [], 0
    for group in range(n_groups):
        size = math.ceil((n_classes - start) / (n_groups - group))
        children.append(build_class_tree(classes[start : start + size], max_classes))
        start += size
    return ClassNode(classes, children)


def hierarchical_proba(
    node_logits: NodeLogitsFn,
    y_train: np.ndarray,
    n_classes: int,
    n_test: int,
    max_classes: int,
    softmax_temperature: float = 1.0,
    tree: ClassNode | None = None,
) -> np.ndarray:
    """Class probabilities ``(n_test, n_classes)`` from a tree of network calls.

    Args:
        node_logits: the network call, see ``NodeLogitsFn``. Each node's training rows are the rows whose label is in
            the node's classes; test rows are always all of them.
        y_train: training labels in ``0..n_classes-1``; every class must occur.
        n_classes: number of classes.
        n_test: number of test rows.
        max_classes: most labels one network call can handle.
        softmax_temperature: each node's probabilities are ``softmax(logits / softmax_temperature)``.
        tree: a prebuilt tree (default ``build_class_tree(range(n_classes), max_classes)``).
    """
    y_train = np.asarray(y_train, dtype=np.int64)
    tree = tree if tree is not None else build_class_tree(range(n_classes), max_classes)

    def node_proba(node: ClassNode) -> np.ndarray:
        proba = np.zeros((n_test, n_classes))
        if node.is_leaf and len(node.classes) == 1:
            proba[:, node.classes[0]] = 1.0
            return proba
        rows = np.flatnonzero(np.isin(y_train, node.classes))
        n_labels = node.n_labels
        label_proba = softmax(
            node_logits(rows, node.local_labels(y_train[rows]), n_labels)[:, :n_labels], softmax_temperature
        )
        if node.is_leaf:
            proba[:, node.classes] = label_proba
            return proba
        for group, child in enumerate(node.children):
            proba += label_proba[:, group : group + 1] * node_proba(child)
        return proba

    return node_proba(tree)

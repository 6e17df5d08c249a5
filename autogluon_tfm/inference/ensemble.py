"""Ensemble member configurations: normalisation method x feature order x class relabelling.

Every member sees the same table through a different lens: a normalisation variant, a permutation of the feature
columns and a circular shift of the class ids. The networks are not exactly invariant to either, so averaging over
members removes part of the positional bias.

Member generation follows the official TabICL 2.1.1 recipe (Python ``random.Random(random_state)`` streams, rows of
a random Latin square for feature orders, all circular class shifts, configuration list shuffled then crossed with
the normalisation methods) so that a given ``random_state`` yields the same members as the official estimator.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FEATURE_SHUFFLE_METHODS",
    "EnsembleMember",
    "build_ensemble",
    "class_patterns",
    "feature_orders",
    "latin_square_rows",
]

FEATURE_SHUFFLE_METHODS = ("latin", "shift", "random", "none")

# Beyond this many features a Latin square (n x n) is too large to build; random permutations are used instead.
_MAX_FEATURES_FOR_LATIN = 4000
# Below this many elements "random" samples distinct permutations from the full set of n! permutations.
_MAX_ELEMENTS_FOR_EXHAUSTIVE = 5


@dataclass(frozen=True)
class EnsembleMember:
    """One ensemble member.

    Attributes:
        norm_method: normalisation variant of the features (a key of ``EnsemblePreprocessor``).
        feature_order: column order fed to the network: ``X_member = X[:, feature_order]``.
        class_pattern: class relabelling: the network sees ``class_pattern[y]``; the member's output for original
            class ``c`` is therefore at position ``class_pattern[c]``.
    """

    norm_method: str
    feature_order: np.ndarray
    class_pattern: np.ndarray


def latin_square_rows(n: int, rng: random.Random) -> list[list[int]]:
    """Rows of a random ``n x n`` Latin square over ``0..n-1`` (each row is a permutation; each position sees
    every element exactly once across rows).

    Built by inserting symbols one at a time along the diagonal of a growing square, then shuffling rows and
    columns; iterative so that large ``n`` does not hit Python's recursion limit.
    """
    remaining = list(range(n))
    inserted_last_first = []
    while len(remaining) > 1:
        symbol = rng.choice(remaining)
        remaining.remove(symbol)
        inserted_last_first.append(symbol)
    square = [list(remaining)]
    for symbol in reversed(inserted_last_first):
        square.append(list(square[0]))
        for position, row in enumerate(square):
            row.insert(position, symbol)
    rng.shuffle(square)
    columns = [list(column) for column in zip(*square)]
    rng.shuffle(columns)
    return columns


def _circular_shifts(n: int) -> list[list[int]]:
    # Shift s maps element j to (j - s) mod n.
    return [[(j - shift) % n for j in range(n)] for shift in range(n)]


def feature_orders(n_features: int, method: str, n_estimators: int, random_state: int | None) -> list[list[int]]:
    """Candidate feature orders for ``method`` in {"latin", "shift", "random", "none"}."""
    if method not in FEATURE_SHUFFLE_METHODS:
        raise ValueError(f"Unknown feature shuffle method {method!r}; expected one of {FEATURE_SHUFFLE_METHODS}.")
    rng = random.Random(random_state)
    identity = list(range(n_features))
    if method == "latin" and n_features > _MAX_FEATURES_FOR_LATIN:
        method = "random"
    if method == "none" or n_estimators == 1:
        return [identity]
    if method == "shift":
        return _circular_shifts(n_features)
    if method == "latin":
        return latin_square_rows(n_features, rng)
    if n_features <= _MAX_ELEMENTS_FOR_EXHAUSTIVE:
        all_orders = [list(order) for order in itertools.permutations(identity)]
        return rng.sample(all_orders, min(n_estimators, len(all_orders)))
    return [rng.sample(identity, n_features) for _ in range(n_estimators)]


def class_patterns(n_classes: int, class_shift: bool, n_estimators: int) -> list[list[int]]:
    """All circular shifts of the class ids when ``class_shift`` (else only the identity)."""
    if not class_shift or n_estimators == 1:
        return [list(range(n_classes))]
    return _circular_shifts(n_classes)


def build_ensemble(
    n_features: int,
    n_classes: int,
    n_estimators: int,
    norm_methods: Sequence[str] = ("none", "power"),
    feat_shuffle: str = "latin",
    class_shift: bool = True,
    random_state: int | None = 0,
) -> list[EnsembleMember]:
    """Deterministic (for an int ``random_state``) list of at most ``n_estimators`` members, grouped by normalisation
    method in order of first use.

    Fewer members are returned when ``len(feature orders) * len(class patterns) * len(norm_methods)`` is smaller than
    ``n_estimators`` (tiny tables): duplicates would add cost but no diversity.
    """
    if n_estimators < 1:
        raise ValueError(f"n_estimators must be >= 1, got {n_estimators}.")
    if not norm_methods:
        raise ValueError("norm_methods must name at least one normalisation method.")
    orders = feature_orders(n_features, feat_shuffle, n_estimators, random_state)
    patterns = class_patterns(n_classes, class_shift, n_estimators)
    shuffle_configs = list(itertools.product(orders, patterns))
    random.Random(random_state).shuffle(shuffle_configs)
    chosen = list(itertools.product(shuffle_configs, list(norm_methods)))[:n_estimators]
    members = [
        EnsembleMember(norm, np.asarray(order, dtype=np.int64), np.asarray(pattern, dtype=np.int64))
        for (order, pattern), norm in chosen
    ]
    # Members sharing a normalisation method are processed together; order within a method is kept.
    method_rank = {method: rank for rank, method in enumerate(dict.fromkeys(m.norm_method for m in members))}
    return sorted(members, key=lambda member: method_rank[member.norm_method])

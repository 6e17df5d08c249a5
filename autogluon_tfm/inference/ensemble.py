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
from collections.abc import Callable, Sequence
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


class _OrderTable(Sequence):
    """Read-only sequence of permutations ``order(k)`` computed on demand.

    Latin squares and circular shifts have ``n`` rows of length ``n``; with thousands of features (or classes)
    materialising all of them costs O(n^2) memory although only ``n_estimators`` rows are ever used.
    """

    def __init__(self, length: int, order: Callable[[int], np.ndarray]):
        self._length = length
        self._order = order

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[k] for k in range(*index.indices(self._length))]
        if not -self._length <= index < self._length:
            raise IndexError(index)
        return [int(v) for v in self._order(index % self._length)]


def _latin_square(n: int, rng: random.Random) -> _OrderTable:
    """Rows of a random ``n x n`` Latin square over ``0..n-1`` (each row a permutation; each position sees every
    element once across rows).

    The square is cyclic: a random first row ``f`` (drawn symbol by symbol) and ``square[i][j] = f[(j - i) mod n]``;
    its rows and then its columns are shuffled and the shuffled columns are returned. Shuffling index lists consumes
    the random stream exactly like shuffling the rows themselves, so only the requested rows are ever computed.
    """
    remaining = list(range(n))
    first_row = []
    while len(remaining) > 1:
        symbol = rng.choice(remaining)
        remaining.remove(symbol)
        first_row.append(symbol)
    first_row = np.asarray(first_row + remaining, dtype=np.int64)
    row_order = list(range(n))
    rng.shuffle(row_order)
    column_order = list(range(n))
    rng.shuffle(column_order)
    rows = np.asarray(row_order, dtype=np.int64)
    return _OrderTable(n, lambda k: first_row[(column_order[k] - rows) % n])


def latin_square_rows(n: int, rng: random.Random) -> list[list[int]]:
    """All rows of a random ``n x n`` Latin square (see ``_latin_square``)."""
    return list(_latin_square(n, rng))


def _circular_shifts(n: int) -> _OrderTable:
    # Shift s maps element j to (j - s) mod n.
    elements = np.arange(n, dtype=np.int64)
    return _OrderTable(n, lambda shift: (elements - shift) % n)


def feature_orders(n_features: int, method: str, n_estimators: int, random_state: int | None) -> Sequence[list[int]]:
    """Candidate feature orders for ``method`` in {"latin", "shift", "random", "none"} (computed on demand)."""
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
        return _latin_square(n_features, rng)
    if n_features <= _MAX_ELEMENTS_FOR_EXHAUSTIVE:
        all_orders = [list(order) for order in itertools.permutations(identity)]
        return rng.sample(all_orders, min(n_estimators, len(all_orders)))
    return [rng.sample(identity, n_features) for _ in range(n_estimators)]


def class_patterns(n_classes: int, class_shift: bool, n_estimators: int) -> Sequence[list[int]]:
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
    # Every (order, pattern) pair in random order, then crossed with the methods: consecutive members share a
    # pair under different normalisations. Index pairs keep this cheap; only chosen orders are materialised.
    shuffle_configs = list(itertools.product(range(len(orders)), range(len(patterns))))
    random.Random(random_state).shuffle(shuffle_configs)
    norm_methods = list(norm_methods)
    members = []
    for index in range(min(n_estimators, len(shuffle_configs) * len(norm_methods))):
        order_index, pattern_index = shuffle_configs[index // len(norm_methods)]
        members.append(
            EnsembleMember(
                norm_methods[index % len(norm_methods)],
                np.asarray(orders[order_index], dtype=np.int64),
                np.asarray(patterns[pattern_index], dtype=np.int64),
            )
        )
    # Members sharing a normalisation method are processed together; order within a method is kept.
    method_rank = {method: rank for rank, method in enumerate(dict.fromkeys(m.norm_method for m in members))}
    return sorted(members, key=lambda member: method_rank[member.norm_method])

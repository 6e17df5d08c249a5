"""The column-identity warm-up (autogluon_tfm/pretrain/column_rules.py); its CLI is tested in test_cli.py."""

from __future__ import annotations

import pytest
import torch

from autogluon_tfm.checkpoints import make_tiny_network
from autogluon_tfm.pretrain.column_rules import column_rule_batch, warm_up_columns


def _rule_of(X: torch.Tensor, y: torch.Tensor) -> str | None:
    """Which rule labels one table: 'a>b' (some ordered pair of columns) or 'a>t' (one column and a threshold)."""
    width = X.shape[1]
    for a in range(width):
        for b in range(width):
            if a != b and torch.equal((X[:, a] > X[:, b]).long(), y):
                return "a>b"
        order = X[:, a].argsort()
        if torch.all(y[order].diff() >= 0):  # the label is monotone in column a: a threshold rule
            return "a>t"
    return None


def test_rule_tables_are_labelled_by_one_or_two_of_their_columns() -> None:
    generator = torch.Generator().manual_seed(3)
    X, y = column_rule_batch(generator, n_tables=12, n_train=40, n_test=20, n_columns=(3, 5))
    assert X.shape[0] == 12 and X.shape[1] == 60 and 3 <= X.shape[2] <= 5 and y.shape == (12, 60)
    rules = [_rule_of(X[i], y[i]) for i in range(12)]
    assert None not in rules and set(rules) == {"a>b", "a>t"}  # both kinds occur
    X, y = column_rule_batch(generator, n_tables=6, n_train=40, n_test=20, n_columns=(3, 3), comparison_share=1.0)
    assert X.shape[2] == 3 and all(_rule_of(X[i], y[i]) == "a>b" for i in range(6))
    with pytest.raises(ValueError, match="n_columns"):
        column_rule_batch(generator, n_columns=(1, 4))


def test_warm_up_trains_a_classifier_in_place_and_refuses_a_regressor() -> None:
    net = make_tiny_network("mitra")
    before = {name: value.clone() for name, value in net.state_dict().items()}
    curve = warm_up_columns(net, steps=3, lr=1e-3, n_tables=2, n_train=16, n_test=8)
    assert [step for step, _ in curve] == [0, 2] and all(loss > 0 for _, loss in curve)
    assert not net.training
    assert any(not torch.equal(before[name], value) for name, value in net.state_dict().items())
    with pytest.raises(ValueError, match="regression"):
        warm_up_columns(make_tiny_network("mitra", "regression"), steps=1)

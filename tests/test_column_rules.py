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


def test_regression_rule_targets_follow_one_column_or_a_difference_of_two() -> None:
    generator = torch.Generator().manual_seed(5)
    X, y = column_rule_batch(generator, n_tables=16, n_train=60, n_test=20, n_columns=(3, 4), task="regression")
    assert y.dtype == torch.float32 and y.shape == (16, 80)
    kinds = []
    for table in range(16):
        width = X.shape[2]
        fits = {}
        for a in range(width):
            fits[f"+{a}"] = (y[table] - X[table, :, a]).std()
            fits[f"-{a}"] = (y[table] + X[table, :, a]).std()
            for b in range(width):
                if a != b:
                    fits[f"{a}-{b}"] = (y[table] - X[table, :, a] + X[table, :, b]).std()
        best = min(fits, key=fits.get)
        assert fits[best] < 0.15  # the residual is the N(0, 0.1^2) noise
        kinds.append("difference" if "-" in best[1:] else "one column")
    assert set(kinds) == {"difference", "one column"}
    with pytest.raises(ValueError, match="task"):
        column_rule_batch(generator, task="ranking")


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_warm_up_trains_a_network_of_either_task_in_place(task: str) -> None:
    net = make_tiny_network("mitra", task)
    before = {name: value.clone() for name, value in net.state_dict().items()}
    curve = warm_up_columns(net, steps=3, lr=1e-3, n_tables=2, n_train=16, n_test=8)
    assert [step for step, _ in curve] == [0, 2] and all(loss > 0 for _, loss in curve)
    assert not net.training
    assert any(not torch.equal(before[name], value) for name, value in net.state_dict().items())


def test_regression_warm_up_lowers_the_loss_of_a_tiny_network() -> None:
    torch.manual_seed(0)
    net = make_tiny_network("tabpfn_v2", "regression")
    curve = warm_up_columns(net, steps=60, lr=3e-3, n_tables=4, n_train=48, n_test=16, log_every=59)
    assert curve[-1][1] < curve[0][1]  # the smoothed loss at the last step is below the first step's

"""Network protocol properties of the TabICL network."""

from __future__ import annotations

import pytest
import torch

from autogluon_tfm.checkpoints import make_tiny_network
from autogluon_tfm.nn import TabICL
from autogluon_tfm.nn.losses import classification_loss
from autogluon_tfm.pretrain.trainer import MODEL_CONFIGS


@pytest.fixture(scope="module")
def net():
    return make_tiny_network(seed=0)


def _data(n_train=20, n_test=6, H=5, B=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(B, n_train + n_test, H, generator=gen)
    y = (torch.arange(n_train) % 3).float().repeat(B, 1)
    return X, y


def test_output_shape_classification_and_regression(net):
    X, y = _data()
    with torch.no_grad():
        assert net(X, y).shape == (2, 6, 10)
        reg = make_tiny_network(task="regression")
        assert reg(X, torch.randn(2, 20)).shape == (2, 6, reg.num_quantiles)


def test_test_rows_never_see_each_other(net):
    X, y = _data()
    X2 = X.clone()
    X2[:, -1] += 5.0  # change only the last test row
    with torch.no_grad():
        a, b = net(X, y), net(X2, y)
    torch.testing.assert_close(a[:, :-1], b[:, :-1], rtol=0, atol=1e-6)
    assert (a[:, -1] - b[:, -1]).abs().max() > 1e-4


def test_invariant_to_training_row_order(net):
    X, y = _data()
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(1))
    Xp = torch.cat([X[:, perm], X[:, 20:]], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(net(X, y), net(Xp, y[:, perm]), rtol=0, atol=1e-5)


def test_padding_mask_equals_truncation():
    torch.manual_seed(0)
    ungrouped = make_tiny_network(seed=2)
    ungrouped = TabICL(**{**ungrouped.config, "col_feature_group": False}).eval()
    X, y = _data(H=6)
    padded = torch.cat([X[..., :4], torch.zeros(2, 26, 2)], dim=-1)
    padded[1, :, 3] = 0.0
    d = torch.tensor([4, 3])
    with torch.no_grad():
        out = ungrouped(padded, y, d=d)
        torch.testing.assert_close(out[:1], ungrouped(X[:1, :, :4], y[:1]), rtol=0, atol=1e-5)
        torch.testing.assert_close(out[1:], ungrouped(X[1:, :, :3], y[1:]), rtol=0, atol=1e-5)


def test_grouped_network_rejects_ragged_feature_counts(net):
    X, y = _data()
    with pytest.raises(ValueError, match="feature counts"):
        net(X, y, d=torch.tensor([5, 3]))
    with pytest.raises(ValueError, match="Expected X"):
        net(X[0], y)


def test_training_steps_reduce_loss():
    torch.manual_seed(0)
    model = TabICL(**MODEL_CONFIGS["tabicl-tiny"]).train()
    X, y = _data(n_train=40, n_test=20, seed=3)
    y_all = (X[..., 0] > 0).float()  # learnable rule: class = sign of feature 0
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = classification_loss(model(X, y_all[:, :40]), y_all[:, 40:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_inference_kernel_matches_the_textbook_rotation(interleaved):
    """The fused no-grad RoPE and the autograd path both rotate each pair (a, b) to (a cos - b sin, b cos + a sin)."""
    from autogluon_tfm.nn.layers import RotaryEmbedding

    rope = RotaryEmbedding(8, base=100.0, interleaved=interleaved)
    x = torch.randn(3, 2, 7, 8)
    pos = torch.arange(7, dtype=torch.float32)[:, None] * rope.freqs[None]
    cos, sin = pos.cos(), pos.sin()
    a, b = (x[..., 0::2], x[..., 1::2]) if interleaved else (x[..., :4], x[..., 4:])
    pair = (a * cos - b * sin, b * cos + a * sin)
    expected = torch.stack(pair, -1).flatten(-2) if interleaved else torch.cat(pair, -1)
    with torch.no_grad():
        fused = rope(x)
    x_grad = x.clone().requires_grad_(True)
    functional = rope(x_grad)
    functional.sum().backward()
    torch.testing.assert_close(fused, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(functional.detach(), expected, atol=1e-6, rtol=0)
    assert x_grad.grad is not None and torch.isfinite(x_grad.grad).all()

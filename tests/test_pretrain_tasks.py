"""Pretraining of every architecture and task: losses per regression head, target scaling, tiny runs, export."""

from __future__ import annotations

import math

import pytest
import torch

from autogluon_tfm.checkpoints import load_network
from autogluon_tfm.checkpoints.io import network_task
from autogluon_tfm.nn import ARCHITECTURES
from autogluon_tfm.nn.losses import regression_loss, scale_targets
from autogluon_tfm.pretrain.trainer import (
    MODEL_CONFIGS,
    MODEL_PRESET_ARCH,
    PretrainConfig,
    build_network,
    pretrain,
    task_loss,
)
from autogluon_tfm.prior import PriorSampler

PRIORS = {"classification": "tabicl_mix", "regression": "tabicl_mix_regression"}
TINY = ["tabicl-tiny", "tabpfnv2-tiny", "mitra-tiny"]


def test_every_preset_names_a_known_architecture():
    for name in MODEL_CONFIGS:
        assert MODEL_PRESET_ARCH[name] in ARCHITECTURES
        for task in PRIORS:
            net = build_network(PretrainConfig(arch=MODEL_PRESET_ARCH[name], model=name, task=task))
            assert net.arch == MODEL_PRESET_ARCH[name]
            assert network_task(net) == task


def test_preset_and_arch_must_match_and_prior_must_match_task(tmp_path):
    with pytest.raises(ValueError, match="builds a 'mitra' network"):
        build_network(PretrainConfig(arch="tabicl", model="mitra-tiny"))
    with pytest.raises(ValueError, match="generates classification tables"):
        pretrain(PretrainConfig(arch="tabicl", model="tabicl-tiny", task="regression", prior="tabicl_mix",
                                out=str(tmp_path / "x")))
    assert not (tmp_path / "x").exists()


def test_target_scaling_uses_training_rows_only():
    y = torch.tensor([[1.0, 3.0, 5.0, 100.0], [2.0, 2.0, 4.0, -7.0]])
    z = scale_targets(y, 3, "zscore")
    torch.testing.assert_close(z[:, :3].mean(dim=1), torch.zeros(2))
    torch.testing.assert_close(z[:, :3].std(dim=1, unbiased=False), torch.ones(2))
    m = scale_targets(y, 3, "minmax")
    torch.testing.assert_close(m[:, :3].min(dim=1).values, torch.zeros(2))
    torch.testing.assert_close(m[:, :3].max(dim=1).values, torch.ones(2))
    assert m[0, 3] == pytest.approx((100 - 1) / 4)  # test rows are scaled, not clipped


def test_pinball_loss_is_zero_at_the_truth_and_matches_the_formula():
    net = build_network(PretrainConfig(arch="tabicl", model="tabicl-tiny", task="regression"))
    k = net.num_quantiles
    y = torch.tensor([[0.5, -1.0]])
    exact = y[..., None].expand(1, 2, k).clone()
    assert regression_loss(net, exact, y).item() == 0.0
    shifted = exact + 1.0  # every quantile 1 too high: loss (1 - level) per quantile
    levels = torch.arange(1, k + 1) / (k + 1)
    assert regression_loss(net, shifted, y).item() == pytest.approx(float((1 - levels).mean()), rel=1e-5)


def test_bar_distribution_loss_is_cross_entropy_on_the_target_bucket():
    net = build_network(PretrainConfig(arch="tabpfn_v2", model="tabpfnv2-tiny", task="regression"))
    borders = net.borders
    y = torch.tensor([[0.0, 5.0, -50.0]])  # middle, upper tail beyond the last border, lower tail
    logits = torch.randn(1, 3, net.num_buckets)
    buckets = [int(torch.searchsorted(borders, torch.tensor(0.0), right=True)) - 1, net.num_buckets - 1, 0]
    expected = torch.nn.functional.cross_entropy(logits[0], torch.tensor(buckets))
    assert regression_loss(net, logits, y).item() == pytest.approx(expected.item(), rel=1e-6)


def test_scalar_head_loss_is_mean_squared_error():
    net = build_network(PretrainConfig(arch="mitra", model="mitra-tiny", task="regression"))
    output = torch.tensor([[[1.0], [2.0]]])
    assert regression_loss(net, output, torch.tensor([[0.0, 4.0]])).item() == pytest.approx((1 + 4) / 2)


@pytest.mark.parametrize("preset", TINY)
@pytest.mark.parametrize("task", sorted(PRIORS))
def test_tiny_run_trains_resumes_and_exports(preset, task, tmp_path):
    arch = MODEL_PRESET_ARCH[preset]
    cfg = PretrainConfig(
        arch=arch, model=preset, task=task, prior=PRIORS[task], steps=2, batch_size=2, min_rows=24, max_rows=40,
        max_features=4, num_workers=0, threads=1, checkpoint_every=1, out=str(tmp_path / "run"),
    )
    last = pretrain(cfg)
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["arch"] == arch and ckpt["progress"]["step"] == 2
    losses = [float(line.split(",")[1]) for line in (tmp_path / "run" / "log.csv").read_text().splitlines()[1:]]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    net = load_network(last)  # the project's pretraining checkpoint loads for any architecture
    assert net.arch == arch and network_task(net) == task


@pytest.mark.parametrize("preset", TINY)
def test_regression_loss_falls_when_fitting_one_batch(preset):
    """The regression losses give gradients that fit data: 25 steps on one fixed batch lower the loss."""
    torch.manual_seed(0)
    arch = MODEL_PRESET_ARCH[preset]
    net = build_network(PretrainConfig(arch=arch, model=preset, task="regression"))
    batch = PriorSampler("tabicl_mix_regression", seed=3).sample_batch(2, 48, n_features=3, max_features=3, n_train=32)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = task_loss(net, batch, "cpu", "regression")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert min(losses[-5:]) < 0.8 * losses[0]

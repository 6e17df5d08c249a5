"""Parity with the official TabPFN v2 architecture (``tabpfn.architectures.tabpfn_v2`` of tabpfn 8.x): random weights
saved as an official v2 ``.ckpt`` (original key layout) load through ``load_network`` and give the same test-row
outputs (fp32, CPU, eval), for classifiers and regressors, several shapes, label sets and embedding seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autogluon_tfm.checkpoints import load_network, save_network
from autogluon_tfm.checkpoints.tabpfn_v2 import is_tabpfn_v2_checkpoint, tabpfn_v2_from_checkpoint
from autogluon_tfm.nn.tabpfn_v2 import TabPFNv2

official_v2 = pytest.importorskip("tabpfn.architectures.tabpfn_v2", reason="official tabpfn is a test dependency")

NHEAD = 4
TOLERANCE = 1e-4


def _official_config(task: str, seed: int) -> dict:
    """A small config in the shape of a published v2 ``ckpt["config"]`` (keys the network does not use included)."""
    return {
        "emsize": 32, "nhead": NHEAD, "nlayers": 2, "nhid_factor": 4, "features_per_group": 2,
        "max_num_classes": 10 if task == "clf" else 0, "num_buckets": 5000, "seed": seed,
        "feature_positional_embedding": "subspace", "multiquery_item_attention_for_test_set": True,
        "remove_duplicate_features": False, "max_num_features": 85, "dropout": 0.0, "recompute_layer": True,
    }


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """The official init zeroes the residual output projections; unit-scale random weights make parity meaningful."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(noise / p.shape[-1] ** 0.5 if p.dim() >= 2 else 0.5 * noise)


def _to_original_layout(single_file_state: dict[str, torch.Tensor], task: str) -> dict[str, torch.Tensor]:
    """tabpfn 8.x single-file v2 names -> the key layout of the published v2 ``.ckpt`` files."""
    target_step = 2 if task == "clf" else 1  # the classifier's y-encoder has an extra class-encoding step
    out: dict[str, torch.Tensor] = {}
    for key, value in single_file_state.items():
        if key == "feature_group_embedder.weight":
            out["encoder.5.layer.weight"] = value
        elif key.startswith("target_embedder."):
            out[f"y_encoder.{target_step}.layer.{key.rsplit('.', 1)[1]}"] = value
        elif key.startswith("output_projection."):
            out[key.replace("output_projection.", "decoder_dict.standard.")] = value
        elif key.startswith("feature_positional_embedding_embeddings."):
            out[key] = value
        elif key.startswith("blocks."):
            _, index, module, name = key.split(".", 3)
            prefix = f"transformer_encoder.layers.{index}"
            if module == "mlp":
                out[f"{prefix}.mlp.linear{1 if name.startswith('0') else 2}.weight"] = value
                continue
            attn = {"per_sample_attention_between_features": "self_attn_between_features",
                    "per_column_attention_between_cells": "self_attn_between_items"}[module]
            if name.startswith("q_projection"):
                qkv = [single_file_state[key.replace("q_projection", p)] for p in ("q_projection", "k_projection",
                                                                                    "v_projection")]
                out[f"{prefix}.{attn}._w_qkv"] = torch.stack(qkv).unflatten(1, (NHEAD, -1)).clone()
            elif name.startswith("out_projection"):
                out[f"{prefix}.{attn}._w_out"] = value.t().unflatten(0, (NHEAD, -1)).contiguous()
        else:
            raise AssertionError(f"unexpected official key {key}")
    return out


def _official_model(config: dict) -> torch.nn.Module:
    parsed, _ = official_v2.parse_config(config)
    return official_v2.get_architecture(parsed)


@pytest.fixture(scope="module", params=[("clf", 0), ("clf", 3), ("reg", 0), ("reg", 5)], ids=lambda p: f"{p[0]}-{p[1]}")
def official_pair(request, tmp_path_factory):
    task, seed = request.param
    config = _official_config(task, seed)
    source = _official_model(config)
    _randomize(source, seed=100 + seed)
    state = _to_original_layout(source.state_dict(), task)
    if task == "reg":
        gen = torch.Generator().manual_seed(seed)
        state["criterion.borders"] = torch.sort(3 * torch.randn(5001, generator=gen)).values
        state["criterion.losses_per_bucket"] = torch.rand(5000, generator=gen)
    # The reference is fed the original layout too (through the official key translation).
    official = _official_model(config)
    official.load_state_dict({k: v for k, v in state.items() if not k.startswith("criterion.")}, strict=True)
    official.eval()
    path = tmp_path_factory.mktemp("ckpt") / f"tabpfn-v2-{task}-{seed}.ckpt"
    torch.save({"state_dict": state, "config": config}, path)
    return task, official, load_network(path), state


def _table(rng: np.random.Generator, batch: int, n_train: int, n_test: int, n_features: int) -> torch.Tensor:
    """Gaussian features with the awkward cases mixed in: integer-valued, constant, test-only-varying, NaN, inf."""
    X = rng.normal(size=(batch, n_train + n_test, n_features))
    if n_features >= 3:
        X[..., 1] = rng.integers(0, 3, size=X.shape[:2])
        X[..., 2] = 1.5  # constant over all rows: dropped from its group
    if n_features >= 5:
        X[:, :n_train, 4] = -0.5  # constant on the training rows only: still counts as used
    if n_features >= 4 and n_train + n_test > 3:
        X[0, rng.integers(0, n_train + n_test, size=3), 3] = np.nan
        X[-1, 0, 0] = np.inf
        X[-1, -1, n_features - 1] = -np.inf
    return torch.tensor(X, dtype=torch.float32)


def _labels(rng: np.random.Generator, batch: int, n_train: int, task: str) -> torch.Tensor:
    if task == "reg":
        return torch.tensor(rng.normal(size=(batch, n_train)), dtype=torch.float32)
    k = int(rng.integers(2, 11))
    label_set = np.sort(rng.choice(10, size=k, replace=False))  # not necessarily 0..k-1: the encoder dense-ranks
    ys = [label_set[rng.permutation(np.arange(n_train) % k)] for _ in range(batch)]
    return torch.tensor(np.stack(ys), dtype=torch.float32)


def _official_forward(official: torch.nn.Module, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """tabpfn 8.x calling convention: ``x`` (rows, batch, features), ``y`` (train rows, batch) -> (test, batch, out)."""
    out = official(X.transpose(0, 1).contiguous(), y.transpose(0, 1).contiguous(), only_return_standard_out=True)
    return out.transpose(0, 1)


SHAPES = [(1, 1), (1, 4), (2, 2), (7, 3), (33, 5), (120, 17), (300, 40), (64, 39)]


@pytest.mark.parametrize("data_seed", [0, 1])
def test_tabpfn_v2_matches_official(official_pair, data_seed):
    task, official, ours, _ = official_pair
    rng = np.random.default_rng(data_seed)
    for n_train, n_features in SHAPES:
        batch = int(rng.integers(1, 3))
        n_test = int(rng.integers(1, 25))
        X = _table(rng, batch, n_train, n_test, n_features)
        y = _labels(rng, batch, n_train, task)
        with torch.no_grad():
            expected = _official_forward(official, X, y)
            got = ours(X, y)
        assert got.shape == expected.shape == (batch, n_test, 10 if task == "clf" else 5000)
        assert torch.isfinite(expected).all()
        diff = (got - expected).abs().max().item()
        assert diff <= TOLERANCE, f"{task} n={n_train} H={n_features} B={batch}: max abs diff {diff}"
        if n_test > 1:  # outputs vary across rows: the comparison has teeth
            assert expected.std(dim=1).mean() > 1e-3


def test_loaded_network_config_and_borders(official_pair):
    task, _, ours, state = official_pair
    assert isinstance(ours, TabPFNv2) and ours.arch == "tabpfn_v2" and not ours.training
    assert ours.config["embed_dim"] == 32 and ours.config["nhead"] == NHEAD and ours.config["num_blocks"] == 2
    if task == "clf":
        assert ours.max_classes == 10 and not hasattr(ours, "borders")
    else:
        assert ours.max_classes == 0 and ours.n_out == 5000
        assert torch.equal(ours.borders, state["criterion.borders"])


def test_single_file_layout_loads_the_same(official_pair):
    """Files written by tabpfn 8.x's ``save_tabpfn_model`` use the single-file names; both layouts give one network."""
    task, official, ours, state = official_pair
    single = dict(official.state_dict())
    single.update({k: v for k, v in state.items() if k.startswith("criterion.")})
    ckpt = {"state_dict": single, "config": _official_config(task, ours.seed), "architecture_name": "tabpfn_v2"}
    assert is_tabpfn_v2_checkpoint(ckpt)
    other = tabpfn_v2_from_checkpoint(ckpt)
    for (name, a), (_, b) in zip(sorted(ours.state_dict().items()), sorted(other.state_dict().items())):
        assert torch.equal(a, b), name


def test_safetensors_round_trip(official_pair, tmp_path):
    task, _, ours, _ = official_pair
    path = save_network(ours, tmp_path / "net.safetensors")
    again = load_network(path)
    assert isinstance(again, TabPFNv2) and again.config == ours.config
    if task == "reg":
        assert torch.equal(again.borders, ours.borders)
    rng = np.random.default_rng(3)
    X, y = _table(rng, 1, 20, 5, 6), _labels(rng, 1, 20, task)
    with torch.no_grad():
        assert torch.equal(again(X, y), ours(X, y))


def test_nan_inputs_give_finite_outputs(official_pair):
    _, _, ours, _ = official_pair
    rng = np.random.default_rng(4)
    X = _table(rng, 2, 30, 6, 7)
    X[:, rng.random(X.shape[1:]) < 0.3] = float("nan")
    X[:, :, 5] = float("nan")  # an all-NaN column
    X[1, :, 6] = float("inf")
    with torch.no_grad():
        out = ours(X, _labels(rng, 2, 30, "clf"))
    assert torch.isfinite(out).all()


def test_test_rows_are_independent(official_pair):
    _, _, ours, _ = official_pair
    rng = np.random.default_rng(5)
    X, y = _table(rng, 1, 25, 8, 5), _labels(rng, 1, 25, "clf")
    with torch.no_grad():
        full = ours(X, y)
        alone = ours(torch.cat([X[:, :25], X[:, 28:29]], dim=1), y)
    assert (full[:, 3] - alone[:, 0]).abs().max() < 1e-5


def test_padded_feature_groups_are_ignored():
    net = TabPFNv2(embed_dim=16, nhead=2, num_blocks=2, ff_factor=2)
    _randomize(net, seed=0)
    net.eval()
    X = torch.randn(2, 20, 8)
    y = torch.randint(0, 3, (2, 15)).float()
    d = torch.tensor([4, 8])
    noisy = X.clone()
    noisy[0, :, 4:] = torch.randn(20, 4)  # table 0 only has 4 real features: groups 2 and 3 are padding
    with torch.no_grad():
        assert torch.equal(net(X, y, d=torch.tensor([8, 8])), net(X, y))
        a, b = net(X, y, d=d), net(noisy, y, d=d)
    assert (a - b).abs().max() < 1e-5


def test_rejects_bad_input_and_other_checkpoints():
    net = TabPFNv2(embed_dim=16, nhead=2, num_blocks=1)
    with pytest.raises(ValueError):
        net(torch.randn(10, 4), torch.zeros(1, 5))
    with pytest.raises(ValueError):
        net(torch.randn(1, 10, 4), torch.zeros(1, 11))
    assert not is_tabpfn_v2_checkpoint({"config": {}, "state_dict": {"col_embedder.in_linear.weight": torch.ones(1)}})
    assert not is_tabpfn_v2_checkpoint([1, 2])
    with pytest.raises(ValueError):
        TabPFNv2(max_classes=1)

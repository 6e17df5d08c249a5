"""Parity with AutoGluon 1.6.3's own Mitra network (``Tab2D``): random weights saved in the official directory format
(``config.json`` + ``model.safetensors``) load through ``load_network`` and give the same test-row outputs (fp32, CPU,
eval, no autocast). Also: export back to the official format, the project's own format, and network properties."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from autogluon_tfm.checkpoints import load_network, save_network
from autogluon_tfm.checkpoints.mitra import (
    cached_mitra_dir,
    load_mitra_dir,
    official_to_ours,
    ours_to_official,
    save_mitra_dir,
)
from autogluon_tfm.nn import ARCHITECTURES
from autogluon_tfm.nn.mitra import Mitra

tab2d = pytest.importorskip(
    "autogluon.tabular.models.mitra._internal.models.tab2d",
    reason="AutoGluon's Mitra needs the autogluon.tabular[mitra] extra (einx, einops)",
)

SMALL = dict(dim=32, n_layers=2, n_heads=4)
TASKS = {"classification": 10, "regression": 1}


def _official(task: str, seed: int) -> torch.nn.Module:
    """A small official Tab2D with random weights of unit scale, so that outputs differ clearly between rows."""
    torch.manual_seed(seed)
    net = tab2d.Tab2D(
        **SMALL, dim_output=TASKS[task], task=task.upper(), use_pretrained_weights=False, path_to_weights="",
        device="cpu",
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "layer_norm" in name:
                p.copy_(1.0 + 0.2 * noise if name.endswith("weight") else 0.2 * noise)
            elif "embedding" in name:
                p.copy_(noise)
            elif p.dim() >= 2:  # sharper attention and a larger head make rows differ more
                gain = 2.0 if name.startswith("final_layer") or name.endswith(("q.weight", "k.weight")) else 1.0
                p.copy_(gain * noise / p.shape[-1] ** 0.5)
            else:
                p.copy_(0.3 * noise)
    return net.eval()


def _official_forward(net: torch.nn.Module, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Tab2D.forward in fp32 without padding; it writes into x_support, so it gets clones."""
    n = y.shape[1]
    B, T, H = X.shape
    out = net(
        X[:, :n].clone(), y.clone(), X[:, n:].clone(), torch.zeros(B, H, dtype=torch.bool),
        torch.zeros(B, n, dtype=torch.bool), torch.zeros(B, T - n, dtype=torch.bool),
    )
    return out if out.dim() == 3 else out.unsqueeze(-1)  # regression returns (B, n_q)


@pytest.fixture(scope="module", params=sorted(TASKS))
def official_pair(request, tmp_path_factory):
    task = request.param
    official = _official(task, seed=1)
    directory = tmp_path_factory.mktemp("mitra") / f"mitra-{task}"
    official.save_pretrained(str(directory))
    return task, official, directory


def _table(rng: np.random.Generator, task: str, n_train: int, n_test: int, n_features: int, batch: int = 2):
    X = rng.normal(size=(batch, n_train + n_test, n_features))
    X[..., ::3] = np.round(X[..., ::3])  # some columns with ties, like integer or categorical codes
    if n_train > 3:
        X[:, :, -1] = 1.5  # one column constant on the training rows (its embedding is all zeros) ...
        X[:, n_train:, -1] = rng.normal(size=(batch, n_test))  # ... but not on the test rows
    if task == "regression":
        y = rng.uniform(size=(batch, n_train))
    else:
        k = int(rng.integers(2, 11))
        y = np.stack([rng.integers(0, k, size=n_train) for _ in range(batch)])
    return torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mitra_matches_official(official_pair, seed):
    task, official, directory = official_pair
    ours = load_network(directory)
    assert isinstance(ours, Mitra) and not ours.training
    assert ours.max_classes == (10 if task == "classification" else 0)
    rng = np.random.default_rng(seed)
    shapes = [(1, 1), (int(rng.integers(2, 60)), int(rng.integers(2, 12))), (300, 40)]
    for n_train, n_features in shapes:
        n_test = int(rng.integers(1, 30))
        X, y = _table(rng, task, n_train, n_test, n_features)
        with torch.no_grad():
            expected = _official_forward(official, X, y)
            got = ours(X, y)
        assert got.shape == expected.shape == (2, n_test, TASKS[task])
        diff = (got - expected).abs().max().item()
        assert diff <= 1e-4, f"{task} n={n_train} H={n_features}: max abs diff {diff}"
        if n_train > 1 and n_test > 1:  # meaningful comparison: predictions differ between test rows (by >> 1e-4)
            assert expected.std(dim=1).mean().item() > 0.02


def test_export_to_official_format_round_trips(official_pair, tmp_path):
    task, official, directory = official_pair
    ours = load_mitra_dir(directory)
    exported = save_mitra_dir(ours, tmp_path / "exported")
    assert json.loads((exported / "config.json").read_text())["task"] == task.upper()
    reloaded = tab2d.Tab2D.from_pretrained(str(exported), device="cpu").eval()
    X, y = _table(np.random.default_rng(5), task, 40, 9, 6)
    with torch.no_grad():
        torch.testing.assert_close(_official_forward(reloaded, X, y), _official_forward(official, X, y), rtol=0, atol=0)


def test_project_format_round_trip(official_pair, tmp_path):
    task, _, directory = official_pair
    ours = load_network(directory)
    path = save_network(ours, tmp_path / "mitra-small", card={"source": "parity test"})
    loaded = load_network(path)
    assert loaded.arch == "mitra" and loaded.config == ours.config == {**SMALL, "dim_output": TASKS[task],
                                                                          "task": task, "recompute": False}
    X, y = _table(np.random.default_rng(6), task, 30, 5, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(X, y), ours(X, y), rtol=0, atol=0)


def test_key_translation_is_a_bijection():
    for task in TASKS:
        official = _official(task, seed=0)
        keys = list(official.state_dict())
        ours = [official_to_ours(k) for k in keys]
        assert sorted(ours) == sorted(Mitra(**SMALL, dim_output=TASKS[task], task=task).state_dict())
        assert [ours_to_official(k) for k in ours] == keys
    with pytest.raises(ValueError, match="Unexpected key"):
        official_to_ours("layers.0.attention1.weight")


# --- network properties (our implementation only) ---


@pytest.fixture(scope="module")
def net():
    return _ours_from(_official("classification", seed=3))


def _ours_from(official: torch.nn.Module) -> Mitra:
    ours = Mitra(**SMALL, dim_output=10, task="classification")
    ours.load_state_dict({official_to_ours(k): v for k, v in official.state_dict().items()})
    return ours.eval()


def test_registered_and_protocol_attributes(net):
    assert ARCHITECTURES["mitra"] is Mitra and net.arch == "mitra" and net.n_out == 10
    json.dumps(net.config)
    reg = Mitra(**SMALL, dim_output=1, task="REGRESSION")
    assert reg.max_classes == 0 and reg.config["task"] == "regression"
    with pytest.raises(ValueError, match="dim_output=1"):
        Mitra(**SMALL, dim_output=5, task="regression")
    with pytest.raises(ValueError, match="task"):
        Mitra(**SMALL, task="ranking")
    with pytest.raises(ValueError, match="Expected X"):
        net(torch.randn(2, 5, 3), torch.zeros(2, 6))


def test_test_rows_never_see_each_other_and_train_order_is_irrelevant(net):
    X, y = _table(np.random.default_rng(7), "classification", 25, 6, 5)
    X2 = X.clone()
    X2[:, -1] += 3.0
    perm = torch.randperm(25, generator=torch.Generator().manual_seed(0))
    Xp = torch.cat([X[:, perm], X[:, 25:]], dim=1)
    with torch.no_grad():
        a, b, p = net(X, y), net(X2, y), net(Xp, y[:, perm])
    torch.testing.assert_close(a[:, :-1], b[:, :-1], rtol=0, atol=1e-6)
    assert (a[:, -1] - b[:, -1]).abs().max() > 1e-3
    torch.testing.assert_close(a, p, rtol=0, atol=1e-5)


def test_padding_mask_and_chunking_change_nothing(net):
    X, y = _table(np.random.default_rng(8), "classification", 20, 5, 6)
    padded = torch.cat([X, torch.zeros(2, 25, 3)], dim=-1)
    padded[1, :, 4:] = 0.0
    with torch.no_grad():
        full = net(X, y)
        second_table_truncated = net(X[1:, :, :4], y[1:])
        out = net(padded, y, d=torch.tensor([6, 4]))
        chunked = net(X, y, col_chunk=2, row_chunk=7)
    torch.testing.assert_close(out[:1], full[:1], rtol=0, atol=1e-5)
    torch.testing.assert_close(out[1:], second_table_truncated, rtol=0, atol=1e-5)
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-5)


def test_recompute_gives_same_gradients():
    torch.manual_seed(0)
    plain = Mitra(**SMALL, dim_output=1, task="regression").train()
    recomputed = Mitra(**{**plain.config, "recompute": True}).train()
    recomputed.load_state_dict(plain.state_dict())
    X, y = torch.randn(2, 20, 4), torch.rand(2, 15)
    grads = []
    for model in (plain, recomputed):
        model(X, y).square().mean().backward()
        grads.append(model.layers[0].across_rows.attn.q_proj.weight.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-6)


def test_not_a_mitra_directory_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="Mitra"):
        load_network(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="lacks"):
        load_network(tmp_path)


def test_cached_official_directory_is_found_without_network(official_pair, tmp_path, monkeypatch):
    task, _, directory = official_pair
    repo_dir = tmp_path / "hub" / "models--autogluon--mitra-test"
    snapshot = repo_dir / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("0" * 40)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes((directory / name).read_bytes())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cached_mitra_dir("autogluon/mitra-test", cache_dir=tmp_path / "hub") == snapshot
    assert cached_mitra_dir("autogluon/not-there", cache_dir=tmp_path / "hub") is None
    assert isinstance(load_network(snapshot), Mitra)

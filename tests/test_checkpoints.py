"""Checkpoint resolution and formats: project safetensors round trip, official files from the local HF cache,
``"default"`` resolution, clear errors, and no downloads."""

from __future__ import annotations

import json

import pytest
import torch

from autogluon_tfm.checkpoints import io as ckpt_io
from autogluon_tfm.checkpoints import load_network, make_tiny_network, resolve_checkpoint, save_network


def _outputs(net, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(2, 30, 5, generator=gen)
    y = (torch.arange(20) % 3).float().repeat(2, 1)
    with torch.no_grad():
        return net(X, y)


def test_safetensors_round_trip(tmp_path):
    net = make_tiny_network(seed=3)
    path = save_network(net, tmp_path / "tiny", card={"steps": 7})
    assert path.suffix == ".safetensors" and path.exists()
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["steps"] == 7 and card["arch"] == "tabicl" and card["n_parameters"] > 0
    loaded = load_network(path)
    assert not loaded.training
    torch.testing.assert_close(_outputs(loaded), _outputs(net), rtol=0, atol=0)


def test_half_precision_export_is_close(tmp_path):
    net = make_tiny_network(seed=4)
    loaded = load_network(save_network(net, tmp_path / "half.safetensors", dtype=torch.float16))
    assert (_outputs(loaded) - _outputs(net)).abs().max() < 5e-3


def _fake_hf_cache(root, repo_id, filename, payload_path):
    repo_dir = root / f"models--{repo_id.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(revision)
    (snapshot / filename).write_bytes(payload_path.read_bytes())
    return snapshot / filename


@pytest.fixture
def official_tiny_ckpt(tmp_path):
    net = make_tiny_network(seed=5)
    path = tmp_path / "official.ckpt"
    torch.save({"config": {**net.config, "zero_init": False}, "state_dict": net.state_dict()}, path)
    return net, path


def test_official_file_from_local_hf_cache(tmp_path, monkeypatch, official_tiny_ckpt):
    net, payload = official_tiny_ckpt
    filename = "tabicl-classifier-v2-20260212.ckpt"
    cache = tmp_path / "hf"
    _fake_hf_cache(cache, "jingang/TabICL", filename, payload)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub

    def no_download(*args, **kwargs):
        raise AssertionError("autogluon-tfm must never download implicitly")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    assert resolve_checkpoint("tabicl", "classification", "default").endswith(filename)
    torch.testing.assert_close(_outputs(load_network(filename)), _outputs(net), rtol=0, atol=0)


def test_default_falls_back_to_shipped_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    shipped = ckpt_io.SHIPPED_DEFAULTS[("tabicl", "classification")]
    if not (ckpt_io.SHIPPED_DIR / f"{shipped}.safetensors").exists():
        pytest.fail(f"shipped weights {shipped!r} missing from the package")
    assert resolve_checkpoint("tabicl", "classification", "default") == shipped
    assert load_network(shipped).max_classes == 10


def test_missing_official_file_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_network("tabicl-classifier-v1-20250208.ckpt")


def test_unknown_checkpoint_and_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_network("no-such-weights")
    bad = tmp_path / "bad.ckpt"
    torch.save({"weights": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="not a tabicl checkpoint"):
        load_network(bad)
    with pytest.raises(ValueError, match="task"):
        resolve_checkpoint("tabicl", "clustering")


@pytest.mark.parametrize("arch", ["tabicl", "tabpfn_v2", "mitra"])
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_every_architecture_round_trips_through_project_format(tmp_path, arch, task):
    net = make_tiny_network(arch, task, seed=1)
    loaded = load_network(save_network(net, tmp_path / f"{arch}-{task}"))
    assert loaded.arch == arch and loaded.config == net.config
    X = torch.randn(1, 25, 4, generator=torch.Generator().manual_seed(0))
    y = (torch.arange(15) % 3).float()[None] if task == "classification" else torch.randn(1, 15)
    with torch.no_grad():
        torch.testing.assert_close(loaded(X, y), net(X, y), rtol=0, atol=0)

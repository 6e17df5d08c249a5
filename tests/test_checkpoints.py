"""Checkpoint resolution and formats: project safetensors round trip, official files from the local HF cache,
``"default"`` resolution, clear errors, and no downloads."""

from __future__ import annotations

import json
import logging

import huggingface_hub
import huggingface_hub.constants  # before any test sets HF_HUB_CACHE: the default cache path is read at its import
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

    def no_download(*args, **kwargs):
        raise AssertionError("autogluon-tfm must never download implicitly")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    assert resolve_checkpoint("tabicl", "classification", "default").endswith(filename)
    torch.testing.assert_close(_outputs(load_network(filename)), _outputs(net), rtol=0, atol=0)


@pytest.mark.parametrize("arch, task", sorted(ckpt_io.SHIPPED_DEFAULTS))
def test_default_falls_back_to_shipped_weights(arch, task, tmp_path, monkeypatch):
    """Every (architecture, task) has shipped weights: small fp16 safetensors with a card, of the right kind."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(ckpt_io, "find_cached_tabpfn_v2_file", lambda filename: None)
    shipped = ckpt_io.SHIPPED_DEFAULTS[(arch, task)]
    path = ckpt_io.SHIPPED_DIR / f"{shipped}.safetensors"
    if not path.exists():
        pytest.fail(f"shipped weights {shipped!r} missing from the package")
    assert path.stat().st_size <= 15 * 1024**2
    model = ckpt_io._model_name(arch)
    assert resolve_checkpoint(model, task, "default") == shipped
    net = load_network(shipped)
    assert net.arch == arch and ckpt_io.network_task(net) == task
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["arch"] == arch and card["progress"]["tables_seen"] > 0
    assert {"compute", "prior", "n_parameters"} <= set(card)


def test_weak_shipped_weights_warn_when_chosen_by_default(tmp_path, monkeypatch, caplog):
    """Weights whose card carries a warning (not yet better than the base rate) say so when "default" picks them."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(ckpt_io, "find_cached_tabpfn_v2_file", lambda filename: None)
    with caplog.at_level(logging.WARNING, logger="autogluon_tfm"):
        resolve_checkpoint("tabicl", "classification", "default")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    monkeypatch.setattr(ckpt_io, "shipped_card", lambda name: {"warning": "not better than the class prior yet"})
    with caplog.at_level(logging.WARNING, logger="autogluon_tfm"):
        resolve_checkpoint("tabicl", "classification", "default")
    assert "not better than the class prior yet" in caplog.text


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

"""Command line ``python -m autogluon_tfm``: help, a tiny resumable pretraining run, and export to shipped format.

The CLI is run in subprocesses (as a user would run it); one module-scoped fixture pretrains a tiny network for 3
steps and then resumes it to 5, and the tests check what those runs left on disk.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autogluon_tfm.checkpoints import load_network

REPO_ROOT = Path(__file__).resolve().parents[1]

# Small enough for a few seconds per run on one core: tables of 32-64 rows, at most 5 features, 2 tables per step.
TINY_PRETRAIN_ARGS = [
    "--model", "tabicl-tiny", "--num-workers", "0", "--threads", "1", "--batch-size", "2",
    "--min-rows", "32", "--max-rows", "64", "--max-features", "5",
]


def run_cli(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m autogluon_tfm ARGS`` in a fresh interpreter, importing this checkout of the package."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    result = subprocess.run(
        [sys.executable, "-m", "autogluon_tfm", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"`python -m autogluon_tfm {' '.join(args)}` exited with {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def read_log_steps(log_path: Path) -> list[int]:
    with log_path.open(newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def pretrain_runs(tmp_path_factory) -> dict:
    """Pretrain 3 steps, snapshot what was written, then resume the same run directory to 5 steps."""
    workdir = tmp_path_factory.mktemp("cli")
    run_cli("pretrain", *TINY_PRETRAIN_ARGS, "--steps", "3", "--out", "tmp", cwd=workdir)
    out = workdir / "tmp"
    after_first = {
        "log_steps": read_log_steps(out / "log.csv"),
        "files": sorted(p.name for p in out.iterdir()),
        "ckpt": torch.load(out / "last.ckpt", map_location="cpu", weights_only=True),
    }
    resumed = run_cli("pretrain", *TINY_PRETRAIN_ARGS, "--steps", "5", "--out", "tmp", cwd=workdir)
    return {"workdir": workdir, "out": out, "after_first": after_first, "resumed": resumed}


def test_help_lists_the_subcommands(tmp_path):
    result = run_cli("--help", cwd=tmp_path)
    for command in ("pretrain", "warm-up-columns", "export", "download"):
        assert command in result.stdout
    pretrain_help = run_cli("pretrain", "--help", cwd=tmp_path).stdout
    assert "--steps" in pretrain_help and "--out" in pretrain_help


def test_unknown_model_preset_fails_clearly(tmp_path):
    result = run_cli("pretrain", "--model", "no-such-model", "--steps", "1", "--out", "x", cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert "no-such-model" in result.stderr
    assert not (tmp_path / "x").exists()


def test_pretrain_writes_checkpoint_and_log(pretrain_runs):
    first = pretrain_runs["after_first"]
    assert {"last.ckpt", "log.csv", "pretrain_config.json"} <= set(first["files"])
    assert first["log_steps"] == [1, 2, 3]
    ckpt = first["ckpt"]
    assert ckpt["progress"]["step"] == 3
    assert ckpt["progress"]["tables_seen"] == 3 * 2  # 3 steps x --batch-size 2
    assert ckpt["arch"] == "tabicl" and ckpt["config"]["embed_dim"] == 16  # the tabicl-tiny preset
    assert ckpt["pretrain_config"]["max_features"] == 5
    with (pretrain_runs["out"] / "log.csv").open(newline="") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert all(0 < loss < 20 for loss in losses)  # finite cross-entropy over 10 logits


def test_resume_continues_from_last_step(pretrain_runs):
    out = pretrain_runs["out"]
    assert "Resumed from" in pretrain_runs["resumed"].stderr
    # The resumed run appends steps 4 and 5 to the same log instead of starting again at 1.
    assert read_log_steps(out / "log.csv") == [1, 2, 3, 4, 5]
    ckpt = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["progress"]["step"] == 5
    assert ckpt["progress"]["tables_seen"] == 5 * 2
    first_state = pretrain_runs["after_first"]["ckpt"]["state_dict"]
    changed = [k for k, v in ckpt["state_dict"].items() if not torch.equal(v, first_state[k])]
    assert changed, "two more optimizer steps should have changed the weights"
    assert json.loads((out / "pretrain_config.json").read_text())["steps"] == 5


def test_export_writes_loadable_weights_and_card(pretrain_runs):
    workdir, out = pretrain_runs["workdir"], pretrain_runs["out"]
    run_cli("export", str(out / "last.ckpt"), "--name", "cli-test-net", "--out-dir", "tmp", cwd=workdir)
    weights = out / "cli-test-net.safetensors"
    card_path = out / "cli-test-net.json"
    assert weights.exists() and card_path.exists()

    card = json.loads(card_path.read_text())
    assert card["name"] == "cli-test-net"
    assert card["arch"] == "tabicl"
    assert card["progress"]["step"] == 5
    assert card["pretrain"]["model"] == "tabicl-tiny"
    assert card["n_parameters"] > 0

    net = load_network(weights)
    assert not net.training
    ckpt = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
    for name, value in net.state_dict().items():  # fp16 export (the default) of the trained weights
        torch.testing.assert_close(value, ckpt["state_dict"][name].float(), rtol=1e-3, atol=1e-3)

    gen = torch.Generator().manual_seed(0)
    X = torch.randn(1, 20, 4, generator=gen)
    y_train = torch.randint(0, 3, (1, 12), generator=gen).float()
    with torch.no_grad():
        logits = net(X, y_train)
    assert logits.shape == (1, 20 - 12, net.max_classes)
    assert torch.isfinite(logits).all()


def test_warm_up_columns_writes_loadable_weights_with_a_card(tmp_path) -> None:
    from autogluon_tfm.checkpoints import make_tiny_network, save_network

    source = save_network(make_tiny_network("mitra"), tmp_path / "tiny.safetensors")
    run_cli("warm-up-columns", "--init-from", str(source), "--steps", "2", "--out", "warm.safetensors", cwd=tmp_path)
    net = load_network(tmp_path / "warm.safetensors")
    assert net.arch == "mitra"
    card = json.loads((tmp_path / "warm.json").read_text())
    assert card["steps"] == 2 and len(card["loss_curve"]) == 2 and str(source) in card["source"]
    failed = run_cli("warm-up-columns", "--init-from", "no-such-net", "--steps", "1", "--out", "x.safetensors",
                     cwd=tmp_path, check=False)
    assert failed.returncode != 0 and "no-such-net" in failed.stderr and not (tmp_path / "x.safetensors").exists()

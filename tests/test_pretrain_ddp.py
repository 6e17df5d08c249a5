"""``torchrun`` data-parallel pretraining on CPU: 2 processes, gloo backend, a handful of steps with a tiny model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from autogluon_tfm.checkpoints import load_network

REPO_ROOT = Path(__file__).resolve().parents[1]

# Each rank trains and then saves its own weights, so the test can compare what the two processes ended with.
WORKER = """
import json, os, sys, torch
from autogluon_tfm.pretrain.trainer import PretrainConfig, _pretrain
out = sys.argv[1]
settings = dict(arch="tabicl", model="tabicl-tiny", prior="tabicl_mix", steps=4, batch_size=2, min_rows=24,
                max_rows=40, max_features=4, num_workers=0, threads=1, checkpoint_every=2, out=out)
settings.update(json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
cfg = PretrainConfig(**settings)
path, net = _pretrain(cfg)
torch.save(net.state_dict(), os.path.join(out, "rank%s.pt" % os.environ["RANK"]))
"""


def _run_two_ranks(tmp_path: Path, overrides: str = "{}") -> tuple[Path, dict]:
    """Pretrain with 2 ranks; returns the run directory and rank 0's weights, after checking rank 1's equal them."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         str(out), overrides],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    rank0 = torch.load(out / "rank0.pt", weights_only=True)
    rank1 = torch.load(out / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"ranks diverged at {name}"
    return out, rank0


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed + gloo")
def test_torchrun_two_ranks_end_with_identical_weights(tmp_path):
    out, rank0 = _run_two_ranks(tmp_path)
    # Only rank 0 writes: one checkpoint holding those weights, one log with global table counts.
    ckpt = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["progress"]["step"] == 4 and ckpt["progress"]["tables_seen"] == 4 * 2 * 2
    for name, tensor in rank0.items():
        assert torch.equal(ckpt["state_dict"][name], tensor)
    assert load_network(out / "last.ckpt").arch == "tabicl"
    log_rows = (out / "log.csv").read_text().splitlines()
    assert len(log_rows) == 1 + 4
    # Training moved the weights away from the shared initialisation (gradients were applied, not just synced).
    torch.manual_seed(0)
    from autogluon_tfm.pretrain.trainer import PretrainConfig, build_network

    initial = build_network(PretrainConfig(arch="tabicl", model="tabicl-tiny")).state_dict()
    assert any(not torch.equal(initial[name], rank0[name]) for name in rank0)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed + gloo")
def test_torchrun_time_schedule_gives_the_ranks_one_rate_and_one_stop(tmp_path):
    # 0.3 s of training time and far more steps: the ranks' clocks decide, and they must agree (else the weights
    # differ or one rank waits forever in a collective).
    out, _ = _run_two_ranks(tmp_path, '{"steps": 100000, "schedule_minutes": 0.005, "checkpoint_every": 100000}')
    progress = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)["progress"]
    assert 2 <= progress["step"] < 100000 and progress["wall_time_s"] >= 0.3
    rates = [float(line.split(",")[2]) for line in (out / "log.csv").read_text().splitlines()[1:]]
    assert len(rates) == progress["step"] and rates[-1] == 0.0

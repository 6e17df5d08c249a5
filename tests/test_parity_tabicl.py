"""Parity with the official tabicl 2.1.1 ``TabICL`` module: random weights saved in the official checkpoint format
load through ``load_network`` and give the same test-row outputs (fp32, CPU, eval)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from autogluon_tfm.checkpoints import load_network

# benchmarks/ is a folder of the repository, not part of the installed package.
if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.speed import randomize_weights  # noqa: E402

tabicl_model = pytest.importorskip("tabicl._model.tabicl", reason="official tabicl is a test dependency")

SMALL = dict(embed_dim=32, col_num_blocks=2, col_num_inds=8, row_num_blocks=2, row_num_cls=2, icl_num_blocks=2)
V1 = dict(
    SMALL, col_nhead=4, row_nhead=4, icl_nhead=4, col_affine=True, col_feature_group=False, col_target_aware=False,
    col_ssmax="none", icl_ssmax="none", row_rope_interleaved=True,
)
V2_CLF = dict(SMALL, col_nhead=4, row_nhead=4, icl_nhead=4)
V2_REG = dict(V2_CLF, max_classes=0, num_quantiles=999, bias_free_ln=True)
CONFIGS = {"v1": V1, "v2-clf": V2_CLF, "v2-reg": V2_REG}


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Official init zeroes residual branches and query MLPs; random values of unit scale make parity meaningful."""
    randomize_weights(module, seed, scale=0.2, other_scale=0.5, not_matrices=("ind_vectors", "cls_tokens"),
                      is_norm=lambda name: "norm" in name or "ln" in name.split(".")[-2])


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def official_pair(request, tmp_path_factory):
    torch.manual_seed(0)
    config = CONFIGS[request.param]
    official = tabicl_model.TabICL(**config)
    _randomize(official, seed=1)
    official.eval()
    path = tmp_path_factory.mktemp("ckpt") / f"{request.param}.ckpt"
    # Official format; the extra key mimics newer official trainers (must be dropped on load).
    torch.save({"config": {**config, "zero_init": False}, "state_dict": official.state_dict()}, path)
    return request.param, official, load_network(path)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tabicl_matches_official(official_pair, seed):
    name, official, ours = official_pair
    rng = np.random.default_rng(seed)
    for n_train, n_features in [(1, 1), (int(rng.integers(2, 60)), int(rng.integers(2, 12))), (300, 40)]:
        n_test = int(rng.integers(1, 30))
        X = torch.tensor(rng.normal(size=(2, n_train + n_test, n_features)), dtype=torch.float32)
        if name == "v2-reg":
            y = torch.tensor(rng.normal(size=(2, n_train)), dtype=torch.float32)
        else:
            k = int(rng.integers(2, 11))
            # every table needs the same classes: the official eval slices by unique labels of table 0
            y = torch.tensor(np.stack([rng.permutation(np.arange(n_train) % k) for _ in range(2)]), dtype=torch.float32)
        with torch.no_grad():
            expected = official(X, y)
            got = ours(X, y)
        if name != "v2-reg":
            got = got[..., : expected.shape[-1]]
        assert got.shape == expected.shape
        diff = (got - expected).abs().max().item()
        assert diff <= 1e-4, f"{name} n={n_train} H={n_features}: max abs diff {diff}"

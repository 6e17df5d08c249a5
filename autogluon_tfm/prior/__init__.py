"""Synthetic tabular dataset priors for pretraining: TabICL-style MLP-SCM + XGBoost tree-SCM mixtures and
Mitra-style tree-based priors (DT / ET / RF / GB fitted to random targets, directly sampled random forests).

Main entry points::

    sampler = PriorSampler("tabicl_mix", seed=0)
    batch = sampler.sample_batch(batch_size=8, n_rows=1024, max_features=100)   # -> PriorBatch

    dataset = PriorIterableDataset("tabicl_mix", batch_size=8, curriculum=(1000, 40_000), seed=0)
    loader = DataLoader(dataset, batch_size=None, num_workers=4, collate_fn=collate)

Priors know nothing about networks.
"""

from autogluon_tfm.prior.activations import ACTIVATION_NAMES, LayerActivation, RandomFourierFunction
from autogluon_tfm.prior.config import MITRA_TREE_FAMILIES, NAN_MODES, PRIOR_CONFIGS, PriorConfig, get_prior_config
from autogluon_tfm.prior.dataset import Curriculum, PriorIterableDataset, collate, max_features_for_rows
from autogluon_tfm.prior.mitra_trees import generate_mitra_tree_table
from autogluon_tfm.prior.mlp_scm import MLPSCM, generate_mlp_scm_table
from autogluon_tfm.prior.random_utils import PriorRandom
from autogluon_tfm.prior.sampler import KINDS, MLP_SCM, TREE_SCM, PriorBatch, PriorSampler
from autogluon_tfm.prior.tree_scm import generate_tree_scm_table

__all__ = [
    "ACTIVATION_NAMES",
    "KINDS",
    "MITRA_TREE_FAMILIES",
    "MLPSCM",
    "MLP_SCM",
    "NAN_MODES",
    "PRIOR_CONFIGS",
    "TREE_SCM",
    "Curriculum",
    "LayerActivation",
    "PriorBatch",
    "PriorConfig",
    "PriorIterableDataset",
    "PriorRandom",
    "PriorSampler",
    "RandomFourierFunction",
    "collate",
    "generate_mitra_tree_table",
    "generate_mlp_scm_table",
    "generate_tree_scm_table",
    "get_prior_config",
    "max_features_for_rows",
]

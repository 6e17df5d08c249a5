"""Official TabPFN v2 checkpoints -> :class:`autogluon_tfm.nn.tabpfn_v2.TabPFNv2`.

An official v2 ``.ckpt`` is a ``torch.save`` dict ``{"state_dict", "config"}`` (regressors add the bar distribution
as ``criterion.borders`` and ``criterion.losses_per_bucket``). Two key layouts exist and both are accepted:

- the original v2 layout of the published files: ``encoder.{i}.layer``, ``y_encoder.{1|2}.layer``,
  ``transformer_encoder.layers.{i}.self_attn_between_{features,items}._w_qkv (3, heads, head_dim, E)`` /
  ``._w_out (heads, head_dim, E)``, ``mlp.linear{1,2}``, ``decoder_dict.standard.{0,2}``,
  ``feature_positional_embedding_embeddings``;
- the single-file layout that tabpfn >= 7 writes when it saves a v2 model: ``feature_group_embedder``,
  ``target_embedder``, ``blocks.{i}.per_sample_attention_between_features.{q,k,v,out}_projection``,
  ``blocks.{i}.per_column_attention_between_cells.*``, ``blocks.{i}.mlp.{0,2}``, ``output_projection.{0,2}``.

Files are read by :func:`autogluon_tfm.checkpoints.load_network` with ``torch.load(weights_only=True)``; nothing here
unpickles code or downloads.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from torch import Tensor

from autogluon_tfm.nn.tabpfn_v2 import TabPFNv2

logger = logging.getLogger(__name__)

# Official files (Hugging Face repo, filename) per task, the default first.
OFFICIAL_TABPFN_V2_FILES: dict[str, list[tuple[str, str]]] = {
    "classification": [
        ("Prior-Labs/TabPFN-v2-clf", "tabpfn-v2-classifier-finetuned-zk73skhh.ckpt"),
        ("Prior-Labs/TabPFN-v2-clf", "tabpfn-v2-classifier.ckpt"),
    ],
    "regression": [("Prior-Labs/TabPFN-v2-reg", "tabpfn-v2-regressor.ckpt")],
}

_ORIGINAL_LAYER = re.compile(r"^transformer_encoder\.layers\.(\d+)\.(.+)$")
_SINGLE_FILE_LAYER = re.compile(r"^blocks\.(\d+)\.(.+)$")
_ATTENTION_NAMES = {
    # original layout / single-file layout -> ours
    "self_attn_between_features": "feature_attn",
    "self_attn_between_items": "item_block.attn",
    "per_sample_attention_between_features": "feature_attn",
    "per_column_attention_between_cells": "item_block.attn",
}
_MLP_NAMES = {
    "mlp.linear1.weight": "item_block.linear1.weight",
    "mlp.linear2.weight": "item_block.linear2.weight",
    "mlp.0.weight": "item_block.linear1.weight",
    "mlp.2.weight": "item_block.linear2.weight",
}
_TOP_LEVEL_NAMES = {
    "feature_group_embedder.weight": "feature_embedder.weight",
    "feature_positional_embedding_embeddings.weight": "column_embedder.weight",
    "feature_positional_embedding_embeddings.bias": "column_embedder.bias",
    "target_embedder.weight": "target_embedder.weight",
    "target_embedder.bias": "target_embedder.bias",
    "decoder_dict.standard.0.weight": "decoder.0.weight",
    "decoder_dict.standard.0.bias": "decoder.0.bias",
    "decoder_dict.standard.2.weight": "decoder.2.weight",
    "decoder_dict.standard.2.bias": "decoder.2.bias",
    "output_projection.0.weight": "decoder.0.weight",
    "output_projection.0.bias": "decoder.0.bias",
    "output_projection.2.weight": "decoder.2.weight",
    "output_projection.2.bias": "decoder.2.bias",
}


def tabpfn_cache_dir() -> Path:
    """Where the ``tabpfn`` package keeps downloaded models (``TABPFN_MODEL_CACHE_DIR`` overrides)."""
    override = os.environ.get("TABPFN_MODEL_CACHE_DIR", "").strip()
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", "~")).expanduser() / "tabpfn"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "tabpfn"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tabpfn"


def find_cached_tabpfn_v2_file(filename: str) -> Path | None:
    """An official TabPFN v2 file already on disk (tabpfn's cache dir, then the Hugging Face cache); never downloads."""
    candidate = tabpfn_cache_dir() / filename
    if candidate.is_file():
        return candidate
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return None
    for files in OFFICIAL_TABPFN_V2_FILES.values():
        for repo_id, name in files:
            if name == filename:
                found = try_to_load_from_cache(repo_id=repo_id, filename=filename)
                if isinstance(found, str):
                    return Path(found)
    return None


def is_tabpfn_v2_checkpoint(ckpt: Any) -> bool:
    """True for an official TabPFN v2 checkpoint dict (either key layout); False for anything else."""
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("config"), dict) or "state_dict" not in ckpt:
        return False
    if ckpt.get("architecture_name", "tabpfn_v2") != "tabpfn_v2":  # v2.5+ files name their (other) architecture
        return False
    markers = ("self_attn_between_features.", "per_sample_attention_between_features.")
    return any(marker in key for key in ckpt["state_dict"] for marker in markers)


def _attention(prefix: str, name: str, value: Tensor) -> dict[str, Tensor]:
    """One official attention tensor -> our separate q/k/v/out ``nn.Linear`` weights."""
    if name == "_w_qkv":  # (3, heads, head_dim, E)
        return {f"{prefix}.{p}_proj.weight": value[j].flatten(0, 1) for j, p in enumerate("qkv")}
    if name == "_w_q":  # (1, heads, head_dim, E)
        return {f"{prefix}.q_proj.weight": value[0].flatten(0, 1)}
    if name == "_w_kv":  # (2, heads, head_dim, E)
        return {f"{prefix}.{p}_proj.weight": value[j].flatten(0, 1) for j, p in enumerate("kv")}
    if name == "_w_out":  # (heads, head_dim, E) -> Linear(heads*head_dim -> E).weight
        return {f"{prefix}.out_proj.weight": value.flatten(0, 1).t()}
    match = re.fullmatch(r"([qkv]|out)_projection\.weight", name)
    if match:
        return {f"{prefix}.{match.group(1)}_proj.weight": value}
    raise ValueError(f"Unknown attention tensor {name!r} in a TabPFN v2 checkpoint")


def convert_tabpfn_v2_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official v2 state dict (either layout, ``criterion.*`` included) -> this project's ``TabPFNv2`` names."""
    out: dict[str, Tensor] = {}
    encoder_keys = [k for k in state_dict if re.fullmatch(r"encoder\.\d+\.layer\.weight", k)]
    if len(encoder_keys) > 1:
        raise ValueError(f"Expected one feature encoder projection, found {encoder_keys}")
    for key, value in state_dict.items():
        value = value.detach().float().contiguous()
        layer = _ORIGINAL_LAYER.match(key) or _SINGLE_FILE_LAYER.match(key)
        if key in encoder_keys:
            out["feature_embedder.weight"] = value
        elif re.fullmatch(r"y_encoder\.\d+\.layer\.(weight|bias)", key):
            out[f"target_embedder.{key.rsplit('.', 1)[1]}"] = value
        elif key in _TOP_LEVEL_NAMES:
            out[_TOP_LEVEL_NAMES[key]] = value
        elif key == "criterion.borders":
            out["borders"] = value
        elif key == "criterion.losses_per_bucket":
            continue  # a training statistic of the loss, not needed for predictions
        elif layer is not None:
            index, rest = layer.groups()
            prefix = f"blocks.{index}"
            module, _, name = rest.partition(".")
            if module in _ATTENTION_NAMES:
                for new_key, tensor in _attention(f"{prefix}.{_ATTENTION_NAMES[module]}", name, value).items():
                    out[new_key] = tensor.contiguous()
            elif rest in _MLP_NAMES:
                out[f"{prefix}.{_MLP_NAMES[rest]}"] = value
            else:
                raise ValueError(f"Unknown layer tensor {key!r} in a TabPFN v2 checkpoint")
        else:
            raise ValueError(f"Unknown tensor {key!r} in a TabPFN v2 checkpoint")
    return out


def tabpfn_v2_config(ckpt: dict) -> dict[str, Any]:
    """Constructor kwargs of :class:`TabPFNv2` for an official checkpoint (official config, checked against shapes)."""
    return _config_from(dict(ckpt["config"]), convert_tabpfn_v2_state_dict(ckpt["state_dict"]))


def _config_from(config: dict[str, Any], state: dict[str, Tensor]) -> dict[str, Any]:
    unsupported = {
        "feature_positional_embedding": ("subspace", None),
        "multiquery_item_attention_for_test_set": (True, None),
        "two_sets_of_queries": (False, None),
        "use_separate_decoder": (False, None),
        "multiquery_item_attention": (False, None),
    }
    for key, allowed in unsupported.items():
        if key in config and config[key] not in allowed:
            raise ValueError(f"TabPFN v2 checkpoint with {key}={config[key]!r} is not supported")
    if "feature_embedder.weight" not in state or "decoder.2.weight" not in state:
        raise ValueError("TabPFN v2 checkpoint lacks the feature encoder or the decoder")
    embed_dim = int(state["feature_embedder.weight"].shape[0])
    features_per_group = int(state["feature_embedder.weight"].shape[1]) // 2
    num_blocks = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    ff_dim = int(state["blocks.0.item_block.linear1.weight"].shape[0]) if num_blocks else 4 * embed_dim
    n_out = int(state["decoder.2.weight"].shape[0])
    expected = {
        "emsize": embed_dim,
        "features_per_group": features_per_group,
        "nlayers": num_blocks,
        "nhid_factor": ff_dim // embed_dim,
    }
    for key, value in expected.items():
        if key in config and int(config[key]) != value:
            raise ValueError(f"TabPFN v2 config says {key}={config[key]} but the weights imply {value}")
    if int(state["decoder.0.weight"].shape[0]) != ff_dim or ff_dim % embed_dim:
        raise ValueError("TabPFN v2 checkpoint: decoder and MLP hidden sizes must both be a multiple of emsize")
    if "nhead" not in config:
        raise ValueError("TabPFN v2 config lacks 'nhead'")
    regression = "borders" in state
    declared_classes = config.get("max_num_classes")
    if declared_classes is not None and (int(declared_classes) == 0) != regression:
        raise ValueError(
            f"TabPFN v2 config max_num_classes={declared_classes} disagrees with the weights "
            f"({'with' if regression else 'without'} criterion.borders)"
        )
    if regression and state["borders"].numel() != n_out + 1:
        raise ValueError(f"criterion.borders has {state['borders'].numel()} edges for {n_out} buckets")
    ignored = sorted(set(config) - {"emsize", "nhead", "nlayers", "nhid_factor", "features_per_group", "seed"})
    logger.debug("TabPFN v2 config keys not used by the network: %s", ignored)
    return dict(
        max_classes=0 if regression else n_out,
        num_buckets=n_out if regression else 5000,  # unused by a classifier
        embed_dim=embed_dim,
        nhead=int(config["nhead"]),
        num_blocks=num_blocks,
        ff_factor=ff_dim // embed_dim,
        features_per_group=features_per_group,
        seed=int(config.get("seed", 0) or 0),
    )


def tabpfn_v2_from_checkpoint(ckpt: dict) -> TabPFNv2:
    """Build :class:`TabPFNv2` from an official checkpoint dict and load its weights strictly (eval mode, CPU)."""
    if not is_tabpfn_v2_checkpoint(ckpt):
        raise ValueError("Not a TabPFN v2 checkpoint (expected {'state_dict', 'config'} with v2 attention weights)")
    state = convert_tabpfn_v2_state_dict(ckpt["state_dict"])
    net = TabPFNv2(**_config_from(dict(ckpt["config"]), state))
    net.load_state_dict(state, strict=True)
    return net.eval()

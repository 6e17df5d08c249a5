"""Checkpoints: turn ``"default"``, a shipped name, an official file name or a path into a network.

Formats:
- the project's own: ``NAME.safetensors`` whose metadata holds ``arch`` and the JSON ``config``; a ``NAME.json``
  card beside it describes how it was trained;
- official tabicl ``.ckpt`` files: a ``torch.save`` dict ``{"config", "state_dict"}``, loaded with
  ``weights_only=True`` (never unpickles code).
Nothing here downloads: official files are found at a path or in the local Hugging Face cache.
"""

from autogluon_tfm.checkpoints.io import (
    MODEL_ARCHITECTURES,
    SHIPPED_DIR,
    CheckpointMismatchError,
    check_network,
    list_shipped,
    load_network,
    make_tiny_network,
    model_architecture,
    network_task,
    resolve_checkpoint,
    save_network,
)

__all__ = [
    "MODEL_ARCHITECTURES",
    "SHIPPED_DIR",
    "CheckpointMismatchError",
    "check_network",
    "list_shipped",
    "load_network",
    "make_tiny_network",
    "model_architecture",
    "network_task",
    "resolve_checkpoint",
    "save_network",
]

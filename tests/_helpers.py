"""Shared test helpers (pytest puts this folder on sys.path)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def subprocess_env() -> dict[str, str]:
    """Environment for a fresh Python process that imports the repository's package, offline."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    env["HF_HUB_OFFLINE"] = "1"  # a saved predictor must not need the network
    return env

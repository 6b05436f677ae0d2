"""A model's weights fingerprint: the SHA-256 of its local bytes.

A distillation run records its teacher's fingerprint (``run_info.json``, the student's config) and
an evaluation row its model's, so that a resumed or finished run, a teacher cache or a recorded
result can tell that the model at the same path has changed since. Only local bytes are hashed:
a Hub id or a timm name without local weights has no fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

__all__ = ["folder_model_type", "weights_fingerprint"]

# what the folder loaders read: the config and the weights (single or sharded, safetensors or torch)
_MODEL_FILE_PATTERNS = ("config.json", "model*.safetensors", "pytorch_model*.bin")


def folder_model_type(name_or_path: str | os.PathLike) -> str | None:
    """The ``model_type`` of the model folder ``name_or_path`` (its ``config.json``): ``"seed_moco"``,
    ``"seed_distillation"``, a transformers type, or ``"timm_wrapper"`` (also for a timm-format config
    without one). None when it is no folder with a ``config.json``."""
    config = Path(name_or_path) / "config.json"
    if not config.is_file():
        return None
    model_type = json.loads(config.read_text()).get("model_type")
    return "timm_wrapper" if model_type is None else model_type


def weights_fingerprint(name_or_path: str, checkpoint: str | os.PathLike | None = None) -> str | None:
    """SHA-256 (16 hex digits) of the local bytes of the weights a teacher spec loads: the
    ``checkpoint`` file when given for a timm architecture (a name or a timm-format folder), else a
    local folder's config and weights. A seed_hf or transformers folder always loads its own weights,
    so they are hashed even when a ``checkpoint`` is given (``load_teacher`` refuses one there). None for
    a Hub id or a timm name without local weights (nothing local to hash)."""
    if checkpoint is not None and folder_model_type(name_or_path) in (None, "timm_wrapper"):
        files = [Path(checkpoint)] if os.path.isfile(checkpoint) else []  # missing: load_teacher says so
    elif os.path.isdir(name_or_path):
        files = sorted(
            {f for pattern in _MODEL_FILE_PATTERNS for f in Path(name_or_path).glob(pattern) if f.is_file()}
        )
    else:
        return None
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()[:16]

"""A model's weights fingerprint: the SHA-256 of its local bytes.

A distillation run records its teacher's fingerprint (``run_info.json``, the student's config) and
an evaluation row its model's, so that a resumed or finished run, a teacher cache or a recorded
result can tell that the model at the same path has changed since. Only local bytes are hashed:
a Hub id or a timm name without local weights has no fingerprint.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["weights_fingerprint"]

# what the folder loaders read: the config and the weights (single or sharded, safetensors or torch)
_MODEL_FILE_PATTERNS = ("config.json", "model*.safetensors", "pytorch_model*.bin")


def weights_fingerprint(name_or_path: str, checkpoint: str | os.PathLike | None = None) -> str | None:
    """SHA-256 (16 hex digits) of a model's local bytes: the ``checkpoint`` file when given, else
    a local folder's config and weights. None for a Hub id or a timm
    name without local weights (nothing local to hash)."""
    if checkpoint is not None:
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

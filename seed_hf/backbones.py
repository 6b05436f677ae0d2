"""timm backbones and projection heads shared by the student, MoCo and the teachers."""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch import nn

__all__ = ["create_backbone", "close_model_names", "pooled_width", "pooled_features", "ProjectionHead"]


def create_backbone(
    architecture: str,
    in_chans: int = 3,
    model_args: dict[str, Any] | None = None,
    argument_name: str = "student_architecture",
    pretrained: bool = False,
) -> nn.Module:
    """``timm.create_model(architecture, num_classes=0)``: a backbone returning pooled features.

    Raises ``ValueError`` naming ``argument_name`` for a name timm does not know.
    """
    model_args = {k: v for k, v in (model_args or {}).items() if v is not None}
    model_args.pop("num_classes", None)
    if not architecture.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        name = architecture.split(".", 1)[0]
        if not timm.is_model(name):
            close = close_model_names(name)
            raise ValueError(
                f"{argument_name}={architecture!r} is not a timm architecture (timm {timm.__version__})."
                + (f" Close names: {close}." if close else " See timm.list_models().")
            )
    return timm.create_model(
        architecture, pretrained=pretrained, num_classes=0, in_chans=in_chans, **model_args
    )


def close_model_names(name: str, limit: int = 8) -> list[str]:
    """timm architectures close to ``name``, ignoring ``_``/``-`` and case (``mobilenet_v3_small`` →
    ``mobilenetv3_small_100``, ``resnet_50`` → ``resnet50``): same spelling first, then difflib's
    closest, then longer names starting with it."""
    import difflib

    def squeeze(text: str) -> str:
        return text.replace("_", "").replace("-", "").lower()

    by_squeezed: dict[str, list[str]] = {}
    for model_name in timm.list_models():
        by_squeezed.setdefault(squeeze(model_name), []).append(model_name)
    query = squeeze(name)
    keys = [query] if query in by_squeezed else []
    keys += difflib.get_close_matches(query, list(by_squeezed), n=limit, cutoff=0.75)
    keys += sorted((k for k in by_squeezed if k.startswith(query)), key=len)[:limit]
    found = list(dict.fromkeys(n for key in keys for n in by_squeezed[key]))
    return found[:limit] or timm.list_models(f"*{name[:6]}*")[:limit]


def pooled_width(backbone: nn.Module) -> int:
    """Width of ``forward_head(..., pre_logits=True)`` (MobileNetV3: ``head_hidden_size``, 1024)."""
    width = getattr(backbone, "head_hidden_size", None) or getattr(backbone, "num_features", None)
    if not width:
        raise ValueError(f"Cannot infer the pooled feature width of {type(backbone).__name__}.")
    return int(width)


def pooled_features(backbone: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Pooled, pre-logits features ``(batch, pooled_width)`` of a timm backbone."""
    return backbone.forward_head(backbone.forward_features(pixel_values), pre_logits=True)


class ProjectionHead(nn.Sequential):
    """MLP head ``Linear(d, h) → ReLU → Linear(h, dim)`` of MoCo-v2 and SEED.

    Shape: ``(batch, in_dim)`` → ``(batch, out_dim)``. Indices 0 and 2 hold the linear layers,
    the same layout as MoCo-v2's ``fc`` (``fc.0``, ``fc.2``), which eases checkpoint conversion.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))

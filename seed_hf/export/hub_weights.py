"""The weights and config a Hub folder holds: a contiguous CPU copy of the backbone, a 1-channel
backbone as a 3-channel one (every Hub loader feeds RGB), the fused form of a reparameterizable
architecture where timm rebuilds it from ``config.json``, and a ``config.json`` transformers loads."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import torch

from seed_hf.models.backbones import create_backbone, fused_copy, state_shapes

__all__ = ["export_copy", "fix_config_for_transformers", "grayscale_to_rgb", "reparameterized_form"]

logger = logging.getLogger(__name__)


def export_copy(backbone: torch.nn.Module) -> torch.nn.Module:
    """A CPU copy of ``backbone`` in eval mode with contiguous (NCHW) weights."""
    return copy.deepcopy(backbone).to(device="cpu", memory_format=torch.contiguous_format).eval()


def grayscale_to_rgb(
    backbone: torch.nn.Module, architecture: str, model_args: dict[str, Any]
) -> torch.nn.Module:
    """Copy of a 1-channel timm backbone taking 3 channels: every weight that reads the input (the
    first conv, and each branch of a multi-branch stem) repeated over the channels / 3."""
    rgb = create_backbone(architecture, 3, model_args)
    state = dict(backbone.state_dict())
    target = rgb.state_dict()
    if set(state) != set(target):
        raise ValueError(f"The 1- and 3-channel {architecture} have different weights: cannot convert.")
    inputs = [k for k, v in state.items() if v.shape != target[k].shape]
    for key in inputs:
        value, shape = state[key], target[key].shape
        if value.ndim < 2 or value.shape[1] != 1 or shape[1] != 3 or value.shape[2:] != shape[2:]:
            raise ValueError(f"Cannot convert {key!r} {tuple(value.shape)} of {architecture} to 3 channels.")
        state[key] = value.repeat(1, 3, *([1] * (value.ndim - 2))) / 3
    if not inputs:
        raise ValueError(f"Cannot find the 1-channel first conv of {architecture}.")
    rgb.load_state_dict(state)
    return rgb.eval()


def reparameterized_form(
    backbone: torch.nn.Module, architecture: str, model_args: dict[str, Any], in_chans: int
) -> tuple[torch.nn.Module, dict[str, Any], str | None]:
    """``(backbone, model_args, form)`` to write: the fused copy with ``inference_mode`` in its
    model_args (form ``"fused"``) when timm builds exactly that structure from them; else the
    backbone itself, form ``"training"`` for a reparameterizable one and None for the others."""
    fused = fused_copy(backbone)
    if fused is None:
        return backbone, model_args, None
    fused_args = {**model_args, "inference_mode": True}
    try:
        rebuilt = create_backbone(architecture, in_chans, fused_args)
    except TypeError:  # the architecture has no inference_mode argument
        rebuilt = None
    if rebuilt is not None and state_shapes(rebuilt) == state_shapes(fused):
        return fused, fused_args, "fused"
    logger.info(
        f"{architecture} is written in its unfused training form: timm does not rebuild its fused form "
        "from config.json. timm.utils.reparameterize_model fuses it after loading; the ONNX graph is fused."
    )
    return backbone, model_args, "training"


def fix_config_for_transformers(config_path: Path, pretrained_cfg: dict[str, Any]) -> None:
    """transformers' TimmWrapperModel passes num_classes itself: a second one in model_args fails with
    "multiple values for keyword argument 'num_classes'". Also pin the preprocessing explicitly."""
    cfg = json.loads(config_path.read_text())
    cfg.get("model_args", {}).pop("num_classes", None)
    cfg["num_classes"] = 0
    for inherited in ("origin_url", "paper_ids", "paper_name", "hf_hub_id", "url", "classifier"):
        cfg.get("pretrained_cfg", {}).pop(inherited, None)  # the architecture default's, not ours
    cfg.setdefault("pretrained_cfg", {}).update(
        {k: list(v) if isinstance(v, tuple) else v for k, v in pretrained_cfg.items()}
    )
    config_path.write_text(json.dumps(cfg, indent=2) + "\n")

"""Frozen teachers: anything that maps images to an embedding, loaded safely.

Supported specs (``load_teacher(name_or_path, checkpoint=...)``):

* a folder written by seed_hf (``MocoForPretraining`` run or Trainer checkpoint → query
  encoder + MLP head; ``SeedForDistillation`` → student + head);
* a timm architecture name with local weights in ``checkpoint``: a timm/safetensors state
  dict, or a MoCo v1/v2 checkpoint (``module.encoder_q.*`` keys, MLP head kept);
* ``hf-hub:org/name`` or a bare timm name with ``pretrained=True`` (needs network).

Only safetensors or ``torch.load(weights_only=True)`` are used: no pickle execution.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import ProjectionHead, create_backbone, pooled_features, pooled_width

__all__ = ["FrozenTeacher", "load_teacher", "load_state_dict_file"]


class FrozenTeacher(nn.Module):
    """A frozen embedding model: ``pixel_values (n, c, h, w) → unit vectors (n, embed_dim)``.

    Parameters never require grad, the module stays in eval mode (BatchNorm running stats)
    even when ``.train()`` is called, and ``forward`` runs under ``torch.no_grad``.
    When the data has 1 channel and the backbone expects 3, the channel is repeated.

    Args:
        backbone (`nn.Module`): timm backbone with ``forward_features``/``forward_head``.
        head (`nn.Module`, *optional*): projection applied to the pooled features.
        in_chans (`int`): channels the backbone expects.
        description (`str`): provenance, recorded in the student's config.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module | None, in_chans: int, description: str = ""):
        super().__init__()
        self.backbone = backbone
        self.head = head if head is not None else nn.Identity()
        self.in_chans = in_chans
        self.description = description
        self.fused_backbone: nn.Module | None = None
        self.requires_grad_(False)
        super().train(False)
        with torch.no_grad():
            self.embed_dim = self._infer_embed_dim(head)

    def _infer_embed_dim(self, head: nn.Module | None) -> int:
        if head is None:
            return pooled_width(self.backbone)
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
        return linears[-1].out_features if linears else pooled_width(self.backbone)

    def train(self, mode: bool = True) -> FrozenTeacher:
        return super().train(False)  # always eval: frozen BN statistics, no dropout

    @torch.no_grad()
    def optimize_for_inference(
        self, channels_last: bool = True, probe: torch.Tensor | None = None
    ) -> FrozenTeacher:
        """Folds BatchNorm into the preceding convolutions (``torch.fx`` conv-bn fusion; the teacher
        is frozen, so this is exact up to rounding) and switches to channels_last. Falls back to the
        eager backbone when the model cannot be traced or the fused output differs (> 1e-3)."""
        from torch.fx.experimental.optimization import fuse

        if channels_last:
            self.to(memory_format=torch.channels_last)
        if self.fused_backbone is not None:
            return self
        try:
            fused = fuse(self.backbone)  # GraphModule of forward(): pooled features (num_classes=0)
            probe = probe if probe is not None else torch.randn(2, self.in_chans, 64, 64)
            probe = probe.to(next(self.backbone.parameters()).device)
            reference = pooled_features(self.backbone, probe)
            if (fused(probe) - reference).abs().max() > 1e-3 * reference.abs().max().clamp_min(1.0):
                return self
        except Exception:  # not traceable: keep the eager backbone
            return self
        self.fused_backbone = fused
        return self

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.shape[1] != self.in_chans:
            if pixel_values.shape[1] == 1:
                pixel_values = pixel_values.expand(-1, self.in_chans, -1, -1)
            else:
                raise ValueError(
                    f"The teacher expects {self.in_chans}-channel images, got {pixel_values.shape[1]}."
                )
        if self.fused_backbone is not None:
            features = self.fused_backbone(pixel_values)
        else:
            features = pooled_features(self.backbone, pixel_values)
        return F.normalize(self.head(features).float(), dim=1)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Reads a safetensors file, or a torch file with ``weights_only=True`` (no pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher_checkpoint {str(path)!r} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict.")
    return state


def _convert_moco_keys(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Splits a MoCo v1/v2 state dict into (backbone, head) state dicts with timm names."""
    backbone, head = {}, {}
    prefixes = ("module.encoder_q.", "encoder_q.")
    for key, value in state.items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is None:
            continue
        name = key[len(prefix) :]
        if name.startswith("fc."):
            head[name[3:]] = value
        else:
            backbone[name] = value
    return backbone, head


def _head_from_state(head_state: dict[str, torch.Tensor]) -> nn.Module | None:
    if not head_state:
        return None
    if "0.weight" in head_state and "2.weight" in head_state:  # MoCo-v2 MLP
        hidden, in_dim = head_state["0.weight"].shape
        head = ProjectionHead(in_dim, hidden, head_state["2.weight"].shape[0])
    elif "weight" in head_state:  # MoCo v1: a single linear layer
        out_dim, in_dim = head_state["weight"].shape
        head = nn.Linear(in_dim, out_dim)
    else:
        raise ValueError(f"Unrecognised head keys {sorted(head_state)}.")
    head.load_state_dict(head_state)
    return head


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``load_state_dict(strict=True)`` with one message listing missing and unexpected keys."""
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{what} does not match the architecture: missing keys {result.missing_keys[:20]}"
            f"{' …' if len(result.missing_keys) > 20 else ''}, unexpected keys {result.unexpected_keys[:20]}"
            f"{' …' if len(result.unexpected_keys) > 20 else ''}."
        )


def _load_seed_hf_folder(path: Path, model_type: str) -> FrozenTeacher:
    if model_type == "seed_moco":
        from .moco import MocoForPretraining

        moco = MocoForPretraining.from_pretrained(path)
        return FrozenTeacher(moco.encoder, moco.head, moco.config.in_chans, f"moco_v2:{path}")
    from .modeling_seed import SeedForDistillation

    seed = SeedForDistillation.from_pretrained(path)
    return FrozenTeacher(seed.student, seed.head, seed.config.in_chans, f"seed:{path}")


def load_teacher(
    name_or_path: str,
    checkpoint: str | os.PathLike | None = None,
    in_chans: int | None = None,
    model_args: dict[str, Any] | None = None,
    pretrained: bool | None = None,
) -> FrozenTeacher:
    """Builds a [`FrozenTeacher`] from a spec (see the module docstring).

    Args:
        name_or_path: a seed_hf folder, a timm name, or ``hf-hub:org/name``.
        checkpoint: weights for a timm name (safetensors, timm state dict or MoCo checkpoint).
        in_chans: input channels of a timm teacher (default 3).
        model_args: extra ``timm.create_model`` arguments.
        pretrained: download timm's weights (default: only when no ``checkpoint`` is given and
            the spec is ``hf-hub:``).

    Raises:
        FileNotFoundError: ``checkpoint`` or the folder is missing.
        ValueError: unknown architecture, or keys that do not match it.
    """
    path = Path(name_or_path)
    config_file = path / "config.json"
    if path.is_dir() and config_file.is_file():
        model_type = json.loads(config_file.read_text()).get("model_type")
        if model_type in ("seed_moco", "seed_distillation"):
            return _load_seed_hf_folder(path, model_type)
        if model_type in (None, "timm_wrapper"):  # a timm-format folder, e.g. an exported student
            name_or_path = f"local-dir:{path}"
            pretrained = True
        else:
            raise ValueError(
                f"teacher_name_or_path {str(path)!r} holds a {model_type!r} model; supported folders are "
                "seed_hf MoCo / SEED runs and timm-format folders."
            )
    elif os.sep in str(name_or_path) and not str(name_or_path).startswith(("hf-hub:", "hf_hub:")):
        raise FileNotFoundError(
            f"teacher_name_or_path {str(name_or_path)!r} is not a folder with a config.json. Pass a seed_hf "
            "run folder, a timm architecture name (with teacher_checkpoint for local weights) or hf-hub:org/name."
        )

    is_hub = str(name_or_path).startswith(("hf-hub:", "hf_hub:", "local-dir:"))
    if pretrained is None:
        pretrained = checkpoint is None and is_hub
    backbone = create_backbone(
        str(name_or_path), in_chans or 3, model_args, "teacher_name_or_path", pretrained=pretrained
    )
    head = None
    if checkpoint is not None:
        state = load_state_dict_file(checkpoint)
        if any(k.startswith(("module.encoder_q.", "encoder_q.")) for k in state):
            backbone_state, head_state = _convert_moco_keys(state)
            head = _head_from_state(head_state)
        else:
            backbone_state = {
                k: v for k, v in state.items() if not k.startswith(("fc.", "head.fc.", "classifier."))
            }
        load_strict(backbone, backbone_state, f"teacher_checkpoint {str(checkpoint)!r}")
    return FrozenTeacher(
        backbone, head, in_chans or 3, f"{name_or_path}" + (f"@{checkpoint}" if checkpoint else "")
    )

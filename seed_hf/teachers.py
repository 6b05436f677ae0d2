"""Frozen teachers: anything that maps images to an embedding, loaded safely.

Supported specs (``load_teacher(name_or_path, checkpoint=...)``):

* a folder written by seed_hf (``MocoForPretraining`` run or Trainer checkpoint → query
  encoder + MLP head; ``SeedForDistillation`` → student + head);
* a timm architecture name with local weights in ``checkpoint``: a timm/safetensors state
  dict, or a MoCo v1/v2 checkpoint (``module.encoder_q.*`` keys, MLP head kept);
* a timm architecture name with a SimCLR, SwAV (``prototypes`` dropped) or official SEED
  checkpoint: keys are converted to timm names, the projection head is rebuilt;
* a transformers vision model (``hf:facebook/dinov2-base`` or a local folder): ViT / DINOv2
  (CLS or pooled), CLIP (image embeds), re-normalised to the statistics it was trained with;
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

from .backbones import create_backbone, pooled_features, pooled_width
from .convert_checkpoints import head_from_state, load_state_dict_file, load_strict, split_checkpoint

__all__ = [
    "FrozenTeacher",
    "TransformersVisionBackbone",
    "load_teacher",
    "weights_fingerprint",
]

# what the folder loaders read: the config and the weights (single or sharded, safetensors or torch)
_MODEL_FILE_PATTERNS = ("config.json", "model*.safetensors", "pytorch_model*.bin")


def weights_fingerprint(name_or_path: str, checkpoint: str | os.PathLike | None = None) -> str | None:
    """SHA-256 (16 hex digits) of a model's local bytes: the ``checkpoint`` file when given, else
    a local folder's config and weights. Distillation runs record their teacher's
    (``run_info.json``) and evaluation rows their model's, so that a resumed or finished run, or
    a recorded result, can tell that the model at the same path has changed since. None for a
    Hub id or a timm name without local weights (nothing local to hash)."""
    import hashlib

    if checkpoint is not None:
        files = [Path(checkpoint)] if os.path.isfile(checkpoint) else []  # missing: load_teacher says so
    elif os.path.isdir(name_or_path):
        files = sorted({f for pattern in _MODEL_FILE_PATTERNS for f in Path(name_or_path).glob(pattern) if f.is_file()})
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
        # normalisation the teacher expects (None: the data's); see set_data_normalization
        self.expected_mean: list[float] | None = None
        self.expected_std: list[float] | None = None
        self.register_buffer("input_scale", None, persistent=False)
        self.register_buffer("input_shift", None, persistent=False)
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

    def set_data_normalization(self, mean: list[float], std: list[float]) -> None:
        """Inputs arrive normalised with the data's ``mean``/``std``; when the teacher was trained
        with other statistics (CLIP, say), re-normalise: x' = (x·std + mean − mean_T) / std_T."""
        if self.expected_mean is None or self.expected_std is None:
            return
        mean_d, std_d = torch.tensor(mean).expand(self.in_chans), torch.tensor(std).expand(self.in_chans)
        mean_t, std_t = torch.tensor(self.expected_mean), torch.tensor(self.expected_std)
        if torch.allclose(mean_d, mean_t) and torch.allclose(std_d, std_t):
            return
        device = next(self.parameters()).device
        self.input_scale = (std_d / std_t).view(1, -1, 1, 1).to(device)
        self.input_shift = ((mean_d - mean_t) / std_t).view(1, -1, 1, 1).to(device)

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
        if self.input_scale is not None:
            pixel_values = pixel_values * self.input_scale + self.input_shift
        if self.fused_backbone is not None:
            features = self.fused_backbone(pixel_values)
        elif hasattr(self.backbone, "forward_features"):
            features = pooled_features(self.backbone, pixel_values)
        else:
            features = self.backbone(pixel_values)
        return F.normalize(self.head(features).float(), dim=1)


class TransformersVisionBackbone(nn.Module):
    """Pooled image embedding of a transformers vision model (ViT, DINOv2, CLIP, SigLIP, ...).

    ``embedding``: ``"auto"`` (CLIP-style models: projected image embeds; others: pooler output,
    else CLS), ``"cls"`` (first token of the last hidden state, after the final norm),
    ``"mean"`` (mean of the patch tokens), ``"pooler"``. Output: ``(batch, num_features)``.
    """

    EMBEDDINGS = ("auto", "cls", "mean", "pooler")

    def __init__(self, model: nn.Module, embedding: str = "auto"):
        super().__init__()
        if embedding not in self.EMBEDDINGS:
            raise ValueError(f"embedding must be one of {self.EMBEDDINGS}, got {embedding!r}.")
        self.model = model
        self.embedding = embedding
        config = model.config
        self.uses_image_features = embedding == "auto" and hasattr(model, "get_image_features")
        vision_config = getattr(config, "vision_config", config)
        if self.uses_image_features or (
            embedding == "auto"
            and hasattr(config, "projection_dim")
            and "WithProjection" in type(model).__name__
        ):
            self.num_features = int(getattr(config, "projection_dim", None) or vision_config.hidden_size)
        else:
            self.num_features = int(vision_config.hidden_size)
        self.in_chans = int(getattr(vision_config, "num_channels", 3))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        kwargs = (
            {"interpolate_pos_encoding": True}
            if "interpolate_pos_encoding" in _forward_params(self.model)
            else {}
        )
        if self.uses_image_features:
            out = self.model.get_image_features(pixel_values=pixel_values, **kwargs)
            return out if isinstance(out, torch.Tensor) else out.pooler_output
        out = self.model(pixel_values=pixel_values, **kwargs)
        if getattr(out, "image_embeds", None) is not None and self.embedding == "auto":
            return out.image_embeds
        if self.embedding == "mean":
            return out.last_hidden_state[:, 1:].mean(dim=1)
        if self.embedding in ("auto", "pooler") and getattr(out, "pooler_output", None) is not None:
            pooled = out.pooler_output
            return pooled.flatten(1) if pooled.ndim > 2 else pooled
        if self.embedding == "pooler":
            raise ValueError(
                f"{type(self.model).__name__} has no pooler output; use embedding='cls' or 'mean'."
            )
        return out.last_hidden_state[:, 0]


def _forward_params(model: nn.Module) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def _load_transformers_teacher(name_or_path: str, embedding: str) -> FrozenTeacher:
    from transformers import AutoImageProcessor, AutoModel

    model = AutoModel.from_pretrained(name_or_path)
    backbone = TransformersVisionBackbone(model, embedding)
    teacher = FrozenTeacher(backbone, None, backbone.in_chans, f"transformers:{name_or_path}")
    try:  # the normalisation the teacher was trained with, from its image processor
        processor = AutoImageProcessor.from_pretrained(name_or_path)
        teacher.expected_mean, teacher.expected_std = list(processor.image_mean), list(processor.image_std)
    except Exception:
        pass
    return teacher


def _load_seed_hf_folder(path: Path, model_type: str) -> FrozenTeacher:
    if model_type == "seed_moco":
        from .moco import load_query_encoder

        encoder, head, config = load_query_encoder(path)
        return FrozenTeacher(encoder, head, config.in_chans, f"moco_v2:{path}")
    from .modeling_seed import SeedForDistillation

    seed = SeedForDistillation.from_pretrained(path)
    return FrozenTeacher(seed.student, seed.head, seed.config.in_chans, f"seed:{path}")


def load_teacher(
    name_or_path: str,
    checkpoint: str | os.PathLike | None = None,
    in_chans: int | None = None,
    model_args: dict[str, Any] | None = None,
    pretrained: bool | None = None,
    use_head: bool = True,
    embedding: str = "auto",
    allow_random: bool = False,
) -> FrozenTeacher:
    """Builds a [`FrozenTeacher`] from a spec (see the module docstring).

    Args:
        name_or_path: a seed_hf folder, a timm name, or ``hf-hub:org/name``.
        checkpoint: weights for a timm name (safetensors, timm state dict or MoCo checkpoint).
        in_chans: input channels of a timm teacher (default 3).
        model_args: extra ``timm.create_model`` arguments.
        pretrained: download timm's weights (default: only when no ``checkpoint`` is given and
            the spec is ``hf-hub:``).
        use_head: keep the checkpoint's projection head (SEED distils after it: 128-d for MoCo-v2
            and SwAV); False distils the pooled backbone features.
        embedding: for transformers models: ``"auto"`` (CLIP: image embeds; others: pooler
            output), ``"cls"`` (CLS token after the final norm), ``"mean"`` (mean patch token),
            ``"pooler"``.
        allow_random: accept a timm architecture without weights (no ``checkpoint``, not
            ``pretrained``): a randomly initialised teacher, for tests and smoke runs only.

    Raises:
        FileNotFoundError: ``checkpoint`` or the folder (or its config.json) is missing.
        ValueError: unknown architecture, keys that do not match it, or a timm architecture
            without weights (unless ``allow_random``).
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
        else:  # a transformers vision model folder (ViT, DINOv2, CLIP, ...)
            return _load_transformers_teacher(str(path), embedding)
    elif path.is_dir() and not _is_timm_name(str(name_or_path)):
        raise FileNotFoundError(_folder_without_config(path))
    elif str(name_or_path).startswith("hf:"):  # a transformers model on the Hub: hf:facebook/dinov2-base
        return _load_transformers_teacher(str(name_or_path)[3:], embedding)
    elif os.sep in str(name_or_path) and not str(name_or_path).startswith(("hf-hub:", "hf_hub:")):
        raise FileNotFoundError(
            f"teacher_name_or_path {str(name_or_path)!r} is no folder (it does not exist). Pass a seed_hf "
            "run folder, a timm name (with teacher_checkpoint for local weights), hf-hub:org/name (timm) or "
            "hf:org/name (transformers)."
        )

    is_hub = str(name_or_path).startswith(("hf-hub:", "hf_hub:", "local-dir:"))
    if pretrained is None:
        pretrained = checkpoint is None and is_hub
    backbone = create_backbone(
        str(name_or_path), in_chans or 3, model_args, "teacher_name_or_path", pretrained=pretrained
    )
    random_weights = checkpoint is None and not pretrained
    if random_weights and not allow_random:
        # after create_backbone, so that a misspelt name gets its close-name suggestions first
        raise ValueError(
            f"teacher_name_or_path={str(name_or_path)!r} is a timm architecture without weights: SEED would "
            "distil a randomly initialised teacher. Pass its weights with --teacher_checkpoint PATH (timm, "
            "MoCo, SimCLR, SwAV or SEED checkpoint), a timm Hub model as hf-hub:org/name (e.g. "
            "hf-hub:timm/resnet50.a1_in1k), a transformers model as hf:org/name, or a seed_hf run folder. "
            "--allow_random_teacher (allow_random=True) distils a random teacher on purpose (smoke tests)."
        )
    head = None
    if checkpoint is not None:
        state = load_state_dict_file(checkpoint)
        layout, backbone_state, head_state = split_checkpoint(state)
        head = head_from_state(head_state if use_head else {})
        load_strict(
            backbone,
            backbone_state,
            f"--teacher_checkpoint {str(checkpoint)!r} ({layout} layout)",
            architecture=str(name_or_path),
        )
    description = f"{name_or_path}" + (f"@{checkpoint}" if checkpoint else "")
    return FrozenTeacher(
        backbone, head, in_chans or 3, description + (" (random weights)" if random_weights else "")
    )


def _is_timm_name(name: str) -> bool:
    import timm

    return timm.is_model(name.split(".", 1)[0])


def _folder_without_config(path: Path) -> str:
    """Why a folder without config.json is no teacher, and what to pass instead."""
    message = (
        f"teacher_name_or_path {str(path)!r} is a folder without a config.json: not a seed_hf run, "
        "timm-format or transformers model folder."
    )
    checkpoints = sorted(
        (p for p in path.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    weights = sorted(
        p.name for p in path.iterdir() if p.suffix in (".safetensors", ".pth", ".pt", ".bin", ".tar")
    )
    if checkpoints:
        message += f" It holds Trainer checkpoints: pass the last one, {str(checkpoints[-1])!r}."
    elif weights:
        message += (
            f" For its weights ({weights[0]}) pass the timm architecture as teacher_name_or_path and "
            f"--teacher_checkpoint {str(path / weights[0])!r}."
        )
    return message

"""Frozen teachers: anything that maps images to an embedding, loaded safely.

Supported specs (``load_teacher(name_or_path, checkpoint=...)``):

* a folder written by seed_hf (``MocoForPretraining`` run or Trainer checkpoint → query
  encoder + MLP head; ``SeedForDistillation`` → student + head);
* a timm architecture name with local weights in ``checkpoint``: a timm/safetensors state
  dict, or a MoCo v1/v2 checkpoint (``module.encoder_q.*`` keys, MLP head kept);
* a timm architecture name with a SimCLR, SwAV (``prototypes`` dropped) or official SEED
  checkpoint: keys are converted to timm names, the projection head is rebuilt;
* a transformers vision model (``hf:facebook/dinov2-base`` or a local folder), loaded as the class
  its config names: ViT / DINOv2 / DINOv3 (CLS or pooled), ConvNeXt / ResNet / DINOv3-ConvNeXt
  (pooled), CLIP / SigLIP (image embeds, else pooled), any feature map (average-pooled);
  re-normalised to the statistics of its ``preprocessor_config.json`` (or ``teacher_image_mean``
  / ``teacher_image_std``; without either it is refused);
* ``hf-hub:org/name`` or a bare timm name with ``pretrained=True`` (needs network).

Only safetensors or ``torch.load(weights_only=True)`` are used: no pickle execution.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from seed_hf.models.backbones import create_backbone, feature_map, pooled_features, pooled_width, token_grid
from seed_hf.teachers.checkpoint_layouts import (
    LAYOUT_METHODS,
    checkpoint_license,
    head_from_state,
    load_state_dict_file,
    load_strict,
    split_checkpoint,
)
from seed_hf.teachers.record import TeacherRecord, card_license, local_name
from seed_hf.training.progress import quiet_loading

__all__ = [
    "FrozenTeacher",
    "TransformersVisionBackbone",
    "load_teacher",
    "weights_fingerprint",
]

logger = logging.getLogger(__name__)

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


class _ForwardFeatures(nn.Module):
    """``backbone.forward_features`` as a module's ``forward``, so that torch.fx traces (and fuses)
    the feature map rather than the pooled output."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(pixel_values)


class FrozenTeacher(nn.Module):
    """A frozen embedding model: ``pixel_values (n, c, h, w) → unit vectors (n, embed_dim)``.

    Parameters never require grad, the module stays in eval mode (BatchNorm running stats)
    even when ``.train()`` is called, and ``forward`` runs under ``torch.no_grad``.
    When the data has 1 channel and the backbone expects 3, the channel is repeated.
    ``forward(pixel_values, return_patches=True)`` (:meth:`forward_with_patches`) also returns the
    patch features the local term distils, from the same forward.

    Args:
        backbone (`nn.Module`): timm backbone with ``forward_features``/``forward_head``.
        head (`nn.Module`, *optional*): projection applied to the pooled features.
        in_chans (`int`): channels the backbone expects.
        description (`str`): provenance, recorded in the student's config.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module | None,
        in_chans: int,
        description: str = "",
        record: TeacherRecord | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head if head is not None else nn.Identity()
        self.in_chans = in_chans
        self.description = description
        # provenance (load_teacher fills it; a module given directly is "module")
        self.record = record or TeacherRecord(kind="module", source=description or type(backbone).__name__)
        # resolution the inputs are resized to before the backbone (None: as they come)
        self.input_size: int | None = None
        self.fused_backbone: nn.Module | None = None
        # BN-folded forward_features (optimize_for_inference(feature_map=True)): feature map and pooled
        # embedding from one forward, for the local term
        self.fused_features: nn.Module | None = None
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

    @property
    def normalization(self) -> dict[str, list[float]] | None:
        """The normalisation the teacher expects (``{"mean", "std"}``, the shape of
        ``TeacherRecord.normalization``; None: the data's), for run records."""
        if self.expected_mean is None or self.expected_std is None:
            return None
        return {"mean": list(self.expected_mean), "std": list(self.expected_std)}

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
        self, channels_last: bool = True, probe: torch.Tensor | None = None, feature_map: bool = False
    ) -> FrozenTeacher:
        """Folds BatchNorm into the preceding convolutions (``torch.fx`` conv-bn fusion; the teacher
        is frozen, so this is exact up to rounding) and switches to channels_last. Falls back to the
        eager backbone when the model cannot be traced or the fused output differs (> 1e-3).

        ``feature_map=True`` (the local term) fuses ``forward_features`` instead of the pooled
        forward: :meth:`forward_with_patches` then pools that map, one fused forward for both."""
        from torch.fx.experimental.optimization import fuse

        if channels_last:
            self.to(memory_format=torch.channels_last)
        if (self.fused_features if feature_map else self.fused_backbone) is not None:
            return self
        try:
            # GraphModule of forward_features (feature map) or of forward() (pooled, num_classes=0)
            fused = fuse(_ForwardFeatures(self.backbone) if feature_map else self.backbone)
            probe = probe if probe is not None else torch.randn(2, self.in_chans, 64, 64)
            probe = probe.to(next(self.backbone.parameters()).device)
            reference = (
                self.backbone.forward_features(probe)
                if feature_map
                else pooled_features(self.backbone, probe)
            )
            if (fused(probe) - reference).abs().max() > 1e-3 * reference.abs().max().clamp_min(1.0):
                return self
        except Exception:  # not traceable: keep the eager backbone
            return self
        if feature_map:
            self.fused_features = fused
        else:
            self.fused_backbone = fused
        return self

    def forward_with_patches(
        self, pixel_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """``(embeds, patches, grid)`` from one forward: the unit embeddings ``(n, embed_dim)`` of
        :meth:`forward`, the backbone's patch features ``(n, rows·cols, width)`` (before any
        projection head, not normalised; row-major over the grid) and ``grid = (rows, cols)``.

        Patches: a timm CNN's last ``forward_features`` map ``(n, c, h, w)`` → ``(n, h·w, c)``; a timm
        ViT's ``forward_features`` tokens without its ``num_prefix_tokens`` (CLS, registers); a
        transformers teacher's ``last_hidden_state`` tokens after CLS and register tokens, or its 4-D
        feature map. The embedding pools that same map (``forward_head``), so it equals ``forward``'s.

        Raises:
            ValueError: the backbone has no feature map (no ``forward_features`` nor
                ``forward_with_patches``), or its tokens form no grid.
        """
        return self(pixel_values, return_patches=True)

    def _patch_features(
        self, pixel_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """``(pooled features, patches (n, p, width), grid)`` of the prepared inputs, one backbone forward."""
        backbone = self.backbone
        if hasattr(backbone, "forward_with_patches"):  # TransformersVisionBackbone
            return backbone.forward_with_patches(pixel_values)
        if not (hasattr(backbone, "forward_features") and hasattr(backbone, "forward_head")):
            raise ValueError(
                f"The teacher's backbone ({type(backbone).__name__}) exposes no patch features, which the local "
                "term (local_loss_weight > 0) distils: use a timm backbone (forward_features / forward_head) or one "
                "with forward_with_patches(pixel_values) -> (pooled, patches (n, p, width), (rows, cols))."
            )
        features = (self.fused_features or backbone.forward_features)(pixel_values)
        pooled = backbone.forward_head(features, pre_logits=True)
        grid = feature_map(backbone, features, tuple(pixel_values.shape[-2:]))
        return pooled, grid.flatten(2).transpose(1, 2), (int(grid.shape[-2]), int(grid.shape[-1]))

    @torch.no_grad()
    def forward(
        self, pixel_values: torch.Tensor, return_patches: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Unit embeddings ``(n, embed_dim)``; with ``return_patches`` the tuple of
        :meth:`forward_with_patches` (through ``__call__``, so hooks and ``compile`` see one forward)."""
        if pixel_values.shape[1] != self.in_chans:
            if pixel_values.shape[1] == 1:
                pixel_values = pixel_values.expand(-1, self.in_chans, -1, -1)
            else:
                raise ValueError(
                    f"The teacher expects {self.in_chans}-channel images, got {pixel_values.shape[1]}."
                )
        if self.input_scale is not None:
            pixel_values = pixel_values * self.input_scale + self.input_shift
        if self.input_size is not None and pixel_values.shape[-2:] != (self.input_size, self.input_size):
            pixel_values = F.interpolate(
                pixel_values, size=(self.input_size, self.input_size), mode="bilinear", antialias=True
            )
        if return_patches:
            features, patches, grid = self._patch_features(pixel_values)
            return F.normalize(self.head(features).float(), dim=1), patches, grid
        if self.fused_backbone is not None:
            features = self.fused_backbone(pixel_values)
        elif self.fused_features is not None:
            features = self.backbone.forward_head(self.fused_features(pixel_values), pre_logits=True)
        elif hasattr(self.backbone, "forward_features"):
            features = pooled_features(self.backbone, pixel_values)
        else:
            features = self.backbone(pixel_values)
        return F.normalize(self.head(features).float(), dim=1)


class TransformersVisionBackbone(nn.Module):
    """Pooled image embedding of a transformers vision model: ViT, DINOv2 (with registers), DINOv3
    (ViT and ConvNeXt), ConvNeXt, ResNet, CLIP, SigLIP, ... any model with a pooled output or a
    feature map.

    ``embedding``: ``"auto"`` (CLIP-style models: projected image embeds; others: pooler output,
    else the average of a feature map ``(n, c, h, w)``, else CLS), ``"cls"`` (first token of the
    last hidden state, after the final norm), ``"mean"`` (mean of the patch tokens, register tokens
    excluded; of the feature map for CNNs), ``"pooler"``. Output: ``(batch, num_features)``; the
    width is read from a dry forward at construction (configs name it per family: ``hidden_size``,
    ``hidden_sizes[-1]``, ``projection_dim``). ``use_pooler=False``: the checkpoint has no pooler
    weights (a ``ViTForImageClassification``), so ``"auto"`` takes the CLS token, not a random pooler.
    """

    EMBEDDINGS = ("auto", "cls", "mean", "pooler")

    def __init__(self, model: nn.Module, embedding: str = "auto", use_pooler: bool = True):
        super().__init__()
        if embedding not in self.EMBEDDINGS:
            raise ValueError(f"embedding must be one of {self.EMBEDDINGS}, got {embedding!r}.")
        if embedding == "pooler" and not use_pooler:
            raise ValueError(
                f"embedding='pooler': the checkpoint of {type(model).__name__} has no pooler weights (they would be "
                "random); use embedding='auto', 'cls' or 'mean'."
            )
        self.model = model
        self.embedding = embedding
        self.use_pooler = use_pooler
        config = model.config
        vision_config = getattr(config, "vision_config", None) or config
        self.uses_image_features = embedding == "auto" and hasattr(model, "get_image_features")
        self.in_chans = int(getattr(vision_config, "num_channels", 3))
        # CLS, then the register tokens (DINOv2 with registers, DINOv3), then the patches
        self.prefix_tokens = 1 + int(getattr(vision_config, "num_register_tokens", 0) or 0)
        self.forward_kwargs = (
            {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in _forward_params(model) else {}
        )
        # ViTMAE masks mask_ratio (75 %) of the patches at random in every forward, eval mode included:
        # a teacher sees every patch, in order (mask_ratio 0, and a noise that sorts to the identity)
        self.unmasked_patch_size = None
        if getattr(vision_config, "mask_ratio", None) is not None and "noise" in _forward_params(model):
            if vision_config.mask_ratio > 0:
                logger.info(
                    f"{type(model).__name__}: mask_ratio {vision_config.mask_ratio} set to 0, the teacher sees every "
                    "patch (MAE masks patches at random in every forward otherwise)."
                )
            vision_config.mask_ratio = 0.0
            patch = vision_config.patch_size
            self.unmasked_patch_size = int(patch[0] if isinstance(patch, (list, tuple)) else patch)
        self.num_features = self._probe_width(vision_config)

    @torch.no_grad()
    def _probe_width(self, vision_config: Any) -> int:
        """The embedding width, from one forward of a small dummy batch."""
        size = getattr(vision_config, "image_size", None)
        size = int(size[0] if isinstance(size, (list, tuple)) else size) if size else None
        if size is None or self.forward_kwargs:  # any size works: keep the probe cheap
            size = min(size or 64, 64)
        parameter = next(self.model.parameters())
        probe = torch.zeros(1, self.in_chans, size, size, dtype=parameter.dtype, device=parameter.device)
        was_training = self.model.training
        self.model.eval()
        try:
            out = self(probe)
        finally:
            self.model.train(was_training)
        if out.ndim != 2:
            raise ValueError(
                f"{type(self.model).__name__} gives no pooled embedding (output {tuple(out.shape)}); "
                f"use another embedding than {self.embedding!r}."
            )
        return int(out.shape[1])

    def _model_kwargs(self, pixel_values: torch.Tensor) -> dict[str, Any]:
        """The forward's keyword arguments: ``interpolate_pos_encoding`` where taken, and for ViTMAE a
        ``noise`` whose argsort is the identity (no patch dropped or shuffled: deterministic)."""
        if self.unmasked_patch_size is None:
            return self.forward_kwargs
        n, _, height, width = pixel_values.shape
        tokens = (height // self.unmasked_patch_size) * (width // self.unmasked_patch_size)
        noise = torch.arange(tokens, device=pixel_values.device, dtype=torch.float32).expand(n, tokens)
        return {**self.forward_kwargs, "noise": noise}

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.uses_image_features:
            out = self.model.get_image_features(pixel_values=pixel_values, **self.forward_kwargs)
            return out if isinstance(out, torch.Tensor) else out.pooler_output
        return self._pool(self.model(pixel_values=pixel_values, **self._model_kwargs(pixel_values)))

    def forward_with_patches(
        self, pixel_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """``(pooled (n, num_features), patches (n, rows·cols, width), (rows, cols))`` from one forward:
        the ``last_hidden_state`` tokens after the prefix (CLS, then register tokens: ViT, DINOv2/v3;
        DINOv3-ConvNeXt's pooled token), or a CNN's 4-D ``last_hidden_state`` map (ResNet, ConvNeXt)."""
        if self.uses_image_features:
            raise ValueError(
                f"{type(self.model).__name__}.get_image_features gives no patch tokens for the local term: load "
                "its vision tower (e.g. CLIPVisionModelWithProjection) as the teacher."
            )
        out = self.model(pixel_values=pixel_values, **self._model_kwargs(pixel_values))
        hidden = getattr(out, "last_hidden_state", None)
        if hidden is None or hidden.ndim not in (3, 4):
            raise ValueError(f"{type(self.model).__name__} gives no last_hidden_state tokens or feature map.")
        if hidden.ndim == 4:  # (n, c, h, w)
            grid = (int(hidden.shape[-2]), int(hidden.shape[-1]))
            patches = hidden.flatten(2).transpose(1, 2)
        else:
            patches = hidden[:, self.prefix_tokens :]
            grid = token_grid(patches.shape[1], tuple(pixel_values.shape[-2:]))
        return self._pool(out), patches, grid

    def _pool(self, out: Any) -> torch.Tensor:
        """The embedding of a model output, as ``embedding`` says."""
        if getattr(out, "image_embeds", None) is not None and self.embedding == "auto":
            return out.image_embeds
        hidden = getattr(out, "last_hidden_state", None)
        if self.embedding == "mean":
            return (
                hidden.mean(dim=(2, 3)) if hidden.ndim == 4 else hidden[:, self.prefix_tokens :].mean(dim=1)
            )
        if (
            self.use_pooler
            and self.embedding in ("auto", "pooler")
            and getattr(out, "pooler_output", None) is not None
        ):
            return out.pooler_output.flatten(1)  # ResNet pools to (n, c, 1, 1)
        if self.embedding == "pooler":
            raise ValueError(
                f"{type(self.model).__name__} has no pooler output; use embedding='cls' or 'mean'."
            )
        if hidden is not None and hidden.ndim == 4:  # only a feature map (n, c, h, w): its average
            if self.embedding == "cls":
                raise ValueError(
                    f"{type(self.model).__name__} gives a feature map, no CLS token; use embedding='auto' or 'mean'."
                )
            return hidden.mean(dim=(2, 3))
        return hidden[:, 0]


def _forward_params(model: nn.Module) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def _vision_model_class(name_or_path: str) -> type:
    """The class the folder's config names (``architectures``), when it is an embedding model
    (``...Model`` / ``...WithProjection`` taking ``pixel_values``): ``AutoModel`` maps a
    ``CLIPVisionModelWithProjection`` folder to ``CLIPVisionModel`` and drops the projection.
    Task heads (``...ForImageClassification``) and unknown names fall back to ``AutoModel``, which
    loads their base model."""
    import inspect

    import transformers
    from transformers import AutoConfig, AutoModel, PreTrainedModel

    for name in getattr(AutoConfig.from_pretrained(name_or_path), "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if (
            isinstance(cls, type)
            and issubclass(cls, PreTrainedModel)
            and name.endswith(("Model", "WithProjection"))
            and "pixel_values" in inspect.signature(cls.forward).parameters
        ):
            return cls
    return AutoModel


def _processor_normalization(name_or_path: str) -> tuple[list[float], list[float]]:
    """The ``image_mean``/``image_std`` a transformers teacher was trained with, from its image
    processor; refused when missing (the teacher would silently see the student's normalisation)."""
    from transformers import AutoImageProcessor

    missing = (
        f"teacher_name_or_path {name_or_path!r} has no preprocessor_config.json: the normalisation the "
        "teacher was trained with is unknown, and it would silently see the student's. Add the model's "
        "preprocessor_config.json, or pass teacher_image_mean and teacher_image_std (e.g. ImageNet's "
        "[0.485, 0.456, 0.406] and [0.229, 0.224, 0.225])."
    )
    if os.path.isdir(name_or_path) and not os.path.isfile(
        os.path.join(name_or_path, "preprocessor_config.json")
    ):
        raise FileNotFoundError(missing)
    try:
        processor = AutoImageProcessor.from_pretrained(name_or_path)
    except OSError as error:
        raise FileNotFoundError(missing) from error
    mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    if mean is None or std is None:
        raise ValueError(
            f"The image processor of teacher_name_or_path {name_or_path!r} has no image_mean/image_std; "
            "pass teacher_image_mean and teacher_image_std."
        )
    return [float(m) for m in mean], [float(s) for s in std]


def _load_transformers_teacher(
    name_or_path: str, embedding: str, read_normalization: bool = True
) -> FrozenTeacher:
    model, loading = _vision_model_class(name_or_path).from_pretrained(name_or_path, output_loading_info=True)
    # a classification checkpoint loaded as its base model has no trained pooler: never distil a random one
    untrained_pooler = any(key.split(".")[0] == "pooler" for key in loading.get("missing_keys", ()))
    backbone = TransformersVisionBackbone(model, embedding, use_pooler=not untrained_pooler)
    local = os.path.isdir(name_or_path)
    vision_config = getattr(model.config, "vision_config", None) or model.config
    size = getattr(vision_config, "image_size", None)
    license, license_source = (
        (card_license(name_or_path), "model card") if local else _hub_card_license(name_or_path)
    )
    record = TeacherRecord(
        kind="transformers",
        source=local_name(name_or_path) if local else name_or_path,
        hub_id=None if local else name_or_path,
        embedding=f"{type(model).__name__}: {embedding}",
        image_size=int(size[0] if isinstance(size, (list, tuple)) else size) if size else None,
        license=license,
        license_source=license_source if license else None,
    )
    teacher = FrozenTeacher(backbone, None, backbone.in_chans, f"transformers:{name_or_path}", record)
    if read_normalization:  # else load_teacher applies the statistics it was given
        teacher.expected_mean, teacher.expected_std = _processor_normalization(name_or_path)
    return teacher


def _load_seed_hf_folder(path: Path, model_type: str) -> FrozenTeacher:
    license = card_license(path)
    if model_type == "seed_moco":
        from seed_hf.models.modeling_moco import load_query_encoder

        encoder, head, config = load_query_encoder(path)
        method, backbone, in_chans = "moco_v2", encoder, config.in_chans
    else:
        from seed_hf.models.modeling_seed import SeedForDistillation

        seed = SeedForDistillation.from_pretrained(path)
        method, backbone, head, config, in_chans = (
            "seed",
            seed.student,
            seed.head,
            seed.config,
            seed.config.in_chans,
        )
        license = license or (seed.config.teacher or {}).get("license")  # a student inherits its teacher's
    record = TeacherRecord(
        kind="seed_hf",
        source=local_name(path),
        ssl_method=method,
        embedding="head",
        image_size=config.image_size,
        license=license,
        license_source="model card" if license else None,
    )
    return FrozenTeacher(backbone, head, in_chans, f"{method}:{path}", record)


def _hub_card_license(repo_id: str) -> tuple[str | None, str | None]:
    """The license of a Hub repo's model card (needs the network, or the HF cache)."""
    try:
        from huggingface_hub import ModelCard

        value = ModelCard.load(repo_id).data.to_dict().get("license")
    except Exception as error:  # offline, no card: the license stays unknown (the card says so)
        logger.info(f"the license of {repo_id!r} could not be read from its model card: {error}")
        return None, None
    return (str(value).lower(), "Hub model card") if value else (None, None)


def load_teacher(
    name_or_path: str,
    checkpoint: str | os.PathLike | None = None,
    in_chans: int | None = None,
    model_args: dict[str, Any] | None = None,
    pretrained: bool | None = None,
    use_head: bool = True,
    embedding: str = "auto",
    allow_random: bool = False,
    teacher_image_mean: list[float] | None = None,
    teacher_image_std: list[float] | None = None,
    teacher_image_size: int | None = None,
    sha256: str | None = None,
) -> FrozenTeacher:
    """Builds a [`FrozenTeacher`] from a spec (see the module docstring), with its provenance in
    ``teacher.record`` (:class:`~seed_hf.teachers.record.TeacherRecord`).

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
        teacher_image_mean, teacher_image_std: the normalisation the teacher was trained with
            (one value or one per channel); inputs are re-normalised to it. Default: a transformers
            teacher's image processor (required then), the data's for other teachers.
        teacher_image_size: resize the teacher's inputs to this resolution (e.g. the one it was
            trained at, ``teacher.record.image_size``) when the student trains at another; default:
            the teacher sees the student's views as they are.
        sha256: the weights' fingerprint when the caller has just computed it
            (`weights_fingerprint(name_or_path, checkpoint)`, e.g. to refuse a run folder of
            another teacher before loading): recorded as is instead of reading the weights twice.

    Raises:
        FileNotFoundError: ``checkpoint`` or the folder (or its config.json) is missing, or a
            transformers teacher has no preprocessor_config.json and no ``teacher_image_mean``.
        ValueError: unknown architecture, keys that do not match it, a pickled model as
            ``checkpoint``, or a timm architecture without weights (unless ``allow_random``).
    """
    if (teacher_image_mean is None) != (teacher_image_std is None):
        raise ValueError(
            "Pass both teacher_image_mean and teacher_image_std (the teacher's normalisation), or neither; "
            f"got teacher_image_mean={teacher_image_mean}, teacher_image_std={teacher_image_std}."
        )
    with quiet_loading():  # no per-call "Loading weights" bars from transformers (seed_hf.training.progress)
        teacher = _load_teacher(
            name_or_path,
            checkpoint,
            in_chans,
            model_args,
            pretrained,
            use_head,
            embedding,
            allow_random,
            explicit_normalization=teacher_image_mean is not None,
        )
    if teacher_image_mean is not None:
        teacher.expected_mean, teacher.expected_std = _explicit_normalization(
            teacher_image_mean, teacher_image_std, teacher.in_chans
        )
    if teacher_image_size is not None:
        if not (isinstance(teacher_image_size, int) and teacher_image_size > 0):
            raise ValueError(f"teacher_image_size must be a positive integer, got {teacher_image_size!r}.")
        teacher.input_size = teacher_image_size
    record = teacher.record
    record.sha256 = sha256 if sha256 is not None else weights_fingerprint(str(name_or_path), checkpoint)
    record.embed_dim = teacher.embed_dim
    record.normalization = teacher.normalization
    record.resized_to = teacher.input_size
    return teacher


def _explicit_normalization(
    mean: list[float], std: list[float], in_chans: int
) -> tuple[list[float], list[float]]:
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    for name, values in (("teacher_image_mean", mean), ("teacher_image_std", std)):
        if len(values) not in (1, in_chans):
            raise ValueError(f"{name} needs 1 or {in_chans} values (the teacher's channels), got {values}.")
    if any(s <= 0 for s in std):
        raise ValueError(f"teacher_image_std must be > 0, got {std}.")
    return mean * (in_chans // len(mean)), std * (in_chans // len(std))


def _load_teacher(
    name_or_path: str,
    checkpoint: str | os.PathLike | None,
    in_chans: int | None,
    model_args: dict[str, Any] | None,
    pretrained: bool | None,
    use_head: bool,
    embedding: str,
    allow_random: bool,
    explicit_normalization: bool,
) -> FrozenTeacher:
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
            return _load_transformers_teacher(str(path), embedding, not explicit_normalization)
    elif path.is_dir() and not _is_timm_name(str(name_or_path)):
        raise FileNotFoundError(_folder_without_config(path))
    elif str(name_or_path).startswith("hf:"):  # a transformers model on the Hub: hf:facebook/dinov2-base
        return _load_transformers_teacher(str(name_or_path)[3:], embedding, not explicit_normalization)
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
    head, layout = None, None
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
    spec = str(name_or_path)
    local = spec.startswith("local-dir:")
    hub_id = spec.split(":", 1)[1] if spec.startswith(("hf-hub:", "hf_hub:")) else None
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    # the pretrained_cfg describes the weights only when they are its own (Hub or exported folder)
    own_cfg = checkpoint is None and pretrained
    license, license_source = None, None
    if checkpoint is not None and (layout_license := checkpoint_license(layout)):
        license, license_source = layout_license, f"published {layout} checkpoints"
    elif own_cfg and cfg.get("license"):
        license, license_source = str(cfg["license"]).lower(), "pretrained_cfg"
    elif local and (card := card_license(spec.removeprefix("local-dir:"))):
        license, license_source = card, "model card"
    record = TeacherRecord(
        kind="timm",
        source=local_name(spec) if local else (hub_id or spec),
        hub_id=hub_id,
        checkpoint=Path(checkpoint).name if checkpoint else None,
        layout=layout,
        ssl_method=LAYOUT_METHODS.get(layout),
        embedding="head" if head is not None else "pooled",
        image_size=int(cfg["input_size"][-1]) if own_cfg and cfg.get("input_size") else None,
        license=license,
        license_source=license_source,
        random_weights=random_weights,
    )
    return FrozenTeacher(
        backbone, head, in_chans or 3, description + (" (random weights)" if random_weights else ""), record
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

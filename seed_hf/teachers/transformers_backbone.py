"""Transformers vision models as teacher backbones: :class:`TransformersVisionBackbone` turns a
ViT, DINOv2/v3, ConvNeXt, ResNet, CLIP, SigLIP, ... into a pooled image embedding (and its patch
tokens, for the local term), so that :class:`~seed_hf.teachers.frozen.FrozenTeacher` serves it as it
serves a timm backbone. Also what loading one needs from its folder or Hub repo: the class its config
names (:func:`vision_model_class`) and the normalisation it was trained with
(:func:`processor_normalization`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from seed_hf.models.backbones import token_grid

__all__ = ["TransformersVisionBackbone", "processor_normalization", "vision_model_class"]

logger = logging.getLogger(__name__)


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
            raise ValueError(f"--teacher_embedding must be one of {self.EMBEDDINGS}, got {embedding!r}.")
        if embedding == "pooler" and not use_pooler:
            raise ValueError(
                f"--teacher_embedding pooler: the checkpoint of {type(model).__name__} has no pooler weights (they "
                "would be random); use auto, cls or mean (`embedding`)."
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
                f"{type(self.model).__name__} has no pooler output; use --teacher_embedding cls or mean (`embedding`)."
            )
        if hidden is not None and hidden.ndim == 4:  # only a feature map (n, c, h, w): its average
            if self.embedding == "cls":
                raise ValueError(
                    f"{type(self.model).__name__} gives a feature map, no CLS token; use --teacher_embedding auto or mean "
                    "(`embedding`)."
                )
            return hidden.mean(dim=(2, 3))
        return hidden[:, 0]


def _forward_params(model: nn.Module) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def vision_model_class(name_or_path: str) -> type:
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


def processor_normalization(name_or_path: str) -> tuple[list[float], list[float]]:
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

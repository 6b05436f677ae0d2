"""timm backbones and projection heads shared by the student, MoCo and the teachers."""

from __future__ import annotations

from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from seed_hf.models.embedding_queue import EmbeddingQueue

__all__ = [
    "ModelArgumentsError",
    "create_backbone",
    "fused_copy",
    "state_shapes",
    "check_input_size",
    "input_size_hint",
    "close_model_names",
    "pooled_width",
    "pooled_features",
    "feature_map",
    "resize_feature_map",
    "token_grid",
    "ProjectionHead",
    "init_module_weights",
]


class ModelArgumentsError(ValueError, TypeError):
    """Model arguments a timm architecture does not take: a refusal naming them (``ValueError``),
    still the ``TypeError`` timm raised for callers probing for an argument."""


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
    try:
        return timm.create_model(
            architecture, pretrained=pretrained, num_classes=0, in_chans=in_chans, **model_args
        )
    except TypeError as error:  # an argument the architecture does not take
        if "argument" not in str(error) or not model_args:
            raise
        raise ModelArgumentsError(
            f"{argument_name}={architecture!r} does not take the model arguments {model_args} ({error}): "
            "fix them (student_model_args / model_args / teacher_model_args, as the flag that gave them)."
        ) from error


def state_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of ``module``'s state dict: two modules of one structure agree."""
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}


def fused_copy(backbone: nn.Module) -> nn.Module | None:
    """A copy of ``backbone`` in its fused inference form (timm's ``reparameterize_model``: the
    multi-branch blocks of RepVGG / MobileOne / FastViT, conv + norm pairs folded into single
    convolutions), in eval mode; None when that changes nothing (not a reparameterizable net)."""
    from timm.utils.model import reparameterize_model

    fused = reparameterize_model(backbone).eval()
    return None if state_shapes(fused) == state_shapes(backbone) else fused


def check_input_size(
    backbone: nn.Module,
    architecture: str,
    image_size: int,
    small_crop_size: int | None = None,
    argument_name: str = "student_architecture",
    model_args_name: str = "student_model_args",
) -> None:
    """Refuses a backbone built for one input size (a timm ViT / Swin ``patch_embed`` with
    ``strict_img_size``) when the data has another: timm would only fail at the first step, deep in
    the patch embedding. Models with dynamic sizes (``dynamic_img_size=True``) and CNNs pass.

    Raises:
        ValueError: naming ``image_size`` (or ``small_crop_size``) and the ``model_args_name``
            that builds the model for it.
    """
    import json

    patch_embed = getattr(backbone, "patch_embed", None)
    if not getattr(patch_embed, "strict_img_size", False) or getattr(patch_embed, "img_size", None) is None:
        return
    height, width = (int(v) for v in patch_embed.img_size)
    if (height, width) != (image_size, image_size):
        patch = int(patch_embed.patch_size[0])
        # at least 4×4 patches: 32 px with 16-px patches would leave 2×2 tokens
        while patch > 1 and (image_size % patch or image_size // patch < 4):
            patch -= 1
        fix = {
            "img_size": image_size,
            **({"patch_size": patch} if patch != patch_embed.patch_size[0] else {}),
        }
        fix_json = json.dumps(fix)
        raise ValueError(
            f"{argument_name}={architecture!r} takes {height}×{width} images only (timm img_size), but "
            f"image_size={image_size}: it would fail at the first step. Build it for your size with "
            f"{model_args_name}={fix_json} (scripts: --{model_args_name} '{fix_json}'), or for any size "
            f'with {model_args_name}={{"dynamic_img_size": true}}.'
        )
    if small_crop_size is not None and small_crop_size != image_size:
        raise ValueError(
            f"{argument_name}={architecture!r} takes {height}×{width} images only (timm img_size), but the "
            f"small crops are small_crop_size={small_crop_size}: pass "
            f'{model_args_name}={{"dynamic_img_size": true}} (scripts: --{model_args_name} '
            """'{"dynamic_img_size": true}') to accept both sizes."""
        )


def input_size_hint(model: nn.Module, image_size: int) -> str:
    """A sentence telling how to build ``model``'s timm backbone for ``image_size`` when its class
    takes an ``img_size`` (LeViT, EfficientViT, ... build position tables for one input size and fail
    on another deep in the forward); empty otherwise."""
    import inspect
    import json

    backbone = next((m for m in model.modules() if hasattr(m, "pretrained_cfg")), None)
    if backbone is None or not any(
        "img_size" in inspect.signature(cls.__init__).parameters
        for cls in type(backbone).__mro__
        if issubclass(cls, nn.Module) and cls is not nn.Module
    ):
        return ""
    name = (
        "student_model_args"
        if hasattr(getattr(model, "config", None), "student_model_args")
        else "model_args"
    )
    fix = json.dumps({"img_size": image_size})
    return (
        f". {type(backbone).__name__} is built for one input size: build it for yours with {name}={fix} "
        f"(scripts: --{name} '{fix}')"
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


def token_grid(num_tokens: int, image_size: tuple[int, int]) -> tuple[int, int]:
    """The (rows, cols) grid of ``num_tokens`` patch tokens of an ``image_size`` (h, w) input: the
    factorisation with the image's aspect ratio (one stride for both axes, as ViT patches)."""
    height, width = image_size
    rows = max(1, round((num_tokens * height / width) ** 0.5))
    cols = num_tokens // rows
    if rows * cols != num_tokens:
        raise ValueError(f"{num_tokens} patch tokens do not form a grid for a {height}×{width} input.")
    return rows, cols


def feature_map(backbone: nn.Module, features: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """The spatial feature map ``(batch, channels, rows, cols)`` of ``backbone.forward_features``'s
    output ``features`` for an input of ``image_size`` (h, w): a CNN's last map as it is (NHWC
    models, timm ``output_fmt="NHWC"`` such as Swin, are permuted), a ViT's tokens without its
    ``num_prefix_tokens`` (CLS, register / distillation tokens) laid back on their patch grid."""
    if features.ndim == 4:
        if getattr(backbone, "output_fmt", "NCHW") == "NHWC":
            return features.permute(0, 3, 1, 2)
        return features
    if features.ndim != 3:
        raise ValueError(
            f"{type(backbone).__name__}.forward_features gives {tuple(features.shape)}: neither a feature map "
            "(batch, channels, h, w) nor tokens (batch, tokens, width), so it has no patch features."
        )
    patches = features[:, int(getattr(backbone, "num_prefix_tokens", 0) or 0) :]
    rows, cols = token_grid(patches.shape[1], image_size)
    return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], rows, cols)


def resize_feature_map(features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(batch, channels, h, w)`` → ``(batch, channels, *size)``: the student's map on the teacher's
    patch grid. Shrinking in both axes averages the cells each target patch covers (adaptive
    average pooling: 4×4 → 2×2 is the mean of each 2×2 block; bilinear would sample only the middle
    of each block at 8×8 → 2×2); otherwise bilinear interpolation (``align_corners=False``, as
    LightlyTrain distillationv3 resizes always). Unchanged when the grids match."""
    size = (int(size[0]), int(size[1]))
    if tuple(features.shape[-2:]) == size:
        return features
    if features.shape[-2] >= size[0] and features.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(features, size)
    return F.interpolate(features, size=size, mode="bilinear", align_corners=False)


class ProjectionHead(nn.Sequential):
    """MLP head ``Linear(d, h) → ReLU → Linear(h, dim)`` of MoCo-v2 and SEED.

    Shape: ``(batch, in_dim)`` → ``(batch, out_dim)``. Indices 0 and 2 hold the linear layers,
    the same layout as MoCo-v2's ``fc`` (``fc.0``, ``fc.2``), which eases checkpoint conversion.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


@torch.no_grad()
def init_module_weights(module: nn.Module) -> None:
    """Initialises the modules seed_hf owns: projection heads (PyTorch's default Linear init) and
    queues (random unit vectors).

    ``PreTrainedModel.post_init`` calls this on every submodule; timm backbones are skipped on
    purpose, so they keep timm's own init (zero-init of the last BN per residual block, ...).

    timm's non-persistent buffers (RoPE tables, relative-position and attention-bias indices of
    Swin, LeViT, EfficientFormerV2, TinyViT, ...) are rebuilt too: they are in no checkpoint, and
    ``from_pretrained`` creates the model on the meta device, so they would otherwise hold
    uninitialised memory (NaN features, out-of-range indices), as transformers' ``TimmWrapperModel``
    also handles.
    """
    if isinstance(module, EmbeddingQueue):
        module.reset()
    elif hasattr(module, "init_non_persistent_buffers"):
        module.init_non_persistent_buffers()
    elif getattr(module, "feat_shape", None) is not None and hasattr(module, "_get_pos_embed_values"):
        module.pos_embed = module._get_pos_embed_values(
            feat_shape=module.feat_shape,
            device=module.pos_embed.device if module.pos_embed is not None else None,
            dtype=module.pos_embed.dtype if module.pos_embed is not None else torch.float32,
        )
    elif isinstance(module, ProjectionHead):
        for layer in module:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()

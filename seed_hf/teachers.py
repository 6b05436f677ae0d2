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

__all__ = [
    "FrozenTeacher",
    "TransformersVisionBackbone",
    "load_teacher",
    "load_state_dict_file",
    "split_checkpoint",
    "detect_checkpoint_layout",
    "head_from_state",
]


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


# Published SSL checkpoint layouts: (name, key prefix of the encoder, prefix of its projection
# head inside the encoder keys, keys to drop). torchvision ResNet names equal timm's.
CHECKPOINT_LAYOUTS = (
    ("moco", ("module.encoder_q.", "encoder_q."), ("fc.",), ()),
    ("seed", ("module.student.", "student."), ("fc.",), ()),
    ("swav", ("module.", ""), ("projection_head.",), ("prototypes.",)),
    (
        "simclr",
        ("module.backbone.", "backbone.", "module.encoder.", "encoder.", "module.", ""),
        ("projection_head.", "projector.", "fc.", "head."),
        (),
    ),
)


WRAPPER_PREFIXES = ("backbone.", "encoder.")
CLASSIFIER_PREFIXES = ("fc.", "head.fc.", "classifier.")


def _is_mlp_head(head_state: dict[str, torch.Tensor]) -> bool:
    """True for an ``nn.Sequential`` head with hidden layers (≥ 2 Linear weights), as SimCLR and
    MoCo-v2 projection heads have; a single Linear (an ImageNet ``fc``) is a classifier."""
    linears = [
        k
        for k, v in head_state.items()
        if k.split(".", 1)[0].isdigit() and k.endswith("weight") and v.ndim == 2
    ]
    return len(linears) >= 2


def _wrapped_head(state: dict[str, torch.Tensor], head_prefix: str) -> dict[str, torch.Tensor]:
    """The ``fc.``/``head.`` keys under a ``backbone.``/``encoder.`` wrapper prefix."""
    out = {}
    for key, value in state.items():
        name = key.removeprefix("module.")
        for wrapper in WRAPPER_PREFIXES:
            if name.startswith(wrapper + head_prefix):
                out[name[len(wrapper + head_prefix) :]] = value
    return out


def detect_checkpoint_layout(state: dict[str, torch.Tensor]) -> str:
    """Names the SSL checkpoint layout of a state dict: moco, seed, swav, simclr or plain.

    Keys under ``backbone.``/``encoder.`` are SimCLR only with a projection head: a
    ``projection_head.``/``projector.`` module, or an ``fc``/``head`` with hidden layers. A plain
    timm / torchvision state dict saved under such a prefix keeps its classifier (a single Linear,
    e.g. ImageNet's 1000-way ``fc``), which is not a projection head: that is ``plain``.
    """
    keys = list(state)
    if any(k.startswith(("module.encoder_q.", "encoder_q.")) for k in keys):
        return "moco"
    if any(k.startswith(("module.student.", "student.")) for k in keys):
        return "seed"
    if any(k.split("module.", 1)[-1].startswith("prototypes.") for k in keys):
        return "swav"
    if any(k.split("module.", 1)[-1].startswith(("projection_head.", "projector.")) for k in keys):
        return "simclr"
    if any(k.split("module.", 1)[-1].startswith(WRAPPER_PREFIXES) for k in keys):
        if any(_is_mlp_head(_wrapped_head(state, p)) for p in ("fc.", "head.")):
            return "simclr"
    return "plain"


def _strip_wrapper(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Removes ``module.`` and a ``backbone.``/``encoder.`` prefix shared by every key."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    for wrapper in WRAPPER_PREFIXES:
        if state and all(k.startswith(wrapper) for k in state):
            return {k[len(wrapper) :]: v for k, v in state.items()}
    return state


def _drop_classifier(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drops the classifier of a timm / torchvision state dict (``fc``, ``classifier``, ``head.fc``,
    a ViT's ``head``): the backbone is built with ``num_classes=0``."""
    return {
        k: v
        for k, v in state.items()
        if not k.startswith(CLASSIFIER_PREFIXES) and k not in ("head.weight", "head.bias")
    }


def split_checkpoint(
    state: dict[str, torch.Tensor],
) -> tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Splits a MoCo v1/v2, SimCLR, SwAV or official-SEED state dict into (layout, backbone
    state with timm names, projection-head state). Plain timm / torchvision state dicts keep
    their keys, minus the classifier (``fc``/``classifier``/``head.fc``)."""
    layout = detect_checkpoint_layout(state)
    if layout == "plain":
        return layout, _drop_classifier(_strip_wrapper(state)), {}
    _, prefixes, head_prefixes, dropped = next(entry for entry in CHECKPOINT_LAYOUTS if entry[0] == layout)
    backbone: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[str, torch.Tensor]] = {}  # head candidates by prefix
    for key, value in state.items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is None:  # e.g. MoCo's encoder_k / queue, SEED's teacher
            continue
        name = key[len(prefix) :]
        if (
            name.startswith(dropped)
            or name in ("queue", "queue_ptr")
            or name.startswith(("encoder_k.", "teacher."))
        ):
            continue
        if layout == "simclr" and name.startswith(WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        head_prefix = next((p for p in head_prefixes if name.startswith(p)), None)
        if head_prefix is not None:
            parts.setdefault(head_prefix, {})[name[len(head_prefix) :]] = value
        else:
            backbone[name] = value
    head: dict[str, torch.Tensor] = {}
    for head_prefix in head_prefixes:  # in order of preference
        part = parts.get(head_prefix)
        if not part:
            continue
        explicit = layout != "simclr" or head_prefix in ("projection_head.", "projector.")
        if not head and (explicit or _is_mlp_head(part)):
            head = part
        else:  # e.g. a classifier next to the projection head: not part of the embedding
            backbone.update({f"{head_prefix}{k}": v for k, v in part.items()})
    return layout, _drop_classifier(backbone), head


def head_from_state(head_state: dict[str, torch.Tensor]) -> nn.Module | None:
    """Rebuilds a projection head from its state dict: ``nn.Sequential`` indices whose weight is
    2-D are Linear layers, those with running statistics BatchNorm1d, and the gaps ReLUs
    (MoCo-v2 ``0,2``; SwAV ``0 Linear, 1 BN, 3 Linear``). A bare ``weight``/``bias`` is one Linear."""
    if not head_state:
        return None
    if "weight" in head_state:  # MoCo v1 / a single linear projection
        out_dim, in_dim = head_state["weight"].shape
        head: nn.Module = nn.Linear(in_dim, out_dim, bias="bias" in head_state)
    else:
        indices = sorted({int(k.split(".", 1)[0]) for k in head_state if k.split(".", 1)[0].isdigit()})
        if not indices or len(indices) != len({k.split(".", 1)[0] for k in head_state}):
            raise ValueError(f"Unrecognised projection-head keys {sorted(head_state)[:10]}.")
        layers: list[nn.Module] = []
        for i in range(indices[-1] + 1):
            weight = head_state.get(f"{i}.weight")
            if f"{i}.running_mean" in head_state:
                layers.append(nn.BatchNorm1d(head_state[f"{i}.running_mean"].shape[0]))
            elif weight is not None and weight.ndim == 2:
                layers.append(nn.Linear(weight.shape[1], weight.shape[0], bias=f"{i}.bias" in head_state))
            else:
                layers.append(nn.ReLU(inplace=True))
        head = nn.Sequential(*layers)
    load_strict(head, head_state, "the projection head")
    return head


def _preview(items: list[str], limit: int = 5) -> str:
    return f"{items[:limit]}" + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str, architecture: str = "") -> None:
    """``load_state_dict(strict=True)``, with one line listing missing, unexpected and mis-shaped keys
    instead of torch's multi-line size-mismatch dump."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k}: {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or misshaped:
        target = f"the architecture {architecture!r}" if architecture else "the architecture"
        problems = [
            f"{name} keys {_preview(keys)}"
            for name, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
            if keys
        ]
        message = f"{what} does not match {target}: {', '.join(problems)}"
        message += " (shapes: checkpoint vs model)." if misshaped else "."
        if architecture:
            message += " Weights of another architecture? Name the one they were trained with in teacher_name_or_path."
        raise ValueError(message)
    module.load_state_dict(state)


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

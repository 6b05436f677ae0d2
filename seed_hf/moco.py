"""MoCo-v2 baseline (He et al. 2020; Chen et al. 2020, arXiv:2003.04297).

It is how a user pretrains a teacher, and the paper's "student trained by SSL alone"
baseline. It reuses the student backbone, the projection head and the queue of SEED.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from .backbones import (
    ProjectionHead,
    check_input_size,
    create_backbone,
    init_module_weights,
    pooled_features,
    pooled_width,
)
from .configuration_seed import default_normalization
from .distributed import all_gather_no_grad
from .losses import check_temperature
from .progress import QuietHubMixin
from .queue import EmbeddingQueue

__all__ = ["MocoConfig", "MocoOutput", "MocoForPretraining", "save_query_encoder", "load_query_encoder"]


class MocoConfig(PreTrainedConfig):
    r"""
    Configuration of [`MocoForPretraining`] (MoCo-v2 defaults).

    Args:
        architecture (`str`, *optional*, defaults to `"resnet50"`):
            timm name of the encoder.
        model_args (`dict`, *optional*, defaults to `{}`):
            Extra keyword arguments for `timm.create_model`.
        in_chans (`int`, *optional*, defaults to 3):
            Number of input channels.
        image_size (`int`, *optional*, defaults to 224):
            Training resolution (square).
        projection_dim (`int`, *optional*, defaults to 128):
            Output width of the MLP head (the teacher embedding width for SEED).
        head_hidden_dim (`int`, *optional*, defaults to `None`):
            Hidden width of the MLP head; `None` uses the encoder's pooled width.
        queue_size (`int`, *optional*, defaults to 65536):
            Number of negative keys K.
        contrastive_temperature (`float`, *optional*, defaults to 0.2):
            Softmax temperature τ of the InfoNCE loss.
        momentum (`float`, *optional*, defaults to 0.999):
            Momentum m of the key encoder update θ_k ← m θ_k + (1 − m) θ_q.
        key_bn_splits (`int`, *optional*, defaults to 1):
            Runs the key encoder on this many random sub-batches, so BatchNorm statistics of
            a key never include its query: shuffle-BN within one process (MoCo shuffles across
            GPUs for the same purpose). Use 2–8 when a process holds the whole batch.
        queue_seed (`int`, *optional*, defaults to 0):
            Seed of the queue's random initial content.
        image_mean (`list[float]`, *optional*, defaults to `None`):
            Normalisation mean of the training data (`None`: ImageNet's, or 0.5 for one channel).
        image_std (`list[float]`, *optional*, defaults to `None`):
            Normalisation std of the training data.
    """

    model_type = "seed_moco"

    def __init__(
        self,
        architecture: str = "resnet50",
        model_args: dict[str, Any] | None = None,
        in_chans: int = 3,
        image_size: int = 224,
        projection_dim: int = 128,
        head_hidden_dim: int | None = None,
        queue_size: int = 65536,
        contrastive_temperature: float = 0.2,
        momentum: float = 0.999,
        key_bn_splits: int = 1,
        queue_seed: int = 0,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        **kwargs,
    ):
        check_temperature("contrastive_temperature", contrastive_temperature)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}.")
        if key_bn_splits < 1:
            raise ValueError(f"key_bn_splits must be ≥ 1, got {key_bn_splits}.")
        if queue_size <= 0:
            raise ValueError(f"queue_size must be a positive integer, got {queue_size}.")
        self.architecture = architecture
        self.model_args = dict(model_args or {})
        self.in_chans = in_chans
        self.image_size = image_size
        self.projection_dim = projection_dim
        self.head_hidden_dim = head_hidden_dim
        self.queue_size = queue_size
        self.contrastive_temperature = float(contrastive_temperature)
        self.momentum = float(momentum)
        self.key_bn_splits = key_bn_splits
        self.queue_seed = queue_seed
        self.image_mean, self.image_std = default_normalization(in_chans, image_mean, image_std)
        super().__init__(**kwargs)


@dataclass
class MocoOutput(ModelOutput):
    """
    Output of [`MocoForPretraining`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            InfoNCE loss, when `pixel_values_k` is given.
        logits (`torch.FloatTensor` of shape `(batch_size, 1 + queue_size)`, *optional*):
            [q·k⁺, q·queue] / τ; the positive is column 0.
        query_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
            L2-normalised query embeddings (the teacher embedding for SEED).
        key_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`, *optional*):
            L2-normalised momentum-encoder keys (enqueued by the forward itself in training mode).
        pooler_output (`torch.FloatTensor` of shape `(batch_size, pooled_width)`):
            Pooled query-encoder features.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    query_embeds: torch.FloatTensor | None = None
    key_embeds: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None


class MocoForPretraining(QuietHubMixin, PreTrainedModel):
    """MoCo-v2: query encoder + MLP head, momentum key encoder + head, queue of keys."""

    config_class = MocoConfig
    base_model_prefix = "encoder"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["MocoForPretraining"]
    accepts_loss_kwargs = False

    def __init__(self, config: MocoConfig):
        super().__init__(config)
        self.encoder = create_backbone(
            config.architecture, config.in_chans, config.model_args, "architecture"
        )
        check_input_size(
            self.encoder, config.architecture, config.image_size, None, "architecture", "model_args"
        )
        width = pooled_width(self.encoder)
        self.head = ProjectionHead(width, config.head_hidden_dim or width, config.projection_dim)
        self.encoder_k = copy.deepcopy(self.encoder)
        self.head_k = copy.deepcopy(self.head)
        for p in [*self.encoder_k.parameters(), *self.head_k.parameters()]:
            p.requires_grad = False  # updated by momentum only; never in the optimizer
        self.queue = EmbeddingQueue(config.queue_size, config.projection_dim, seed=config.queue_seed)
        self.post_init()
        # MoCo starts the key encoder as an exact copy of the query encoder (post_init re-drew
        # the heads; the backbones keep timm's init)
        self.head_k.load_state_dict(self.head.state_dict())

    def _init_weights(self, module: nn.Module) -> None:
        init_module_weights(module)

    def get_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pooled query-encoder features ``(batch, pooled_width)``."""
        return pooled_features(self.encoder, pixel_values)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """L2-normalised query embeddings ``(batch, projection_dim)`` (what a SEED teacher emits)."""
        return F.normalize(self.head(self.get_features(pixel_values)), dim=1)

    @torch.no_grad()
    def momentum_update(self) -> None:
        m = self.config.momentum
        pairs = zip(
            [*self.encoder.parameters(), *self.head.parameters()],
            [*self.encoder_k.parameters(), *self.head_k.parameters()],
        )
        for q, k in pairs:
            k.mul_(m).add_(q.detach(), alpha=1.0 - m)

    @torch.no_grad()
    def _keys(self, pixel_values_k: torch.Tensor) -> torch.Tensor:
        n = pixel_values_k.shape[0]
        splits = max(1, min(self.config.key_bn_splits, n // 2))
        if splits == 1:
            return F.normalize(self.head_k(pooled_features(self.encoder_k, pixel_values_k)), dim=1)
        perm = torch.randperm(n, device=pixel_values_k.device)
        chunks = [
            self.head_k(pooled_features(self.encoder_k, chunk))
            for chunk in pixel_values_k[perm].chunk(splits)
        ]
        shuffled = torch.cat(chunks)
        keys = torch.empty_like(shuffled)
        keys[perm] = shuffled  # back to the input order
        return F.normalize(keys, dim=1)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Pushes the keys of the *global* batch ``(global_batch, projection_dim)``."""
        self.queue.enqueue(keys.float())

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_values_k: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> MocoOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, in_chans, height, width)`):
                Query view.
            pixel_values_k (`torch.FloatTensor` of shape `(batch_size, in_chans, height, width)`, *optional*):
                Key view of the same images; when given, the loss is computed.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        features = self.get_features(pixel_values)
        q = F.normalize(self.head(features), dim=1)
        loss = logits = k = None
        if pixel_values_k is not None:
            if self.training:
                self.momentum_update()
            k = self._keys(pixel_values_k)
            with torch.autocast(device_type=q.device.type, enabled=False):
                qf = q.float()
                # n x 1 positives, n x K negatives (one GEMM)
                # a snapshot: the buffer is updated in place below while autograd still needs it
                queue = self.queue.embeddings.clone() if self.training else self.queue.embeddings
                logits = torch.cat([(qf * k).sum(1, keepdim=True), qf @ queue.T], dim=1)
                logits = logits / self.config.contrastive_temperature
                labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
                loss = F.cross_entropy(logits, labels)
            if self.training:  # the model owns its queue: push the global batch's keys (FIFO)
                self.enqueue(all_gather_no_grad(k))
        output = MocoOutput(loss=loss, logits=logits, query_embeds=q, key_embeds=k, pooler_output=features)
        return output if return_dict else output.to_tuple()


def save_query_encoder(
    model: MocoForPretraining,
    save_directory: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    training: dict[str, Any] | None = None,
) -> Path:
    """Writes the inference half of a MoCo model (query encoder + MLP head, what a SEED teacher
    needs) as ``config.json`` + ``model.safetensors``: a ResNet-18 is 23 MB in fp16 instead of
    the 90 MB of the full training state (key encoder, queue). ``training`` (recipe, results) is
    written to ``training.json`` next to them. :func:`load_query_encoder` reads it back."""
    from safetensors.torch import save_file

    save_directory = Path(save_directory)
    save_directory.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(save_directory)
    state = {
        k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
        for k, v in model.state_dict().items()
        if k.startswith(("encoder.", "head."))
    }
    save_file(state, str(save_directory / "model.safetensors"), metadata={"format": "pt"})
    if training is not None:
        (save_directory / "training.json").write_text(json.dumps(training, indent=2, default=str) + "\n")
    return save_directory


def load_query_encoder(path: str | os.PathLike) -> tuple[nn.Module, ProjectionHead, MocoConfig]:
    """``(encoder, head, config)`` of a MoCo folder: a training run or checkpoint
    (``save_pretrained``) or an inference-only folder of :func:`save_query_encoder`. Weights are
    loaded strictly into fp32 modules; the key encoder and queue, when present, are ignored."""
    from safetensors.torch import load_file

    path = Path(path)
    config = MocoConfig.from_pretrained(path)
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{path} has no model.safetensors.")
    state = load_file(str(weights))
    encoder = create_backbone(config.architecture, config.in_chans, config.model_args, "architecture")
    width = pooled_width(encoder)
    head = ProjectionHead(width, config.head_hidden_dim or width, config.projection_dim)
    for prefix, module in (("encoder.", encoder), ("head.", head)):
        part = {k[len(prefix) :]: v.float() for k, v in state.items() if k.startswith(prefix)}
        result = module.load_state_dict(part, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"{weights} does not match {config.architecture!r} ({prefix.rstrip('.')}): missing keys "
                f"{result.missing_keys[:10]}, unexpected keys {result.unexpected_keys[:10]}."
            )
    return encoder.eval(), head.eval(), config

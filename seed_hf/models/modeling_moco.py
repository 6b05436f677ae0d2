"""MoCo-v2 models (He et al. 2020; Chen et al. 2020, arXiv:2003.04297).

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
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from seed_hf.models.backbones import (
    ProjectionHead,
    check_input_size,
    create_backbone,
    init_module_weights,
    pooled_features,
    pooled_width,
)
from seed_hf.models.configuration_moco import MocoConfig
from seed_hf.models.embedding_queue import EmbeddingQueue
from seed_hf.training.distributed import all_gather_no_grad
from seed_hf.training.progress import QuietHubMixin

__all__ = [
    "MocoOutput",
    "MocoPreTrainedModel",
    "MocoQueryEncoder",
    "MocoForPretraining",
    "save_query_encoder",
    "load_query_encoder",
]


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


class MocoPreTrainedModel(QuietHubMixin, PreTrainedModel):
    """Loading, saving and weight init of the MoCo-v2 models; builds the query encoder (timm
    backbone, no classifier) and its MLP head, which every MoCo model has."""

    config_class = MocoConfig
    base_model_prefix = "encoder"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["MocoForPretraining", "MocoQueryEncoder"]
    # Trainer: the loss is a per-batch mean, no num_items_in_batch re-scaling
    accepts_loss_kwargs = False

    def _init_weights(self, module: nn.Module) -> None:
        init_module_weights(module)

    def _build_query_encoder(self, config: MocoConfig) -> None:
        self.encoder = create_backbone(
            config.architecture, config.in_chans, config.model_args, "architecture"
        )
        check_input_size(
            self.encoder, config.architecture, config.image_size, None, "architecture", "model_args"
        )
        width = pooled_width(self.encoder)
        self.head = ProjectionHead(width, config.head_hidden_dim or width, config.projection_dim)

    def get_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pooled query-encoder features ``(batch, pooled_width)``."""
        return pooled_features(self.encoder, pixel_values)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """L2-normalised query embeddings ``(batch, projection_dim)`` (what a SEED teacher emits)."""
        return F.normalize(self.head(self.get_features(pixel_values)), dim=1)


class MocoQueryEncoder(MocoPreTrainedModel):
    """The inference half of a MoCo-v2 model: query encoder + MLP head (what a SEED teacher runs).

    Loads a training run or checkpoint of [`MocoForPretraining`] (the key encoder and the queue
    are skipped) or a folder of :func:`save_query_encoder`.
    """

    # the training half of a MoCoForPretraining folder
    _keys_to_ignore_on_load_unexpected = [r"^encoder_k\.", r"^head_k\.", r"^queue\."]

    def __init__(self, config: MocoConfig):
        super().__init__(config)
        self._build_query_encoder(config)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """L2-normalised query embeddings ``(batch_size, projection_dim)``."""
        return self.embed(pixel_values)


class MocoForPretraining(MocoPreTrainedModel):
    """MoCo-v2: query encoder + MLP head, momentum key encoder + head, queue of keys."""

    def __init__(self, config: MocoConfig):
        super().__init__(config)
        self._build_query_encoder(config)
        self.encoder_k = copy.deepcopy(self.encoder)
        self.head_k = copy.deepcopy(self.head)
        for p in [*self.encoder_k.parameters(), *self.head_k.parameters()]:
            p.requires_grad = False  # updated by momentum only; never in the optimizer
        self.queue = EmbeddingQueue(config.queue_size, config.projection_dim, seed=config.queue_seed)
        self.post_init()
        # MoCo starts the key encoder as an exact copy of the query encoder (post_init re-drew
        # the heads; the backbones keep timm's init)
        self.head_k.load_state_dict(self.head.state_dict())

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

    @torch.compiler.disable
    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Pushes the keys of the *global* batch ``(global_batch, projection_dim)``."""
        self.queue.enqueue(keys.float())

    # eager under torch.compile: a compiled graph may save the queue buffer itself for backward in
    # place of the snapshot, which the enqueue then modifies in place (autograd refuses the backward)
    @torch.compiler.disable
    def _contrastive_loss(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """InfoNCE of the queries ``q`` against their keys ``k`` (positives) and a snapshot of the
        queue (negatives), in fp32: ``(loss, logits (batch, 1 + queue_size))``."""
        with torch.autocast(device_type=q.device.type, enabled=False):
            qf = q.float()
            # a snapshot: the buffer is updated in place after the forward while autograd still needs it
            queue = self.queue.embeddings.clone() if self.training else self.queue.embeddings
            # n x 1 positives, n x K negatives (one GEMM)
            logits = torch.cat([(qf * k).sum(1, keepdim=True), qf @ queue.T], dim=1)
            logits = logits / self.config.contrastive_temperature
            labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
            return F.cross_entropy(logits, labels), logits

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
            loss, logits = self._contrastive_loss(q, k)
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
    loaded strictly into fp32 modules (:class:`MocoQueryEncoder`); the key encoder and queue, when
    present, are skipped."""
    path = Path(path)
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path} has no model.safetensors.")
    model, info = MocoQueryEncoder.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
    mismatched = {
        k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v
    }
    if mismatched:
        raise ValueError(
            f"{path / 'model.safetensors'} does not match {model.config.architecture!r}: "
            + ", ".join(f"{k.replace('_', ' ')} {sorted(v)[:10]}" for k, v in mismatched.items())
            + "."
        )
    return model.encoder.eval(), model.head.eval(), model.config

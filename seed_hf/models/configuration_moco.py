"""MoCo-v2 configuration (He et al. 2020; Chen et al. 2020, arXiv:2003.04297)."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

from seed_hf.models.configuration_seed import default_normalization
from seed_hf.models.losses import check_temperature

__all__ = ["MocoConfig"]


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

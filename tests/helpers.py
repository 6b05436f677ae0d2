"""Tiny models and datasets shared by the tests."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from seed_hf import MocoConfig, MocoForPretraining, SeedConfig, SeedForDistillation
from seed_hf.backbones import ProjectionHead, create_backbone, pooled_width
from seed_hf.teachers import FrozenTeacher

IMAGE_SIZE = 32


class TensorImages(Dataset):
    """Fixed random images (no augmentation: runs are exactly reproducible)."""

    def __init__(self, n: int = 64, channels: int = 3, size: int = IMAGE_SIZE, seed: int = 0, views: int = 1):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, channels, size, size, generator=g)
        self.views = views

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        item = {"pixel_values": self.images[i], "labels": torch.tensor(i % 4)}
        if self.views == 2:
            item["pixel_values_k"] = self.images[i].flip(-1)
        return item


def tiny_seed_config(**kwargs) -> SeedConfig:
    defaults = dict(
        student_architecture="test_resnet", queue_size=40, projection_dim=16, image_size=IMAGE_SIZE
    )
    defaults.update(kwargs)
    return SeedConfig(**defaults)


def tiny_student(**kwargs) -> SeedForDistillation:
    torch.manual_seed(0)
    return SeedForDistillation(tiny_seed_config(**kwargs))


def tiny_teacher(
    dim: int = 16, arch: str = "test_efficientnet", in_chans: int = 3, seed: int = 1, **model_args
):
    torch.manual_seed(seed)
    backbone = create_backbone(arch, in_chans, model_args)
    head = ProjectionHead(pooled_width(backbone), 32, dim)
    return FrozenTeacher(backbone, head, in_chans, "tiny")


def tiny_moco(**kwargs) -> MocoForPretraining:
    torch.manual_seed(0)
    defaults = dict(architecture="test_resnet", queue_size=40, projection_dim=16, image_size=IMAGE_SIZE)
    defaults.update(kwargs)
    return MocoForPretraining(MocoConfig(**defaults))

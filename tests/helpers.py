"""Tiny models and datasets shared by the tests."""

from __future__ import annotations

import os
import signal

import torch
from torch.utils.data import Dataset
from transformers import TrainerCallback

from seed_hf import MocoConfig, MocoForPretraining, SeedConfig, SeedForDistillation
from seed_hf.models.backbones import ProjectionHead, create_backbone, pooled_width
from seed_hf.teachers.frozen import FrozenTeacher

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


def write_jpeg_shards(
    folder, fmt: str = "parquet", shards: int = 4, rows: int = 10, size: int = 24, corrupt_every: int = 0
) -> list[str]:
    """Shards of small random JPEGs with ids 0, 1, ... in shard order: parquet (``image``
    {"bytes", "path"} structs + ``id``) or webdataset tars (``<id>.jpg`` + ``<id>.cls``). With
    ``corrupt_every`` k, ids 0, k, 2k, ... are undecodable (odd ids truncated, even ones not an image)."""
    import io
    import tarfile
    from pathlib import Path

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files, next_id = [], 0
    for s in range(shards):
        images, ids = [], []
        for _ in range(rows):
            buffer = io.BytesIO()
            Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(buffer, format="JPEG")
            data = buffer.getvalue()
            if corrupt_every and next_id % corrupt_every == 0:
                data = data[: len(data) // 3] if next_id % 2 else b"not an image at all"
            images.append(data)
            ids.append(next_id)
            next_id += 1
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            path = folder / f"train-{s:05d}.parquet"
            table = pa.table({"image": [{"bytes": b, "path": None} for b in images], "id": ids})
            pq.write_table(table, path, row_group_size=max(1, rows // 3))  # several row groups per shard
        else:
            path = folder / f"train-{s:05d}.tar"
            with tarfile.open(path, "w") as tar:
                for i, data in zip(ids, images):
                    for name, payload in ((f"{i:06d}.jpg", data), (f"{i:06d}.cls", str(i % 10).encode())):
                        info = tarfile.TarInfo(name)
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))
        files.append(str(path))
    return files


class KillAtStep(TrainerCallback):
    """SIGKILLs the process at the end of optimizer step ``step`` (a crash, no clean-up)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

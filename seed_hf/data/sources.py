"""What a run trains on: where the images come from (:class:`TrainSource`) and how they become
views (:class:`TrainData`, every default resolved once). :mod:`.train_dataset` builds the training
dataset from them, through :mod:`.loading` for ``datasets`` sources.

Errors name this module's parameters as the scripts' flags of the same name (``--image_column``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seed_hf.data.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from seed_hf.data.transforms import AUGMENTATION_BACKENDS, AUGMENTATION_PRESETS

__all__ = ["DATA_DEVICES", "DEFAULT_AUGMENTATION", "DEFAULT_IMAGE_SIZE", "TrainData", "TrainSource"]

DATA_DEVICES = ("cpu", "cuda")
# the resolution of a source that names none: Fashion-MNIST's 28 px to 32, everything else ImageNet's
DEFAULT_IMAGE_SIZE = {"fashion_mnist": 32, "images": 224}
DEFAULT_AUGMENTATION = {"fashion_mnist": "grayscale_small", "images": "moco_v2"}


@dataclass(frozen=True)
class TrainSource:
    """Where the training images come from: at most one of ``dataset_name`` (a hub id or local
    dataset script), ``train_dir`` (an imagefolder) and ``train_files`` (parquet / webdataset
    files, glob patterns allowed); none of them means the Fashion-MNIST train split
    (``fashion_mnist_dir``, default the Debian package's folder)."""

    dataset_name: str | None = None
    dataset_config_name: str | None = None
    train_dir: str | None = None
    train_files: tuple[str, ...] | None = None
    train_split: str = "train"
    image_column: str | None = None
    streaming: bool = False
    shuffle_buffer_size: int = 1000
    fashion_mnist_dir: str | None = None
    cache_dir: str | None = None
    max_train_samples: int | None = None

    def __post_init__(self):
        if self.train_files is not None and not isinstance(self.train_files, tuple):
            object.__setattr__(self, "train_files", tuple(map(str, self.train_files)))
        sources = [s for s in (self.dataset_name, self.train_dir, self.train_files) if s]
        if len(sources) > 1:
            raise ValueError("Pass at most one of --dataset_name, --train_dir, --train_files.")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(
                f"--max_train_samples must be an integer ≥ 1 (or left unset), got {self.max_train_samples}."
            )

    @property
    def is_fashion_mnist(self) -> bool:
        return not (self.dataset_name or self.train_dir or self.train_files)

    @property
    def kind(self) -> str:
        """The key of the default tables: ``fashion_mnist`` or ``images``."""
        return "fashion_mnist" if self.is_fashion_mnist else "images"

    def name(self) -> str:
        """The source as errors name it (its parameter and value)."""
        if self.dataset_name:
            return f"--dataset_name {self.dataset_name!r}"
        if self.train_dir:
            return f"--train_dir {self.train_dir!r}"
        if self.train_files:
            return f"--train_files {list(self.train_files)}"
        return "Fashion-MNIST"

    def identity(self) -> str:
        """A fingerprint of where the images come from (the dataset id, split and config, or the
        resolved folder or files; not their contents), so that a resume can tell that two
        imagefolders of the same name, or other shard files, are another source."""
        files = sorted(str(Path(f).resolve()) for f in self.train_files) if self.train_files else None
        where = {
            "dataset_name": self.dataset_name,
            "dataset_config_name": self.dataset_config_name,
            "train_split": self.train_split if self.dataset_name else None,
            "train_dir": str(Path(self.train_dir).resolve()) if self.train_dir else None,
            "train_files": files,
            "fashion_mnist_dir": str(Path(self.fashion_mnist_dir).resolve())
            if self.is_fashion_mnist and self.fashion_mnist_dir
            else None,
        }
        return hashlib.sha256(json.dumps(where, sort_keys=True).encode()).hexdigest()[:16]

    def describe(self, seed: int | None = None) -> dict[str, Any]:
        """What the run trains on, as recorded in ``run_info.json`` and model cards (no local paths).
        ``seed``: the run's seed, which draws a ``max_train_samples`` subset of a map-style source."""
        if self.is_fashion_mnist:
            dataset, split = "fashion_mnist", "train"
        elif self.dataset_name:
            dataset, split = self.dataset_name, self.train_split
        elif self.train_dir:
            dataset, split = f"imagefolder {Path(self.train_dir).name}", None
        else:
            dataset, split = f"{len(self.train_files)} local shard file(s)", None
        described: dict[str, Any] = {"dataset": dataset, "dataset_split": split}
        if self.max_train_samples:
            described["train_subset"] = {
                "images": self.max_train_samples,
                "drawn": "first rows of the shuffled stream"
                if self.streaming
                else "seeded random draw (the run's seed), class-balanced where the source has labels",
            }
            if seed is not None and not self.streaming:
                described["train_subset"]["seed"] = seed
        return described


@dataclass(frozen=True)
class TrainData:
    """A source and its views, every default resolved once (:meth:`resolve`): the augmentation
    preset, the training resolution, the channels and the source's own normalisation (None: the
    model's default), the augmentation backend and where augmentation runs (``data_device``)."""

    source: TrainSource
    augmentation: str
    image_size: int
    in_chans: int
    mean: list[float] | None = None
    std: list[float] | None = None
    augmentation_backend: str = "opencv"
    data_device: str = "cpu"

    @classmethod
    def resolve(
        cls,
        source: TrainSource,
        augmentation: str | None = None,
        image_size: int | None = None,
        augmentation_backend: str = "opencv",
        data_device: str = "cpu",
    ) -> TrainData:
        """The defaults a source implies: Fashion-MNIST trains at 32 px, 1 channel, its own
        mean/std, ``grayscale_small``; every other source at 224 px, RGB, the model's
        normalisation, ``moco_v2``."""
        if augmentation_backend not in AUGMENTATION_BACKENDS:
            raise ValueError(
                f"--augmentation_backend must be one of {AUGMENTATION_BACKENDS}, got {augmentation_backend!r}."
            )
        if augmentation is not None and augmentation not in AUGMENTATION_PRESETS:
            raise ValueError(f"--augmentation must be one of {AUGMENTATION_PRESETS}, got {augmentation!r}.")
        if image_size is not None and image_size < 1:
            raise ValueError(f"--image_size must be an integer ≥ 1 (or left unset), got {image_size}.")
        if data_device not in DATA_DEVICES:
            raise ValueError(f"--data_device must be one of {DATA_DEVICES}, got {data_device!r}.")
        fmnist = source.is_fashion_mnist
        return cls(
            source=source,
            augmentation=augmentation or DEFAULT_AUGMENTATION[source.kind],
            image_size=DEFAULT_IMAGE_SIZE[source.kind] if image_size is None else image_size,
            in_chans=1 if fmnist else 3,
            mean=list(FASHION_MNIST_MEAN) if fmnist else None,
            std=list(FASHION_MNIST_STD) if fmnist else None,
            augmentation_backend=augmentation_backend,
            data_device=data_device,
        )

    def describe(self, seed: int | None = None) -> dict[str, Any]:
        """The source's record plus its views' (``run_info.json``, model cards); ``seed`` as
        :meth:`TrainSource.describe`."""
        described = self.source.describe(seed)
        subset = described.pop("train_subset", None)
        described |= {
            "augmentation": self.augmentation,
            "image_size": self.image_size,
            "in_chans": self.in_chans,
        }
        if subset is not None:
            described["train_subset"] = subset
        return described

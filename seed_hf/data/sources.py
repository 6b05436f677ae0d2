"""Training sources: where the images come from (:class:`TrainSource`), how they become views
(:class:`TrainData`, every default resolved once), and the dataset built from both
(:func:`build_train_dataset`).

* Fashion-MNIST (no source given): the in-memory idx arrays of :mod:`.fashion_mnist`.
* Any ``datasets`` source: hub id, local ``imagefolder``, parquet / webdataset files, map-style or
  streaming; images stay encoded in the source and are decoded (crop-aware for JPEGs) and augmented
  lazily in the dataloader workers. Parquet / webdataset shards stream through the exactly
  resumable :class:`~.shard_stream.ShardStream`.

Errors name this module's parameters in backticks (`` `image_column` ``); the example scripts show
them as their flags (``seed_hf.cli.flags``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from seed_hf.data.decode import DecodeStats, decode_image
from seed_hf.data.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist
from seed_hf.data.rows import ArrayImageDataset, ImageColumnTransform, SeededRowDataset, detect_image_column
from seed_hf.data.shard_stream import warn_on_uneven_shards
from seed_hf.data.transforms import (
    AUGMENTATION_BACKENDS,
    AUGMENTATION_PRESETS,
    MultiViewTransform,
    build_ssl_transform,
)
from seed_hf.evaluation.subsets import balanced_subset

__all__ = [
    "DATA_DEVICES",
    "TrainData",
    "TrainSource",
    "build_train_dataset",
    "expand_files",
    "image_like_columns",
    "load_image_dataset",
    "stream_shards",
    "training_subset",
    "undecoded_images",
]

logger = logging.getLogger(__name__)

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
            raise ValueError("Pass at most one of `dataset_name`, `train_dir`, `train_files`.")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(
                f"`max_train_samples` must be an integer ≥ 1 (or left unset), got {self.max_train_samples}."
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
            return f"`dataset_name` {self.dataset_name!r}"
        if self.train_dir:
            return f"`train_dir` {self.train_dir!r}"
        if self.train_files:
            return f"`train_files` {list(self.train_files)}"
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
                f"`augmentation_backend` must be one of {AUGMENTATION_BACKENDS}, got {augmentation_backend!r}."
            )
        if augmentation is not None and augmentation not in AUGMENTATION_PRESETS:
            raise ValueError(f"`augmentation` must be one of {AUGMENTATION_PRESETS}, got {augmentation!r}.")
        if image_size is not None and image_size < 1:
            raise ValueError(f"`image_size` must be an integer ≥ 1 (or left unset), got {image_size}.")
        if data_device not in DATA_DEVICES:
            raise ValueError(f"`data_device` must be one of {DATA_DEVICES}, got {data_device!r}.")
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


def build_train_dataset(
    data: TrainData,
    num_views: int,
    in_chans: int,
    mean,
    std,
    seed: int = 42,
    world_size: int = 1,
    num_workers: int = 0,
    num_small_crops: int = 0,
    small_crop_size: int = 96,
    small_crop_scale: tuple[float, float] = (0.05, 0.14),
) -> Dataset:
    """Training dataset yielding ``pixel_values`` (``pixel_values_k`` for 2 views, and
    ``pixel_values_small`` with ``num_small_crops`` small crops), normalised with ``mean`` /
    ``std`` (the model config's). It states that normalisation (``normalization = (mean, std)``),
    which the trainer checks against the config the export publishes."""
    source = data.source
    to_array = data.augmentation_backend == "opencv"  # the opencv backend takes decoded ndarrays
    if data.data_device != "cpu":  # GPU input path: rows stay JPEG bytes (gpu_input.build_device_transform)
        from seed_hf.data.gpu_input import EncodedImageTransform

        transform, to_array = EncodedImageTransform(in_chans), True
    else:
        backend = data.augmentation_backend
        small = (
            build_ssl_transform(
                data.augmentation, small_crop_size, mean, std, scale=tuple(small_crop_scale), backend=backend
            )
            if num_small_crops
            else None
        )
        transform = MultiViewTransform(
            build_ssl_transform(data.augmentation, data.image_size, mean, std, backend=backend),
            num_views,
            small,
            num_small_crops,
        )
    dataset = _source_dataset(source, transform, in_chans, to_array, seed, world_size, num_workers)
    dataset.normalization = (list(mean), list(std))
    return dataset


def _source_dataset(
    source: TrainSource,
    transform,
    in_chans: int,
    to_array: bool,
    seed: int,
    world_size: int,
    num_workers: int,
) -> Dataset:
    if source.is_fashion_mnist:
        images, labels = load_fashion_mnist("train", source.fashion_mnist_dir)
        if source.max_train_samples:
            keep = balanced_subset(labels, source.max_train_samples, seed)
            images, labels = images[keep], labels[keep]
        return ArrayImageDataset(images, labels, transform, seed=seed)
    if source.streaming and (shards := stream_shards(source)) is not None:
        return _shard_stream(source, shards, transform, in_chans, to_array, seed)
    dataset = load_image_dataset(
        source.dataset_name,
        source.dataset_config_name,
        source.train_dir,
        source.train_files,
        source.train_split,
        source.streaming,
        source.cache_dir,
    )
    image_column = _image_column(list(dataset.column_names or []), source, features=dataset.features)
    dataset = undecoded_images(dataset, image_column, in_chans, source)
    if source.streaming:
        logger.warning(
            f"{source.name()} streams through `datasets` (it has no parquet / webdataset shard files): a "
            "resumed run re-reads the batches it skips and is not bit-identical to an uninterrupted one."
        )
        warn_on_uneven_shards(dataset.num_shards, world_size, num_workers)
        dataset = dataset.shuffle(seed=seed, buffer_size=source.shuffle_buffer_size)
        if source.max_train_samples:
            dataset = dataset.take(source.max_train_samples)
        apply = ImageColumnTransform(transform, image_column, in_chans, drop_bad_rows=True, to_array=to_array)
        return dataset.map(apply, batched=True, batch_size=16, remove_columns=dataset.column_names)
    apply = ImageColumnTransform(transform, image_column, in_chans, to_array=to_array)
    if source.max_train_samples:
        dataset = dataset.select(training_subset(dataset, source.max_train_samples, seed))
    return SeededRowDataset(dataset, apply, seed=seed)


def load_image_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_dir: str | None = None,
    train_files: Sequence[str] | None = None,
    split: str = "train",
    streaming: bool = False,
    cache_dir: str | None = None,
):
    """``datasets.load_dataset`` for a hub id, an imagefolder or parquet/webdataset files."""
    from datasets import load_dataset

    if dataset_name is not None:
        return load_dataset(
            dataset_name, dataset_config_name, split=split, streaming=streaming, cache_dir=cache_dir
        )
    if train_dir is not None:
        if not Path(train_dir).is_dir():
            raise FileNotFoundError(f"`train_dir` {train_dir!r} is not a folder.")
        return load_dataset(
            "imagefolder", data_dir=train_dir, split=split, streaming=streaming, cache_dir=cache_dir
        )
    if train_files:
        files = list(train_files)
        builder = "webdataset" if all(str(f).endswith(".tar") for f in files) else "parquet"
        return load_dataset(
            builder, data_files={split: files}, split=split, streaming=streaming, cache_dir=cache_dir
        )
    raise ValueError("Pass one of `dataset_name`, `train_dir` or `train_files`.")


def training_subset(dataset, n: int, seed: int) -> list[int]:
    """Rows of a ``max_train_samples`` subset of a map-style dataset: a seeded random draw,
    class-balanced when the rows have a ``label`` column (an imagefolder is sorted by class, so
    the first N rows would be one class)."""
    if n >= len(dataset):
        return list(range(len(dataset)))
    if "label" in (dataset.column_names or []):
        return balanced_subset(np.asarray(dataset["label"]), n, seed).tolist()
    return sorted(np.random.default_rng(seed).choice(len(dataset), n, replace=False).tolist())


def stream_shards(source: TrainSource) -> list[str] | None:
    """The parquet / webdataset shard files of a streamed source (``train_files``, or a hub
    dataset's data files), or None when it has none (an imagefolder, other formats)."""
    if source.train_files:
        files = expand_files(source.train_files)
    elif source.dataset_name:
        from datasets import load_dataset_builder

        builder = load_dataset_builder(
            source.dataset_name, source.dataset_config_name, cache_dir=source.cache_dir
        )
        data_files = builder.config.data_files or {}
        if source.train_split not in data_files:
            return None
        files = [str(f) for f in data_files[source.train_split]]
    else:
        return None
    if files and (all(f.endswith(".tar") for f in files) or all(f.endswith(".parquet") for f in files)):
        return files
    return None


def expand_files(patterns: Sequence[str]) -> list[str]:
    """``train_files`` with glob patterns expanded (local paths or fsspec URLs, as ``datasets``
    does); a pattern or path that matches nothing raises, naming it."""
    import fsspec

    files: list[str] = []
    for pattern in map(str, patterns):
        fs, _, paths = fsspec.get_fs_token_paths(pattern, expand=True)
        if not paths or (not any(ch in pattern for ch in "*?[") and not fs.exists(paths[0])):
            raise FileNotFoundError(f"`train_files` {pattern!r} matches no file.")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        files += [p if protocol in ("file", "local") else f"{protocol}://{p}" for p in sorted(paths)]
    return files


def _shard_stream(
    source: TrainSource, shards, transform, in_chans: int, to_array: bool, seed: int
) -> Dataset:
    from seed_hf.data.shard_stream import ShardIndex, ShardStream

    index = ShardIndex(shards[0])
    first = index.read_rows(range(min(16, len(index))))
    columns = list(first[min(first)]) if first else []
    try:
        image_column = _image_column(columns, source, sample=first[min(first)] if first else None)
    except ValueError as error:
        raise ValueError(f"{shards[0]} (the first shard of {source.name()}): {error}") from error
    _check_decodable([row[image_column] for row in first.values()], image_column, in_chans, source, columns)
    apply = ImageColumnTransform(transform, image_column, in_chans, to_array=to_array)
    return ShardStream(
        shards,
        apply,
        shuffle_buffer_size=source.shuffle_buffer_size,
        seed=seed,
        max_rows=source.max_train_samples,
    )


def image_like_columns(
    columns: Sequence[str], features: Any = None, sample: dict[str, Any] | None = None
) -> list[str]:
    """The ``columns`` that may hold images, from the ``datasets`` ``features`` (an ``Image``
    feature, binary values, a ``{"bytes", "path"}`` struct) or the values of a ``sample`` row
    (bytes, such a dict, a PIL image)."""
    from datasets import Image as ImageFeature
    from datasets import Value

    found = []
    for name in columns:
        feature = (features or {}).get(name)
        value = (sample or {}).get(name)
        if (
            isinstance(feature, ImageFeature)
            or (isinstance(feature, Value) and feature.dtype in ("binary", "large_binary"))
            or (isinstance(feature, dict) and "bytes" in feature)
            or isinstance(value, (bytes, bytearray, Image.Image))
            or (isinstance(value, dict) and "bytes" in value)
        ):
            found.append(name)
    return found


def _image_column(
    columns: list[str], source: TrainSource, features: Any = None, sample: dict[str, Any] | None = None
) -> str:
    """:func:`detect_image_column`, saying when no column is named as images are: the columns that
    look like images, or that the data has none (a file of labels or ids only)."""
    try:
        return detect_image_column(columns, source.image_column)
    except ValueError:
        if source.image_column is not None:  # a named column that is not there: the columns are listed
            raise
    candidates = image_like_columns(columns, features, sample)
    if candidates:
        raise ValueError(
            f"{source.name()} has no column named image, img, jpg, ... but its column(s) {candidates} look like "
            f"images: pass the one that holds them as `image_column` (columns: {columns})."
        )
    raise ValueError(
        f"{source.name()} has no image column: its columns are {columns} and none of them holds images (encoded "
        "bytes, a {'bytes', 'path'} struct or a datasets Image feature). Pass a source of images: a labels-only "
        "file cannot be trained on."
    )


def undecoded_images(dataset, image_column: str, in_chans: int, source: TrainSource, num_probe: int = 16):
    """``dataset`` with ``image_column`` left undecoded (decoded in the transform, so that a corrupt
    image is skipped and counted instead of killing the run), after decoding its first ``num_probe``
    images: a source none of whose images decode (a wrong `image_column`, files that are not
    images) stops here, before training, not at the first batch."""
    from datasets import Image as ImageFeature

    columns = list(dataset.column_names or [])
    try:
        dataset = dataset.cast_column(image_column, ImageFeature(decode=False))
        probe = (
            dataset.take(num_probe)
            if source.streaming
            else dataset.select(range(min(num_probe, len(dataset))))
        )
        cells = [row[image_column] for row in probe]
    except (TypeError, ValueError, NotImplementedError) as error:  # arrow: a column of other values
        raise ValueError(
            f"Column {image_column!r} of {source.name()} holds no images ({type(error).__name__}: "
            f"{str(error)[:200]}): pass the column that holds the images as `image_column` (columns: {columns})."
        ) from error
    _check_decodable(cells, image_column, in_chans, source, columns)
    return dataset


def _check_decodable(
    cells, image_column: str, in_chans: int, source: TrainSource, columns: list[str]
) -> None:
    """Decodes the probe ``cells``: a source none of whose images decode (a wrong `image_column`,
    files that are not images) stops here, before training, not at the first batch."""
    cells = list(cells)
    image_like = (bytes, bytearray, dict, str, os.PathLike, Image.Image)
    if cells and not any(isinstance(cell, image_like) for cell in cells):
        kinds = sorted({type(cell).__name__ for cell in cells})
        raise ValueError(
            f"Column {image_column!r} of {source.name()} holds no images (values of type {kinds}): pass "
            f"the column that holds the images as `image_column` (columns: {columns})."
        )
    stats = DecodeStats(log_first=0)  # a probe: not logged as skipped training images
    for cell in cells:
        decode_image(cell, in_chans, stats)
    if stats.seen == 0:
        raise ValueError(f"{source.name()} (split {source.train_split!r}) has no rows.")
    if stats.skipped == stats.seen:
        raise ValueError(
            f"None of the first {stats.seen} images of {source.name()} could be decoded from column "
            f"{image_column!r} (last error: {stats.last_error}). Check the source's files, or pass the column that "
            f"holds the images as `image_column` (columns: {columns})."
        )

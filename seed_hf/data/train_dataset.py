"""The training dataset of a :class:`~seed_hf.data.sources.TrainData` (:func:`build_train_dataset`):

* Fashion-MNIST (no source given): the in-memory idx arrays of :mod:`.fashion_mnist`;
* parquet / webdataset shards, streamed: the exactly resumable
  :class:`~seed_hf.data.shard_stream.ShardStream`;
* any other ``datasets`` source (:mod:`.loading`), map-style or streaming.

Every row's views are seeded per sample (:mod:`.rows`).
"""

from __future__ import annotations

import logging

import numpy as np
from torch.utils.data import Dataset

from seed_hf.data.augmentation import SMALL_CROP_SCALE, SMALL_CROP_SIZE
from seed_hf.data.fashion_mnist import load_fashion_mnist
from seed_hf.data.loading import (
    check_decodable,
    find_image_column,
    load_image_dataset,
    stream_shards,
    undecoded_images,
)
from seed_hf.data.rows import ArrayImageDataset, ImageColumnTransform, SeededRowDataset
from seed_hf.data.shard_index import ShardIndex
from seed_hf.data.shard_stream import ShardStream, warn_on_uneven_shards
from seed_hf.data.sources import TrainData, TrainSource
from seed_hf.data.subsets import balanced_subset
from seed_hf.data.transforms import MultiViewTransform, build_ssl_transform

__all__ = ["build_train_dataset", "training_subset"]

logger = logging.getLogger(__name__)


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
    small_crop_size: int = SMALL_CROP_SIZE,
    small_crop_scale: tuple[float, float] = SMALL_CROP_SCALE,
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
    """The dataset of ``source``'s rows, each through ``transform``."""
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
    image_column = find_image_column(list(dataset.column_names or []), source, features=dataset.features)
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


def training_subset(dataset, n: int, seed: int) -> list[int]:
    """Rows of a ``max_train_samples`` subset of a map-style dataset: a seeded random draw,
    class-balanced when the rows have a ``label`` column (an imagefolder is sorted by class, so
    the first N rows would be one class)."""
    if n >= len(dataset):
        return list(range(len(dataset)))
    if "label" in (dataset.column_names or []):
        return balanced_subset(np.asarray(dataset["label"]), n, seed).tolist()
    return sorted(np.random.default_rng(seed).choice(len(dataset), n, replace=False).tolist())


def _shard_stream(
    source: TrainSource, shards, transform, in_chans: int, to_array: bool, seed: int
) -> Dataset:
    """The :class:`ShardStream` of a streamed source's ``shards``, once the first shard's image
    column is found and its first images decode."""
    index = ShardIndex(shards[0])
    first = index.read_rows(range(min(16, len(index))))
    columns = list(first[min(first)]) if first else []
    try:
        image_column = find_image_column(columns, source, sample=first[min(first)] if first else None)
    except ValueError as error:
        raise ValueError(f"{shards[0]} (the first shard of {source.name()}): {error}") from error
    check_decodable([row[image_column] for row in first.values()], image_column, in_chans, source, columns)
    apply = ImageColumnTransform(transform, image_column, in_chans, to_array=to_array)
    return ShardStream(
        shards,
        apply,
        shuffle_buffer_size=source.shuffle_buffer_size,
        seed=seed,
        max_rows=source.max_train_samples,
    )

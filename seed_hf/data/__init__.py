"""Training data: what a run trains on (:mod:`.sources`), ``datasets`` sources (:mod:`.loading`),
the training dataset built from both (:mod:`.train_dataset`), decoding (:mod:`.decode`),
per-sample seeded rows (:mod:`.rows`), row access to parquet / webdataset shards
(:mod:`.shard_index`) and exactly resumable streams over them (:mod:`.shard_stream`),
augmentation presets (:mod:`.augmentation`, one table for both paths), per image
(:mod:`.transforms`, OpenCV kernels in :mod:`.opencv_kernels`, crop-aware JPEG decode in
:mod:`.crop_decode`) and batched on the GPU (:mod:`.batched_transforms`, :mod:`.gpu_input`), and
Fashion-MNIST (:mod:`.fashion_mnist`); class-balanced seeded subsets (:mod:`.subsets`), drawn for training
and evaluation alike. Nothing here knows the example scripts' arguments: a
source is a :class:`TrainSource`, its views a :class:`TrainData`."""

from seed_hf.data.decode import SKIPPED_KEY, collate_batch
from seed_hf.data.fashion_mnist import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    load_fashion_mnist,
)
from seed_hf.data.rows import ArrayImageDataset, ImageColumnTransform, SeededRowDataset
from seed_hf.data.sources import TrainData, TrainSource
from seed_hf.data.train_dataset import build_train_dataset
from seed_hf.data.transforms import MultiViewTransform, build_ssl_transform

__all__ = [
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "SKIPPED_KEY",
    "ArrayImageDataset",
    "ImageColumnTransform",
    "MultiViewTransform",
    "SeededRowDataset",
    "TrainData",
    "TrainSource",
    "build_ssl_transform",
    "build_train_dataset",
    "collate_batch",
    "load_fashion_mnist",
]

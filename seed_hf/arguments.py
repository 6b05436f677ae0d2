"""Argument dataclasses and set-up helpers shared by the example scripts."""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import transformers
from transformers.trainer_utils import get_last_checkpoint

from .data import (
    AUGMENTATION_BACKENDS,
    AUGMENTATION_PRESETS,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    ArrayImageDataset,
    ImageColumnTransform,
    MultiViewTransform,
    build_eval_transform,
    build_ssl_transform,
    detect_image_column,
    load_fashion_mnist,
    load_image_dataset,
)
from .trainer import STAGING_DIR, KnnMonitor

__all__ = [
    "DataTrainingArguments",
    "build_train_dataset",
    "build_knn_monitor",
    "setup_logging",
    "resolve_checkpoint",
]

logger = logging.getLogger(__name__)


@dataclass
class DataTrainingArguments:
    """Where the images come from and how they are augmented. With no source given, the
    Fashion-MNIST train split of the Debian package `dataset-fashion-mnist` is used."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A datasets hub id (e.g. timm/imagenet-1k-wds) or a local dataset script."},
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "The dataset configuration name."}
    )
    train_dir: str | None = field(default=None, metadata={"help": "A local imagefolder."})
    train_files: list[str] | None = field(
        default=None, metadata={"help": "Parquet or webdataset .tar files."}
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    image_column: str | None = field(
        default=None, metadata={"help": "Image column (auto-detected among image/img/jpg/png/webp)."}
    )
    streaming: bool = field(default=False, metadata={"help": "Stream the dataset instead of downloading it."})
    shuffle_buffer_size: int = field(
        default=10_000, metadata={"help": "Shuffle buffer of a streamed dataset."}
    )
    fashion_mnist_dir: str | None = field(
        default=None,
        metadata={"help": "Fashion-MNIST idx folder (default /usr/share/datasets/fashion-mnist)."},
    )
    augmentation: str | None = field(
        default=None,
        metadata={
            "help": f"Augmentation preset, one of {AUGMENTATION_PRESETS} (default: moco_v2, grayscale_small for Fashion-MNIST)."
        },
    )
    augmentation_backend: str = field(
        default="opencv",
        metadata={
            "help": f"Pixel kernels of the augmentation, one of {AUGMENTATION_BACKENDS}: opencv (ndarrays, several "
            "times faster per core) or torchvision (PIL/tensor kernels). Both draw the same random parameters."
        },
    )
    image_size: int | None = field(
        default=None, metadata={"help": "Training resolution (default 224, 32 for Fashion-MNIST)."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Truncate the training set (debugging)."}
    )
    knn_monitor_samples: int = field(
        default=0,
        metadata={
            "help": "Online kNN monitor on N Fashion-MNIST train / N//5 test images at each evaluation "
            "(use with --eval_strategy steps --eval_steps M); 0 disables it."
        },
    )
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache folder."})

    def __post_init__(self):
        for name in ("dataset_name", "dataset_config_name", "train_dir"):
            if getattr(self, name) == "":  # an emptied recipe field means "not set"
                setattr(self, name, None)
        sources = [s for s in (self.dataset_name, self.train_dir, self.train_files) if s]
        if len(sources) > 1:
            raise ValueError("Pass at most one of --dataset_name, --train_dir, --train_files.")
        if self.augmentation_backend not in AUGMENTATION_BACKENDS:
            raise ValueError(
                f"--augmentation_backend must be one of {AUGMENTATION_BACKENDS}, got {self.augmentation_backend!r}."
            )
        if self.augmentation is not None and self.augmentation not in AUGMENTATION_PRESETS:
            raise ValueError(
                f"--augmentation must be one of {AUGMENTATION_PRESETS}, got {self.augmentation!r}."
            )

    @property
    def uses_fashion_mnist(self) -> bool:
        return not (self.dataset_name or self.train_dir or self.train_files)

    def resolved(self) -> tuple[str, int, int, list[float] | None, list[float] | None]:
        """(augmentation, image_size, in_chans, mean, std); mean/std None means model default."""
        if self.uses_fashion_mnist:
            return (
                self.augmentation or "grayscale_small",
                self.image_size or 32,
                1,
                FASHION_MNIST_MEAN,
                FASHION_MNIST_STD,
            )
        return self.augmentation or "moco_v2", self.image_size or 224, 3, None, None


def warn_on_uneven_shards(num_shards: int, world_size: int, num_workers: int) -> bool:
    """Streams are split by shard: with fewer shards than, or a count not divisible by, world_size ×
    workers, some readers get more data than others (or none). Returns True when it warned."""
    readers = max(1, world_size) * max(1, num_workers)
    if num_shards % readers == 0:
        return False
    logger.warning(
        f"The stream has {num_shards} shard(s) for {readers} readers (world_size × dataloader workers): readers get "
        "uneven data. Use a shard count that is a multiple of world_size × dataloader_num_workers "
        "(e.g. re-shard the parquet/webdataset files) for balanced, fast streaming."
    )
    return True


def build_train_dataset(
    data_args: DataTrainingArguments,
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
):
    """Training dataset yielding ``pixel_values`` (``pixel_values_k`` for 2 views, and
    ``pixel_values_small`` with ``num_small_crops`` small crops)."""
    preset, image_size, _, _, _ = data_args.resolved()
    backend = data_args.augmentation_backend
    to_array = backend == "opencv"  # the opencv backend takes decoded ndarrays
    small = (
        build_ssl_transform(preset, small_crop_size, mean, std, scale=tuple(small_crop_scale), backend=backend)
        if num_small_crops
        else None
    )
    transform = MultiViewTransform(
        build_ssl_transform(preset, image_size, mean, std, backend=backend), num_views, small, num_small_crops
    )
    if data_args.uses_fashion_mnist:
        images, labels = load_fashion_mnist("train", data_args.fashion_mnist_dir)
        if data_args.max_train_samples:
            images, labels = images[: data_args.max_train_samples], labels[: data_args.max_train_samples]
        return ArrayImageDataset(images, labels, transform, seed=seed)
    dataset = load_image_dataset(
        data_args.dataset_name,
        data_args.dataset_config_name,
        data_args.train_dir,
        data_args.train_files,
        data_args.train_split,
        data_args.streaming,
        data_args.cache_dir,
    )
    image_column = detect_image_column(dataset.column_names or [], data_args.image_column)
    # decode ourselves, so that a corrupt image is skipped and counted instead of killing the run
    dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    if data_args.streaming:
        warn_on_uneven_shards(dataset.num_shards, world_size, num_workers)
        dataset = dataset.shuffle(seed=seed, buffer_size=data_args.shuffle_buffer_size)
        if data_args.max_train_samples:
            dataset = dataset.take(data_args.max_train_samples)
        apply = ImageColumnTransform(transform, image_column, in_chans, drop_bad_rows=True, to_array=to_array)
        return dataset.map(apply, batched=True, batch_size=16, remove_columns=dataset.column_names)
    apply = ImageColumnTransform(transform, image_column, in_chans, to_array=to_array)
    if data_args.max_train_samples:
        dataset = dataset.select(range(min(data_args.max_train_samples, len(dataset))))
    dataset.set_transform(apply)
    return dataset


def parse_script_args(parser, argv: list[str] | None = None) -> tuple:
    """``HfArgumentParser`` dataclasses from the command line, or from a recipe ``.json`` given
    first (keys starting with ``_`` are comments) followed by command-line overrides:
    ``run_seed.py recipes/x.json --max_steps 2``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith(".json"):
        recipe = json.loads(Path(argv.pop(0)).read_text())
        flags: list[str] = []
        for key, value in recipe.items():
            if key.startswith("_") or value is None:
                continue
            flags.append(f"--{key}")
            flags.extend(str(v) for v in value) if isinstance(value, list) else flags.append(str(value))
        argv = flags + argv  # later flags win
    return parser.parse_args_into_dataclasses(argv)


def setup_logging(training_args) -> logging.Logger:
    """Per-process log levels as in the transformers examples."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    for lib_logger in (logger, logging.getLogger("seed_hf")):
        lib_logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    return logging.getLogger("seed_hf")


def resolve_checkpoint(training_args) -> str | None:
    """The checkpoint to resume from: ``--resume_from_checkpoint`` or the last one in
    ``output_dir``; raises on a non-empty ``output_dir`` without checkpoints."""
    if training_args.resume_from_checkpoint is not None:
        if training_args.resume_from_checkpoint in ("True", "true", True):
            return get_last_checkpoint(training_args.output_dir)
        return training_args.resume_from_checkpoint
    if os.path.isdir(training_args.output_dir) and not training_args.overwrite_output_dir:
        last = get_last_checkpoint(training_args.output_dir)
        leftovers = [name for name in os.listdir(training_args.output_dir) if name != STAGING_DIR]
        if last is None and leftovers:
            raise ValueError(
                f"Output directory ({training_args.output_dir}) already exists and is not empty. "
                "Use --overwrite_output_dir to overwrite it."
            )
        if last is not None:
            logger.info(f"Checkpoint detected, resuming training at {last}.")
        return last
    return None


def build_knn_monitor(data_args: DataTrainingArguments, mean, std, image_size: int):
    """The online kNN monitor datasets (Fashion-MNIST), or None when disabled."""
    if not data_args.knn_monitor_samples:
        return None
    if not data_args.uses_fashion_mnist:
        raise ValueError(
            "--knn_monitor_samples currently monitors on Fashion-MNIST; omit it for other datasets."
        )
    transform = build_eval_transform(image_size, mean, std, crop_pct=1.0)
    n = data_args.knn_monitor_samples
    splits = {}
    for split, count in (("train", n), ("test", max(1, n // 5))):
        images, labels = load_fashion_mnist(split, data_args.fashion_mnist_dir)
        splits[split] = ArrayImageDataset(images[:count], labels[:count], transform, seed=None)
    return KnnMonitor(splits["train"], splits["test"])


def build_script_dataset(data_args: DataTrainingArguments, training_args, config, num_views: int):
    """The example scripts' training set for a SEED or MoCo ``config``; for a stream it also
    turns off batch dispatching, so accelerate shards the unsplit stream itself (splitting it
    here as well would silently drop data)."""
    dataset = build_train_dataset(
        data_args,
        num_views,
        config.in_chans,
        config.image_mean,
        config.image_std,
        training_args.seed,
        training_args.world_size,
        training_args.dataloader_num_workers,
        getattr(config, "num_small_crops", 0),
        getattr(config, "small_crop_size", 96),
        getattr(config, "small_crop_scale", (0.05, 0.14)),
    )
    if data_args.streaming:
        training_args.accelerator_config.dispatch_batches = False
    return dataset


def train_and_save(trainer, resume_from_checkpoint: str | None) -> dict:
    """``train`` → ``save_model`` → metrics and state files, as the transformers examples do."""
    result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    return result.metrics

"""Argument dataclasses and set-up helpers shared by the example scripts."""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from transformers.trainer_utils import get_last_checkpoint

from .batched_transforms import BATCHED_PRESETS, BatchedSSLTransform
from .data import (
    AUGMENTATION_BACKENDS,
    AUGMENTATION_PRESETS,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    INDEX_COLUMN,
    ArrayImageDataset,
    DecodeStats,
    ImageColumnTransform,
    MultiViewTransform,
    build_ssl_transform,
    decode_image,
    detect_image_column,
    load_fashion_mnist,
    load_image_dataset,
)
from .evaluation import LabelledImages, eval_data_config, eval_transform, load_labelled_splits
from .gpu_input import DeviceInputTransform, EncodedImageTransform
from .trainer import STAGING_DIR, KnnMonitor, remove_staging_leftovers

__all__ = [
    "DataTrainingArguments",
    "build_train_dataset",
    "build_device_transform",
    "build_knn_monitor",
    "setup_logging",
    "resolve_checkpoint",
    "check_hub_arguments",
    "check_resumable",
    "finished_run_results",
]

logger = logging.getLogger(__name__)

RUN_INFO_FILE = "run_info.json"
DATA_DEVICES = ("cpu", "cuda")


def _cuda_available() -> bool:  # one place to fake a GPU in tests
    return torch.cuda.is_available()


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
    data_device: str = field(
        default="cpu",
        metadata={
            "help": "Where JPEGs are decoded and augmented: cpu (dataloader workers, default) or cuda (the workers pass "
            "the encoded bytes; nvJPEG decodes and the augmentation runs batched on the training GPU: "
            "seed_hf.gpu_input). Needs a datasets source (--dataset_name, --train_dir, --train_files)."
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
            "help": "Online kNN monitor on N labelled train / N//5 evaluation images at each evaluation (use with "
            "--eval_strategy steps --eval_steps M); 0 disables it. Labelled data: --knn_dataset_name or "
            "--knn_train_dir/--knn_validation_dir (default: Fashion-MNIST)."
        },
    )
    knn_dataset_name: str | None = field(
        default=None, metadata={"help": "Labelled datasets id of the kNN monitor (with --knn_label_column)."}
    )
    knn_train_dir: str | None = field(default=None, metadata={"help": "Labelled imagefolder: kNN monitor's train side."})
    knn_validation_dir: str | None = field(default=None, metadata={"help": "Labelled imagefolder evaluated by the kNN monitor."})
    knn_image_column: str = field(default="image", metadata={"help": "Image column of --knn_dataset_name."})
    knn_label_column: str = field(default="label", metadata={"help": "Label column of --knn_dataset_name."})
    knn_train_split: str = field(default="train", metadata={"help": "Split of --knn_dataset_name to fit on."})
    knn_validation_split: str | None = field(
        default=None, metadata={"help": "Split of --knn_dataset_name to evaluate (default validation, else test)."}
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
        if self.data_device not in DATA_DEVICES:
            raise ValueError(f"--data_device must be one of {DATA_DEVICES}, got {self.data_device!r}.")
        if self.data_device == "cuda":
            self._check_device_input()

    def _check_device_input(self) -> None:
        if self.uses_fashion_mnist:
            raise ValueError(
                "--data_device cuda decodes JPEG bytes on the GPU, but the default Fashion-MNIST source is in-memory "
                "uint8 arrays with nothing to decode (its 28-px images augment fast in the dataloader workers): drop "
                "--data_device cuda, or pass a datasets source of JPEGs (--dataset_name, --train_dir, --train_files)."
            )
        preset = self.resolved()[0]
        if preset not in BATCHED_PRESETS:
            raise ValueError(
                f"--data_device cuda runs the augmentation batched on the GPU, which has the presets "
                f"{tuple(BATCHED_PRESETS)}; got --augmentation {preset!r}."
            )
        if not _cuda_available():
            raise ValueError(
                "--data_device cuda needs a CUDA GPU, and torch.cuda.is_available() is False here: drop "
                "--data_device cuda (or pass --data_device cpu) to decode and augment in the dataloader workers."
            )

    def describe(self) -> dict[str, Any]:
        """What the run trains on, as recorded in ``run_info.json`` and model cards (no local paths)."""
        augmentation, image_size, in_chans, _, _ = self.resolved()
        if self.uses_fashion_mnist:
            dataset, split = "fashion_mnist", "train"
        elif self.dataset_name:
            dataset, split = self.dataset_name, self.train_split
        elif self.train_dir:
            dataset, split = f"imagefolder {Path(self.train_dir).name}", None
        else:
            dataset, split = f"{len(self.train_files)} local shard file(s)", None
        return {
            "dataset": dataset,
            "dataset_split": split,
            "augmentation": augmentation,
            "image_size": image_size,
            "in_chans": in_chans,
        }

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
    if data_args.data_device != "cpu":  # GPU input path: rows stay JPEG bytes (build_device_transform)
        transform, to_array = EncodedImageTransform(in_chans), True
    else:
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
    dataset = undecoded_images(dataset, image_column, in_chans, data_args)
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
    if not {"__key__", "id"} & set(dataset.column_names):  # lets the skipped-image log name a row
        dataset = dataset.add_column(INDEX_COLUMN, list(range(len(dataset))))
    dataset.set_transform(apply)
    return dataset


def build_device_transform(
    data_args: DataTrainingArguments, config, device: torch.device | str, num_views: int
) -> DeviceInputTransform | None:
    """The trainer's ``device_transform`` for ``--data_device cuda`` (None for ``cpu``): decodes the
    encoded JPEGs of ``build_train_dataset``'s rows on ``device`` and augments them there with the
    batched twin of the CPU preset (same views, crop sizes and normalisation as
    ``build_train_dataset`` builds on the CPU). Pair it with ``gpu_input.collate_encoded_batch``."""
    if data_args.data_device == "cpu":
        return None
    preset, image_size, _, _, _ = data_args.resolved()
    mean, std = config.image_mean, config.image_std
    num_small_crops = getattr(config, "num_small_crops", 0)
    small = (
        BatchedSSLTransform.from_preset(preset, config.small_crop_size, mean, std, scale=config.small_crop_scale)
        if num_small_crops
        else None
    )
    return DeviceInputTransform(
        BatchedSSLTransform.from_preset(preset, image_size, mean, std),
        device,
        config.in_chans,
        num_views,
        small,
        num_small_crops,
    )


def _source_name(data_args: DataTrainingArguments) -> str:
    if data_args.dataset_name:
        return f"--dataset_name {data_args.dataset_name!r}"
    if data_args.train_dir:
        return f"--train_dir {data_args.train_dir!r}"
    return f"--train_files {list(data_args.train_files or [])}"


def undecoded_images(
    dataset, image_column: str, in_chans: int, data_args: DataTrainingArguments, num_probe: int = 16
):
    """``dataset`` with ``image_column`` left undecoded (decoded in the transform, so that a corrupt
    image is skipped and counted instead of killing the run), after decoding its first ``num_probe``
    images: a source none of whose images decode (a wrong --image_column, files that are not
    images) stops here, before training, not at the first batch."""
    columns = list(dataset.column_names or [])
    hint = f"pass the column that holds the images with --image_column (columns: {columns})"
    stats = DecodeStats(log_first=0)  # a probe: not logged as skipped training images
    try:
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
        probe = (
            dataset.take(num_probe)
            if data_args.streaming
            else dataset.select(range(min(num_probe, len(dataset))))
        )
        for row in probe:
            decode_image(row[image_column], in_chans, stats)
    except (TypeError, ValueError, NotImplementedError) as error:  # arrow: a column of other values
        raise ValueError(
            f"Column {image_column!r} of {_source_name(data_args)} holds no images ({type(error).__name__}: "
            f"{str(error)[:200]}): {hint}."
        ) from error
    if stats.seen == 0:
        raise ValueError(f"{_source_name(data_args)} (split {data_args.train_split!r}) has no rows.")
    if stats.skipped == stats.seen:
        raise ValueError(
            f"None of the first {stats.seen} images of {_source_name(data_args)} could be decoded from column "
            f"{image_column!r} (last error: {stats.last_error}). Check the source's files, or {hint}."
        )
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


def check_hub_arguments(training_args) -> None:
    """Refuses ``--push_to_hub`` without ``--hub_model_id`` before anything is trained."""
    if training_args.push_to_hub and not training_args.hub_model_id:
        raise ValueError(
            "--push_to_hub needs --hub_model_id org/name (the Hub repository to create or update); "
            "nothing was trained."
        )


def finished_run_results(training_args) -> dict | None:
    """The train results of a run in ``output_dir`` that already reached the requested length.

    Resuming it would train 0 steps and overwrite its results with zeros: the scripts return
    these results instead (and say so). None when there is no such run, or with
    ``--overwrite_output_dir``."""
    output_dir = Path(training_args.output_dir)
    state_file, results_file = output_dir / "trainer_state.json", output_dir / "train_results.json"
    if training_args.overwrite_output_dir or not (state_file.is_file() and results_file.is_file()):
        return None
    state = json.loads(state_file.read_text())
    step = state.get("global_step", 0)
    if training_args.max_steps > 0:
        target = training_args.max_steps
    elif state.get("num_train_epochs") == training_args.num_train_epochs:
        target = state.get("max_steps")
    else:  # another length in epochs: the Trainer works out what is left
        return None
    if not target or step < target:
        return None
    logger.warning(
        f"The run in {output_dir} is already complete ({step} of {target} steps): nothing to train, its results "
        "are kept. Pass a larger --max_steps to train on, or --overwrite_output_dir to start over."
    )
    remove_staging_leftovers(str(output_dir))
    return json.loads(results_file.read_text())


# config fields that decide the shapes of a checkpoint's tensors
RUN_FIELDS = (
    "model_type",
    "student_architecture",
    "architecture",
    "student_model_args",
    "model_args",
    "in_chans",
    "projection_dim",
    "head_hidden_dim",
    "queue_size",
    "num_small_crops",
)


def check_resumable(checkpoint: str | None, configs: list) -> None:
    """Refuses to resume from a checkpoint of another model (architecture, widths, queue size) with
    one message naming what the folder holds and what was asked for, instead of a state-dict
    size-mismatch dump. ``configs``: the config of each model (one per student of a group)."""
    if checkpoint is None:
        return
    config_file = Path(checkpoint) / "config.json"
    requested = [c.to_dict() for c in configs]
    if config_file.is_file():
        saved = json.loads(config_file.read_text())
        if len(requested) > 1:
            names = [c.get("student_architecture") for c in requested]
            held, asked = f"one student ({saved.get('student_architecture')})", f"students {names}"
        else:
            differences = [
                key
                for key in RUN_FIELDS
                if key in saved or key in requested[0]
                if saved.get(key) != requested[0].get(key)
            ]
            if not differences:
                return
            held = ", ".join(f"{key}={saved.get(key)!r}" for key in differences)
            asked = ", ".join(f"{key}={requested[0].get(key)!r}" for key in differences)
    else:  # a SeedStudentGroup checkpoint: students.<name>.* keys
        weights = Path(checkpoint) / "model.safetensors"
        if not weights.is_file():
            return
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:
            held_names = sorted({k.split(".")[1] for k in f.keys() if k.startswith("students.")})
        asked_names = sorted(c.get("student_architecture", "").replace(".", "_") for c in requested)
        if held_names == asked_names or not held_names:
            return
        held, asked = f"students {held_names}", f"students {asked_names}"
    raise ValueError(
        f"--output_dir {Path(checkpoint).parent} holds a run of {held} ({Path(checkpoint).name}), but this "
        f"run asks for {asked}: pass another --output_dir, or --overwrite_output_dir to start a new run there."
    )


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
    """The online kNN monitor datasets (labelled train / evaluation images with the evaluation
    preprocessing of ``seed_hf.evaluation``), or None when disabled."""
    if not data_args.knn_monitor_samples:
        return None
    has_source = data_args.knn_dataset_name or data_args.knn_train_dir
    if not has_source and not data_args.uses_fashion_mnist:
        raise ValueError(
            "--knn_monitor_samples needs labelled images for this dataset: pass --knn_dataset_name (with "
            "--knn_label_column) or --knn_train_dir and --knn_validation_dir."
        )
    n = data_args.knn_monitor_samples
    data = load_labelled_splits(
        data_args.knn_dataset_name,
        None,
        data_args.knn_train_dir,
        data_args.knn_validation_dir,
        data_args.knn_train_split,
        data_args.knn_validation_split,
        data_args.knn_image_column,
        data_args.knn_label_column,
        data_args.fashion_mnist_dir,
    ).subsample(n, max(1, n // 5))
    transform = eval_transform(eval_data_config(len(mean), image_size, mean, std))
    return KnnMonitor(
        LabelledImages(data.train_images, data.train_labels, transform),
        LabelledImages(data.eval_images, data.eval_labels, transform),
    )


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


def train_and_save(trainer, resume_from_checkpoint: str | None, run_info: dict[str, Any] | None = None) -> dict:
    """``train`` → ``save_model`` → metrics and state files, as the transformers examples do. A
    resumed run that had nothing left to train keeps the results it saved when it finished.
    ``run_info`` (data, method, teacher) is written to ``output_dir/run_info.json`` for exports
    and model cards."""
    if run_info is not None and trainer.args.should_save:
        Path(trainer.args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(trainer.args.output_dir) / RUN_INFO_FILE).write_text(json.dumps(run_info, indent=2) + "\n")
    start_step = None
    if resume_from_checkpoint and (Path(resume_from_checkpoint) / "trainer_state.json").is_file():
        start_step = json.loads((Path(resume_from_checkpoint) / "trainer_state.json").read_text())[
            "global_step"
        ]
    result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    results_file = Path(trainer.args.output_dir) / "train_results.json"
    if trainer.state.global_step == start_step and results_file.is_file():
        logger.warning(
            f"The run in {trainer.args.output_dir} is already complete (step {start_step}): nothing was trained, "
            "its results are kept."
        )
        return json.loads(results_file.read_text())
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    return result.metrics

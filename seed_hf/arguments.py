"""Argument dataclasses and set-up helpers shared by the example scripts."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers

from .batched_transforms import BATCHED_PRESETS, BatchedSSLTransform
from .datasets import FASHION_MNIST_MEAN, FASHION_MNIST_STD, build_train_dataset
from .evaluation import LabelledImages, eval_data_config, eval_transform, load_labelled_splits
from .gpu_input import DeviceInputTransform
from .trainer import KnnMonitor
from .transforms import AUGMENTATION_BACKENDS, AUGMENTATION_PRESETS

__all__ = [
    "DataTrainingArguments",
    "OnnxArguments",
    "onnx_export_options",
    "translate_onnx_error",
    "build_device_transform",
    "build_knn_monitor",
    "build_script_dataset",
    "setup_logging",
    "check_hub_arguments",
    "parse_script_args",
]

logger = logging.getLogger(__name__)

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
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Stream the dataset instead of downloading it. Parquet / webdataset shards (--train_files, or a "
            "hub dataset made of them) stream through seed_hf's exactly resumable ShardStream."
        },
    )
    shuffle_buffer_size: int = field(
        default=1000,
        metadata={
            "help": "Shuffle buffer of a streamed dataset, in rows per reader (process × dataloader worker): it holds "
            "that many encoded images in each worker (ImageNet: ~110 KB each), and a resumed run reads that many "
            "rows per reader before its first step."
        },
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
        default=None,
        metadata={
            "help": "Train on N images (debugging): a seeded random draw (seed --seed), class-balanced when the "
            "source has labels (an imagefolder, Fashion-MNIST); a stream takes its first N rows after shuffling."
        },
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
        for name in ("image_size", "max_train_samples", "knn_monitor_samples"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "knn_monitor_samples" else 1):
                at_least = 0 if name == "knn_monitor_samples" else 1
                raise ValueError(f"--{name} must be an integer ≥ {at_least} (or left unset), got {value}.")
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
        described = {
            "dataset": dataset,
            "dataset_split": split,
            "augmentation": augmentation,
            "image_size": image_size,
            "in_chans": in_chans,
        }
        if self.max_train_samples:
            described["train_subset"] = {
                "images": self.max_train_samples,
                "drawn": "first rows of the shuffled stream"
                if self.streaming
                else "seeded random draw (the run's seed), class-balanced where the source has labels",
            }
        return described

    @property
    def uses_fashion_mnist(self) -> bool:
        return not (self.dataset_name or self.train_dir or self.train_files)

    def resolved(self) -> tuple[str, int, int, list[float] | None, list[float] | None]:
        """(augmentation, image_size, in_chans, mean, std); mean/std None means model default."""
        if self.uses_fashion_mnist:
            return (
                self.augmentation or "grayscale_small",
                32 if self.image_size is None else self.image_size,
                1,
                FASHION_MNIST_MEAN,
                FASHION_MNIST_STD,
            )
        return self.augmentation or "moco_v2", 224 if self.image_size is None else self.image_size, 3, None, None


def build_device_transform(
    data_args: DataTrainingArguments, config, device: torch.device | str, num_views: int, seed: int | None = None
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
        seed=seed,
    )


def parse_script_args(parser, argv: list[str] | None = None) -> tuple:
    """``HfArgumentParser`` dataclasses from the command line and recipe ``.json`` files (keys:
    the flags without ``--``; keys starting with ``_`` are comments): ``run_seed.py recipes/x.json
    --max_steps 2``. A recipe may stand anywhere (``.json`` in any case, an existing file that is
    not the value of a flag); command-line flags override its values wherever they stand.

    Raises:
        SystemExit: with a message and no traceback, for a recipe that is missing, is not valid
            JSON (file, line and column named) or has a key that is no flag (close names given).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    recipes, rest = _split_recipes(parser, argv)
    flags = [flag for recipe in recipes for flag in _recipe_flags(parser, recipe)]
    return parser.parse_args_into_dataclasses(flags + rest)  # later flags win


def _is_flag(token: str) -> bool:
    if not token.startswith("-"):
        return False
    try:  # "-1" is a value (--max_steps -1), not a flag
        float(token)
        return False
    except ValueError:
        return True


def _split_recipes(parser, argv: list[str]) -> tuple[list[str], list[str]]:
    """(recipe files, the other arguments): a ``.json`` token is a recipe unless a preceding flag
    takes it as its value (``--teacher_checkpoint x.json``, ``--train_files a.json b.json``)."""
    actions = {option: action for action in parser._actions for option in action.option_strings}
    recipes: list[str] = []
    rest: list[str] = []
    takes: int | str = 0  # values the last flag still takes: a count, "many" (nargs + / *) or "bool"
    for token in argv:
        if _is_flag(token):
            action = actions.get(token.split("=", 1)[0])
            nargs = getattr(action, "nargs", 0)
            if "=" in token or action is None or nargs == 0:
                takes = 0
            elif nargs in ("+", "*"):
                takes = "many"
            elif nargs == "?":  # HfArgumentParser's bools: --flag [true|false]
                takes = "bool" if action.const is True else 1
            else:
                takes = 1 if nargs is None else int(nargs)
            rest.append(token)
            continue
        is_json = token.lower().endswith(".json")
        if takes == "many" or (isinstance(takes, int) and takes > 0):
            takes = takes - 1 if isinstance(takes, int) else takes
            rest.append(token)
            continue
        takes = 0
        if not is_json:
            rest.append(token)
        elif Path(token).is_file():
            recipes.append(token)
        else:
            raise SystemExit(f"error: recipe file {token!r} does not exist.")
    return recipes, rest


def _recipe_flags(parser, path: str) -> list[str]:
    """A recipe file as command-line flags, checked against the parser's flags."""
    import difflib

    try:
        recipe = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise SystemExit(
            f"error: recipe {path}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}."
        ) from None
    if not isinstance(recipe, dict):
        raise SystemExit(
            f"error: recipe {path} must hold a JSON object of flag names to values, got a {type(recipe).__name__}."
        )
    options = {option[2:] for action in parser._actions for option in action.option_strings if option.startswith("--")}
    dests = sorted({action.dest for action in parser._actions if action.option_strings} - {"help"})
    unknown = [key for key in recipe if not key.startswith("_") and key not in options]
    if unknown:
        named = []
        for key in unknown:
            close = difflib.get_close_matches(key, dests, n=3)
            named.append(f"{key!r}" + (f" (close: {', '.join(close)})" if close else ""))
        raise SystemExit(
            f"error: recipe {path}: unknown key{'s' if len(unknown) > 1 else ''} {'; '.join(named)}. Keys are "
            "the script's flags without '--' (see --help); keys starting with '_' are comments."
        )
    flags: list[str] = []
    for key, value in recipe.items():
        if key.startswith("_") or value is None:
            continue
        flags.append(f"--{key}")
        flags.extend(str(v) for v in value) if isinstance(value, list) else flags.append(str(value))
    return flags


def setup_logging(training_args) -> logging.Logger:
    """Per-process log levels as in the transformers examples."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    # seed_hf's own INFO lines (resuming from ..., stream position) are shown on the main process
    # unless a level was asked for
    ours = logging.INFO if training_args.log_level == "passive" and training_args.should_log else log_level
    for lib_logger in (logger, logging.getLogger("seed_hf")):
        lib_logger.setLevel(ours)
    import datasets  # imported here: seed_hf imports without `datasets` (e.g. on a bare GPU image)

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




@dataclass
class OnnxArguments:
    """``--onnx`` / ``--onnx_int8`` of the scripts that export students (seed_hf.onnx_export)."""

    onnx: bool = field(
        default=False,
        metadata={
            "help": "Also write onnx/model.onnx into the exported folder: pixel_values -> pooled features, dynamic "
            "batch, verified against the PyTorch features within --onnx_atol at batch 1 and 64 (needs the onnx "
            "extra: pip install 'seed-hf[onnx]')."
        },
    )
    onnx_int8: bool = field(
        default=False,
        metadata={
            "help": "Also write onnx/model_int8.onnx (static int8, calibrated on train images of the --onnx_* data, "
            "default Fashion-MNIST); its kNN top-1 against fp32 on the evaluation split goes into the card. "
            "Implies --onnx."
        },
    )
    onnx_atol: float = field(default=1e-4, metadata={"help": "Largest max abs difference ONNX vs PyTorch accepted."})
    onnx_opset: int = field(default=17, metadata={"help": "ONNX opset of the graphs."})
    onnx_dataset_name: str | None = field(default=None, metadata={"help": "Labelled datasets id for --onnx_int8."})
    onnx_train_dir: str | None = field(default=None, metadata={"help": "Labelled imagefolder: calibration + kNN train side."})
    onnx_validation_dir: str | None = field(default=None, metadata={"help": "Labelled imagefolder: kNN evaluation side."})
    onnx_train_split: str = field(default="train", metadata={"help": "Split of --onnx_dataset_name to calibrate / fit on."})
    onnx_validation_split: str | None = field(
        default=None, metadata={"help": "Split of --onnx_dataset_name to evaluate (default validation, else test)."}
    )
    onnx_image_column: str = field(default="image", metadata={"help": "Image column of --onnx_dataset_name."})
    onnx_label_column: str = field(default="label", metadata={"help": "Label column of --onnx_dataset_name."})
    onnx_fashion_mnist_dir: str | None = field(default=None, metadata={"help": "Fashion-MNIST idx folder."})
    onnx_max_train_samples: int | None = field(
        default=None, metadata={"help": "kNN on N train images (class-balanced seeded draw); default all."}
    )
    onnx_max_eval_samples: int | None = field(
        default=None, metadata={"help": "kNN on N evaluation images (class-balanced seeded draw); default all."}
    )


# export_onnx's parameters -> the flags that set them, for its error messages
_ONNX_FLAGS = {"atol": "--onnx_atol", "opset": "--onnx_opset", "eval_data": "--onnx_dataset_name / --onnx_train_dir"}


def onnx_export_options(args: OnnxArguments) -> dict[str, Any] | None:
    """``export_onnx`` keyword arguments for the flags (None without ``--onnx`` / ``--onnx_int8``).
    Checks the onnx extra and the flags first, so a missing extra stops the script before it trains
    or exports; loads the labelled data of ``--onnx_int8`` (calibration and kNN)."""
    if not (args.onnx or args.onnx_int8):
        return None
    from .onnx_export import require_onnx

    require_onnx("--onnx_int8" if args.onnx_int8 and not args.onnx else "--onnx")
    if args.onnx_atol <= 0:
        raise ValueError(f"--onnx_atol must be > 0, got {args.onnx_atol}.")
    options: dict[str, Any] = {"int8": args.onnx_int8, "atol": args.onnx_atol, "opset": args.onnx_opset}
    if args.onnx_int8:
        options["eval_data"] = load_labelled_splits(
            args.onnx_dataset_name,
            None,
            args.onnx_train_dir,
            args.onnx_validation_dir,
            args.onnx_train_split,
            args.onnx_validation_split,
            args.onnx_image_column,
            args.onnx_label_column,
            args.onnx_fashion_mnist_dir,
        ).subsample(args.onnx_max_train_samples, args.onnx_max_eval_samples)
    return options


def translate_onnx_error(error: ValueError) -> ValueError:
    """``error`` of ``seed_hf.onnx_export`` with its parameters (``atol=…``) named by their flags."""
    import re

    message = str(error)
    for parameter, flag in _ONNX_FLAGS.items():
        message = re.sub(rf"\b{parameter}=", f"{flag}=", message)
    return type(error)(message)

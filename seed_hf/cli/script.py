"""Set-up shared by the example scripts: logging, the Hub flags, the training set, the online kNN
monitor and the ONNX options, each from the scripts' argument dataclasses."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import transformers

from seed_hf.cli.arguments import DataTrainingArguments, OnnxArguments
from seed_hf.data.augmentation import SMALL_CROP_SCALE, SMALL_CROP_SIZE
from seed_hf.data.decode import collate_batch
from seed_hf.data.gpu_input import build_device_transform, collate_encoded_batch
from seed_hf.data.sources import TrainData
from seed_hf.data.train_dataset import build_train_dataset
from seed_hf.evaluation.features import eval_data_config, eval_transform
from seed_hf.evaluation.labelled import LabelledImages, load_labelled_splits
from seed_hf.evaluation.monitor import KnnMonitor
from seed_hf.training.run_folder import RunFolderInUseError

__all__ = [
    "build_device_input",
    "build_knn_monitor",
    "build_script_dataset",
    "check_hub_arguments",
    "int8_refusals",
    "onnx_export_options",
    "run_script",
    "setup_logging",
]

logger = logging.getLogger(__name__)


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


def _labelled(args, prefix: str):
    """``load_labelled_splits`` of the ``--{prefix}_*`` flags, its errors naming them."""
    flag = lambda name: getattr(args, f"{prefix}_{name}")  # noqa: E731
    return load_labelled_splits(
        flag("dataset_name"),
        None,
        flag("train_dir"),
        flag("validation_dir"),
        flag("train_split"),
        flag("validation_split"),
        flag("image_column"),
        flag("label_column"),
        args.onnx_fashion_mnist_dir if prefix == "onnx" else args.fashion_mnist_dir,
        flag_prefix=f"{prefix}_",  # its errors name our flags: --knn_label_column
    )


def build_knn_monitor(data_args: DataTrainingArguments, mean, std, image_size: int) -> KnnMonitor | None:
    """The online kNN monitor datasets (labelled train / evaluation images with the evaluation
    preprocessing of ``seed_hf.evaluation.features``), or None when disabled."""
    if not data_args.knn_monitor_samples:
        given = [
            f"--{name}"
            for name in ("knn_dataset_name", "knn_train_dir", "knn_validation_dir")
            if getattr(data_args, name) is not None
        ]
        if given:
            logger.warning(
                f"{' '.join(given)} given but --knn_monitor_samples is 0: the kNN monitor is off. Pass "
                "--knn_monitor_samples N (with --eval_strategy steps --eval_steps M) to run it."
            )
        return None
    has_source = data_args.knn_dataset_name or data_args.knn_train_dir
    if not has_source and not data_args.source().is_fashion_mnist:
        raise ValueError(
            "--knn_monitor_samples needs labelled images for this dataset: pass --knn_dataset_name (with "
            "--knn_label_column) or --knn_train_dir and --knn_validation_dir."
        )
    n = data_args.knn_monitor_samples
    data = _labelled(data_args, "knn").subsample(n, max(1, n // 5))
    transform = eval_transform(eval_data_config(len(mean), image_size, mean, std))
    return KnnMonitor(
        LabelledImages(data.train_images, data.train_labels, transform),
        LabelledImages(data.eval_images, data.eval_labels, transform),
    )


def build_script_dataset(data: TrainData, training_args, config, num_views: int):
    """The example scripts' training set of ``data`` for a SEED or MoCo ``config``; for a stream it
    also turns off batch dispatching, so accelerate shards the unsplit stream itself (splitting it
    here as well would silently drop data)."""
    dataset = build_train_dataset(
        data,
        num_views,
        config.in_chans,
        config.image_mean,
        config.image_std,
        training_args.seed,
        training_args.world_size,
        training_args.dataloader_num_workers,
        getattr(config, "num_small_crops", 0),  # a MocoConfig has no small crops
        getattr(config, "small_crop_size", SMALL_CROP_SIZE),
        getattr(config, "small_crop_scale", SMALL_CROP_SCALE),
    )
    if data.source.streaming:
        training_args.accelerator_config.dispatch_batches = False
    return dataset


def build_device_input(data: TrainData, config, training_args, num_views: int) -> tuple[Any, Callable]:
    """``(device_transform, data_collator)`` of the trainer: with ``--data_device cuda`` the workers
    pass JPEG bytes, decoded and augmented batched on the training device (seeded by the run's
    seed); on the CPU path no device transform and :func:`collate_batch`."""
    if data.data_device == "cpu":
        return None, collate_batch
    transform = build_device_transform(
        data.augmentation, data.image_size, config, training_args.device, num_views, seed=training_args.seed
    )
    return transform, collate_encoded_batch


def onnx_export_options(args: OnnxArguments, training_dataset: str | None = None) -> dict[str, Any] | None:
    """``export_onnx`` keyword arguments for the flags (None without ``--onnx`` / ``--onnx_int8``).
    Checks the onnx extra and the flags first, so a missing extra stops the script before it trains
    or exports. ``--onnx_int8`` is calibrated and measured on the student's own data: the
    ``--onnx_*`` labelled data, else Fashion-MNIST when ``training_dataset`` (what the run records
    as its ``dataset``) is the default ``fashion_mnist``; with neither, it is refused here."""
    if not (args.onnx or args.onnx_int8):
        return None
    from seed_hf.export.onnx_graph import require_onnx

    require_onnx("--onnx_int8" if args.onnx_int8 and not args.onnx else "--onnx")
    if not args.onnx_rtol > 0:
        raise ValueError(f"--onnx_rtol must be > 0, got {args.onnx_rtol}.")
    options: dict[str, Any] = {"int8": args.onnx_int8, "rtol": args.onnx_rtol, "opset": args.onnx_opset}
    if args.onnx_int8:
        given = args.onnx_dataset_name or args.onnx_train_dir or args.onnx_fashion_mnist_dir
        if not given and training_dataset != "fashion_mnist":
            trained_on = (
                f"trained on {training_dataset}" if training_dataset else "training data not recorded"
            )
            raise ValueError(
                f"--onnx_int8 calibrates the int8 graph on the student's own data and measures it there against "
                f"fp32 ({trained_on}): pass labelled images of that data with --onnx_dataset_name (and "
                "--onnx_label_column) or --onnx_train_dir and --onnx_validation_dir, or drop --onnx_int8 (--onnx "
                "writes the fp32 graph alone)."
            )
        data = _labelled(args, "onnx")
        options["eval_data"] = data.subsample(args.onnx_max_train_samples, args.onnx_max_eval_samples)
        from seed_hf.export.onnx_verify import VERIFY_SINGLES

        num_eval = len(options["eval_data"].eval_labels)
        if num_eval < VERIFY_SINGLES:  # now, not after training: the graphs are verified on these images
            raise ValueError(
                f"The ONNX graphs are verified on at least {VERIFY_SINGLES} evaluation images, but the --onnx_* data's "
                f"evaluation split ({data.name}: --onnx_validation_dir, or --onnx_validation_split of "
                f"--onnx_dataset_name; --onnx_max_eval_samples) holds {num_eval}."
            )
        logger.info(f"--onnx_int8 is calibrated and measured on {data.name}.")
    return options


def int8_refusals(records: dict[str, dict[str, Any]]) -> str | None:
    """The error a script ends with when ``--onnx_int8`` was refused for any of ``records``
    (``{exported folder: export_onnx record}``), naming each folder and its shortfalls; else None."""
    refused = {folder: r["int8_refused"] for folder, r in records.items() if r and "int8_refused" in r}
    if not refused:
        return None
    lines = [
        f"{folder}: {'; '.join(r['shortfalls'])}"
        + (f" (on {r['knn']['dataset']}, kNN k={r['knn']['k']})" if "knn" in r else "")
        for folder, r in refused.items()
    ]
    return (
        "--onnx_int8 refused: the int8 graph is below seed_hf's quality bar against fp32, so it was not written "
        "(onnx/model.onnx and the rest of each folder are):\n  " + "\n  ".join(lines)
    )


# where an explicitly raised ValueError / FileNotFoundError is a refusal, not a bug: seed_hf, the
# script itself, and transformers' argument parsing (TrainingArguments' own checks)
_REFUSING_MODULES = ("seed_hf", "__main__", "transformers.training_args", "transformers.hf_argparser")
# the exceptions a refusal raises (RunFolderInUseError: a run folder another live process holds)
_REFUSAL_TYPES = (ValueError, FileNotFoundError, RunFolderInUseError)


def _is_refusal(error: BaseException) -> bool:
    """Whether ``error`` is a refusal: one of :data:`_REFUSAL_TYPES` raised by a ``raise`` statement
    of seed_hf, the running script or transformers' argument checks. One that Python raised itself (an unpacking, a conversion) or that another library raised is not."""
    import linecache

    if not isinstance(error, _REFUSAL_TYPES) or error.__traceback__ is None:
        return False
    tb = error.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "")
    if not any(module == name or module.startswith(f"{name}.") for name in _REFUSING_MODULES):
        return False
    return linecache.getline(tb.tb_frame.f_code.co_filename, tb.tb_lineno).lstrip().startswith("raise")


def run_script(main: Callable[[], Any], cleanup: Callable[[], None] | None = None) -> None:
    """Runs an example script's ``main`` for the command line, then ``cleanup`` (e.g.
    :func:`~seed_hf.training.distributed.shutdown_distributed`, which every script that trains calls last).

    A refusal (a bad flag, a run folder of another recipe or in use by another run, a missing image
    column: a ``ValueError`` or ``FileNotFoundError`` raised by seed_hf or the script, or by
    transformers' checks of ``TrainingArguments``; a ``RunFolderInUseError``) is printed as ``error: <message>`` on stderr without a traceback, and the
    process exits with status 1. Every other exception keeps its traceback: it is unexpected."""
    try:
        main()
    except _REFUSAL_TYPES as error:
        if not _is_refusal(error):
            raise
        if cleanup is not None:
            cleanup()
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    if cleanup is not None:
        cleanup()

"""The example scripts' argument dataclasses: where the training images come from
(:class:`DataTrainingArguments`, which builds the data layer's :class:`~seed_hf.data.TrainData`),
ONNX export (:class:`OnnxArguments`), the frozen teacher (:class:`TeacherArguments`) and the
small crops (:class:`SmallCropArguments`). The command line that parses them is
:mod:`seed_hf.cli.command_line`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from seed_hf.data.augmentation import SMALL_CROP_SIZE
from seed_hf.data.batched_transforms import BATCHED_PRESETS
from seed_hf.data.sources import TrainData, TrainSource
from seed_hf.data.transforms import AUGMENTATION_BACKENDS, AUGMENTATION_PRESETS
from seed_hf.export.onnx_graph import DEFAULT_OPSET
from seed_hf.export.onnx_int8 import INT8_QUALITY_BAR
from seed_hf.export.onnx_verify import DEFAULT_RTOL

__all__ = [
    "DataTrainingArguments",
    "OnnxArguments",
    "SmallCropArguments",
    "TeacherArguments",
]


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
    knn_train_dir: str | None = field(
        default=None, metadata={"help": "Labelled imagefolder: kNN monitor's train side."}
    )
    knn_validation_dir: str | None = field(
        default=None, metadata={"help": "Labelled imagefolder evaluated by the kNN monitor."}
    )
    knn_image_column: str = field(default="image", metadata={"help": "Image column of --knn_dataset_name."})
    knn_label_column: str = field(default="label", metadata={"help": "Label column of --knn_dataset_name."})
    knn_train_split: str = field(default="train", metadata={"help": "Split of --knn_dataset_name to fit on."})
    knn_validation_split: str | None = field(
        default=None,
        metadata={"help": "Split of --knn_dataset_name to evaluate (default validation, else test)."},
    )
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache folder."})

    def __post_init__(self):
        for name in ("dataset_name", "dataset_config_name", "train_dir"):
            if getattr(self, name) == "":  # an emptied recipe field means "not set"
                setattr(self, name, None)
        if self.knn_monitor_samples < 0:
            raise ValueError(f"--knn_monitor_samples must be an integer ≥ 0, got {self.knn_monitor_samples}.")
        self.train_data()  # the library checks the source and its views (its errors name the flags)
        if self.data_device == "cuda":
            self._check_device_input()

    def _check_device_input(self) -> None:
        if self.source().is_fashion_mnist:
            raise ValueError(
                "--data_device cuda decodes JPEG bytes on the GPU, but the default Fashion-MNIST source is in-memory "
                "uint8 arrays with nothing to decode (its 28-px images augment fast in the dataloader workers): drop "
                "--data_device cuda, or pass a datasets source of JPEGs (--dataset_name, --train_dir, --train_files)."
            )
        preset = self.train_data().augmentation
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

    def source(self) -> TrainSource:
        """Where the images come from, as the data layer takes it."""
        return TrainSource(
            dataset_name=self.dataset_name,
            dataset_config_name=self.dataset_config_name,
            train_dir=self.train_dir,
            train_files=tuple(self.train_files) if self.train_files else None,
            train_split=self.train_split,
            image_column=self.image_column,
            streaming=self.streaming,
            shuffle_buffer_size=self.shuffle_buffer_size,
            fashion_mnist_dir=self.fashion_mnist_dir,
            cache_dir=self.cache_dir,
            max_train_samples=self.max_train_samples,
        )

    def train_data(self) -> TrainData:
        """The source and its views with every default resolved (resolution, channels, preset,
        normalisation): derived here once, passed on to the data layer, the config and the cards."""
        source = self.source()
        return TrainData.resolve(
            source, self.augmentation, self.image_size, self.augmentation_backend, self.data_device
        )


@dataclass
class OnnxArguments:
    """``--onnx`` / ``--onnx_int8`` of the scripts that export students (seed_hf.export.onnx_export)."""

    onnx: bool = field(
        default=False,
        metadata={
            "help": "Also write onnx/model.onnx into the exported folder: pixel_values -> pooled features, dynamic "
            "batch, verified against the PyTorch features within --onnx_rtol of their scale at batch 1 and 64 "
            "(needs the onnx extra: pip install 'seed-hf[onnx]')."
        },
    )
    onnx_int8: bool = field(
        default=False,
        metadata={
            "help": "Also write onnx/model_int8.onnx (static int8 of Conv/MatMul/Gemm), calibrated on train images "
            "of the student's own data (the --onnx_* data; a run trained on the default Fashion-MNIST uses it) "
            "and kept only when it meets the quality bar against fp32 on that data's evaluation split (per-image "
            f"cosine >= {INT8_QUALITY_BAR['mean_cosine']} on average and >= {INT8_QUALITY_BAR['p1_cosine']} for 99%% "
            f"of the images, kNN top-1 not more than {INT8_QUALITY_BAR['max_knn_drop']} point lower beyond noise: "
            "seed_hf.export.onnx_int8.INT8_QUALITY_BAR); otherwise only the fp32 graph is written, the figures are "
            "printed and the script exits with an error. Implies --onnx."
        },
    )
    onnx_rtol: float = field(
        default=DEFAULT_RTOL,
        metadata={
            "help": "Largest accepted max abs difference ONNX vs PyTorch, relative to the largest absolute "
            "value of the PyTorch features."
        },
    )
    onnx_opset: int = field(default=DEFAULT_OPSET, metadata={"help": "ONNX opset of the graphs."})
    onnx_dataset_name: str | None = field(
        default=None,
        metadata={"help": "Labelled datasets id for --onnx_int8: the data the student was trained on."},
    )
    onnx_train_dir: str | None = field(
        default=None, metadata={"help": "Labelled imagefolder: calibration + kNN train side."}
    )
    onnx_validation_dir: str | None = field(
        default=None, metadata={"help": "Labelled imagefolder: kNN evaluation side."}
    )
    onnx_train_split: str = field(
        default="train", metadata={"help": "Split of --onnx_dataset_name to calibrate / fit on."}
    )
    onnx_validation_split: str | None = field(
        default=None,
        metadata={"help": "Split of --onnx_dataset_name to evaluate (default validation, else test)."},
    )
    onnx_image_column: str = field(default="image", metadata={"help": "Image column of --onnx_dataset_name."})
    onnx_label_column: str = field(default="label", metadata={"help": "Label column of --onnx_dataset_name."})
    onnx_fashion_mnist_dir: str | None = field(default=None, metadata={"help": "Fashion-MNIST idx folder."})
    onnx_max_train_samples: int | None = field(
        default=None, metadata={"help": "kNN on N train images (class-balanced seeded draw); default all."}
    )
    onnx_max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "kNN on N evaluation images (class-balanced seeded draw); default all."},
    )


@dataclass
class TeacherArguments:
    """The frozen teacher (``load_teacher``'s arguments as flags): of ``run_seed.py``, and of
    ``run_teacher_cache.py``, which runs the same teacher once and stores its embeddings."""

    teacher_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "seed_hf MoCo/SEED run folder, timm name (with --teacher_checkpoint), hf-hub:org/name (timm) "
            "or hf:org/name (transformers)."
        },
    )
    teacher_checkpoint: str | None = field(
        default=None, metadata={"help": "Local teacher weights: safetensors, timm or MoCo v1/v2 checkpoint."}
    )
    teacher_model_args: str | None = field(
        default=None,
        metadata={
            "help": "JSON dict of timm.create_model args of a timm teacher (e.g. SwAV RN50-w2 widths)."
        },
    )
    allow_random_teacher: bool = field(
        default=False,
        metadata={
            "help": "Accept a timm teacher name without weights (no --teacher_checkpoint, not hf-hub:): distils a "
            "randomly initialised teacher, for smoke tests only."
        },
    )
    teacher_embedding: str = field(
        default="auto", metadata={"help": "transformers teachers: auto, cls, mean or pooler."}
    )
    teacher_image_mean: list[float] | None = field(
        default=None,
        metadata={
            "help": "Normalisation the teacher was trained with (with --teacher_image_std; one value or one per "
            "channel): inputs are re-normalised to it. Default: a transformers teacher's "
            "preprocessor_config.json (required then), the data's for other teachers."
        },
    )
    teacher_image_std: list[float] | None = field(
        default=None, metadata={"help": "See --teacher_image_mean."}
    )
    teacher_image_size: int | None = field(
        default=None,
        metadata={
            "help": "Resize the teacher's inputs to this resolution (e.g. the one it was trained at, when the student "
            "trains at another: a warning says so); default: the teacher sees the student's views as they are."
        },
    )

    def load_kwargs(self) -> dict:
        """``load_teacher``'s keyword arguments (``name_or_path`` and ``checkpoint`` included)."""
        return dict(
            name_or_path=self.teacher_name_or_path,
            checkpoint=self.teacher_checkpoint,
            model_args=json.loads(self.teacher_model_args) if self.teacher_model_args else None,
            embedding=self.teacher_embedding,
            allow_random=self.allow_random_teacher,
            teacher_image_mean=self.teacher_image_mean,
            teacher_image_std=self.teacher_image_std,
            teacher_image_size=self.teacher_image_size,
        )

    def recorded(self) -> dict:
        """Every teacher flag (the fields of :class:`TeacherArguments`, also of a subclass's instance)
        as a teacher cache records and compares them: local paths resolved, JSON parsed."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(TeacherArguments)}
        for name in ("teacher_name_or_path", "teacher_checkpoint"):
            path = values[name]
            values[name] = str(Path(path).resolve()) if path and Path(path).exists() else path
        if values["teacher_model_args"]:
            values["teacher_model_args"] = json.loads(values["teacher_model_args"])
        return values


@dataclass
class SmallCropArguments:
    """The small-crop recipe (SEED's small-patch variant): the students' and a teacher cache's."""

    num_small_crops: int = field(
        default=0,
        metadata={
            "help": "Small crops per image distilled against a second queue (official SwAV setting: 6)."
        },
    )
    small_crop_size: int = field(default=SMALL_CROP_SIZE, metadata={"help": "Resolution of the small crops."})

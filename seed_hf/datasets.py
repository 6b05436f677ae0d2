"""Training data sources, decoding, per-sample seeding and collation.

* Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (idx files, offline): the
  embedded default for the demo and the small-scale study (:func:`load_fashion_mnist`).
* Any ``datasets`` source (:func:`build_train_dataset`): hub id, local ``imagefolder``,
  parquet / webdataset files, map-style or streaming; images stay encoded in the source and are
  decoded (crop-aware for JPEGs) and augmented lazily in the dataloader workers.
* Per-sample seeded augmentation for map-style sources (:class:`ArrayImageDataset`,
  :class:`SeededRowDataset`): a sample's views depend on ``(seed, epoch, index)`` only.
* Undecodable images are skipped, counted and named in the log, never silently dropped
  (:class:`DecodeStats`, :func:`collate_batch`).
"""

from __future__ import annotations

import gzip
import io
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from . import crop_decode, opencv_kernels
from .subsets import balanced_subset
from .transforms import MultiViewTransform, build_ssl_transform

if TYPE_CHECKING:
    from .arguments import DataTrainingArguments

__all__ = [
    "FASHION_MNIST_DIR",
    "load_fashion_mnist",
    "build_train_dataset",
    "ArrayImageDataset",
    "SeededRowDataset",
    "ImageColumnTransform",
    "convert_image",
    "collate_batch",
    "load_image_dataset",
    "detect_image_column",
]

logger = logging.getLogger(__name__)

FASHION_MNIST_DIR = os.environ.get("SEED_HF_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_MEAN, FASHION_MNIST_STD = [0.286], [0.353]


def _read_idx(path: Path) -> np.ndarray:
    """Reads an (optionally gzipped) idx file: big-endian dims after a 4-byte magic."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file.")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()


def load_fashion_mnist(
    split: str = "train", root: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(images (n, 28, 28) uint8, labels (n,) int64)`` of a Fashion-MNIST split."""
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    root = Path(root or FASHION_MNIST_DIR)
    image_file, label_file = (root / name for name in FASHION_MNIST_FILES[split])
    for file in (image_file, label_file):
        if not file.is_file() and not file.with_suffix("").is_file():
            raise FileNotFoundError(
                f"Fashion-MNIST not found at {root} (missing {file.name}). Install it with "
                "`apt-get install -y dataset-fashion-mnist`, set SEED_HF_FASHION_MNIST_DIR, or pass "
                "--dataset_name / --train_dir."
            )
    pick = lambda f: f if f.is_file() else f.with_suffix("")  # noqa: E731
    return _read_idx(pick(image_file)), _read_idx(pick(label_file)).astype(np.int64)


class DecodeStats:
    """Counts images that could not be decoded (per process / dataloader worker) and logs them."""

    def __init__(self, log_every: int = 100, log_first: int = 100):
        self.seen = 0
        self.skipped = 0
        self.log_every = log_every
        self.log_first = log_first
        self.last_error = ""

    def record(self, ok: bool, reason: str = "", name: str | None = None) -> None:
        self.seen += 1
        if not ok:
            self.skipped += 1
            self.last_error = reason
            if self.skipped <= self.log_first or self.skipped % self.log_every == 0:
                logger.warning(
                    f"skipped undecodable image {name or '(unnamed)'}: {reason} ({self.skipped} of "
                    f"{self.seen} seen so far by this process)"
                )


DECODE_STATS = DecodeStats()


def decode_image(
    value: Any,
    in_chans: int,
    stats: DecodeStats | None = DECODE_STATS,
    to_array: bool = False,
    name: str | None = None,
) -> Image.Image | np.ndarray | None:
    """Decodes a datasets image cell (PIL image, bytes, path or ``{"bytes", "path"}``) to
    ``in_chans`` channels: a PIL image, or with ``to_array`` a uint8 ndarray ``(h, w[, c])``
    (complete JPEGs then decode with libjpeg-turbo through OpenCV, the rest through PIL).
    Returns None (counted in ``stats``, logged with ``name``) for corrupt or truncated data."""
    try:
        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        if to_array and isinstance(value, (str, os.PathLike)):
            value = Path(value).read_bytes()
        decoded = opencv_kernels.decode_jpeg(value, in_chans) if to_array and isinstance(value, bytes) else None
        if decoded is None:  # PIL: every other format, and JPEGs OpenCV does not take
            decoded = _decode_with_pil(value, in_chans)
            decoded = np.asarray(decoded) if to_array else decoded
    except Exception as error:  # PIL raises many types for bad data
        if stats is not None:
            stats.record(False, f"{type(error).__name__}: {error}"[:120], name)
        return None
    if stats is not None:
        stats.record(True)
    return decoded


def _decode_with_pil(value: Any, in_chans: int) -> Image.Image:
    if isinstance(value, (bytes, bytearray)):
        image = Image.open(io.BytesIO(value))
    elif isinstance(value, (str, os.PathLike)):
        image = Image.open(value)
    elif isinstance(value, Image.Image):
        image = value
    else:
        raise TypeError(f"unsupported image cell {type(value).__name__}")
    image.load()  # forces a full decode: truncated files fail here, not later in a transform
    return convert_image(image, in_chans)


def convert_image(image: Any, in_chans: int) -> Any:
    """Brings a PIL image (any mode: CMYK, palette, 16-bit, RGBA, grayscale) to ``in_chans``."""
    if not isinstance(image, Image.Image):
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float32)
        image = Image.fromarray((array / max(array.max(), 1.0) * 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    target = "L" if in_chans == 1 else "RGB"
    return image if image.mode == target else image.convert(target)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of one sample's augmentation: a function of (seed, epoch, index) only."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63 - 1)


@contextmanager
def per_sample_rng(seed: int, epoch: int, index: int) -> Iterator[None]:
    """Runs the block with torch's CPU RNG seeded by :func:`sample_seed`, restoring the global
    stream afterwards: a sample's augmentation no longer depends on worker count, world size,
    prefetching or where a run was resumed."""
    with torch.random.fork_rng(devices=[]):
        # the CPU generator only, which is all fork_rng(devices=[]) restores and all the CPU augmentation
        # draws from: torch.manual_seed would also (lazily) reseed CUDA / XPU / MTIA, recording a traceback
        # for each (~0.12 ms a sample, a third of the demo's data time) and leaking into their streams
        torch.default_generator.manual_seed(sample_seed(seed, epoch, index))
        yield


class PerSampleSeeded(Dataset):
    """Base of the map-style datasets whose sample ``index`` is augmented under
    :func:`per_sample_rng` ``(seed, epoch, index)``; the trainers call ``set_epoch``."""

    def __init__(self, transform: Callable | None, seed: int | None):
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)


class ArrayImageDataset(PerSampleSeeded):
    """Map-style dataset over in-memory uint8 images ``(n, h, w)`` or ``(n, h, w, c)``.

    Items are dicts: the keys of ``transform``'s output plus ``labels`` when labels are given.

    ``transform=None`` yields the raw uint8 ``(c, h, w)`` tensor (for batch-level transforms).

    With ``seed`` set (the default), each item's random augmentation draws from a generator
    seeded by ``(seed, epoch, index)`` (the Trainer calls ``set_epoch``). The views then do
    not depend on worker count, world size, prefetching or where a run was resumed: a resumed
    run sees exactly the augmentations of an uninterrupted one, and 2 processes see those of 1.
    """

    def __init__(
        self, images: np.ndarray, labels: np.ndarray | None, transform: Callable, seed: int | None = 0
    ):
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        if self.images.ndim == 3:
            self.images = self.images.unsqueeze(1)  # n x 1 x h x w
        elif self.images.ndim == 4 and self.images.shape[-1] in (1, 3):
            self.images = self.images.permute(0, 3, 1, 2).contiguous()
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        super().__init__(transform, seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self.transform is None:
            out = self.images[index]
        elif self.seed is None:
            out = self.transform(self.images[index])
        else:
            with per_sample_rng(self.seed, self.epoch, index):
                out = self.transform(self.images[index])
        if not isinstance(out, dict):
            out = {"pixel_values": out}
        if self.labels is not None:
            out["labels"] = self.labels[index]
        return out


SKIPPED_KEY = "num_skipped_images"


def collate_batch(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stacks the tensor fields of a list of examples (views, labels, ids); examples whose
    image could not be decoded (no ``pixel_values``) are dropped. Skipped images are counted in
    ``num_skipped_images`` (one count per kept example; the trainers sum it over the run)."""
    kept = [e for e in examples if e.get("pixel_values") is not None]
    if not kept:
        raise ValueError(
            "Every image of this batch failed to decode; check the data (see the skipped-image log)."
        )
    dropped = len(examples) - len(kept)
    if dropped:
        kept[0] = {**kept[0], SKIPPED_KEY: kept[0].get(SKIPPED_KEY, 0) + dropped}
        kept = [{SKIPPED_KEY: 0, **e} for e in kept]
    examples = kept
    batch = {}
    for key in examples[0]:
        values = [example[key] for example in examples]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(values[0], (int, np.integer)):
            batch[key] = torch.tensor(values)
    return batch


# row index column added to map-style sources whose rows have no path, key or id (see image_name)
INDEX_COLUMN = "__index__"
IMAGE_COLUMN_CANDIDATES = ("image", "img", "jpg", "jpeg", "png", "webp", "pixel_values")


def detect_image_column(column_names: Sequence[str], image_column: str | None = None) -> str:
    """Returns ``image_column`` if present, else the first of image/img/jpg/png/webp found."""
    if image_column is not None:
        if image_column not in column_names:
            raise ValueError(f"--image_column {image_column!r} not found; columns are {list(column_names)}.")
        return image_column
    for candidate in IMAGE_COLUMN_CANDIDATES:
        if candidate in column_names:
            return candidate
    raise ValueError(f"No image column among {list(column_names)}; pass --image_column.")


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
            raise FileNotFoundError(f"--train_dir {train_dir!r} is not a folder.")
        return load_dataset(
            "imagefolder", data_dir=train_dir, split=split, streaming=streaming, cache_dir=cache_dir
        )
    if train_files:
        files = list(train_files)
        builder = "webdataset" if all(str(f).endswith(".tar") for f in files) else "parquet"
        return load_dataset(
            builder, data_files={split: files}, split=split, streaming=streaming, cache_dir=cache_dir
        )
    raise ValueError("Pass one of dataset_name, train_dir or train_files.")


@dataclass
class ImageColumnTransform:
    """Batched ``set_transform``/``map`` function: image column → view tensors (+ labels, ids).

    ``to_array`` decodes to ndarrays (for the ``opencv`` augmentation backend). With
    ``crop_aware`` (default) and a transform that declares ``accepts_encoded_jpeg`` (the
    opencv presets), complete JPEGs are not decoded here but handed over as
    ``seed_hf.crop_decode.EncodedJpeg``: the random crop is drawn from the header and only the
    needed DCT scale is decoded (same random parameters, slightly different pixels). Undecodable
    rows are dropped with ``drop_bad_rows`` (streaming ``map``) or left with
    ``pixel_values=None`` (map-style ``set_transform``, which must keep the row count;
    ``collate_batch`` drops them). A picklable object, so that spawned dataloader workers
    can receive it.
    """

    transform: Callable
    image_column: str
    in_chans: int
    label_column: str | None = None
    drop_bad_rows: bool = False
    extra_columns: Sequence[str] = ("id",)
    to_array: bool = False
    crop_aware: bool = True
    # bad rows dropped since the last kept one (drop_bad_rows): reported with a kept row, the next
    # one of a later batch when a whole batch was bad
    _dropped: int = field(default=0, init=False, repr=False)

    def image_name(self, examples: dict[str, list], row: int, cell: Any) -> str:
        """How the logs name a row: its file path, else its webdataset key, id or dataset index."""
        path = cell.get("path") if isinstance(cell, dict) else cell
        if isinstance(path, (str, os.PathLike)) and path:
            return str(path)
        for column in ("__key__", "id", INDEX_COLUMN):
            if column in examples:
                url = f" of {examples['__url__'][row]}" if "__url__" in examples else ""
                return f"{column}={examples[column][row]!r}{url}"
        return f"(row {row} of a batch; no path, key or id column)"

    def _views(self, cell: Any, name: str | None = None) -> Any:
        """The transform's output for one cell, or None when the image cannot be decoded
        (counted in ``DECODE_STATS`` and logged with ``name``)."""
        encoded = None
        if self.to_array and self.crop_aware and getattr(self.transform, "accepts_encoded_jpeg", False):
            encoded = crop_decode.encoded_jpeg(cell, self.in_chans)
        if encoded is None:
            image = decode_image(cell, self.in_chans, to_array=self.to_array, name=name)
            return None if image is None else self.transform(image)
        try:
            views = self.transform(encoded)
        except crop_decode.UndecodableImage as error:
            DECODE_STATS.record(False, str(error), name=name)
            return None
        DECODE_STATS.record(True)
        return views

    def __call__(self, examples: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {}
        num_rows = len(next(iter(examples.values()), []))
        # a row without the image column (a webdataset sample without a .jpg): undecodable, counted
        for row, cell in enumerate(examples.get(self.image_column) or [None] * num_rows):
            name = self.image_name(examples, row, cell)
            views = self._views(cell, name)
            if views is None and self.drop_bad_rows:
                self._dropped += 1
                continue
            if self.drop_bad_rows:  # every row carries the field: a stream keeps one schema
                out.setdefault(SKIPPED_KEY, []).append(self._dropped)
                self._dropped = 0
            views = {} if views is None else views
            if not isinstance(views, dict):
                views = {"pixel_values": views}
            for key in views or {"pixel_values": None}:
                out.setdefault(key, []).append(views.get(key))
            for column in self.extra_columns:
                if column in examples:
                    out.setdefault(column, []).append(examples[column][row])
            if self.label_column is not None and self.label_column in examples:
                out.setdefault("labels", []).append(examples[self.label_column][row])
        if self._dropped and out.get(SKIPPED_KEY):  # trailing bad rows: report them with this batch
            out[SKIPPED_KEY][-1] += self._dropped
            self._dropped = 0
        return out


def seeded_row_example(
    transform: Callable[[dict[str, list]], dict[str, list]], row: dict[str, Any], seed: int, epoch: int, sample_id: int
) -> dict[str, Any]:
    """One training example from one source row: ``transform`` (an :class:`ImageColumnTransform`,
    which takes batches of rows) applied to the row under :func:`per_sample_rng`."""
    with per_sample_rng(seed, epoch, sample_id):
        out = transform({key: [value] for key, value in row.items()})
    return {key: values[0] for key, values in out.items()}


class SeededRowDataset(PerSampleSeeded):
    """A map-style ``datasets.Dataset`` whose rows become training examples through
    ``transform`` (an :class:`ImageColumnTransform`), each under its own seed: the views of row
    ``index`` depend on ``(seed, epoch, index)`` only, exactly as for :class:`ArrayImageDataset`
    (the trainers call ``set_epoch``), so a resumed or multi-process run sees the augmentations
    of an uninterrupted single-process one.

    Rows are read in batches (``__getitems__``: one arrow read per batch, as ``datasets`` does
    with ``set_transform``) and undecodable images come back with ``pixel_values=None``
    (``collate_batch`` drops and counts them)."""

    def __init__(self, rows, transform: ImageColumnTransform, seed: int = 0):
        self.rows = rows
        super().__init__(transform, seed)

    def __len__(self) -> int:
        return len(self.rows)

    def _example(self, row: dict[str, Any], index: int) -> dict[str, Any]:
        row = {INDEX_COLUMN: index, **row}  # names the row in the skipped-image log
        return seeded_row_example(self.transform, row, self.seed, self.epoch, index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._example(self.rows[int(index)], int(index))

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        columns = self.rows[list(indices)]  # dict of column -> list
        return [
            self._example({key: values[i] for key, values in columns.items()}, int(index))
            for i, index in enumerate(indices)
        ]


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
    ``pixel_values_small`` with ``num_small_crops`` small crops). It states the normalisation of
    its views (``normalization = (mean, std)``), which the trainer checks against the config the
    export publishes."""
    dataset = _train_dataset(
        data_args, num_views, in_chans, mean, std, seed, world_size, num_workers, num_small_crops, small_crop_size,
        small_crop_scale,
    )  # fmt: skip
    dataset.normalization = (list(mean), list(std))
    return dataset


def _train_dataset(
    data_args, num_views, in_chans, mean, std, seed, world_size, num_workers, num_small_crops, small_crop_size,
    small_crop_scale,
):  # fmt: skip
    preset, image_size, _, _, _ = data_args.resolved()
    backend = data_args.augmentation_backend
    to_array = backend == "opencv"  # the opencv backend takes decoded ndarrays
    if data_args.data_device != "cpu":  # GPU input path: rows stay JPEG bytes (arguments.build_device_transform)
        from .gpu_input import EncodedImageTransform

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
            keep = balanced_subset(labels, data_args.max_train_samples, seed)
            images, labels = images[keep], labels[keep]
        return ArrayImageDataset(images, labels, transform, seed=seed)
    if data_args.streaming and (shards := stream_shards(data_args)) is not None:
        return _shard_stream(shards, transform, in_chans, to_array, seed, data_args)
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
        logger.warning(
            f"{_source_name(data_args)} streams through `datasets` (it has no parquet / webdataset shard files): a "
            "resumed run re-reads the batches it skips and is not bit-identical to an uninterrupted one."
        )
        warn_on_uneven_shards(dataset.num_shards, world_size, num_workers)
        dataset = dataset.shuffle(seed=seed, buffer_size=data_args.shuffle_buffer_size)
        if data_args.max_train_samples:
            dataset = dataset.take(data_args.max_train_samples)
        apply = ImageColumnTransform(transform, image_column, in_chans, drop_bad_rows=True, to_array=to_array)
        return dataset.map(apply, batched=True, batch_size=16, remove_columns=dataset.column_names)
    apply = ImageColumnTransform(transform, image_column, in_chans, to_array=to_array)
    if data_args.max_train_samples:
        dataset = dataset.select(training_subset(dataset, data_args.max_train_samples, seed))
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


def stream_shards(data_args: DataTrainingArguments) -> list[str] | None:
    """The parquet / webdataset shard files of a streamed source (``--train_files``, or a hub
    dataset's data files), or None when it has none (an imagefolder, other formats)."""
    if data_args.train_files:
        files = expand_files(data_args.train_files)
    elif data_args.dataset_name:
        from datasets import load_dataset_builder

        builder = load_dataset_builder(
            data_args.dataset_name, data_args.dataset_config_name, cache_dir=data_args.cache_dir
        )
        data_files = builder.config.data_files or {}
        if data_args.train_split not in data_files:
            return None
        files = [str(f) for f in data_files[data_args.train_split]]
    else:
        return None
    if files and (all(f.endswith(".tar") for f in files) or all(f.endswith(".parquet") for f in files)):
        return files
    return None


def expand_files(patterns: Sequence[str]) -> list[str]:
    """``--train_files`` with glob patterns expanded (local paths or fsspec URLs, as ``datasets``
    does); a pattern or path that matches nothing raises, naming it."""
    import fsspec

    files: list[str] = []
    for pattern in map(str, patterns):
        fs, _, paths = fsspec.get_fs_token_paths(pattern, expand=True)
        if not paths or (not any(ch in pattern for ch in "*?[") and not fs.exists(paths[0])):
            raise FileNotFoundError(f"--train_files {pattern!r} matches no file.")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        files += [p if protocol in ("file", "local") else f"{protocol}://{p}" for p in sorted(paths)]
    return files


def _shard_stream(shards, transform, in_chans: int, to_array: bool, seed: int, data_args) -> Dataset:
    from .shard_stream import ShardIndex, ShardStream

    index = ShardIndex(shards[0])
    first = index.read_rows(range(min(16, len(index))))
    columns = list(first[min(first)]) if first else []
    try:
        image_column = detect_image_column(columns, data_args.image_column)
    except ValueError as error:
        raise ValueError(f"{shards[0]} (the first shard of {_source_name(data_args)}): {error}") from error
    _check_decodable([row[image_column] for row in first.values()], image_column, in_chans, data_args, columns)
    apply = ImageColumnTransform(transform, image_column, in_chans, to_array=to_array)
    return ShardStream(
        shards,
        apply,
        shuffle_buffer_size=data_args.shuffle_buffer_size,
        seed=seed,
        max_rows=data_args.max_train_samples,
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
    from datasets import Image as ImageFeature

    columns = list(dataset.column_names or [])
    try:
        dataset = dataset.cast_column(image_column, ImageFeature(decode=False))
        probe = (
            dataset.take(num_probe)
            if data_args.streaming
            else dataset.select(range(min(num_probe, len(dataset))))
        )
        cells = [row[image_column] for row in probe]
    except (TypeError, ValueError, NotImplementedError) as error:  # arrow: a column of other values
        raise ValueError(
            f"Column {image_column!r} of {_source_name(data_args)} holds no images ({type(error).__name__}: "
            f"{str(error)[:200]}): pass the column that holds the images with --image_column (columns: {columns})."
        ) from error
    _check_decodable(cells, image_column, in_chans, data_args, columns)
    return dataset


def _check_decodable(
    cells, image_column: str, in_chans: int, data_args: DataTrainingArguments, columns: list[str]
) -> None:
    """Decodes the probe ``cells``: a source none of whose images decode (a wrong --image_column,
    files that are not images) stops here, before training, not at the first batch."""
    cells = list(cells)
    image_like = (bytes, bytearray, dict, str, os.PathLike, Image.Image)
    if cells and not any(isinstance(cell, image_like) for cell in cells):
        kinds = sorted({type(cell).__name__ for cell in cells})
        raise ValueError(
            f"Column {image_column!r} of {_source_name(data_args)} holds no images (values of type {kinds}): pass "
            f"the column that holds the images with --image_column (columns: {columns})."
        )
    stats = DecodeStats(log_first=0)  # a probe: not logged as skipped training images
    for cell in cells:
        decode_image(cell, in_chans, stats)
    if stats.seen == 0:
        raise ValueError(f"{_source_name(data_args)} (split {data_args.train_split!r}) has no rows.")
    if stats.skipped == stats.seen:
        raise ValueError(
            f"None of the first {stats.seen} images of {_source_name(data_args)} could be decoded from column "
            f"{image_column!r} (last error: {stats.last_error}). Check the source's files, or pass the column that "
            f"holds the images with --image_column (columns: {columns})."
        )

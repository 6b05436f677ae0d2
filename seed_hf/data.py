"""Datasets, augmentation presets and collators.

* Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (idx files, offline): the
  embedded default for the demo and the small-scale study.
* Any ``datasets`` source: hub id, local ``imagefolder``, parquet / webdataset files,
  map-style or streaming; augmentations run lazily in the dataloader workers.
* Presets of the official code (``moco_v2`` default, ``moco_v1``, ``simclr``, ``swav``), the
  official SEED code's own ``seed_simclr`` / ``seed_swav`` (weaker than SimCLR's / SwAV's, see
  :func:`build_ssl_transform`) plus ``grayscale_small`` for 28-px grayscale data. Teacher and
  student see the same view.
  Two pixel backends with the same random parameters: ``opencv`` (default, ndarrays, fastest
  per core; ``seed_hf.augment``) and ``torchvision`` (PIL / tensor kernels).
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
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import Dataset
from torchvision.transforms import v2

from . import augment, crop_decode

__all__ = [
    "FASHION_MNIST_DIR",
    "AUGMENTATION_PRESETS",
    "AUGMENTATION_BACKENDS",
    "load_fashion_mnist",
    "build_ssl_transform",
    "ArrayImageDataset",
    "SeededRowDataset",
    "MultiViewTransform",
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
AUGMENTATION_PRESETS = (
    "moco_v2", "moco_v1", "simclr", "swav", "seed_simclr", "seed_swav", "grayscale_small", "none"
)
AUGMENTATION_BACKENDS = augment.AUGMENTATION_BACKENDS


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
        decoded = augment.decode_jpeg(value, in_chans) if to_array and isinstance(value, bytes) else None
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


def _blur_kernel(image_size: int) -> int:
    kernel = max(3, int(0.1 * image_size))
    return kernel if kernel % 2 == 1 else kernel + 1


class RandomGaussianBlur:
    """Gaussian blur with sigma ~ U(0.1, 2.0) as in MoCo-v2 / SimCLR: OpenCV on ndarrays, PIL's
    ``ImageFilter`` on PIL images (several times faster than a tensor convolution on CPU),
    torchvision's on tensors."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0), kernel_size: int = 23):
        self.sigma = sigma
        self.kernel_size = kernel_size

    def __call__(self, image: Any) -> Any:
        sigma = float(torch.empty(()).uniform_(*self.sigma))
        if isinstance(image, np.ndarray):
            return augment.gaussian_blur(image, sigma, self.kernel_size)
        if isinstance(image, Image.Image):
            return image.filter(ImageFilter.GaussianBlur(radius=sigma))
        return v2.functional.gaussian_blur(image, [self.kernel_size] * 2, [sigma])


class ToNormalizedTensor:
    """PIL image / ndarray / uint8 tensor → float32 ``(c, h, w)`` normalised with ``mean``/``std``
    in one pass (``x · 1/(255·std) − mean/std``): ToImage + ToDtype + Normalize fused."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        mean_t, std_t = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        self.scale = (1.0 / (255.0 * std_t)).view(-1, 1, 1)
        self.shift = (-mean_t / std_t).view(-1, 1, 1)

    def __call__(self, image: Any) -> torch.Tensor:
        if isinstance(image, (Image.Image, np.ndarray)):
            array = np.asarray(image)
            # channels-first copy in uint8 first: the float math then runs on contiguous memory
            array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
            array = np.ascontiguousarray(array)
            tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
        else:
            tensor = image
        if tensor.dtype != torch.uint8:  # already float in [0, 1]
            return (tensor.float() * 255.0) * self.scale + self.shift
        return torch.addcmul(self.shift, tensor.float(), self.scale)


def _ndarray_to_image(image: Any) -> Any:
    return v2.functional.to_image(image) if isinstance(image, np.ndarray) else image


_BACKEND_OPS = {
    "torchvision": (v2.RandomResizedCrop, v2.ColorJitter, v2.RandomGrayscale, v2.RandomHorizontalFlip),
    "opencv": (
        crop_decode.CropAwareRandomResizedCrop,  # ndarrays as ArrayRandomResizedCrop; also JPEG bytes
        augment.ArrayColorJitter,
        augment.ArrayRandomGrayscale,
        augment.ArrayRandomHorizontalFlip,
    ),
}


def build_ssl_transform(
    preset: str = "moco_v2",
    image_size: int = 224,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    scale: tuple[float, float] | None = None,
    backend: str = "opencv",
) -> v2.Compose:
    """Training augmentation of the official MoCo / SimCLR / SwAV / SEED code (torchvision v2).

    Input: PIL image, ndarray ``(h, w[, c])`` or uint8 tensor ``(c, h, w)``; output: float
    tensor ``(c, image_size, image_size)`` normalised with ``mean``/``std``.

    ``backend="opencv"`` turns every input into an ndarray and runs OpenCV kernels
    (``seed_hf.augment``); ``"torchvision"`` runs torchvision's PIL kernels on PIL images and
    its tensor kernels otherwise. Both draw the same random parameters from torch's RNG.

    Presets (crop scale, then ops in order; jitter = brightness/contrast/saturation/hue, its
    four ops in random order as torchvision's ``ColorJitter`` does):

    * ``moco_v2``: scale (0.2, 1); jitter 0.4/0.4/0.4/0.1 p=0.8; grayscale p=0.2; blur p=0.5; flip.
    * ``moco_v1``: scale (0.2, 1); grayscale p=0.2; jitter 0.4/0.4/0.4/0.4 always; flip.
    * ``simclr`` / ``swav``: scale (0.08, 1) / (0.14, 1); flip; jitter 0.8/0.8/0.8/0.2 p=0.8;
      grayscale p=0.2; blur p=0.5 (SimCLR's strength).
    * ``seed_simclr``: what the official SEED code (jacobswan1/SEED ``tools/utils.py``
      ``simclr_aug``, used by ``main.py`` for SimCLR teachers) actually runs: ``moco_v1``.
    * ``seed_swav``: the official SEED ``swav_aug`` (SwAV teachers, ``main.py`` and
      ``main_small-patch.py``; ``swav_small_aug`` with the small-crop scale): ``moco_v2`` with
      scale (0.14, 1), in MoCo-v2's op order.

    The opencv pipeline also takes ``seed_hf.crop_decode.EncodedJpeg`` inputs (it then has
    ``accepts_encoded_jpeg = True``): decode and random crop in one step, at a reduced DCT
    scale when the crop allows.
    """
    if preset not in AUGMENTATION_PRESETS:
        raise ValueError(f"augmentation preset must be one of {AUGMENTATION_PRESETS}, got {preset!r}.")
    if backend not in AUGMENTATION_BACKENDS:
        raise ValueError(f"augmentation backend must be one of {AUGMENTATION_BACKENDS}, got {backend!r}.")
    if preset == "none":  # deterministic resize + center crop: cheap on any backend
        backend = "torchvision"
    if backend == "opencv":
        augment.require_opencv()
    random_resized_crop, color_jitter, random_grayscale, random_flip = _BACKEND_OPS[backend]
    default_scale = {
        "moco_v2": (0.2, 1.0),
        "moco_v1": (0.2, 1.0),
        "simclr": (0.08, 1.0),
        "swav": (0.14, 1.0),
        "seed_simclr": (0.2, 1.0),
        "seed_swav": (0.14, 1.0),
    }
    crop = random_resized_crop(
        image_size, scale=scale or default_scale.get(preset, (0.3, 1.0)), antialias=True
    )
    blur = v2.RandomApply([RandomGaussianBlur(kernel_size=_blur_kernel(image_size))], p=0.5)
    ops: list[Callable] = []
    if preset == "none":
        ops += [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
    elif preset in ("moco_v2", "seed_swav"):
        ops += [
            crop,
            v2.RandomApply([color_jitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            random_grayscale(0.2),
            blur,
        ]
        ops += [random_flip()]
    elif preset in ("moco_v1", "seed_simclr"):
        ops += [crop, random_grayscale(0.2), color_jitter(0.4, 0.4, 0.4, 0.4), random_flip()]
    elif preset in ("simclr", "swav"):
        ops += [crop, random_flip(), v2.RandomApply([color_jitter(0.8, 0.8, 0.8, 0.2)], p=0.8)]
        ops += [random_grayscale(0.2), blur]
    else:  # grayscale_small: 28-32 px single-channel data, no hue/saturation, no blur
        ops += [crop, random_flip(), v2.RandomApply([color_jitter(0.4, 0.4)], p=0.8)]
    # PIL and tensors go straight to torchvision's kernels, everything to ndarrays for OpenCV's
    ops.insert(0, crop_decode.to_array_or_encoded if backend == "opencv" else _ndarray_to_image)
    ops.append(ToNormalizedTensor(mean, std))
    pipeline = v2.Compose(ops)
    pipeline.accepts_encoded_jpeg = backend == "opencv"  # read by ImageColumnTransform
    return pipeline


class MultiViewTransform:
    """Applies ``transform`` ``num_views`` times: ``pixel_values`` (+ ``pixel_values_k``), and
    ``small_transform`` ``num_small_crops`` times: ``pixel_values_small`` ``(m, c, s, s)``."""

    VIEW_KEYS = ("pixel_values", "pixel_values_k")

    def __init__(
        self,
        transform: Callable,
        num_views: int = 1,
        small_transform: Callable | None = None,
        num_small_crops: int = 0,
    ):
        if num_views not in (1, 2):
            raise ValueError(f"num_views must be 1 or 2, got {num_views}.")
        if num_small_crops and small_transform is None:
            raise ValueError("num_small_crops needs a small_transform.")
        self.transform = transform
        self.num_views = num_views
        self.small_transform = small_transform
        self.num_small_crops = num_small_crops

    @property
    def accepts_encoded_jpeg(self) -> bool:
        """Whether every view's transform takes ``EncodedJpeg`` inputs (crop-aware decode)."""
        transforms = [self.transform] + ([self.small_transform] if self.num_small_crops else [])
        return all(getattr(t, "accepts_encoded_jpeg", False) for t in transforms)

    def __call__(self, image: Any) -> dict[str, torch.Tensor]:
        views = {key: self.transform(image) for key in self.VIEW_KEYS[: self.num_views]}
        if self.num_small_crops:
            views["pixel_values_small"] = torch.stack(
                [self.small_transform(image) for _ in range(self.num_small_crops)]
            )
        return views


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of one sample's augmentation: a function of (seed, epoch, index) only."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63 - 1)


@contextmanager
def per_sample_rng(seed: int, epoch: int, index: int) -> Iterator[None]:
    """Runs the block with torch's CPU RNG seeded by :func:`sample_seed`, restoring the global
    stream afterwards: a sample's augmentation no longer depends on worker count, world size,
    prefetching or where a run was resumed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sample_seed(seed, epoch, index))
        yield


class ArrayImageDataset(Dataset):
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
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

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
        for row, cell in enumerate(examples[self.image_column]):
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


class SeededRowDataset(Dataset):
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
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    @property
    def column_names(self) -> list[str]:
        return self.rows.column_names

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def _example(self, row: dict[str, Any], index: int) -> dict[str, Any]:
        cells = {key: [value] for key, value in row.items()}
        cells.setdefault(INDEX_COLUMN, [index])  # names the row in the skipped-image log
        with per_sample_rng(self.seed, self.epoch, index):
            out = self.transform(cells)
        return {key: values[0] for key, values in out.items()}

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._example(self.rows[int(index)], int(index))

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        columns = self.rows[list(indices)]  # dict of column -> list
        return [
            self._example({key: values[i] for key, values in columns.items()}, int(index))
            for i, index in enumerate(indices)
        ]

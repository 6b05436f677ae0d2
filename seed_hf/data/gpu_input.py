"""GPU input path (``--data_device cuda``): JPEG bytes through the DataLoader, decode and
augmentation batched on the training device.

At ImageNet scale the CPU pipeline (decode + ``moco_v2`` augmentation per photo) needs many busy
cores per GPU, or the data loader sets the pace (``docs/performance.md`` has the figures). Here
the dataloader workers only read bytes and parse JPEG headers; the training process

1. decodes the whole batch with nvJPEG through ``torchvision.io.decode_jpeg(list, device=...)``
   (baseline JPEGs on the hardware JPEG engines of A100/H100/H200, the others by nvJPEG's
   hybrid decoder), and
2. augments it with :class:`seed_hf.data.batched_transforms.BatchedSSLTransform`: per-sample
   RandomResizedCrop boxes drawn from each image's own ``(h, w)``, ``roi_align`` resampling
   of the images of one size in one call, then jitter / grayscale / blur / flip / normalise
   for the whole batch.

Why ``torchvision.io.decode_jpeg`` and not NVIDIA DALI: no extra dependency (DALI is its own
CUDA-versioned wheel with its own pipeline and loader, which would replace the ``datasets`` /
Trainer data path), the decoder ships in the torch wheel set already installed, it decodes a
batch in one call, and its outputs are ordinary tensors on the current CUDA stream. The same
call runs with ``device="cpu"`` (libjpeg-turbo), so CPU tests cover this code path.
(torchvision 0.29 marks its decoders deprecated in favour of TorchCodec; they still work, and
the swap is this module's :func:`decode_images`.)

Data flow::

    worker:   ImageColumnTransform(EncodedImageTransform)  row → EncodedJpeg (header parsed, not
              decoded) | uint8 (c, h, w) pixels decoded on the CPU (non-JPEG, CMYK) | None (bad)
    worker:   collate_encoded_batch  rows → {"encoded_images": EncodedImageBatch, ids, labels,
              num_skipped_images}
    trainer:  DeviceInputTransform (QueueTrainer.device_transform, at the start of training_step)
              → {"pixel_values": (n, c, s, s) float on the device, ...}

The host blocks on the decoder's own CUDA stream only; the training kernels queued for the
previous step keep the GPU busy meanwhile, so decode overlaps the step as long as decode +
kernel launches take less host time than the step takes on the GPU
(``benchmarks/bench_gpu_input.py`` measures it).

Random parameters follow the CPU presets' distributions, not their RNG stream (torchvision draws
per image and op, here per batch). The scripts seed each batch's generators from the run's seed
and a digest of the batch's bytes (``DeviceInputTransform(seed=...)``): DDP ranks draw different
parameters, and a resumed run redraws exactly those of an uninterrupted one without any
generator state in the checkpoint. Without ``seed`` the global generators are used (crop boxes
from torch's CPU generator, pixel ops from the device's), which the Trainer checkpoints, but
which every DDP rank seeds alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from seed_hf.data.augmentation import VIEW_KEYS
from seed_hf.data.batched_transforms import BatchedSSLTransform
from seed_hf.data.crop_decode import EncodedJpeg, UndecodableImage
from seed_hf.data.decode import SKIPPED_KEY, DecodeStats, collate_batch, decode_image

__all__ = [
    "ENCODED_KEY",
    "DEVICE_JPEG_MODES",
    "EncodedImageTransform",
    "EncodedImageBatch",
    "collate_encoded_batch",
    "decode_images",
    "DeviceInputTransform",
    "build_device_transform",
]

ENCODED_KEY = "encoded_images"
# JPEG colour spaces handed to nvJPEG; the rest (CMYK, YCCK) is decoded on the CPU in the worker
DEVICE_JPEG_MODES = ("L", "RGB")


def _chw_uint8(image: np.ndarray | torch.Tensor, in_chans: int) -> torch.Tensor:
    """ndarray ``(h, w[, c])`` or tensor ``(c, h, w)`` → contiguous uint8 ``(in_chans, h, w)``."""
    if isinstance(image, np.ndarray):
        array = np.ascontiguousarray(image[..., None] if image.ndim == 2 else image)
        image = torch.from_numpy(array if array.flags.writeable else array.copy()).permute(2, 0, 1)
    if image.shape[0] != in_chans:  # 1 → 3: replicated; 3 → 1 never happens (decode_image converts)
        image = image.expand(in_chans, -1, -1)
    return image.contiguous()


class EncodedImageTransform:
    """Per-row transform for :class:`seed_hf.data.rows.ImageColumnTransform` (``to_array=True``) on
    the GPU path: complete RGB / grayscale JPEGs stay encoded (:class:`EncodedJpeg`, header
    size parsed); other JPEG colour spaces and non-JPEG cells become uint8 ``(c, h, w)``
    tensors decoded here; data that cannot be decoded raises :class:`UndecodableImage`, which
    ``ImageColumnTransform`` skips and counts as on the CPU path."""

    accepts_encoded_jpeg = True  # ImageColumnTransform then hands JPEGs over undecoded

    def __init__(self, in_chans: int):
        self.in_chans = in_chans

    def __call__(self, image: EncodedJpeg | np.ndarray) -> EncodedJpeg | torch.Tensor:
        if isinstance(image, EncodedJpeg):
            if image.mode in DEVICE_JPEG_MODES:
                return image
            decoded = decode_image(image.data, self.in_chans, stats=None, to_array=True)
            if decoded is None:
                raise UndecodableImage(f"{image.mode} JPEG that could not be decoded")
            image = decoded
        return _chw_uint8(image, self.in_chans)


@dataclass
class EncodedImageBatch:
    """The images of a batch on their way from the dataloader workers to the training process.

    Attributes:
        data: uint8 ``(total_bytes,)``: every JPEG bitstream of the batch, concatenated (one
            shared-memory tensor crosses the worker boundary instead of ``n``).
        offsets: int64 ``(n + 1,)``: image ``i``'s bytes are ``data[offsets[i]:offsets[i + 1]]``
            (empty for images decoded in the worker).
        decoded: ``{i: uint8 (c, h, w)}``: the images decoded in the worker (non-JPEG, CMYK).

    It has no ``.to()`` on purpose: accelerate's ``send_to_device`` and the Trainer's
    ``_prepare_inputs`` leave such objects where they are, and nvJPEG reads host memory.
    """

    data: torch.Tensor
    offsets: torch.Tensor
    decoded: dict[int, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @classmethod
    def from_items(cls, items: Sequence[EncodedJpeg | torch.Tensor]) -> EncodedImageBatch:
        """Packs per-row outputs of :class:`EncodedImageTransform`."""
        chunks = [item.data if isinstance(item, EncodedJpeg) else b"" for item in items]
        offsets = torch.zeros(len(items) + 1, dtype=torch.long)
        offsets[1:] = torch.tensor([len(chunk) for chunk in chunks], dtype=torch.long).cumsum(0)
        # one copy into a mutable buffer (torch.frombuffer warns on bytes); never empty, which it refuses
        data = torch.frombuffer(bytearray().join(chunks) or bytearray(1), dtype=torch.uint8)
        decoded = {i: item for i, item in enumerate(items) if isinstance(item, torch.Tensor)}
        return cls(data, offsets, decoded)

    def jpegs(self) -> tuple[list[int], list[torch.Tensor]]:
        """Positions and bitstreams (uint8 ``(bytes,)`` views of ``data``) of the encoded images."""
        bounds = self.offsets.tolist()
        rows = [i for i in range(len(self)) if i not in self.decoded]
        return rows, [self.data[bounds[i] : bounds[i + 1]] for i in rows]


def collate_encoded_batch(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """``collate_batch`` for rows of :class:`EncodedImageTransform`: undecodable rows dropped and
    counted in ``num_skipped_images``, tensors and ints (labels, ids) stacked, and the images
    packed into one :class:`EncodedImageBatch` under ``encoded_images``."""
    kept = [e["pixel_values"] for e in examples if e.get("pixel_values") is not None]
    # collate_batch keeps the rows whose pixel_values is not None and stacks only tensors and
    # ints: Ellipsis marks a kept row without being stacked
    marked = [{**e, "pixel_values": ... if e.get("pixel_values") is not None else None} for e in examples]
    batch = collate_batch(marked)
    batch[ENCODED_KEY] = EncodedImageBatch.from_items(kept)
    return batch


def _decode_one(data: torch.Tensor, mode: ImageReadMode, device: torch.device) -> torch.Tensor | str:
    """One bitstream on ``device``, else through libjpeg-turbo on the CPU (a JPEG nvJPEG rejects);
    the error text when neither decodes it."""
    try:
        return decode_jpeg(data, mode=mode, device=device)
    except RuntimeError:
        try:
            return decode_jpeg(data, mode=mode).to(device, non_blocking=True)
        except RuntimeError as error:
            return f"{type(error).__name__}: {error}"[:120]


def decode_images(
    encoded: EncodedImageBatch,
    device: torch.device | str,
    in_chans: int = 3,
    stats: DecodeStats | None = None,
) -> list[torch.Tensor | None]:
    """Decodes a batch on ``device``: uint8 ``(in_chans, h_i, w_i)`` images in batch order, None
    for the images that do not decode (counted in ``stats`` and logged).

    One batched ``decode_jpeg`` call (nvJPEG on CUDA, libjpeg-turbo on the CPU; grayscale JPEGs
    come out as 3 channels in RGB mode). It decodes all or nothing, so a failure is retried
    image by image to find the culprits."""
    device = torch.device(device)
    mode = ImageReadMode.GRAY if in_chans == 1 else ImageReadMode.RGB
    images: list[torch.Tensor | None] = [None] * len(encoded)
    for i, pixels in encoded.decoded.items():
        images[i] = _chw_uint8(pixels, in_chans).to(device, non_blocking=True)
    rows, data = encoded.jpegs()
    if not data:
        return images
    try:
        decoded: list[torch.Tensor | str] = decode_jpeg(data, mode=mode, device=device)
    except RuntimeError:
        decoded = [_decode_one(d, mode, device) for d in data]
    for row, image in zip(rows, decoded):
        ok = isinstance(image, torch.Tensor)
        if stats is not None:
            stats.record(
                ok, "" if ok else f"nvJPEG and libjpeg-turbo failed: {image}", f"row {row} of a batch"
            )
        images[row] = image if ok else None
    return images


def _keep_rows(inputs: dict[str, Any], rows: list[int], n: int) -> dict[str, Any]:
    """``inputs`` with only ``rows`` of its per-sample tensors (first dimension ``n``)."""
    index = None
    for key, value in list(inputs.items()):
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == n and key != SKIPPED_KEY:
            if index is None or index.device != value.device:
                index = torch.tensor(rows).to(value.device, non_blocking=True)
            inputs[key] = value[index]
    return inputs


class DeviceInputTransform:
    """Turns a batch of :func:`collate_encoded_batch` into views on ``device``: the trainer's
    ``device_transform`` (``QueueTrainer.training_step`` applies it before the loss).

    Args:
        transform: the batched augmentation of ``pixel_values`` (and ``pixel_values_k``).
        device: where decode and augmentation run (the training device).
        in_chans: channels of the views (1: grayscale decode).
        num_views: 1 (SEED) or 2 (MoCo: ``pixel_values_k`` too).
        small_transform, num_small_crops: SwAV/SEED small crops, ``pixel_values_small``
            ``(n, m, c, s, s)``.
        generator, crop_generator: pixel-op generator on ``device`` / crop-box generator on the
            CPU; default: torch's global ones (which the Trainer checkpoints).
        seed: when given (the trainers' scripts pass the run's seed), each batch draws its
            parameters from generators seeded by ``seed`` and a digest of the batch's encoded
            bytes instead: processes of a DDP run, whose global generators are seeded alike, then
            draw different parameters, and a resumed run redraws exactly the same ones, with no
            generator state to checkpoint.

    Images that do not decode are dropped with their labels / ids and added to
    ``num_skipped_images``; a batch without any decodable image raises, as ``collate_batch`` does.
    """

    VIEW_KEYS = VIEW_KEYS

    def __init__(
        self,
        transform: BatchedSSLTransform,
        device: torch.device | str,
        in_chans: int = 3,
        num_views: int = 1,
        small_transform: BatchedSSLTransform | None = None,
        num_small_crops: int = 0,
        generator: torch.Generator | None = None,
        crop_generator: torch.Generator | None = None,
        seed: int | None = None,
    ):
        if num_views not in (1, 2):
            raise ValueError(f"num_views must be 1 or 2, got {num_views}.")
        if num_small_crops and small_transform is None:
            raise ValueError("num_small_crops needs a small_transform.")
        self.transform = transform
        self.device = torch.device(device)
        self.in_chans = in_chans
        self.num_views = num_views
        self.small_transform = small_transform
        self.num_small_crops = num_small_crops
        self.generator = generator
        self.crop_generator = crop_generator
        self.seed = seed
        self.stats = DecodeStats()

    def _generators(
        self, encoded: EncodedImageBatch
    ) -> tuple[torch.Generator | None, torch.Generator | None]:
        """The batch's (pixel-op, crop-box) generators: seeded from ``seed`` and the batch's bytes
        (image lengths, the last 64 bytes of each JPEG, and a sample of the pixels of the images
        decoded in the workers), or the configured ones."""
        if self.seed is None:
            return self.generator, self.crop_generator
        digest = hashlib.blake2b(repr(self.seed).encode(), digest_size=8)
        digest.update(encoded.offsets.numpy().tobytes())
        data = encoded.data.numpy()
        for start, end in zip(encoded.offsets[:-1].tolist(), encoded.offsets[1:].tolist()):
            digest.update(data[max(start, end - 64) : end].tobytes())  # the tail: entropy-coded, distinct
        for i in sorted(encoded.decoded):  # pixels decoded in the worker (PNG, CMYK): no bytes above
            pixels = encoded.decoded[i].reshape(-1)
            digest.update(repr((i, tuple(encoded.decoded[i].shape))).encode())
            digest.update(pixels[:: max(1, pixels.numel() // 4096)].numpy().tobytes())  # ≤ ~4 KB sampled
        batch_seed = int.from_bytes(digest.digest(), "little") >> 1  # manual_seed takes < 2**63
        crop = torch.Generator().manual_seed(batch_seed)
        pixel = torch.Generator(self.device).manual_seed(batch_seed ^ 0x5DEECE66D)
        return pixel, crop

    @torch.no_grad()
    def __call__(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """``inputs`` with ``encoded_images`` replaced by ``pixel_values`` float ``(n, c, s, s)``
        (+ ``pixel_values_k``, ``pixel_values_small``) on ``device``; batches without
        ``encoded_images`` pass unchanged."""
        encoded = inputs.pop(ENCODED_KEY, None)
        if encoded is None:
            return inputs
        generators = self._generators(encoded)
        images = decode_images(encoded, self.device, self.in_chans, self.stats)
        rows = [i for i, image in enumerate(images) if image is not None]
        if len(rows) < len(images):
            if not rows:
                raise ValueError(
                    "Every image of this batch failed to decode; check the data (see the skipped-image log)."
                )
            inputs = _keep_rows(inputs, rows, len(images))
            skipped = inputs.get(SKIPPED_KEY)
            skipped = torch.as_tensor(0) if skipped is None else skipped.sum()
            inputs[SKIPPED_KEY] = (skipped + (len(images) - len(rows))).reshape(1)
            images = [images[i] for i in rows]
        for key in self.VIEW_KEYS[: self.num_views]:
            inputs[key] = self.transform(images, *generators)
        if self.num_small_crops:
            crops = [self.small_transform(images, *generators) for _ in range(self.num_small_crops)]
            inputs["pixel_values_small"] = torch.stack(crops, dim=1)
        return inputs


def build_device_transform(
    augmentation: str,
    image_size: int,
    config,
    device: torch.device | str,
    num_views: int,
    seed: int | None = None,
) -> DeviceInputTransform:
    """The trainer's ``device_transform`` for a GPU input path: decodes the encoded JPEGs of
    ``train_dataset.build_train_dataset``'s rows (``data_device="cuda"``) on ``device`` and augments them
    there with the batched twin of the CPU preset ``augmentation`` (same views, crop sizes and
    normalisation, the model ``config``'s). Pair it with :func:`collate_encoded_batch`."""
    mean, std = config.image_mean, config.image_std
    num_small_crops = getattr(config, "num_small_crops", 0)
    small = (
        BatchedSSLTransform.from_preset(
            augmentation, config.small_crop_size, mean, std, scale=config.small_crop_scale
        )
        if num_small_crops
        else None
    )
    return DeviceInputTransform(
        BatchedSSLTransform.from_preset(augmentation, image_size, mean, std),
        device,
        config.in_chans,
        num_views,
        small,
        num_small_crops,
        seed=seed,
    )

"""Training augmentation: the presets of the official MoCo / SimCLR / SwAV / SEED code and the
multi-view wrapper.

Presets: ``moco_v2`` (default), ``moco_v1``, ``simclr``, ``swav``, the official SEED code's own
``seed_simclr`` / ``seed_swav`` (weaker than SimCLR's / SwAV's, see :mod:`seed_hf.data.augmentation`)
and ``grayscale_small`` for 28-px grayscale data; their parameters live in
:data:`seed_hf.data.augmentation.PRESETS`, the one table this module and the batched path read.
Teacher and student see the same view.
Two pixel backends draw the same random parameters from torch's RNG: ``opencv`` (default,
ndarrays, fastest per core; kernels in ``seed_hf.data.opencv_kernels``, crop-aware JPEG decode in
``seed_hf.data.crop_decode``) and ``torchvision`` (PIL / tensor kernels). The batched GPU version of
the same operations is ``seed_hf.data.batched_transforms``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms import v2

from seed_hf.data import crop_decode, opencv_kernels
from seed_hf.data.augmentation import PRESETS, VIEW_KEYS, blur_kernel_size

__all__ = [
    "AUGMENTATION_PRESETS",
    "AUGMENTATION_BACKENDS",
    "build_ssl_transform",
    "MultiViewTransform",
    "RandomGaussianBlur",
    "ToNormalizedTensor",
]


AUGMENTATION_PRESETS = tuple(PRESETS)  # the names of seed_hf.data.augmentation.PRESETS


AUGMENTATION_BACKENDS = opencv_kernels.AUGMENTATION_BACKENDS


class RandomGaussianBlur:
    """Gaussian blur with sigma ~ U(0.1, 2.0) as in MoCo-v2 / SimCLR: OpenCV on ndarrays, PIL's
    ``ImageFilter`` on PIL images (cheaper on CPU than a tensor convolution),
    torchvision's on tensors."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0), kernel_size: int = 23):
        self.sigma = sigma
        self.kernel_size = kernel_size

    def __call__(self, image: Any) -> Any:
        sigma = float(torch.empty(()).uniform_(*self.sigma))
        if isinstance(image, np.ndarray):
            return opencv_kernels.gaussian_blur(image, sigma, self.kernel_size)
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
        opencv_kernels.ArrayColorJitter,
        opencv_kernels.ArrayRandomGrayscale,
        opencv_kernels.ArrayRandomHorizontalFlip,
    ),
}


def _with_probability(op: Callable, p: float) -> list[Callable]:
    """``[op]`` applied with probability ``p``: none at 0, ``op`` itself at 1 (no RNG draw)."""
    if p <= 0:
        return []
    return [op] if p >= 1 else [v2.RandomApply([op], p=p)]


def build_ssl_transform(
    preset: str = "moco_v2",
    image_size: int = 224,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    scale: tuple[float, float] | None = None,
    backend: str = "opencv",
) -> v2.Compose:
    """Training augmentation of the official MoCo / SimCLR / SwAV / SEED code (torchvision v2).

    Input: PIL image, ndarray ``(h, w[, c])`` or uint8 tensor ``(c, h, w)``; output: float
    tensor ``(c, image_size, image_size)`` normalised with ``mean``/``std``.

    ``backend="opencv"`` turns every input into an ndarray and runs OpenCV kernels
    (``seed_hf.data.opencv_kernels``); ``"torchvision"`` runs torchvision's PIL kernels on PIL images and
    its tensor kernels otherwise. Both draw the same random parameters from torch's RNG.

    ``preset``: a name of :data:`seed_hf.data.augmentation.PRESETS`, which holds every preset's
    parameters and op order (the batched path reads the same table); ``scale`` overrides its crop
    scale. An op with probability 1 runs without a ``RandomApply`` draw, one with probability 0
    is left out.

    The opencv pipeline also takes ``seed_hf.data.crop_decode.EncodedJpeg`` inputs (it then has
    ``accepts_encoded_jpeg = True``): decode and random crop in one step, at a reduced DCT
    scale when the crop allows.
    """
    if preset not in PRESETS:
        raise ValueError(f"augmentation preset must be one of {tuple(PRESETS)}, got {preset!r}.")
    if backend not in AUGMENTATION_BACKENDS:
        raise ValueError(f"augmentation backend must be one of {AUGMENTATION_BACKENDS}, got {backend!r}.")
    spec = PRESETS[preset]
    if "center_crop" in spec.order:  # deterministic resize + center crop: cheap on any backend
        backend = "torchvision"
    if backend == "opencv":
        opencv_kernels.require_opencv()
    random_resized_crop, color_jitter, random_grayscale, random_flip = _BACKEND_OPS[backend]
    ops: list[Callable] = []
    for name in spec.order:
        if name == "crop":
            ops.append(random_resized_crop(image_size, scale=scale or spec.scale, antialias=True))
        elif name == "center_crop":
            ops += [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
        elif name == "jitter" and any(spec.jitter):
            ops += _with_probability(color_jitter(*spec.jitter), spec.jitter_p)
        elif name == "grayscale" and spec.grayscale_p > 0:
            ops.append(random_grayscale(spec.grayscale_p))
        elif name == "blur":
            blur = RandomGaussianBlur(sigma=spec.blur_sigma, kernel_size=blur_kernel_size(image_size))
            ops += _with_probability(blur, spec.blur_p)
        elif name == "flip" and spec.flip_p > 0:
            ops.append(random_flip(spec.flip_p))
    # PIL and tensors go straight to torchvision's kernels, everything to ndarrays for OpenCV's
    ops.insert(0, crop_decode.to_array_or_encoded if backend == "opencv" else _ndarray_to_image)
    ops.append(ToNormalizedTensor(mean, std))
    pipeline = v2.Compose(ops)
    pipeline.accepts_encoded_jpeg = backend == "opencv"  # read by ImageColumnTransform
    return pipeline


class MultiViewTransform:
    """Applies ``transform`` ``num_views`` times: ``pixel_values`` (+ ``pixel_values_k``), and
    ``small_transform`` ``num_small_crops`` times: ``pixel_values_small`` ``(m, c, s, s)``."""

    VIEW_KEYS = VIEW_KEYS

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

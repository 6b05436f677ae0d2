"""Training augmentation: the presets of the official MoCo / SimCLR / SwAV / SEED code and the
multi-view wrapper.

Presets: ``moco_v2`` (default), ``moco_v1``, ``simclr``, ``swav``, the official SEED code's own
``seed_simclr`` / ``seed_swav`` (weaker than SimCLR's / SwAV's, see :func:`build_ssl_transform`)
and ``grayscale_small`` for 28-px grayscale data. Teacher and student see the same view.
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

from . import crop_decode, opencv_kernels

__all__ = [
    "AUGMENTATION_PRESETS",
    "AUGMENTATION_BACKENDS",
    "build_ssl_transform",
    "MultiViewTransform",
    "RandomGaussianBlur",
    "ToNormalizedTensor",
]


AUGMENTATION_PRESETS = (
    "moco_v2", "moco_v1", "simclr", "swav", "seed_simclr", "seed_swav", "grayscale_small", "none"
)


AUGMENTATION_BACKENDS = opencv_kernels.AUGMENTATION_BACKENDS


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

    The opencv pipeline also takes ``seed_hf.data.crop_decode.EncodedJpeg`` inputs (it then has
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
        opencv_kernels.require_opencv()
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


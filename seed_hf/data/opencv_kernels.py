"""OpenCV pixel kernels behind torchvision v2 transforms, for ``(h, w[, c])`` uint8 ndarrays.

The classes below are torchvision v2 transforms whose random parameters are drawn by
torchvision itself (same RNG calls in the same order, so one seed gives the same crop boxes,
jitter factors, op order and flips on every backend); only the pixel work on ndarrays runs on
OpenCV's SIMD kernels instead of PIL's. PIL images and tensors still go to torchvision's
kernels, which are the faster per core (``benchmarks/bench_data.py`` compares the ``moco_v2``
pipeline with the PIL one of the official MoCo/SEED code).

Kernel semantics follow torchvision's: brightness ``clip(f·x)``, contrast
``clip(f·x + (1 − f)·mean(gray(x)))``, saturation ``clip(f·x + (1 − f)·gray(x))``, hue a cyclic
shift of H in HSV, grayscale ITU-R 601 luma replicated to 3 channels; results differ from
PIL's by uint8 rounding. Resizes use area averaging when shrinking (antialiased, like PIL's
bilinear filter with its support scaled) and bilinear interpolation when enlarging.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

try:
    import cv2

    # one thread per process, also in spawned dataloader workers (which re-import this module):
    # the workers are the parallelism, OpenCV's own pool would oversubscribe the cores
    cv2.setNumThreads(1)
except ImportError:  # optional where only models run (e.g. a GPU image without OpenCV)
    cv2 = None

AUGMENTATION_BACKENDS = ("opencv", "torchvision")
JPEG_START, JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"


def require_opencv() -> None:
    if cv2 is None:
        raise ImportError(
            "The 'opencv' augmentation backend needs OpenCV: pip install opencv-python-headless "
            "(or choose the 'torchvision' backend, which runs PIL/tensor kernels)."
        )


def to_hwc_array(image: Any) -> np.ndarray:
    """PIL image, ndarray ``(h, w[, c])`` or uint8 tensor ``(c, h, w)`` → contiguous uint8
    ndarray ``(h, w)`` (one channel) or ``(h, w, 3)``."""
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8:
            raise TypeError(f"the opencv backend takes uint8 images, got a {image.dtype} tensor")
        image = image.permute(1, 2, 0).numpy() if image.ndim == 3 else image.numpy()
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TypeError(f"the opencv backend takes uint8 images, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"the opencv backend takes 1- or 3-channel images, got shape {array.shape}")
    return np.ascontiguousarray(array)


def decode_jpeg(data: bytes, in_chans: int) -> np.ndarray | None:
    """libjpeg-turbo decode (via OpenCV) of complete JPEG bytes to ``(h, w)`` or ``(h, w, 3)``
    RGB, EXIF orientation ignored as PIL does; None for other formats, for truncated files
    (no end marker) and for data OpenCV rejects, which then go to PIL (decode or count as bad)."""
    if cv2 is None or not data.startswith(JPEG_START) or not data.rstrip(b"\x00\r\n ").endswith(JPEG_END):
        return None
    flags = (cv2.IMREAD_GRAYSCALE if in_chans == 1 else cv2.IMREAD_COLOR_RGB) | cv2.IMREAD_IGNORE_ORIENTATION
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)


def resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to ``size`` = (h, w): area averaging when shrinking both sides, bilinear otherwise."""
    height, width = size
    shrinking = array.shape[0] > height and array.shape[1] > width
    return cv2.resize(array, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def gray(array: np.ndarray) -> np.ndarray:
    return array if array.ndim == 2 else cv2.cvtColor(array, cv2.COLOR_RGB2GRAY)


def gray3(array: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma replicated to 3 channels."""
    return cv2.cvtColor(gray(array), cv2.COLOR_GRAY2RGB)


def _affine_lut(array: np.ndarray, scale: float, shift: float) -> np.ndarray:
    lut = np.clip(np.arange(256, dtype=np.float32) * scale + shift + 0.5, 0, 255).astype(np.uint8)
    return cv2.LUT(array, lut)


def adjust_brightness(array: np.ndarray, factor: float) -> np.ndarray:
    return _affine_lut(array, factor, 0.0)


def adjust_contrast(array: np.ndarray, factor: float) -> np.ndarray:
    return _affine_lut(array, factor, (1.0 - factor) * float(gray(array).mean()))


def adjust_saturation(array: np.ndarray, factor: float) -> np.ndarray:
    if array.ndim == 2:
        return array
    return cv2.addWeighted(array, factor, gray3(array), 1.0 - factor, 0.0)


def adjust_hue(array: np.ndarray, factor: float) -> np.ndarray:
    """Shifts hue by ``factor`` of a full turn (``factor`` in [-0.5, 0.5])."""
    if array.ndim == 2:
        return array
    hsv = cv2.cvtColor(array, cv2.COLOR_RGB2HSV_FULL)  # H in [0, 255] for a full turn, as PIL's
    hsv[..., 0] += np.uint8(int(round(factor * 255)) % 256)  # uint8 wrap-around = cyclic shift
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


def gaussian_blur(array: np.ndarray, sigma: float, max_kernel_size: int) -> np.ndarray:
    """Gaussian blur truncated at ±3σ (and at ``max_kernel_size``, SimCLR's 10% of the image)."""
    kernel = min(max_kernel_size, 2 * math.ceil(3 * sigma) + 1)
    return cv2.GaussianBlur(array, (kernel, kernel), sigma, borderType=cv2.BORDER_REFLECT_101)


_ARRAY_TYPES = (np.ndarray, torch.Tensor, Image.Image)


def _size_probe(flat_inputs: list[Any]) -> list[Any]:
    """torchvision samples parameters from an image's size: a storage-free tensor of the array's
    (h, w) stands in for ndarrays, which torchvision does not know."""
    return [torch.empty((0, *x.shape[:2])) if isinstance(x, np.ndarray) else x for x in flat_inputs]


class ArrayRandomResizedCrop(v2.RandomResizedCrop):
    """``v2.RandomResizedCrop`` that also crops and resizes ndarrays (OpenCV)."""

    _transformed_types = _ARRAY_TYPES

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return super().make_params(_size_probe(flat_inputs))

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, np.ndarray):
            return super().transform(inpt, params)
        top, left = params["top"], params["left"]
        crop = inpt[top : top + params["height"], left : left + params["width"]]
        return resize(crop, tuple(self.size))


class ArrayColorJitter(v2.ColorJitter):
    """``v2.ColorJitter`` (same factors and random op order) with OpenCV kernels on ndarrays."""

    _transformed_types = _ARRAY_TYPES
    _kernels = (
        ("brightness_factor", adjust_brightness),
        ("contrast_factor", adjust_contrast),
        ("saturation_factor", adjust_saturation),
        ("hue_factor", adjust_hue),
    )

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, np.ndarray):
            return super().transform(inpt, params)
        for fn_id in params["fn_idx"].tolist():
            name, kernel = self._kernels[fn_id]
            if params[name] is not None:
                inpt = kernel(inpt, params[name])
        return inpt


class ArrayRandomGrayscale(v2.RandomGrayscale):
    """``v2.RandomGrayscale`` with OpenCV's luma on ndarrays (channels kept)."""

    _transformed_types = _ARRAY_TYPES

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        array = next((x for x in flat_inputs if isinstance(x, np.ndarray)), None)
        if array is None:
            return super().make_params(flat_inputs)
        return dict(num_input_channels=1 if array.ndim == 2 else array.shape[2])

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, np.ndarray):
            return super().transform(inpt, params)
        return inpt if inpt.ndim == 2 else gray3(inpt)


class ArrayRandomHorizontalFlip(v2.RandomHorizontalFlip):
    """``v2.RandomHorizontalFlip`` that also flips ndarrays."""

    _transformed_types = _ARRAY_TYPES

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, np.ndarray):
            return super().transform(inpt, params)
        return cv2.flip(inpt, 1)

"""Crop-aware JPEG decoding: RandomResizedCrop sampled from the header, DCT-scaled decode.

Decode + ``RandomResizedCrop`` in one transform for encoded JPEG bytes. The crop box is
drawn by torchvision from the size in the JPEG header (read without decoding), with exactly
the RNG calls of the full-decode path; then libjpeg-turbo decodes at the largest DCT scale
reduction (1/2, 1/4, 1/8: OpenCV's ``IMREAD_REDUCED_*``) at which the box still spans at least
the output size, the box is cropped at that scale and resized to the output. A large photo is
then never fully decoded for a small view.

When it pays: the reduction applies when the box is at least twice the output on both sides,
so large photos and small crops decode at a fraction of their pixels; smaller photos decode at
full scale and gain from the resize below.

The resize after the crop is :func:`reducing_resize` (integer area reduction, then bilinear),
which keeps to OpenCV's fast integer path where OpenCV's area resize at the non-integer factors
a random crop has would not, and stays within a fraction of a uint8 level of it. Pixels therefore differ slightly from the full
decode path (``tests/test_crop_decode.py`` measures and bounds the difference); the random
parameters, and the RNG state after the transform, are identical.

Inputs the header cannot describe (other formats, truncated files, headers PIL rejects) are
not wrapped: they go through ``seed_hf.data.decode.decode_image`` (a full decode), which skips and counts
corrupt data. Data that passes the header check but fails to decode raises
:class:`UndecodableImage`, which ``ImageColumnTransform`` skips and counts the same way.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from seed_hf.data import opencv_kernels
from seed_hf.data.opencv_kernels import cv2

__all__ = [
    "EncodedJpeg",
    "UndecodableImage",
    "CropAwareRandomResizedCrop",
    "encoded_jpeg",
    "to_array_or_encoded",
    "reducing_resize",
    "dct_scale",
]

DCT_SCALES = (8, 4, 2, 1)  # libjpeg-turbo's scaled IDCT: 1/8, 1/4, 1/2, full


class UndecodableImage(ValueError):
    """A JPEG whose header parsed but whose data could not be decoded."""


@dataclass
class EncodedJpeg:
    """Complete JPEG bytes and their header size, not yet decoded.

    ``size`` is ``(height, width)``, ``mode`` the header's PIL mode (``L``, ``RGB``, ``CMYK``).
    Decodes are cached per DCT scale, so that several views of one image (MoCo's two views,
    SwAV's small crops) reuse a decode at the same or a finer scale instead of decoding again.
    """

    data: bytes
    size: tuple[int, int]
    in_chans: int
    mode: str = "RGB"
    _decoded: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def decode(self, scale: int) -> tuple[np.ndarray, int]:
        """The image decoded at 1/``scale`` (or a cached finer decode) and the scale used:
        ``(h', w'[, 3])`` uint8 RGB or grayscale, ``h' = ceil(h / scale)``."""
        finer = [s for s in self._decoded if s <= scale]
        if finer:
            best = max(finer)
            return self._decoded[best], best
        array = _decode_scaled(self.data, self.in_chans, scale)
        if array is None and scale > 1:  # a decoder that refuses scaling: decode in full
            array, scale = _decode_scaled(self.data, self.in_chans, 1), 1
        if array is None:
            raise UndecodableImage("OpenCV could not decode JPEG data whose header parsed")
        self._decoded[scale] = array
        return array, scale


def _decode_scaled(data: bytes, in_chans: int, scale: int) -> np.ndarray | None:
    if scale == 1:  # the full-decode path's own decoder: identical pixels
        return opencv_kernels.decode_jpeg(data, in_chans)
    reduced = {
        (1, 2): cv2.IMREAD_REDUCED_GRAYSCALE_2,
        (1, 4): cv2.IMREAD_REDUCED_GRAYSCALE_4,
        (1, 8): cv2.IMREAD_REDUCED_GRAYSCALE_8,
        (3, 2): cv2.IMREAD_REDUCED_COLOR_2,
        (3, 4): cv2.IMREAD_REDUCED_COLOR_4,
        (3, 8): cv2.IMREAD_REDUCED_COLOR_8,
    }[(1 if in_chans == 1 else 3, scale)]
    # OpenCV refuses IMREAD_REDUCED_COLOR_* | IMREAD_COLOR_RGB: BGR here, swapped after the
    # crop (on the small output, not the decoded image)
    return cv2.imdecode(np.frombuffer(data, np.uint8), reduced | cv2.IMREAD_IGNORE_ORIENTATION)


def encoded_jpeg(value: Any, in_chans: int) -> EncodedJpeg | None:
    """Wraps a datasets image cell (bytes, path or ``{"bytes", "path"}``) as an
    :class:`EncodedJpeg` when it is a complete JPEG whose header PIL parses; None otherwise
    (decode it the usual way then). Needs no decoder: the GPU input path (``seed_hf.data.gpu_input``)
    wraps JPEGs here too; the opencv pipeline that decodes them requires OpenCV itself."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if path.suffix.lower() not in (".jpg", ".jpeg", ".jpe", ".jfif") or not path.is_file():
            return None
        value = path.read_bytes()
    if not isinstance(value, (bytes, bytearray)):
        return None
    data = bytes(value)
    if not data.startswith(opencv_kernels.JPEG_START) or not data.rstrip(b"\x00\r\n ").endswith(
        opencv_kernels.JPEG_END
    ):
        return None  # other formats and truncated files: the full-decode path decides
    try:
        with Image.open(io.BytesIO(data)) as image:  # lazy: parses the markers, decodes nothing
            width, height = image.size
            mode = image.mode
            if image.format != "JPEG" or width < 1 or height < 1:
                return None
    except Exception:  # PIL raises many types for bad headers
        return None
    return EncodedJpeg(data, (height, width), in_chans, mode)


def to_array_or_encoded(image: Any) -> Any:
    """First op of the opencv pipeline: encoded JPEGs pass through to the crop-aware crop,
    everything else becomes an ndarray (``opencv_kernels.to_hwc_array``)."""
    return image if isinstance(image, EncodedJpeg) else opencv_kernels.to_hwc_array(image)


def dct_scale(box: tuple[int, int], size: tuple[int, int]) -> int:
    """Largest DCT reduction 1/s (s in 8, 4, 2, 1) at which a ``box`` = (h, w) still spans
    ``size`` = (h, w) output pixels on both sides (so the view is never upsampled because of it)."""
    for scale in DCT_SCALES:
        if box[0] >= scale * size[0] and box[1] >= scale * size[1]:
            return scale
    return 1


def reducing_resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Antialiased resize to ``size`` = (h, w), fast at any factor: an integer area reduction
    per axis (OpenCV's fast path, exact box averages; the < factor leftover rows and columns at
    the far edges are dropped, under one output pixel), then one bilinear resize by the
    remaining factor below 2, where bilinear taps still reach every input pixel (Pillow's
    ``reducing_gap`` works the same way). OpenCV's area resize at a non-integer factor, which
    ``opencv_kernels.resize`` uses, leaves that fast path."""
    height, width = size
    fy, fx = max(1, array.shape[0] // height), max(1, array.shape[1] // width)  # per-axis integers
    if fy > 1 or fx > 1:
        reduced = (array.shape[1] // fx, array.shape[0] // fy)
        array = cv2.resize(array[: reduced[1] * fy, : reduced[0] * fx], reduced, interpolation=cv2.INTER_AREA)
    if array.shape[:2] == (height, width):
        return array
    return cv2.resize(array, (width, height), interpolation=cv2.INTER_LINEAR)


class CropAwareRandomResizedCrop(opencv_kernels.ArrayRandomResizedCrop):
    """``ArrayRandomResizedCrop`` that also takes :class:`EncodedJpeg` inputs and decodes only
    what the view needs (module docstring). ndarrays, PIL images and tensors behave exactly
    as in ``ArrayRandomResizedCrop``."""

    _transformed_types = (*opencv_kernels.ArrayRandomResizedCrop._transformed_types, EncodedJpeg)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        # the header's size stands in for the image: the same torchvision draws as a full decode
        probe = [torch.empty((0, *x.size)) if isinstance(x, EncodedJpeg) else x for x in flat_inputs]
        return super().make_params(probe)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, EncodedJpeg):
            return super().transform(inpt, params)
        out_h, out_w = self.size
        top, left, box_h, box_w = params["top"], params["left"], params["height"], params["width"]
        array, scale = inpt.decode(dct_scale((box_h, box_w), (out_h, out_w)))
        if scale == 1:  # the full-decode path's crop, then the fast antialiased resize
            view = array[top : top + box_h, left : left + box_w]
            return reducing_resize(np.ascontiguousarray(view), (out_h, out_w))
        # decoded pixel u covers full-scale pixels [s·u, s·(u+1)): output pixel x, centred at
        # left + (x + ½)·box_w/out_w in the full image, samples u = that / s − ½ (sub-pixel
        # exact: rounding the box to decoded pixels would shift the view by up to s/2 pixels)
        step_x, step_y = box_w / (out_w * scale), box_h / (out_h * scale)
        if step_x >= 2 or step_y >= 2:  # beyond 1/8: area-reduce the (rounded) box instead
            view = array[
                round(top / scale) : round((top + box_h) / scale),
                round(left / scale) : round((left + box_w) / scale),
            ]
            view = reducing_resize(np.ascontiguousarray(view), (out_h, out_w))
        else:  # bilinear taps at steps below 2 reach every decoded pixel: no aliasing
            inverse_map = np.array(
                [
                    [step_x, 0, (left + 0.5 * box_w / out_w) / scale - 0.5],
                    [0, step_y, (top + 0.5 * box_h / out_h) / scale - 0.5],
                ]
            )
            view = cv2.warpAffine(
                array,
                inverse_map,
                (out_w, out_h),
                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_REPLICATE,
            )
        return cv2.cvtColor(view, cv2.COLOR_BGR2RGB) if view.ndim == 3 else view

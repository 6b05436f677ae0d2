"""Decoding of image cells and collation: undecodable images are skipped, counted and named in the
log, never silently dropped (:class:`DecodeStats`, :func:`collate_batch`).
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from seed_hf.data import opencv_kernels

__all__ = [
    "DECODE_STATS",
    "SKIPPED_KEY",
    "DecodeStats",
    "cell_name",
    "collate_batch",
    "convert_image",
    "decode_image",
    "open_image",
]

logger = logging.getLogger(__name__)


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
        decoded = (
            opencv_kernels.decode_jpeg(value, in_chans) if to_array and isinstance(value, bytes) else None
        )
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
    return convert_image(open_image(value), in_chans)


def open_image(value: Any) -> Image.Image:
    """A datasets image cell (PIL image, bytes, path or ``{"bytes", "path"}``) fully decoded by
    PIL, in its own mode. Raises on corrupt or truncated data (PIL raises many types)."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        image = Image.open(io.BytesIO(value))
    elif isinstance(value, (str, os.PathLike)):
        image = Image.open(value)
    elif isinstance(value, Image.Image):
        image = value
    else:
        raise TypeError(f"unsupported image cell {type(value).__name__}")
    image.load()  # forces a full decode: truncated files fail here, not later in a transform
    return image


def cell_name(value: Any) -> str | None:
    """The file an image cell came from, for the skipped-image log (None: bytes of no file)."""
    if isinstance(value, dict):
        value = value.get("path")
    return str(value) if isinstance(value, (str, os.PathLike)) else None


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

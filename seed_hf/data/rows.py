"""Per-sample seeded training examples: a sample's views depend on ``(seed, epoch, index)`` only
(:func:`per_sample_rng`), whatever the worker count, world size, prefetching or resume point.
In-memory arrays (:class:`ArrayImageDataset`) and ``datasets`` rows (:class:`SeededRowDataset`,
through :class:`ImageColumnTransform`, which decodes, crop-aware for JPEGs, in the dataloader workers).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from seed_hf.data import crop_decode
from seed_hf.data.decode import DECODE_STATS, SKIPPED_KEY, decode_image

__all__ = [
    "INDEX_COLUMN",
    "ArrayImageDataset",
    "ImageColumnTransform",
    "PerSampleSeeded",
    "SeededRowDataset",
    "detect_image_column",
    "per_sample_rng",
    "sample_seed",
    "seeded_row_example",
]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of one sample's augmentation: a function of (seed, epoch, index) only."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63 - 1)


@contextmanager
def per_sample_rng(seed: int, epoch: int, index: int) -> Iterator[None]:
    """Runs the block with torch's CPU RNG seeded by :func:`sample_seed`, restoring the global
    stream afterwards: a sample's augmentation does not depend on worker count, world size,
    prefetching or where a run was resumed."""
    with torch.random.fork_rng(devices=[]):
        # the CPU generator only, which is all fork_rng(devices=[]) restores and all the CPU augmentation
        # draws from: torch.manual_seed would also (lazily) reseed CUDA / XPU / MTIA, recording a traceback
        # for each (a cost paid per sample) and leaking into their streams
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


@dataclass
class ImageColumnTransform:
    """Batched ``set_transform``/``map`` function: image column → view tensors (+ labels, ids).

    ``to_array`` decodes to ndarrays (for the ``opencv`` augmentation backend). With
    ``crop_aware`` (default) and a transform that declares ``accepts_encoded_jpeg`` (the
    opencv presets), complete JPEGs are not decoded here but handed over as
    ``seed_hf.data.crop_decode.EncodedJpeg``: the random crop is drawn from the header and only the
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
    transform: Callable[[dict[str, list]], dict[str, list]],
    row: dict[str, Any],
    seed: int,
    epoch: int,
    sample_id: int,
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

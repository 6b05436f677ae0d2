"""``datasets`` sources: loading a hub id, a local ``imagefolder`` or parquet / webdataset files
(:func:`load_image_dataset`), the shard files a streamed source has (:func:`stream_shards`), and
the checks that stop a source without decodable images before training: which column holds
the images (:func:`find_image_column`) and whether its first images decode
(:func:`undecoded_images`, :func:`check_decodable`).

Images stay encoded in the source and are decoded (crop-aware for JPEGs) and augmented lazily in
the dataloader workers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from seed_hf.data.decode import DecodeStats, decode_image
from seed_hf.data.rows import detect_image_column
from seed_hf.data.sources import TrainSource

__all__ = [
    "check_decodable",
    "expand_files",
    "find_image_column",
    "image_like_columns",
    "load_image_dataset",
    "stream_shards",
    "undecoded_images",
]


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
        files = expand_files(train_files)  # a pattern or path matching nothing is refused naming it
        builder = "webdataset" if all(str(f).endswith(".tar") for f in files) else "parquet"
        return load_dataset(
            builder, data_files={split: files}, split=split, streaming=streaming, cache_dir=cache_dir
        )
    raise ValueError("Pass one of --dataset_name, --train_dir or --train_files.")


def stream_shards(source: TrainSource) -> list[str] | None:
    """The parquet / webdataset shard files of a streamed source (``train_files``, or a hub
    dataset's data files), or None when it has none (an imagefolder, other formats)."""
    if source.train_files:
        files = expand_files(source.train_files)
    elif source.dataset_name:
        from datasets import load_dataset_builder

        builder = load_dataset_builder(
            source.dataset_name, source.dataset_config_name, cache_dir=source.cache_dir
        )
        data_files = builder.config.data_files or {}
        if source.train_split not in data_files:
            return None
        files = [str(f) for f in data_files[source.train_split]]
    else:
        return None
    if files and (all(f.endswith(".tar") for f in files) or all(f.endswith(".parquet") for f in files)):
        return files
    return None


def expand_files(patterns: Sequence[str]) -> list[str]:
    """``train_files`` with glob patterns expanded (local paths or fsspec URLs, as ``datasets``
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


def image_like_columns(
    columns: Sequence[str], features: Any = None, sample: dict[str, Any] | None = None
) -> list[str]:
    """The ``columns`` that may hold images, from the ``datasets`` ``features`` (an ``Image``
    feature, binary values, a ``{"bytes", "path"}`` struct) or the values of a ``sample`` row
    (bytes, such a dict, a PIL image)."""
    from datasets import Image as ImageFeature
    from datasets import Value

    found = []
    for name in columns:
        feature = (features or {}).get(name)
        value = (sample or {}).get(name)
        if (
            isinstance(feature, ImageFeature)
            or (isinstance(feature, Value) and feature.dtype in ("binary", "large_binary"))
            or (isinstance(feature, dict) and "bytes" in feature)
            or isinstance(value, (bytes, bytearray, Image.Image))
            or (isinstance(value, dict) and "bytes" in value)
        ):
            found.append(name)
    return found


def find_image_column(
    columns: list[str], source: TrainSource, features: Any = None, sample: dict[str, Any] | None = None
) -> str:
    """:func:`detect_image_column`, saying when no column is named as images are: the columns that
    look like images, or that the data has none (a file of labels or ids only)."""
    try:
        return detect_image_column(columns, source.image_column)
    except ValueError:
        if source.image_column is not None:  # a named column that is not there: the columns are listed
            raise
    candidates = image_like_columns(columns, features, sample)
    if candidates:
        raise ValueError(
            f"{source.name()} has no column named image, img, jpg, ... but its column(s) {candidates} look like "
            f"images: pass the one that holds them as --image_column (columns: {columns})."
        )
    raise ValueError(
        f"{source.name()} has no image column: its columns are {columns} and none of them holds images (encoded "
        "bytes, a {'bytes', 'path'} struct or a datasets Image feature). Pass a source of images: a labels-only "
        "file cannot be trained on."
    )


def undecoded_images(dataset, image_column: str, in_chans: int, source: TrainSource, num_probe: int = 16):
    """``dataset`` with ``image_column`` left undecoded (decoded in the transform, so that a corrupt
    image is skipped and counted instead of killing the run), after decoding its first ``num_probe``
    images: a source none of whose images decode (a wrong `image_column`, files that are not
    images) stops here, before training, not at the first batch."""
    from datasets import Image as ImageFeature

    columns = list(dataset.column_names or [])
    try:
        dataset = dataset.cast_column(image_column, ImageFeature(decode=False))
        probe = (
            dataset.take(num_probe)
            if source.streaming
            else dataset.select(range(min(num_probe, len(dataset))))
        )
        cells = [row[image_column] for row in probe]
    except (TypeError, ValueError, NotImplementedError) as error:  # arrow: a column of other values
        raise ValueError(
            f"Column {image_column!r} of {source.name()} holds no images ({type(error).__name__}: "
            f"{str(error)[:200]}): pass the column that holds the images as --image_column (columns: {columns})."
        ) from error
    check_decodable(cells, image_column, in_chans, source, columns)
    return dataset


def check_decodable(cells, image_column: str, in_chans: int, source: TrainSource, columns: list[str]) -> None:
    """Decodes the probe ``cells``: a source none of whose images decode (a wrong `image_column`,
    files that are not images) stops here, before training, not at the first batch."""
    cells = list(cells)
    image_like = (bytes, bytearray, dict, str, os.PathLike, Image.Image)
    if cells and not any(isinstance(cell, image_like) for cell in cells):
        kinds = sorted({type(cell).__name__ for cell in cells})
        raise ValueError(
            f"Column {image_column!r} of {source.name()} holds no images (values of type {kinds}): pass "
            f"the column that holds the images as --image_column (columns: {columns})."
        )
    stats = DecodeStats(log_first=0)  # a probe: not logged as skipped training images
    for cell in cells:
        decode_image(cell, in_chans, stats)
    if stats.seen == 0:
        raise ValueError(f"{source.name()} (split {source.train_split!r}) has no rows.")
    if stats.skipped == stats.seen:
        raise ValueError(
            f"None of the first {stats.seen} images of {source.name()} could be decoded from column "
            f"{image_column!r} (last error: {stats.last_error}). Check the source's files, or pass the column that "
            f"holds the images as --image_column (columns: {columns})."
        )

"""Row access to one parquet or webdataset shard: its row count from metadata or headers, reads
of chosen rows and sequential reads from any row, without reading what lies before.

Shards are local paths or fsspec URLs (``hf://datasets/org/name/...``). Parquet rows are the
table's columns (an ``image`` struct cell keeps ``bytes``/``path``). Webdataset samples are the
tar members sharing a key (``000123.jpg`` + ``000123.cls`` → ``{"__key__", "__url__", "jpg",
"cls"}``), split, skipped and decoded as ``datasets``' webdataset loader does
(:func:`decode_member`), so that a stream and ``load_dataset("webdataset", ...)`` give a sample
the same values; image members stay their encoded bytes (the ``bytes`` of ``datasets``' ``Image``
feature), decoded with the augmentation in the dataloader workers.
"""

from __future__ import annotations

import bisect
import functools
import io
import posixpath
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Row", "ShardIndex", "count_rows", "decode_member", "is_tar"]

Row = dict[str, Any]


def _open(path: str):
    """``path`` (a local path or an fsspec URL) opened for binary reads."""
    import fsspec

    return fsspec.open(path, "rb").open()


def is_tar(path: str) -> bool:
    """Whether ``path`` is a webdataset shard (else a parquet one)."""
    return str(path).endswith(".tar")


@dataclass
class _TarSample:
    key: str
    # field (the member's name after the key: "jpg", "seg.json") -> (data offset, size)
    members: dict[str, tuple[int, int]]


def _tar_samples(path: str) -> list[_TarSample]:
    """The samples of a webdataset tar, in file order, from its headers only (data is skipped).
    Directories, hidden files (``.DS_Store``, ``__MACOSX``) and names without an extension
    (``README``) are not part of a sample, as in ``datasets``' tar iterator and webdataset."""
    from datasets.packaged_modules.webdataset.webdataset import base_plus_ext

    samples: list[_TarSample] = []
    with _open(path) as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for member in tar:
            if not member.isreg() or posixpath.basename(member.name).startswith((".", "__")):
                continue
            key, field = base_plus_ext(member.name)
            if key is None:
                continue
            if not samples or samples[-1].key != key:
                samples.append(_TarSample(key, {}))
            if field in samples[-1].members:
                raise ValueError(f"Sample {key!r} of {path} has two {field!r} members.")
            samples[-1].members[field] = (member.offset_data, member.size)
    return samples


@functools.cache
def _webdataset_decoders() -> tuple[dict[str, Callable[[bytes], Any]], dict[str, Callable]]:
    """``datasets``' webdataset decoders by extension, and its decompressors by ``.extension``."""
    from datasets.filesystems import EXTENSION_TO_COMPRESSION_FS_FILE_CLS
    from datasets.packaged_modules.webdataset.webdataset import WebDataset

    return WebDataset.DECODERS, EXTENSION_TO_COMPRESSION_FS_FILE_CLS


def decode_member(name: str, data: bytes) -> Any:
    """The value of the tar member ``name`` (its data ``data``) as ``datasets``' webdataset loader
    gives it: decompressed when its last extension is a compression's (``.gz``, ``.xz``, ...), then
    decoded by the (then) last extension, case-insensitively: ``.json`` a dict or list, ``.cls`` /
    ``.id`` / ``.index`` an int, ``.txt`` a str, ``.npy`` an array, ...; other members (images)
    are returned as bytes. A member its decoder refuses (a ``.cls`` that is not an integer) raises
    ``ValueError`` naming it, as ``load_dataset`` fails on it."""
    decoders, decompressors = _webdataset_decoders()
    extension = name.rsplit(".", 1)[-1].lower()
    try:
        if "." + extension in decompressors:
            with decompressors["." + extension](io.BytesIO(data), mode="rb") as f:
                data = f.read()
            extension = posixpath.basename(name.rsplit(".", 1)[0]).split(".")[-1].lower()
        decoder = decoders.get(extension)
        return data if decoder is None else decoder(data)
    except Exception as error:  # json, int, numpy, torch and the decompressors raise many types
        raise ValueError(
            f"member {name!r} does not decode as a .{extension} member, which datasets' webdataset loader "
            f"also refuses ({type(error).__name__}: {error})."
        ) from error


class ShardIndex:
    """Row access to one shard: its row count, sequential reads from any row, and reads of
    chosen rows (grouped by parquet row group / tar offsets)."""

    def __init__(self, path: str):
        self.path = path
        self._samples: list[_TarSample] | None = None
        self._row_groups: list[int] | None = None

    def _load(self) -> None:
        if is_tar(self.path):
            if self._samples is None:
                self._samples = _tar_samples(self.path)
        elif self._row_groups is None:
            import pyarrow.parquet as pq

            with _open(self.path) as f:
                metadata = pq.ParquetFile(f).metadata
                self._row_groups = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]

    def __len__(self) -> int:
        self._load()
        return len(self._samples) if is_tar(self.path) else sum(self._row_groups)

    def read_rows(self, rows: Sequence[int]) -> dict[int, Row]:
        """The rows at ``rows`` (any order), reading each needed row group / member once."""
        self._load()
        wanted = sorted(set(rows))
        out: dict[int, Row] = {}
        if not wanted:
            return out
        if is_tar(self.path):
            with _open(self.path) as f:
                for row in wanted:
                    out[row] = self._tar_row(f, row)
            return out
        import pyarrow.parquet as pq

        starts = [0]
        for count in self._row_groups:
            starts.append(starts[-1] + count)
        with _open(self.path) as f:
            parquet = pq.ParquetFile(f)
            by_group: dict[int, list[int]] = {}
            for row in wanted:
                by_group.setdefault(bisect.bisect_right(starts, row) - 1, []).append(row)
            for group, group_rows in by_group.items():
                table = parquet.read_row_group(group)
                for row in group_rows:
                    out[row] = table.slice(row - starts[group], 1).to_pylist()[0]
        return out

    def iter_rows(self, start: int = 0) -> Iterator[tuple[int, Row]]:
        """``(row, content)`` from ``start`` to the end of the shard."""
        self._load()
        if is_tar(self.path):
            with _open(self.path) as f:
                for row in range(start, len(self._samples)):
                    yield row, self._tar_row(f, row)
            return
        import pyarrow.parquet as pq

        with _open(self.path) as f:
            parquet = pq.ParquetFile(f)
            first = 0
            for group, count in enumerate(self._row_groups):
                if first + count <= start:
                    first += count
                    continue
                table = parquet.read_row_group(group)
                for offset, row in enumerate(table.to_pylist()):
                    if first + offset >= start:
                        yield first + offset, row
                first += count

    def _tar_row(self, f, row: int) -> Row:
        sample = self._samples[row]
        out: Row = {"__key__": sample.key, "__url__": self.path}
        for field, (offset, size) in sample.members.items():
            f.seek(offset)
            try:
                out[field] = decode_member(f"{sample.key}.{field}", f.read(size))
            except ValueError as error:
                raise ValueError(f"{self.path}: {error}") from error
        return out


def count_rows(paths: Sequence[str]) -> list[int]:
    """Rows (parquet) or samples (webdataset tar) of each shard: parquet metadata, tar headers."""
    return [len(ShardIndex(path)) for path in paths]

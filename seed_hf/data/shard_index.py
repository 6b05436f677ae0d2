"""Row access to one parquet or webdataset shard: its row count from metadata or headers, reads
of chosen rows and sequential reads from any row, without reading what lies before.

Shards are local paths or fsspec URLs (``hf://datasets/org/name/...``). Parquet rows are the
table's columns (an ``image`` struct cell keeps ``bytes``/``path``). Webdataset samples are the
tar members sharing a key (``000123.jpg`` + ``000123.cls`` → ``{"__key__", "__url__", "jpg",
"cls"}``).
"""

from __future__ import annotations

import bisect
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Row", "ShardIndex", "count_rows", "is_tar"]

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
    members: dict[str, tuple[int, int]]  # extension -> (data offset, size)


def _tar_samples(path: str) -> list[_TarSample]:
    """The samples of a webdataset tar, in file order, from its headers only (data is skipped)."""
    samples: list[_TarSample] = []
    with _open(path) as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = member.name.rsplit("/", 1)[-1]
            key, _, extension = name.partition(".")
            if not key or not extension:  # README, .DS_Store: not part of a sample (as webdataset skips them)
                continue
            prefix = member.name[: len(member.name) - len(name)]
            key = prefix + key
            if not samples or samples[-1].key != key:
                samples.append(_TarSample(key, {}))
            samples[-1].members[extension] = (member.offset_data, member.size)
    return samples


def _decode_tar_value(extension: str, data: bytes) -> Any:
    if extension in ("cls", "cls2", "index", "idx", "id"):
        try:
            return int(data.decode().strip())
        except ValueError:
            return data.decode()
    if extension in ("txt", "json"):
        return data.decode()
    return data


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
        for extension, (offset, size) in sample.members.items():
            f.seek(offset)
            out[extension] = _decode_tar_value(extension, f.read(size))
        return out


def count_rows(paths: Sequence[str]) -> list[int]:
    """Rows (parquet) or samples (webdataset tar) of each shard: parquet metadata, tar headers."""
    return [len(ShardIndex(path)) for path in paths]

"""An exactly and cheaply resumable stream over parquet / webdataset shards.

``datasets``' streaming restarts a shuffled stream with an empty shuffle buffer, and the
Trainer resumes an iterable dataset by reading (and decoding, augmenting) every batch it
skips, so a late resume costs as much as the steps before it, and the resumed run differs from
an uninterrupted one.
:class:`ShardStream` is deterministic instead: where it stands is a function of the number of
batches a process has consumed, which every checkpoint already records (``global_step``).

Layout (``R`` readers = processes × max(1, dataloader workers); reader ``j`` is worker
``j % W`` of process ``j // W``):

* Epoch ``e``: the sorted shard list is permuted with ``(seed, e)``; reader ``j`` reads shards
  ``j, j + R, …`` of it, one after the other, through a shuffle buffer of ``shuffle_buffer_size``
  rows whose RNG is seeded by ``(seed, e, j)``. Every reader yields the same number of rows,
  ``min_j rows_j`` rounded down to whole batches, and to a batch count per process that is a
  multiple of the gradient accumulation steps (the rest of the longer readers is dropped for
  that epoch, as webdataset's ``with_epoch`` does), so every process sees the same number of
  batches, DDP stays in step, and every optimizer step takes its batches from one epoch (the
  Trainer would otherwise carry the gradient of an epoch's last incomplete accumulation into
  the next epoch's first step, and ``global_step × accumulation`` would not count the batches).
* A row's augmentation is seeded by ``(seed, e, shard, row)``: a stable id, not the order.
* Resuming after ``b`` batches of a process: the epoch and each worker's offset follow from
  ``b`` (the DataLoader takes batches from its workers in turn). A reader replays its shuffle
  buffer on *row positions* only (integers, no I/O), reads the ≤ ``shuffle_buffer_size`` rows
  the buffer holds at that point and continues: the rows read before the next batch are
  bounded by the buffer plus one batch, whatever the step, and nothing skipped is decoded.

Rows are read through :class:`~seed_hf.data.shard_index.ShardIndex` (parquet row groups,
webdataset tar members).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from seed_hf.data.rows import INDEX_COLUMN, seeded_row_example
from seed_hf.data.seeding import mix_seed
from seed_hf.data.shard_index import Row, ShardIndex, count_rows, is_tar

__all__ = [
    "ShardStream",
    "StreamPosition",
    "locate_batches",
    "warn_on_uneven_shards",
]

logger = logging.getLogger(__name__)

Position = tuple[int, int]  # (shard number in the sorted shard list, row in that shard)


def warn_on_uneven_shards(num_shards: int, world_size: int, num_workers: int) -> bool:
    """Streams are split by shard: with fewer shards than, or a count not divisible by, world_size ×
    workers, some readers get more data than others (or none). Returns True when it warned."""
    readers = max(1, world_size) * max(1, num_workers)
    if num_shards % readers == 0:
        return False
    logger.warning(
        f"The stream has {num_shards} shard(s) for {readers} readers (world_size × dataloader workers): readers get "
        "uneven data. Use a shard count that is a multiple of world_size × dataloader_num_workers "
        "(e.g. re-shard the parquet/webdataset files) for balanced, fast streaming."
    )
    return True


def _epoch_shards(num_shards: int, seed: int, epoch: int) -> list[int]:
    order = list(range(num_shards))
    random.Random(mix_seed(seed, epoch, 0x5EED)).shuffle(order)
    return order


def _shuffled_positions(
    shards: Sequence[int], counts: Sequence[int], buffer_size: int, rng: random.Random, limit: int
) -> Iterator[tuple[Position | None, Position | None]]:
    """The shuffle buffer on positions: yields ``(read, out)`` per step, ``read`` the position
    taken from the shards (None once they are exhausted) and ``out`` the one emitted (None while
    the buffer fills). Stops after ``limit`` emissions."""
    buffer: list[Position] = []
    emitted = 0
    for shard in shards:
        for row in range(counts[shard]):
            position = (shard, row)
            if len(buffer) < buffer_size:
                buffer.append(position)
                yield position, None
                continue
            slot = rng.randrange(buffer_size)
            out, buffer[slot] = buffer[slot], position
            yield position, out
            emitted += 1
            if emitted == limit:
                return
    rng.shuffle(buffer)
    for out in buffer:
        yield None, out
        emitted += 1
        if emitted == limit:
            return


@dataclass(frozen=True)
class StreamPosition:
    """Where a process stands: epoch and batches already taken from it in that epoch."""

    epoch: int
    batches_in_epoch: int


def locate_batches(batches: int, batches_per_epoch: Callable[[int], int]) -> StreamPosition:
    """The epoch and in-epoch offset after ``batches`` batches of one process."""
    epoch = 0
    while True:
        per_epoch = batches_per_epoch(epoch)
        if per_epoch <= 0:
            raise ValueError(
                "The stream yields no full batch per epoch: fewer rows than readers × batch size."
            )
        if batches < per_epoch:
            return StreamPosition(epoch, batches)
        batches -= per_epoch
        epoch += 1


class ShardStream(IterableDataset):
    """Training examples from parquet / webdataset shards, exactly resumable (module docstring).

    Args:
        shards: shard paths or fsspec URLs (``.parquet`` or ``.tar``), one format.
        transform: maps a batch dict of lists (one row) to view lists, as
            :class:`seed_hf.data.rows.ImageColumnTransform` does (undecodable rows come back
            with ``pixel_values=None``; ``collate_batch`` drops and counts them).
        shuffle_buffer_size: rows held by each reader's shuffle buffer.
        seed: seeds shard order, shuffle buffers and augmentation.
        max_rows: rows per epoch over all readers at most (``max_train_samples``).

    Call :meth:`configure` (batch size, processes, workers, rank) before iterating; the trainers
    do it, and restore the position from ``global_step`` through a callback.
    """

    def __init__(
        self,
        shards: Sequence[str],
        transform: Callable[[dict[str, list]], dict[str, list]],
        shuffle_buffer_size: int = 1000,
        seed: int = 0,
        max_rows: int | None = None,
    ):
        if not shards:
            raise ValueError("ShardStream needs at least one shard.")
        kinds = {is_tar(s) for s in shards}
        if len(kinds) > 1:
            raise ValueError("Shards must all be webdataset .tar files or all parquet files.")
        self.shards = sorted(str(s) for s in shards)
        self.transform = transform
        self.shuffle_buffer_size = max(1, int(shuffle_buffer_size))
        self.seed = int(seed)
        self.row_counts = count_rows(self.shards)
        self.max_rows = max_rows
        self.batch_size = 1
        self.num_processes = 1
        self.process_index = 0
        self.num_workers = 0
        self.gradient_accumulation_steps = 1
        self._next = StreamPosition(0, 0)  # what the next iteration serves
        self._epochs_begun = 0
        self.rows_read = 0  # rows read from the shards by this copy (per worker)
        self._indexes: dict[int, ShardIndex] = {}  # filled where the stream is iterated (a worker)
        self._batches_per_epoch: dict[tuple, int] = {}

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    def configure(
        self,
        batch_size: int,
        num_processes: int,
        process_index: int,
        num_workers: int,
        gradient_accumulation_steps: int = 1,
    ) -> ShardStream:
        """Sets how the stream is read: per-process batch size, processes, this process, workers,
        and the batches per optimizer step (each epoch holds a whole number of optimizer steps)."""
        self.batch_size = int(batch_size)
        self.num_processes = max(1, int(num_processes))
        self.process_index = int(process_index)
        self.num_workers = max(0, int(num_workers))
        self.gradient_accumulation_steps = max(1, int(gradient_accumulation_steps))
        if self.num_readers > self.num_shards:
            raise ValueError(
                f"{self.num_shards} shard(s) for {self.num_readers} readers (processes × dataloader workers): every "
                "reader needs at least one shard. Use fewer dataloader workers or more (smaller) shards."
            )
        warn_on_uneven_shards(
            self.num_shards, self.num_processes, self.num_workers
        )  # each epoch drops the excess
        return self

    @property
    def num_readers(self) -> int:
        return self.num_processes * max(1, self.num_workers)

    def rows_per_reader(self, epoch: int) -> int:
        """Rows every reader yields in ``epoch``: the shortest reader's, in whole batches, and in
        a number of batches that makes the process's batches a multiple of the accumulation steps."""
        order = _epoch_shards(self.num_shards, self.seed, epoch)
        totals = [
            sum(self.row_counts[s] for s in order[j :: self.num_readers]) for j in range(self.num_readers)
        ]
        rows = min(totals)
        if self.max_rows:
            rows = min(rows, self.max_rows // self.num_readers)
        workers = max(1, self.num_workers)
        # a process takes `workers` × (batches per reader); accumulation needs a multiple of its steps
        per_reader = self.gradient_accumulation_steps // math.gcd(self.gradient_accumulation_steps, workers)
        return rows // (self.batch_size * per_reader) * (self.batch_size * per_reader)

    def batches_per_epoch(self, epoch: int) -> int:
        """Batches one process takes from the stream in ``epoch`` (memoised: asked at every step)."""
        key = (epoch, self.batch_size, self.num_readers, self.gradient_accumulation_steps, self.max_rows)
        if key not in self._batches_per_epoch:
            self._batches_per_epoch[key] = (
                self.rows_per_reader(epoch) // self.batch_size * max(1, self.num_workers)
            )
        return self._batches_per_epoch[key]

    def resume_after(self, batches: int) -> StreamPosition:
        """Positions the stream after ``batches`` batches of this process (0: the start)."""
        self._next = locate_batches(int(batches), self.batches_per_epoch)
        self._epochs_begun = 0
        return self._next

    def begin_epoch(self) -> StreamPosition:
        """Called at each Trainer epoch start: the first serves the resume position, later ones
        the next stream epoch from its start."""
        if self._epochs_begun > 0:
            self._next = StreamPosition(self._next.epoch + 1, 0)
        self._epochs_begun += 1
        return self._next

    def _reader(self) -> tuple[int, int]:
        """(reader, worker) this copy plays. The DataLoader takes batch ``i`` from its worker
        ``i % W`` counting from the iterator's start, so a stream resumed after ``b`` batches lets
        its worker ``w`` play worker ``(w + b) % W`` of the uninterrupted epoch."""
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if workers != max(1, self.num_workers):
            raise RuntimeError(
                f"ShardStream was configured for {self.num_workers} dataloader workers but runs in {workers}."
            )
        worker = (worker + self._next.batches_in_epoch) % workers
        return self.process_index * workers + worker, worker

    def _skip_rows(self, worker: int) -> int:
        """Rows worker ``worker`` (of the uninterrupted epoch) yielded before the position served now."""
        workers = max(1, self.num_workers)
        done = self._next.batches_in_epoch
        batches = done // workers + (1 if worker < done % workers else 0)
        return batches * self.batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        reader, worker = self._reader()
        epoch = self._next.epoch
        limit = self.rows_per_reader(epoch)
        shards = _epoch_shards(self.num_shards, self.seed, epoch)[reader :: self.num_readers]
        rng = random.Random(mix_seed(self.seed, epoch, reader))
        skip = self._skip_rows(worker)
        steps = _shuffled_positions(shards, self.row_counts, self.shuffle_buffer_size, rng, limit)
        # replay the positions of the rows already yielded: integers only, no reads
        buffer: set[Position] = set()
        cursor: Position | None = None
        emitted = 0
        if skip:
            for read, out in steps:
                if read is not None:
                    buffer.add(read)
                    cursor = read
                if out is not None:
                    buffer.discard(out)
                    emitted += 1
                    if emitted == skip:
                        break
        contents = self._read_positions(buffer)
        sequential = self._sequential_rows(shards, cursor)
        for read, out in steps:
            if read is not None:
                position, row = next(sequential)
                assert position == read, (position, read)
                contents[read] = row
            if out is not None:
                yield self._example(contents.pop(out), out, epoch)

    def _index(self, shard: int) -> ShardIndex:
        if shard not in self._indexes:
            self._indexes[shard] = ShardIndex(self.shards[shard])
        return self._indexes[shard]

    def _read_positions(self, positions: set[Position]) -> dict[Position, Row]:
        by_shard: dict[int, list[int]] = {}
        for shard, row in positions:
            by_shard.setdefault(shard, []).append(row)
        out: dict[Position, Row] = {}
        for shard, rows in by_shard.items():
            for row, content in self._index(shard).read_rows(rows).items():
                out[(shard, row)] = content
                self.rows_read += 1
        return out

    def _sequential_rows(
        self, shards: Sequence[int], cursor: Position | None
    ) -> Iterator[tuple[Position, Row]]:
        """Rows after ``cursor`` (the last position read before the resume point), shard by shard."""
        started = cursor is None
        for shard in shards:
            if not started:
                if shard != cursor[0]:
                    continue
                started, start = True, cursor[1] + 1
            else:
                start = 0
            if start >= self.row_counts[shard]:
                continue
            for row, content in self._index(shard).iter_rows(start):
                self.rows_read += 1
                yield (shard, row), content

    def _example(self, row: Row, position: Position, epoch: int) -> dict[str, Any]:
        if not {"__url__", "id"} & row.keys():  # a parquet row of no id: the skip log names shard and row
            row = {**row, "__url__": self.shards[position[0]], INDEX_COLUMN: position[1]}
        return seeded_row_example(self.transform, row, self.seed, epoch, position[0] * 2**32 + position[1])

"""ShardStream: a parquet / webdataset stream whose position follows from the batches taken,
so resuming reads only the shuffle buffer and yields exactly what an uninterrupted run yields."""

import pytest
import torch
from helpers import write_jpeg_shards
from torch.utils.data import DataLoader

from seed_hf.data.shard_stream import ShardStream, locate_batches


def row_id(cells: dict) -> int:
    return cells["id"][0] if "id" in cells else int(cells["__key__"][0])


def identify(cells: dict) -> dict:
    """A stand-in transform: the row's id and one draw of the augmentation RNG."""
    return {"id": [row_id(cells)], "draw": [torch.rand(())]}


def collate(examples):
    return {"id": [e["id"] for e in examples], "draw": torch.stack([e["draw"] for e in examples])}


def batches(stream: ShardStream, workers: int, batch_size: int) -> list[dict]:
    loader = DataLoader(stream, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    return list(loader)


@pytest.fixture(scope="module", params=["parquet", "wds"])
def shards(request, tmp_path_factory):
    return write_jpeg_shards(tmp_path_factory.mktemp(request.param), request.param, shards=4, rows=11)


def test_an_epoch_is_a_shuffled_subset_of_equal_share_per_reader(shards):
    stream = ShardStream(shards, identify, shuffle_buffer_size=5, seed=0).configure(4, 1, 0, 2)
    assert stream.rows_per_reader(0) == 20  # 2 shards × 11 rows per reader, in whole batches of 4
    epoch = batches(stream, workers=2, batch_size=4)
    ids = [i for b in epoch for i in b["id"]]
    assert len(ids) == 40 and len(set(ids)) == 40 and set(ids) <= set(range(44))
    assert ids != sorted(ids)  # shuffled
    stream.begin_epoch(), stream.begin_epoch()
    assert [i for b in batches(stream, 2, 4) for i in b["id"]] != ids  # the next epoch: another order


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_at_any_batch_yields_the_rest_of_the_uninterrupted_stream(shards, workers):
    stream = ShardStream(shards, identify, shuffle_buffer_size=5, seed=3).configure(4, 1, 0, workers)
    stream.resume_after(0), stream.begin_epoch()
    epoch0 = batches(stream, workers, 4)
    stream.begin_epoch()
    epoch1 = batches(stream, workers, 4)
    full = epoch0 + epoch1
    for done in (1, 3, len(epoch0), len(epoch0) + 2):
        stream.resume_after(done)
        stream.begin_epoch()
        rest = batches(stream, workers, 4)
        if done >= len(epoch0):
            expected = full[done:]
        else:
            expected = full[done : len(epoch0)]
        assert [b["id"] for b in rest] == [b["id"] for b in expected], done
        assert all(torch.equal(a["draw"], b["draw"]) for a, b in zip(rest, expected))  # same augmentation


def test_resume_reads_at_most_the_buffer_plus_one_batch_whatever_the_step(shards):
    stream = ShardStream(shards, identify, shuffle_buffer_size=5, seed=0).configure(2, 1, 0, 0)
    reads = []
    for done in (1, 6, 9):  # early and late in the epoch
        stream.resume_after(done)
        stream.begin_epoch()
        stream.rows_read = 0
        next(iter(DataLoader(stream, batch_size=2, collate_fn=collate)))
        reads.append(stream.rows_read)
    assert all(r <= 5 + 2 for r in reads), reads
    assert len(set(reads)) == 1, reads  # independent of where the run stopped


def test_locate_batches_walks_epochs_of_different_lengths():
    lengths = {0: 5, 1: 3, 2: 4}.__getitem__
    assert locate_batches(0, lengths).epoch == 0
    assert locate_batches(7, lengths) == type(locate_batches(0, lengths))(1, 2)
    assert locate_batches(8, lengths).epoch == 2


def test_too_many_readers_for_the_shards_is_one_clear_error(shards):
    with pytest.raises(ValueError, match="every reader needs at least one shard"):
        ShardStream(shards, identify).configure(4, 2, 0, 4)


@pytest.mark.parametrize("workers,accumulation", [(0, 2), (2, 4), (2, 3)])
def test_an_epoch_holds_whole_optimizer_steps(shards, workers, accumulation):
    """With gradient accumulation, a process's batches per epoch are a multiple of the
    accumulation steps: the Trainer counts batches as global_step × accumulation, and would carry
    an epoch's incomplete last accumulation into the next epoch's first optimizer step."""
    stream = ShardStream(shards, identify, shuffle_buffer_size=5, seed=0).configure(
        4, 1, 0, workers, accumulation
    )
    for epoch in range(3):
        assert stream.batches_per_epoch(epoch) > 0
        assert stream.batches_per_epoch(epoch) % accumulation == 0, (epoch, stream.batches_per_epoch(epoch))
    stream.resume_after(0), stream.begin_epoch()
    assert len(batches(stream, workers, 4)) == stream.batches_per_epoch(0)


def test_tar_members_without_a_key_and_extension_are_not_samples(tmp_path):
    """Directories, extension-less files (README) and dot files are not samples, as in webdataset;
    members in a folder keep it in their key."""
    import io
    import tarfile

    from seed_hf.data.shard_index import ShardIndex

    path = tmp_path / "train-00000.tar"
    with tarfile.open(path, "w") as tar:
        folder = tarfile.TarInfo("sub")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, data in [("README", b"x"), ("sub/LICENSE", b"x"), ("sub/.DS_Store", b"x")] + [
            (f"sub/{i:06d}.{ext}", str(i).encode()) for i in range(3) for ext in ("jpg", "cls")
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    index = ShardIndex(str(path))
    assert len(index) == 3
    rows = dict(index.iter_rows())
    assert [rows[i]["__key__"] for i in range(3)] == ["sub/000000", "sub/000001", "sub/000002"]
    assert set(rows[0]) == {"__key__", "__url__", "jpg", "cls"}


def test_the_trainer_epoch_ends_with_the_stream_epoch(shards):
    """The stream has no length: without a stop, the Trainer's epoch loop would go on through
    max_steps update steps on an exhausted iterator at every stream epoch's end."""
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState

    from seed_hf.training.callbacks import StreamPositionCallback

    stream = ShardStream(shards, identify, shuffle_buffer_size=5, seed=0).configure(4, 1, 0, 0, 2)
    per_epoch = stream.batches_per_epoch(0) // 2  # optimizer steps
    args, callback = SimpleNamespace(gradient_accumulation_steps=2), StreamPositionCallback(stream)
    for resumed_at in (0, 3):
        state, control = TrainerState(global_step=resumed_at), TrainerControl()
        callback.on_train_begin(args, state, control)
        callback.on_epoch_begin(args, state, control)
        stops = []
        for step in range(resumed_at + 1, per_epoch + 1):
            state.global_step = step
            callback.on_step_end(args, state, control)
            stops.append(control.should_epoch_stop)
        assert stops == [False] * (per_epoch - resumed_at - 1) + [True], resumed_at


def _write_tar(path, samples):
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in samples:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_tar_members_decode_as_the_datasets_webdataset_loader_decodes_them(tmp_path):
    """A stream's row and ``load_dataset("webdataset", ...)``'s row of the same sample hold the same
    values (``.json`` a dict, ``.cls`` an int, ``.txt`` a str, the last extension deciding, gzip
    members decompressed first), and the image member the same encoded bytes."""
    import gzip
    import json
    from pathlib import Path

    from datasets import Image, load_dataset
    from helpers import write_jpeg_shards

    from seed_hf.data.shard_index import ShardIndex

    jpegs = write_jpeg_shards(tmp_path / "jpegs", "wds", shards=1, rows=3)
    images = [row["jpg"] for _, row in ShardIndex(jpegs[0]).iter_rows()]
    path = str(tmp_path / "train-00000.tar")
    _write_tar(
        path,
        [("__index.json", b"{}")]  # hidden (a name starting with __ or .): not a sample
        + [
            (name, data)
            for i, image in enumerate(images)
            for name, data in [
                (f"{i:06d}.jpg", image),
                (f"{i:06d}.cls", f"{i}\n".encode()),
                (f"{i:06d}.json", json.dumps({"label": i, "caption": f"photo {i}"}).encode()),
                (f"{i:06d}.txt", f"photo {i}".encode()),
                (f"{i:06d}.seg.json", json.dumps({"boxes": i * 2}).encode()),
                (f"{i:06d}.meta.json.gz", gzip.compress(json.dumps({"size": i + 10}).encode())),
            ]
        ],
    )
    ours = [row for _, row in ShardIndex(path).iter_rows()]
    theirs = list(
        load_dataset("webdataset", data_files={"train": [path]}, split="train", streaming=True).cast_column(
            "jpg", Image(decode=False)
        )
    )
    assert len(ours) == len(theirs) == 3
    for mine, reference in zip(ours, theirs):
        assert set(mine) == set(reference)
        assert isinstance(mine["json"], dict) and isinstance(mine["cls"], int)
        assert mine["jpg"] == reference["jpg"]["bytes"]  # images stay encoded: the same bytes
        assert Path(mine["__url__"]).resolve() == Path(reference["__url__"]).resolve()
        assert {k: v for k, v in mine.items() if k not in ("jpg", "__url__")} == {
            k: v for k, v in reference.items() if k not in ("jpg", "__url__")
        }


def test_a_tar_member_that_does_not_decode_is_named(tmp_path):
    """A ``.cls`` that is not an integer (which ``datasets``' loader also refuses) names its shard
    and member instead of becoming a string."""
    from seed_hf.data.shard_index import ShardIndex

    path = tmp_path / "train-00000.tar"
    _write_tar(path, [("000000.jpg", b"x"), ("000000.cls", b"cat")])
    with pytest.raises(ValueError, match=r"train-00000\.tar: member '000000\.cls' does not decode"):
        ShardIndex(str(path)).read_rows([0])

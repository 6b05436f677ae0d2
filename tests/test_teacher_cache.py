"""The teacher cache (seed_hf.teachers.cache): written from the teacher's embeddings of the seeded
views, refused when a run's recipe differs, resumed after SIGKILL, replayed beyond its epochs, and a
run trained from an fp32 cache equal to the online run."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import tiny_teacher, write_jpeg_shards

from seed_hf.data.sources import TrainData, TrainSource
from seed_hf.data.train_dataset import build_train_dataset
from seed_hf.models.configuration_seed import default_normalization
from seed_hf.teachers.cache import CachedTeacherDataset, TeacherCache, cache_recipe
from seed_hf.teachers.cache_writer import write_teacher_cache

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from seed_hf.scripts import run_seed, run_teacher_cache  # noqa: E402

ROWS = 24  # 2 parquet shards of 12 RGB JPEGs


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_jpeg_shards(tmp_path_factory.mktemp("images"), shards=2, rows=ROWS // 2, size=40)


def _data(files, image_size: int = 32) -> TrainData:
    return TrainData.resolve(TrainSource(train_files=tuple(files)), "moco_v2", image_size)


def _write(files, folder, epochs=2, dtype="float32", teacher_seed=1, **kwargs):
    options = dict(batch_size=8, dtype=dtype, teacher_dtype="float32", channels_last=False, shard_rows=10)
    return write_teacher_cache(
        tiny_teacher(seed=teacher_seed),
        _data(files),
        0,
        epochs,
        folder,
        progress=False,
        **{**options, **kwargs},
    )


@pytest.fixture(scope="module")
def cache32(files, tmp_path_factory):
    """An fp32 cache of 2 epochs, 3 shards of 10 rows per epoch."""
    folder = tmp_path_factory.mktemp("cache32")
    _write(files, folder)
    return folder


def test_cache_holds_the_teachers_embeddings_of_the_training_views(files, tmp_path):
    manifest = _write(files, tmp_path / "cache", dtype="float16", num_small_crops=2, small_crop_size=16)
    assert manifest["complete"] and manifest["recipe"]["rows"] == ROWS and manifest["views_per_sample"] == 3
    assert manifest["write"]["views"] == 2 * ROWS * 3
    cache = TeacherCache(tmp_path / "cache")
    data = _data(files)
    mean, std = default_normalization(3, data.mean, data.std)
    dataset = build_train_dataset(data, 1, 3, mean, std, 0, num_small_crops=2, small_crop_size=16)
    teacher = tiny_teacher()
    teacher.set_data_normalization(mean, std)
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        examples = [dataset[i] for i in range(ROWS)]
        with torch.inference_mode():
            embeds = teacher(torch.stack([e["pixel_values"] for e in examples]))
            small = teacher(torch.stack([e["pixel_values_small"] for e in examples]).flatten(0, 1))
        for i in range(ROWS):
            cached = cache.lookup(epoch, i)
            assert cached["teacher_embeds"].dtype == torch.float16
            assert torch.allclose(cached["teacher_embeds"].float(), embeds[i], atol=1e-3, rtol=0)
            assert torch.allclose(
                cached["teacher_embeds_small"].float(), small[2 * i : 2 * i + 2], atol=1e-3, rtol=0
            )
    # another epoch's views, other embeddings: the cache is keyed by epoch
    assert not torch.allclose(cache.lookup(0, 3)["teacher_embeds"], cache.lookup(1, 3)["teacher_embeds"])
    import datasets

    table = datasets.load_dataset(str(tmp_path / "cache"), split="train")  # the folder is a datasets table
    assert table.num_rows == 2 * ROWS and set(table.column_names) >= {"epoch", "index", "embedding"}


def test_replay_beyond_the_cached_epochs_maps_views_and_embeddings_to_epoch_mod_E(files, cache32):
    cache = TeacherCache(cache32)
    data = _data(files)
    mean, std = default_normalization(3, data.mean, data.std)
    dataset = CachedTeacherDataset(build_train_dataset(data, 1, 3, mean, std, 0), cache)
    reference = build_train_dataset(data, 1, 3, mean, std, 0)
    for epoch in (2, 3, 5):
        dataset.set_epoch(epoch)
        reference.set_epoch(epoch % 2)
        for i, example in zip([4, 17], dataset.__getitems__([4, 17])):
            assert torch.equal(example["pixel_values"], reference[i]["pixel_values"])
            assert torch.equal(example["teacher_embeds"], cache.lookup(epoch % 2, i)["teacher_embeds"])
    reference.set_epoch(3)  # not the view of epoch 3 itself: the replayed one
    assert not torch.equal(dataset[4]["pixel_values"], reference[4]["pixel_values"])


def test_cache_of_another_recipe_is_refused_naming_each_difference(files, cache32):
    cache = TeacherCache(cache32)
    data = _data(files)
    mean, std = default_normalization(3, data.mean, data.std)
    with pytest.raises(ValueError, match=r"seed \(--seed\): cache 0, this run 1"):
        cache.check_recipe(cache_recipe(data, 1, mean, std, ROWS))
    with pytest.raises(ValueError, match=r"image_size \(--image_size\): cache 32, this run 48"):
        cache.check_recipe(cache_recipe(_data(files, 48), 0, mean, std, ROWS))
    with pytest.raises(ValueError, match=r"num_small_crops \(--num_small_crops\): cache 0, this run 2"):
        cache.check_recipe(cache_recipe(data, 0, mean, std, ROWS, num_small_crops=2))
    # the writer refuses to add to a folder of another teacher
    with pytest.raises(ValueError, match="teacher_weights_sha256"):
        _write(files, cache32, teacher_seed=2)


def _seed_flags(out: Path, files: list[str], *extra: str) -> list[str]:
    return [
        "--student_architecture", "test_resnet", "--queue_size", "32", "--max_steps", "4",
        "--save_strategy", "no", "--logging_steps", "1", "--output_dir", str(out), *_common(files), *extra,
    ]  # fmt: skip


def _common(files: list[str]) -> list[str]:
    return [
        "--train_files", *files, "--image_size", "32", "--augmentation", "moco_v2",
        "--per_device_train_batch_size", "8", "--teacher_dtype", "float32", "--channels_last", "false",
        "--use_cpu", "--report_to", "none", "--disable_tqdm", "true", "--seed", "0",
    ]  # fmt: skip


TEACHER = ["--teacher_name_or_path", "test_resnet", "--allow_random_teacher"]


def test_fp32_cache_trains_exactly_as_the_online_teacher(files, tmp_path, monkeypatch):
    """The fp32 equality test: a run from an fp32 cache of the same views gives the online run's
    losses and weights (24 rows, batch 8: 4 steps span both cached epochs)."""
    from safetensors.torch import load_file

    online = tmp_path / "online"
    run_seed.main(_seed_flags(online, files, *TEACHER))
    cache = tmp_path / "cache"
    flags = [*TEACHER, *_common(files), "--epochs", "2", "--dtype", "float32"]
    run_teacher_cache.main([*flags, "--output_dir", str(cache)])

    def no_teacher(*args, **kwargs):
        raise AssertionError("a cached run loads no teacher")

    monkeypatch.setattr(run_seed, "load_teacher", no_teacher)
    cached = tmp_path / "cached"
    run_seed.main(_seed_flags(cached, files, "--teacher_cache", str(cache)))

    def losses(folder):
        state = json.loads((folder / "trainer_state.json").read_text())
        return [entry["loss"] for entry in state["log_history"] if "loss" in entry]

    assert len(losses(online)) == 4 and losses(cached) == losses(online)
    weights, cached_weights = load_file(online / "model.safetensors"), load_file(cached / "model.safetensors")
    assert weights.keys() == cached_weights.keys()
    for name, value in weights.items():  # queue included: filled with the same teacher keys
        assert torch.equal(value, cached_weights[name]), name
    info = json.loads((cached / "run_info.json").read_text())
    online_info = json.loads((online / "run_info.json").read_text())
    assert (
        info["teacher"] == online_info["teacher"] and info["teacher_pass"] == "cached: 2 epochs, replayed ×1"
    )
    from seed_hf.export.cards import run_summary

    assert run_summary(cached)["teacher_pass"] == info["teacher_pass"]  # what the card's table shows
    # another seed, image size or teacher: refused before training, the difference named
    with pytest.raises(ValueError, match=r"seed \(--seed\): cache 0, this run 3"):
        run_seed.main(_seed_flags(tmp_path / "r1", files, "--teacher_cache", str(cache), "--seed", "3"))
    with pytest.raises(ValueError, match=r"image_size \(--image_size\): cache 32, this run 48"):
        run_seed.main(
            _seed_flags(tmp_path / "r2", files, "--teacher_cache", str(cache), "--image_size", "48")
        )
    other = ["--teacher_name_or_path", "test_efficientnet", "--allow_random_teacher"]
    with pytest.raises(
        ValueError, match="teacher_name_or_path: cache 'test_resnet', this run 'test_efficientnet'"
    ):
        run_seed.main(_seed_flags(tmp_path / "r3", files, "--teacher_cache", str(cache), *other))
    with pytest.raises(ValueError, match="--local_loss_weight"):
        run_seed.main(
            _seed_flags(tmp_path / "r4", files, "--teacher_cache", str(cache), "--local_loss_weight", "1")
        )


KILLED_WRITER = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import seed_hf.teachers.cache_writer as writer
from helpers import tiny_teacher
from seed_hf.data.sources import TrainData, TrainSource

kill_at, calls = int(sys.argv[2]), []
write_shard = writer._write_shard

def killed(*args, **kwargs):  # SIGKILL in the middle of shard kill_at: after its temporary file, before the rename
    calls.append(1)
    if len(calls) == kill_at:
        writer.os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
    return write_shard(*args, **kwargs)

writer._write_shard = killed
data = TrainData.resolve(TrainSource(train_files=tuple(sys.argv[3:])), "moco_v2", 32)
writer.write_teacher_cache(tiny_teacher(), data, 0, 2, sys.argv[1], batch_size=8, dtype="float16",
                           shard_rows=10, progress=False)
"""


def test_writer_killed_then_resumed_gives_the_uninterrupted_table(files, tmp_path):
    import pyarrow as pa

    script = tmp_path / "killed_writer.py"
    script.write_text(textwrap.dedent(KILLED_WRITER.format(tests=str(ROOT / "tests"))))
    folder = tmp_path / "cache"
    killed = subprocess.run(
        [sys.executable, str(script), str(folder), "3", *files], capture_output=True, text=True
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    shards = sorted(p.name for p in (folder / "data").glob("*.arrow"))
    assert len(shards) == 2 and any((folder / "data").glob(".*.tmp"))  # 6 shards, killed in the third
    assert not json.loads((folder / "manifest.json").read_text())["complete"]
    with pytest.raises(ValueError, match="incomplete"):
        TeacherCache(folder)
    resumed = subprocess.run(
        [sys.executable, str(script), str(folder), "0", *files], capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole = tmp_path / "whole"
    subprocess.run([sys.executable, str(script), str(whole), "0", *files], check=True, capture_output=True)

    def table(root):
        paths = sorted((root / "data").glob("*.arrow"))
        return [p.name for p in paths], pa.concat_tables(
            pa.ipc.open_stream(pa.memory_map(str(p))).read_all() for p in paths
        )

    names, rows = table(folder)
    assert (names, rows.num_rows) == (table(whole)[0], 2 * ROWS)
    assert rows.equals(table(whole)[1])
    keys = list(zip(rows.column("epoch").to_pylist(), rows.column("index").to_pylist()))
    assert sorted(keys) == [(e, i) for e in range(2) for i in range(ROWS)]  # none missing, none twice
    assert TeacherCache(folder).manifest["complete"]

"""Streaming and map-style datasets from local parquet shards: DDP coverage, corrupt images."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_jpeg_shards

SCRIPT = Path(__file__).with_name("stream_train.py")
ROOT = Path(__file__).resolve().parents[1]


def _run(
    out: Path, files: list[str], steps: int, per_device: int, nproc: int, streaming: bool, *options: str
) -> tuple[list[dict], str]:
    """Runs stream_train.py (under torchrun for nproc > 1); returns each rank's record and the logs."""
    out.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
        "HF_DATASETS_CACHE": str(out / "cache"),
    }
    if nproc == 1:
        cmd = [sys.executable, str(SCRIPT)]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            f"--master_port={port}",
            str(SCRIPT),
        ]
    args = [str(out), str(steps), str(per_device), "stream" if streaming else "map", *options, *files]
    result = subprocess.run(cmd + args, env=env, capture_output=True, text=True, timeout=600)
    logs = result.stdout + result.stderr
    if "--kill_at" in options:
        assert result.returncode != 0, logs[
            -3000:
        ]  # killed (torchrun reports the child's SIGKILL as a failure)
        return [], logs
    assert result.returncode == 0, logs[-5000:]
    return [json.loads((out / f"ids_rank{r}.json").read_text()) for r in range(nproc)], logs


def test_two_processes_stream_every_sample_exactly_once(tmp_path):
    files = write_jpeg_shards(tmp_path, shards=8, rows=10)
    ranks, _ = _run(tmp_path / "run", files, steps=10, per_device=4, nproc=2, streaming=True)
    ids = ranks[0]["ids"] + ranks[1]["ids"]
    print(f"rank0 {len(ranks[0]['ids'])} ids, rank1 {len(ranks[1]['ids'])} ids, unique {len(set(ids))} of 80")
    assert sorted(ids) == list(range(80))  # every id once: no loss, no duplicates
    assert len(ranks[0]["ids"]) == len(ranks[1]["ids"]) == 40


@pytest.mark.parametrize("streaming", [True, False])
def test_ten_percent_corrupt_images_are_skipped_and_counted(tmp_path, streaming):
    files = write_jpeg_shards(tmp_path, shards=2, rows=20, corrupt_every=10)  # ids 0, 10, 20, 30 are corrupt
    ranks, logs = _run(tmp_path / "run", files, steps=4, per_device=8, nproc=1, streaming=streaming)
    assert ranks[0]["steps"] == 4
    assert not {0, 10, 20, 30} & set(ranks[0]["ids"])
    assert "undecodable image" in logs


def test_a_streamed_corrupt_parquet_row_without_id_is_named_by_its_shard_and_row(tmp_path):
    """The skip log named "(row 0 of a batch)": streamed rows reach the decoder one at a time."""
    import pyarrow.parquet as pq

    files = write_jpeg_shards(tmp_path / "with_id", shards=2, rows=20, corrupt_every=10)
    for i, file in enumerate(files):  # the same shards without their id column
        pq.write_table(pq.read_table(file).drop_columns(["id"]), tmp_path / f"no_id-{i}.parquet")
    no_id = [str(tmp_path / f"no_id-{i}.parquet") for i in range(len(files))]
    _, logs = _run(tmp_path / "run", no_id, steps=4, per_device=8, nproc=1, streaming=True)
    named = {f"__index__={row} of {no_id[shard]}" for shard in (0, 1) for row in (0, 10)}
    assert any(name in logs for name in named), logs[-3000:]
    assert "of a batch; no path" not in logs


def test_uneven_shard_count_warns(caplog):
    from seed_hf.data.shard_stream import warn_on_uneven_shards

    assert warn_on_uneven_shards(8, 2, 4) is False
    assert warn_on_uneven_shards(6, 2, 4) is True
    assert "world_size" in caplog.text


@pytest.mark.parametrize(
    "fmt,nproc", [("parquet", 1), ("wds", 1), ("parquet", 2), ("wds", 2)], ids=lambda v: str(v)
)
def test_sigkilled_stream_resumes_bit_identical(tmp_path, fmt, nproc):
    """Streamed shards read by nproc processes × 2 dataloader workers, real moco_v2 augmentation:
    killed after step 9 and resumed from checkpoint-8, the run ends bit-identical to an uninterrupted
    one, having trained on the same images in the same order (across an epoch boundary)."""
    import torch

    files = write_jpeg_shards(tmp_path / "data", fmt, shards=4 * nproc, rows=6)
    # 2 × nproc readers of 2 shards (12 rows, 6 batches of 2) each: 12 batches per epoch and process
    common = ["--workers", "2", "--save_steps", "4", "--augmentation", "moco_v2"]
    straight, _ = _run(tmp_path / "straight", files, 14, 2, nproc, True, *common)
    _run(tmp_path / "killed", files, 14, 2, nproc, True, *common, "--kill_at", "9")
    resumed, logs = _run(tmp_path / "killed", files, 14, 2, nproc, True, *common)
    assert Path(resumed[0]["resumed_from"]).name == "checkpoint-8"
    assert "Stream resumed at epoch 0, batch 8" in logs
    for rank in range(nproc):
        assert resumed[rank]["ids"] == straight[rank]["ids"][8 * 2 :]  # same images, same order
        expected = torch.load(tmp_path / "straight" / f"final_rank{rank}.pt")
        got = torch.load(tmp_path / "killed" / f"final_rank{rank}.pt")
        for name, value in expected.items():
            assert torch.equal(got[name], value), (rank, name)


def test_sigkilled_stream_with_gradient_accumulation_resumes_bit_identical(tmp_path):
    """gradient_accumulation_steps=2 on an epoch of 7 batches (15 rows, batches of 2, 1 reader):
    the stream drops the 7th batch, so every optimizer step takes 2 batches of one epoch and a run
    killed after step 5 resumes from checkpoint-4 (8 batches, in the second epoch) exactly."""
    import torch

    (tmp_path / "data").mkdir()
    files = write_jpeg_shards(tmp_path / "data", shards=3, rows=5)
    common = ["--save_steps", "4", "--gradient_accumulation_steps", "2"]
    straight, _ = _run(tmp_path / "straight", files, 7, 2, 1, True, *common)
    _run(tmp_path / "killed", files, 7, 2, 1, True, *common, "--kill_at", "5")
    resumed, logs = _run(tmp_path / "killed", files, 7, 2, 1, True, *common)
    assert Path(resumed[0]["resumed_from"]).name == "checkpoint-4"
    assert len(straight[0]["ids"]) == 7 * 2 * 2  # 2 batches of 2 per step, no batch carried over
    assert resumed[0]["ids"] == straight[0]["ids"][4 * 2 * 2 :]
    expected = torch.load(tmp_path / "straight" / "final_rank0.pt")
    got = torch.load(tmp_path / "killed" / "final_rank0.pt")
    for name, value in expected.items():
        assert torch.equal(got[name], value), name


def test_stream_reports_its_epochs_and_warns_when_resumed_with_other_readers(tmp_path):
    """The Trainer's epoch counter follows the stream (logs, trainer_state.json, cards), and a
    resume with another dataloader worker count, which cannot restore the position, says so."""
    files = write_jpeg_shards(tmp_path / "data", "parquet", shards=4, rows=6)
    # 2 readers × 12 rows, batches of 2: 12 batches per epoch
    _run(tmp_path / "run", files, 6, 2, 1, True, "--workers", "2", "--save_steps", "3")
    state = json.loads((tmp_path / "run" / "checkpoint-6" / "trainer_state.json").read_text())
    epochs = {h["step"]: h["epoch"] for h in state["log_history"] if "loss" in h}
    assert epochs[3] == pytest.approx(0.25) and epochs[6] == pytest.approx(0.5)
    layout = json.loads((tmp_path / "run" / "checkpoint-6" / "stream_position.json").read_text())
    assert layout["readers"] == 2 and layout["global_step"] == 6
    _, logs = _run(tmp_path / "run", files, 8, 2, 1, True, "--workers", "1", "--save_steps", "3")
    assert "Stream resumed at epoch 0, batch 6" in logs
    assert "The stream is read differently from the run being resumed (readers: 2 then, 1 now" in logs


def test_glob_train_files_stream_and_a_missing_file_is_named(tmp_path):
    from seed_hf.data.loading import expand_files

    files = write_jpeg_shards(tmp_path, shards=2, rows=4)
    assert expand_files([str(tmp_path / "*.parquet")]) == sorted(files)
    with pytest.raises(FileNotFoundError, match=r"--train_files '.*missing\.tar' matches no file"):
        expand_files([str(tmp_path / "missing.tar")])

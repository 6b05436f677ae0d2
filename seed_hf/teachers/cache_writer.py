"""Writes a teacher cache (:mod:`seed_hf.teachers.cache`): the frozen teacher run once over
``epochs`` epochs of a run's seeded views.

The teacher runs exactly as ``SeedTrainer`` runs it (:mod:`seed_hf.teachers.inference`: its data
normalisation, BatchNorm folding, memory-layout rule, ``teacher_dtype`` autocast, inference mode),
so an fp32 cache holds the values an online run's teacher computes. Writing is resumable: each shard is written to a temporary file
and renamed, a restarted writer skips the shards already there, and one writer holds the
folder (the run-folder lock of :func:`seed_hf.training.run_folder.lock_run_folder`, taken by the caller).
Under several processes each writes the shards ``k`` with ``k % num_processes ==
process_index``; the main process completes the manifest once every shard is there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from seed_hf.data.augmentation import SMALL_CROP_SCALE, SMALL_CROP_SIZE
from seed_hf.data.sources import TrainData
from seed_hf.data.train_dataset import build_train_dataset
from seed_hf.models.configuration_seed import default_normalization
from seed_hf.teachers.cache import (
    CACHE_DTYPES,
    DATA_DIR,
    FORMAT,
    MANIFEST_FILE,
    cache_recipe,
    read_manifest,
    recipe_differences,
    shard_name,
)
from seed_hf.teachers.frozen import FrozenTeacher
from seed_hf.teachers.inference import (
    choose_teacher_layout,
    prepare_teacher,
    probe_teacher_layout,
    set_teacher_layout,
    teacher_forward,
)
from seed_hf.training.precision import autocast_to, mixed_precision_dtype, resolve_teacher_dtype
from seed_hf.training.step_choice import parse_switch, probe_images

__all__ = ["write_teacher_cache"]

logger = logging.getLogger(__name__)

# manifest keys written once the cache is complete (not compared when a writer resumes)
_COMPLETION_KEYS = ("complete", "write")

_DATASET_CARD = """---
configs:
- config_name: default
  data_files: "{data_dir}/*.arrow"
tags:
- seed_hf
- teacher-cache
---
A seed_hf teacher cache: the frozen teacher's embeddings of {epochs} epoch(s) of seeded views of
{rows} images (`manifest.json` records the teacher, the data and the augmentation). Train from it
with `seed-hf distill --teacher_cache <this folder>` (examples/run_seed.py) and the same data flags.
"""


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _weights_sha256(module: torch.nn.Module) -> str:
    """SHA-256 (16 hex digits) of a module's parameters and buffers: identifies the weights
    actually loaded, also for a randomly initialised teacher that has no file to hash."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class _Indexed(Dataset):
    """The rows ``indices`` of a seeded dataset, each example with its ``index``."""

    def __init__(self, dataset: Dataset, indices: range):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitems__(self, positions: list[int]) -> list[dict[str, Any]]:
        indices = [self.indices[p] for p in positions]
        if hasattr(self.dataset, "__getitems__"):
            examples = self.dataset.__getitems__(indices)
        else:
            examples = [self.dataset[i] for i in indices]
        return [{**e, "index": i} for e, i in zip(examples, indices)]


def _collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
    kept = [e for e in examples if e.get("pixel_values") is not None]
    batch: dict[str, Any] = {"index": [e["index"] for e in kept]}
    if kept:
        batch["pixel_values"] = torch.stack([e["pixel_values"] for e in kept])
        if kept[0].get("pixel_values_small") is not None:
            batch["pixel_values_small"] = torch.stack([e["pixel_values_small"] for e in kept])
    return batch


def write_teacher_cache(
    teacher: FrozenTeacher,
    data: TrainData,
    seed: int,
    epochs: int,
    output_dir: str | os.PathLike,
    batch_size: int = 256,
    dtype: str = "float16",
    teacher_dtype: str = "auto",
    mixed_precision: str | None = None,
    channels_last: str | bool = "auto",
    optimize_teacher: bool = True,
    num_small_crops: int = 0,
    small_crop_size: int = SMALL_CROP_SIZE,
    small_crop_scale: tuple[float, float] = SMALL_CROP_SCALE,
    shard_rows: int = 16384,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    process_index: int = 0,
    num_processes: int = 1,
    teacher_arguments: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Runs the frozen ``teacher`` over ``epochs`` epochs of ``data``'s views seeded by ``seed``
    (the views a training run of the same data and seed sees) and writes their embeddings to
    ``output_dir`` (:mod:`seed_hf.teachers.cache`). Returns the manifest.

    Args:
        teacher: the frozen teacher (``load_teacher``); its record goes into the manifest.
        data: the training data with every default resolved (``DataTrainingArguments.train_data()``).
        seed: the run's seed (views and any ``max_train_samples`` draw).
        epochs: cached epochs; a longer training run replays them (epoch ``e`` reads ``e mod epochs``).
        batch_size: images per teacher forward.
        dtype: stored precision, ``float16`` (half the bytes) or ``float32`` (exactly the teacher's output).
        teacher_dtype, mixed_precision: the teacher's autocast as in training (``teacher_dtype`` of
            ``SeedTrainingArguments``; ``"auto"`` resolves to ``mixed_precision``, ``"bf16"`` /
            ``"fp16"`` / None, where the CPU has no native bf16).
        channels_last, optimize_teacher: the teacher's memory format (``"auto"``, ``"true"``,
            ``"false"`` or a bool; ``"auto"`` chooses by the trainer's rule, a resumed writer keeps
            its manifest's) and BatchNorm folding, as the trainer's ``--channels_last`` /
            ``--optimize_teacher``.
        num_small_crops, small_crop_size, small_crop_scale: the small-crop recipe of the students.
        shard_rows: rows per shard (the unit of resumption).
        num_workers: dataloader workers producing the views.
        process_index, num_processes: this process's share of the shards.
        teacher_arguments: the flags the teacher was loaded with, recorded for runs to compare.

    Raises:
        ValueError: a parameter out of range, a streamed source or GPU input (not supported by the
            cache), or ``output_dir`` holding a cache of another recipe or teacher (each difference named).
    """
    if epochs < 1:
        raise ValueError(f"--epochs must be ≥ 1, got {epochs}.")
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"--dtype must be one of {CACHE_DTYPES}, got {dtype!r}.")
    if batch_size < 1 or shard_rows < 1:
        raise ValueError(
            f"`batch_size` (--per_device_train_batch_size) and --shard_rows must be ≥ 1, got {batch_size} and "
            f"{shard_rows}."
        )
    if data.source.streaming:
        raise ValueError(
            "A teacher cache indexes samples by their row, and a streamed source (--streaming) has no row index: "
            "cache a map-style source (drop --streaming)."
        )
    if data.data_device != "cpu":
        raise ValueError("A teacher cache is written from views made on the CPU: drop --data_device cuda.")
    device = torch.device(device)
    mean, std = default_normalization(data.in_chans, data.mean, data.std)
    dataset = build_train_dataset(
        data,
        1,
        data.in_chans,
        mean,
        std,
        seed,
        1,
        num_workers,
        num_small_crops,
        small_crop_size,
        small_crop_scale,
    )
    rows = len(dataset)
    recipe = cache_recipe(data, seed, mean, std, rows, num_small_crops, small_crop_size, small_crop_scale)

    # the teacher as SeedTrainer prepares and runs it (seed_hf.teachers.inference)
    weights = _weights_sha256(teacher)
    probe = torch.zeros(2, data.in_chans, data.image_size, data.image_size, device=device)
    teacher = prepare_teacher(teacher, mean, std, device, probe, optimize=optimize_teacher)
    autocast_dtype = resolve_teacher_dtype(teacher_dtype, device.type) or mixed_precision_dtype(
        mixed_precision
    )

    def embed(pixels: torch.Tensor, layout: bool | None = None) -> torch.Tensor:
        return teacher_forward(teacher, pixels.to(device), autocast_to(device.type, autocast_dtype), layout)

    held, folder = read_manifest(output_dir), Path(output_dir)
    layout, _, _ = choose_teacher_layout(
        parse_switch(channels_last, "channels_last"),
        held.get("teacher_channels_last") if held else None,
        batch_size * data.image_size * data.image_size,
        compiled=False,
        probe=lambda: probe_teacher_layout(
            teacher, embed, probe_images(batch_size, data.in_chans, data.image_size, device), device
        ),
    )
    set_teacher_layout(teacher, layout)

    embed_dim = int(embed(probe, layout).shape[-1])
    record = teacher.record.to_dict()
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "recipe": recipe,
        "teacher": record,
        "teacher_description": teacher.description,
        "teacher_sha256": record.get("sha256"),
        "teacher_weights_sha256": weights,
        "teacher_arguments": teacher_arguments or {},
        "teacher_dtype": str(autocast_dtype).removeprefix("torch."),
        "teacher_channels_last": bool(layout),
        "optimize_teacher": bool(optimize_teacher),
        "embed_dim": embed_dim,
        "epochs": int(epochs),
        "views_per_sample": 1 + int(num_small_crops),
        "dtype": dtype,
        "shard_rows": int(shard_rows),
    }
    (folder / DATA_DIR).mkdir(parents=True, exist_ok=True)
    if process_index == 0:
        _start_manifest(folder, manifest)
    _barrier(num_processes)

    shards = [(e, start) for e in range(epochs) for start in range(0, rows, shard_rows)]
    mine = [s for k, s in enumerate(shards) if k % num_processes == process_index]
    todo = [s for s in mine if not (folder / DATA_DIR / shard_name(*s)).is_file()]
    if len(todo) < len(mine):
        logger.info(
            f"{folder}: {len(mine) - len(todo)} of this process's {len(mine)} shards already written, kept."
        )
    views = sum(min(start + shard_rows, rows) - start for _, start in todo) * (1 + num_small_crops)
    from tqdm.auto import tqdm

    bar = tqdm(total=views, unit="view", desc="teacher cache", disable=not progress)
    started, written = time.perf_counter(), 0
    for epoch, start in todo:
        written += _write_shard(
            folder,
            dataset,
            epoch,
            range(start, min(start + shard_rows, rows)),
            lambda pixels: embed(pixels, layout),
            manifest,
            batch_size,
            num_workers,
            bar,
        )
    bar.close()
    seconds = time.perf_counter() - started
    if written:
        logger.info(
            f"Teacher cache: {written} views in {seconds:.1f} s, {written / seconds:.1f} views/s (process {process_index})."
        )
    _barrier(num_processes)
    if process_index == 0:
        manifest = _complete_manifest(folder, shards, written / seconds if written else None)
    return manifest


def _write_shard(
    folder: Path,
    dataset,
    epoch: int,
    indices: range,
    embed,
    manifest: dict[str, Any],
    batch_size: int,
    num_workers: int,
    bar,
) -> int:
    """Embeds the views of ``indices`` at ``epoch`` and writes them as one shard (temporary file,
    then rename: a killed writer leaves no partial shard). Returns the views embedded."""
    import numpy as np
    import pyarrow as pa

    dataset.set_epoch(epoch)  # before the loader's workers copy the dataset
    loader = DataLoader(
        _Indexed(dataset, indices), batch_size=batch_size, num_workers=num_workers, collate_fn=_collate
    )
    dim, small = manifest["embed_dim"], manifest["views_per_sample"] - 1
    np_dtype = np.dtype(manifest["dtype"])
    embedding = np.zeros((len(indices), dim), dtype=np_dtype)
    small_embeddings = np.zeros((len(indices), small * dim), dtype=np_dtype)
    decoded = np.zeros(len(indices), dtype=bool)
    views = 0
    for batch in loader:
        if not batch["index"]:
            continue
        rows = np.asarray(batch["index"]) - indices.start
        embedding[rows] = embed(batch["pixel_values"]).cpu().numpy().astype(np_dtype)
        decoded[rows] = True
        if small:
            crops = batch["pixel_values_small"]
            out = embed(crops.flatten(0, 1)).cpu().numpy().astype(np_dtype)
            small_embeddings[rows] = out.reshape(len(rows), small * dim)
        views += len(rows) * (1 + small)
        bar.update(len(rows) * (1 + small))
    columns = {
        "epoch": pa.array(np.full(len(indices), epoch, dtype=np.int32)),
        "index": pa.array(np.arange(indices.start, indices.stop, dtype=np.int64)),
        "decoded": pa.array(decoded),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embedding.reshape(-1)), dim),
    }
    if small:
        columns["small_embeddings"] = pa.FixedSizeListArray.from_arrays(
            pa.array(small_embeddings.reshape(-1)), small * dim
        )
    table = pa.table(columns)
    path = folder / DATA_DIR / shard_name(epoch, indices.start)
    tmp = path.with_name(f".{path.name}.tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(tmp, path)
    return views


def _start_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Writes the manifest of a new cache, or checks a resumed one's against it (every key that
    determines the embeddings), naming each difference."""
    held = read_manifest(folder)
    if held is None:
        if any(p.suffix == ".arrow" for p in (folder / DATA_DIR).iterdir()):
            raise ValueError(
                f"{folder} holds cache shards but no {MANIFEST_FILE}: pass another --output_dir."
            )
        _atomic_write_text(
            folder / MANIFEST_FILE, json.dumps({**manifest, "complete": False}, indent=2) + "\n"
        )
        (folder / "README.md").write_text(
            _DATASET_CARD.format(
                data_dir=DATA_DIR, epochs=manifest["epochs"], rows=manifest["recipe"]["rows"]
            )
        )
        return
    held_recipe, asked = held.get("recipe", {}), json.loads(json.dumps(manifest))
    differences = {f"recipe.{k}": v for k, v in recipe_differences(held_recipe, asked["recipe"]).items()}
    for key in sorted((held.keys() | asked.keys()) - {"recipe", *_COMPLETION_KEYS}):
        if held.get(key) != asked.get(key):
            differences[key] = (held.get(key), asked.get(key))
    if differences:
        named = "; ".join(f"{k}: held {v[0]!r}, asked {v[1]!r}" for k, v in differences.items())
        raise ValueError(
            f"--output_dir {str(folder)!r} holds a teacher cache of another recipe or teacher ({named}): pass another "
            "--output_dir, or remove that folder to write this cache there."
        )


def _complete_manifest(
    folder: Path, shards: list[tuple[int, int]], views_per_s: float | None
) -> dict[str, Any]:
    manifest = read_manifest(folder)
    missing = [shard_name(*s) for s in shards if not (folder / DATA_DIR / shard_name(*s)).is_file()]
    if missing:
        raise RuntimeError(f"{folder}: {len(missing)} shard(s) missing after writing, e.g. {missing[:3]}.")
    bytes_written = sum((folder / DATA_DIR / shard_name(*s)).stat().st_size for s in shards)
    views = len(shards) and manifest["recipe"]["rows"] * manifest["epochs"] * manifest["views_per_sample"]
    manifest["write"] = {
        "views": views,
        "bytes": bytes_written,
        "bytes_per_view": round(bytes_written / max(1, views), 2),
        "views_per_second_last_session": round(views_per_s, 1) if views_per_s else None,
    }
    manifest["complete"] = True
    _atomic_write_text(folder / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    return manifest


def _barrier(num_processes: int) -> None:
    if num_processes > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()

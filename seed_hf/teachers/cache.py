"""A teacher cache: the frozen teacher's embeddings of a run's seeded views, stored once and
served to any number of student runs (:mod:`seed_hf.teachers.cache_writer` writes it).

A sample's views depend on ``(seed, epoch, index)`` only (:mod:`seed_hf.data.rows`), so the
teacher's embedding of the view of sample ``index`` at epoch ``epoch`` can be computed once. A
cache folder holds:

* ``data/epoch-EEEEE-RRRRRRRRRR.arrow``: one Arrow (IPC stream) shard per epoch and chunk of
  rows, columns ``epoch``, ``index``, ``decoded`` (False: the image could not be decoded, no
  embedding), ``embedding`` (fixed-size list of ``dtype``, the teacher's unit embedding of the
  global view) and, with small crops, ``small_embeddings`` (``num_small_crops × embed_dim``).
  Shards are memory-mapped and read at random; ``datasets.load_dataset(folder)`` loads the table
  (the folder's ``README.md`` names the files), so ``push_to_hub`` shares it as a dataset.
* ``manifest.json``: everything that determines the views and the embeddings (the recipe of
  :func:`cache_recipe`, the teacher's record, fingerprint and flags, the teacher's precision and
  layout), the epochs, shard size, dtype and, once complete, the write rate.

A training run of ``E`` cached epochs reads, at epoch ``e``, cached epoch ``e mod E``, and its
views follow the same mapping (:class:`CachedTeacherDataset`), so each view keeps its embedding.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from seed_hf.data.augmentation import PRESETS, SMALL_CROP_SCALE, SMALL_CROP_SIZE

__all__ = [
    "CACHE_DTYPES",
    "MANIFEST_FILE",
    "CachedTeacherDataset",
    "TeacherCache",
    "cache_recipe",
    "recipe_differences",
]

MANIFEST_FILE = "manifest.json"
DATA_DIR = "data"
FORMAT = "seed_hf.teachers.cache/1"
CACHE_DTYPES = ("float16", "float32")
EMBEDS_KEY, SMALL_EMBEDS_KEY = "teacher_embeds", "teacher_embeds_small"

# recipe keys -> what sets them (the scripts' flags), for refusals
RECIPE_FLAGS = {
    "dataset": "--dataset_name / --train_dir / --train_files",
    "dataset_split": "--train_split",
    "source_id": "the data source (--dataset_name / --train_dir / --train_files / --fashion_mnist_dir)",
    "rows": "the source's row count",
    "train_subset": "--max_train_samples",
    "augmentation": "--augmentation",
    "augmentation_spec": "the augmentation preset's parameters (seed_hf.data.augmentation.PRESETS)",
    "augmentation_backend": "--augmentation_backend",
    "image_size": "--image_size",
    "in_chans": "the data's channels",
    "image_mean": "the data's normalisation",
    "image_std": "the data's normalisation",
    "seed": "--seed",
    "num_small_crops": "--num_small_crops",
    "small_crop_size": "--small_crop_size",
    "small_crop_scale": "small_crop_scale",
}


def cache_recipe(
    data,
    seed: int,
    image_mean: list[float],
    image_std: list[float],
    rows: int,
    num_small_crops: int = 0,
    small_crop_size: int = SMALL_CROP_SIZE,
    small_crop_scale: tuple[float, float] = SMALL_CROP_SCALE,
) -> dict[str, Any]:
    """What determines a run's views, as JSON values: the data (``data``: a ``TrainData``, as
    ``run_info.json`` records it, its source's identity and ``rows``), the augmentation preset's
    parameters and backend, the normalisation, ``seed`` and the small-crop recipe. A cache and a
    run whose recipes differ in any key do not see the same views."""
    recipe = {
        **data.describe(seed),
        "source_id": data.source.identity(),
        "rows": int(rows),
        "augmentation_spec": dataclasses.asdict(PRESETS[data.augmentation]),
        "augmentation_backend": data.augmentation_backend,
        "image_mean": [float(m) for m in image_mean],
        "image_std": [float(s) for s in image_std],
        "seed": int(seed),
        "num_small_crops": int(num_small_crops),
        "small_crop_size": int(small_crop_size) if num_small_crops else None,
        "small_crop_scale": [float(s) for s in small_crop_scale] if num_small_crops else None,
    }
    return json.loads(json.dumps(recipe, default=str))


def recipe_differences(cached: dict[str, Any], requested: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (cached value, requested value)}`` for every key on which two recipes differ."""
    return {
        key: (cached.get(key), requested.get(key))
        for key in sorted(cached.keys() | requested.keys())
        if cached.get(key) != requested.get(key)
    }


def shard_name(epoch: int, start: int) -> str:
    """File name (under ``data/``) of the shard of ``epoch`` whose first row is ``start``."""
    return f"epoch-{epoch:05d}-{start:010d}.arrow"


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a cache folder, None when there is none."""
    path = Path(folder) / MANIFEST_FILE
    return json.loads(path.read_text()) if path.is_file() else None


class TeacherCache:
    """A complete teacher cache, read through memory-mapped shards.

    Args:
        folder: the cache folder (``manifest.json`` + ``data/``).

    Raises:
        FileNotFoundError: no manifest (not a cache, or one whose writing never started).
        ValueError: the cache is incomplete (its writing was interrupted: run the writer again
            to finish it) or of another format.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        manifest = read_manifest(self.folder)
        if manifest is None:
            raise FileNotFoundError(
                f"--teacher_cache {str(self.folder)!r} holds no {MANIFEST_FILE}: not a teacher cache (write one with "
                "`seed-hf cache` (examples/run_teacher_cache.py) or seed_hf.write_teacher_cache)."
            )
        if manifest.get("format") != FORMAT:
            raise ValueError(
                f"--teacher_cache {str(self.folder)!r} has format {manifest.get('format')!r}; this seed_hf reads {FORMAT!r}."
            )
        if not manifest.get("complete"):
            raise ValueError(
                f"--teacher_cache {str(self.folder)!r} is incomplete (its writing was interrupted): run the same "
                "`seed-hf cache` (run_teacher_cache.py) command again to finish it (completed shards are kept)."
            )
        self.manifest = manifest
        self.recipe: dict[str, Any] = manifest["recipe"]
        self.epochs: int = manifest["epochs"]
        self.rows: int = self.recipe["rows"]
        self.embed_dim: int = manifest["embed_dim"]
        self.num_small_crops: int = self.recipe["num_small_crops"]
        self.shard_rows: int = manifest["shard_rows"]
        self._shards: dict[tuple[int, int], dict[str, np.ndarray]] = {}

    def __getstate__(self) -> dict[str, Any]:  # dataloader workers re-open the memory maps themselves
        return {**self.__dict__, "_shards": {}}

    def replayed_epoch(self, epoch: int) -> int:
        """The cached epoch a training epoch reads: ``epoch mod epochs``."""
        return int(epoch) % self.epochs

    def check_recipe(self, requested: dict[str, Any]) -> None:
        """Refuses a run whose :func:`cache_recipe` differs from the cache's, naming each difference
        and what sets it: its views would not be the views the teacher embedded."""
        differences = recipe_differences(self.recipe, requested)
        if differences:
            named = "; ".join(
                f"{key} ({RECIPE_FLAGS.get(key, key)}): cache {cached!r}, this run {asked!r}"
                for key, (cached, asked) in differences.items()
            )
            raise ValueError(
                f"The teacher cache {str(self.folder)!r} was written for other views than this run's: {named}. Pass the "
                "flags the cache was written with, or write a cache for this recipe (`seed-hf cache`, examples/run_teacher_cache.py)."
            )

    def _shard(self, epoch: int, start: int) -> dict[str, np.ndarray]:
        key = (epoch, start)
        if key not in self._shards:
            import pyarrow as pa

            path = self.folder / DATA_DIR / shard_name(epoch, start)
            table = pa.ipc.open_stream(pa.memory_map(str(path))).read_all()
            columns = {"decoded": table.column("decoded").to_numpy()}
            width = {"embedding": self.embed_dim, "small_embeddings": self.embed_dim * self.num_small_crops}
            for name in ("embedding", "small_embeddings") if self.num_small_crops else ("embedding",):
                values = table.column(name).combine_chunks().flatten().to_numpy()  # the mapped buffer
                columns[name] = values.reshape(-1, width[name])
            self._shards[key] = columns
        return self._shards[key]

    def lookup(self, epoch: int, index: int) -> dict[str, torch.Tensor] | None:
        """The cached embeddings of sample ``index``'s views at training epoch ``epoch`` (cached
        epoch ``epoch mod epochs``): ``teacher_embeds`` ``(embed_dim,)`` and, with small crops,
        ``teacher_embeds_small`` ``(num_small_crops, embed_dim)``, in the cache's dtype. None
        when the writer could not decode the image."""
        if not 0 <= index < self.rows:
            raise IndexError(f"sample {index} is outside the teacher cache's {self.rows} rows.")
        start = index // self.shard_rows * self.shard_rows
        shard = self._shard(self.replayed_epoch(epoch), start)
        row = index - start
        if not shard["decoded"][row]:
            return None
        out = {EMBEDS_KEY: torch.from_numpy(np.array(shard["embedding"][row]))}
        if self.num_small_crops:
            small = np.array(shard["small_embeddings"][row]).reshape(self.num_small_crops, self.embed_dim)
            out[SMALL_EMBEDS_KEY] = torch.from_numpy(small)
        return out


class CachedTeacherDataset(Dataset):
    """A per-sample seeded training dataset (``ArrayImageDataset``, ``SeededRowDataset``) whose
    examples also carry the teacher's cached embeddings of their views (``teacher_embeds``, and
    ``teacher_embeds_small`` with small crops), which ``SeedTrainer`` uses instead of running a
    teacher.

    At training epoch ``e`` (``set_epoch``, called by the trainers) the views are drawn as at
    epoch ``e mod cache.epochs`` and the embeddings read from that cached epoch: a run longer
    than the cache replays its epochs, each view with its own embedding.

    Raises:
        ValueError: the dataset and the cache have different row counts.
    """

    def __init__(self, dataset: Dataset, cache: TeacherCache):
        if not hasattr(dataset, "set_epoch"):
            raise ValueError(
                f"A teacher cache needs a per-sample seeded dataset (set_epoch), got {type(dataset).__name__}."
            )
        if len(dataset) != cache.rows:
            raise ValueError(
                f"The training data has {len(dataset)} rows and the teacher cache {str(cache.folder)!r} {cache.rows}."
            )
        self.dataset = dataset
        self.cache = cache
        self.epoch = 0
        self.normalization = getattr(dataset, "normalization", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.dataset.set_epoch(self.cache.replayed_epoch(epoch))

    def _with_embeddings(self, example: dict[str, Any], index: int) -> dict[str, Any]:
        if example.get("pixel_values") is None:  # undecodable now: collate_batch drops it
            return example
        embeds = self.cache.lookup(self.epoch, int(index))
        if embeds is None:
            raise ValueError(
                f"Sample {index} decodes now but could not be decoded when the teacher cache "
                f"{str(self.cache.folder)!r} was written: the source's files have changed since."
            )
        return {**example, **embeds}

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._with_embeddings(self.dataset[index], index)

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        if hasattr(self.dataset, "__getitems__"):
            examples = self.dataset.__getitems__(indices)
        else:
            examples = [self.dataset[i] for i in indices]
        return [self._with_embeddings(e, i) for e, i in zip(examples, indices)]

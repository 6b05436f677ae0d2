"""The example scripts' side of a teacher cache (:mod:`seed_hf.teachers.cache`): what
``run_seed.py --teacher_cache`` refuses (naming its flags), the dataset that serves the cached
embeddings, and how many times the run replays the cached epochs."""

from __future__ import annotations

import logging
import math
from typing import Any

from seed_hf.teachers.cache import CachedTeacherDataset, TeacherCache, cache_recipe

__all__ = ["cached_training_dataset", "open_teacher_cache", "replayed_epochs"]

logger = logging.getLogger(__name__)


def open_teacher_cache(folder: str, teacher_args, data, local_loss_weight: float, projection_dim: int | None):
    """The complete cache ``folder`` (``--teacher_cache``), after refusing what a cached run cannot
    do (a streamed source, ``--data_device cuda``, the local term) and a teacher given by flags
    that differs from the one the cache was written with."""
    refusals = []
    if data.source.streaming:
        refusals.append("--streaming (a cache indexes samples by row; a stream has no row index)")
    if data.data_device != "cpu":
        refusals.append("--data_device cuda (the cached views are made by the CPU augmentation)")
    if local_loss_weight > 0:
        refusals.append("--local_loss_weight > 0 (the local term needs the teacher's patch features)")
    if refusals:
        raise ValueError(f"--teacher_cache does not work with {'; '.join(refusals)}: drop them or the cache.")
    cache = TeacherCache(folder)
    if teacher_args.teacher_name_or_path:  # optional: checked against the cache's teacher, never loaded
        from seed_hf.teachers.fingerprint import weights_fingerprint

        held = cache.manifest.get("teacher_arguments", {})
        asked = teacher_args.recorded()
        differences = {k: (held.get(k), v) for k, v in asked.items() if held.get(k) != v}
        fingerprint = weights_fingerprint(teacher_args.teacher_name_or_path, teacher_args.teacher_checkpoint)
        if fingerprint != cache.manifest.get("teacher_sha256"):
            differences["teacher weights sha256"] = (cache.manifest.get("teacher_sha256"), fingerprint)
        if differences:
            named = "; ".join(f"{k}: cache {v[0]!r}, this run {v[1]!r}" for k, v in differences.items())
            raise ValueError(
                f"--teacher_cache {folder!r} was written with another teacher than the one given ({named}): drop the "
                "teacher flags to train from the cache's teacher, or write a cache of this teacher."
            )
    if projection_dim is not None and projection_dim != cache.embed_dim:
        raise ValueError(
            f"--projection_dim {projection_dim} differs from the cached teacher embeddings' width {cache.embed_dim} "
            f"(--teacher_cache {folder!r}): drop --projection_dim."
        )
    return cache


def cached_training_dataset(dataset, cache: TeacherCache, data, seed: int, config) -> CachedTeacherDataset:
    """``dataset`` (the run's seeded training set, built for the ``SeedConfig`` ``config``) with the
    cached embeddings of its views, after
    refusing a cache written for other views (each difference named with its flag)."""
    recipe = cache_recipe(
        data,
        seed,
        config.image_mean,
        config.image_std,
        len(dataset),
        config.num_small_crops,
        config.small_crop_size,
        config.small_crop_scale,
    )
    cache.check_recipe(recipe)
    return CachedTeacherDataset(dataset, cache)


def replayed_epochs(cache: TeacherCache, training_args) -> dict[str, Any]:
    """What the run records about its cache (``run_info.json``'s ``teacher_cache``; the card's
    ``teacher_pass``): the cached epochs, the epochs the run trains and how many times it replays
    them; logged at start when it replays."""
    batches = math.ceil(
        cache.rows / (training_args.per_device_train_batch_size * max(1, training_args.world_size))
    )
    steps_per_epoch = max(1, batches // training_args.gradient_accumulation_steps)
    if training_args.max_steps > 0:
        epochs = math.ceil(training_args.max_steps / steps_per_epoch)
    else:
        epochs = math.ceil(training_args.num_train_epochs)
    replay = epochs / cache.epochs
    if epochs > cache.epochs:
        logger.warning(
            f"The run trains {epochs} epochs from a teacher cache of {cache.epochs}: it replays the cached epochs "
            f"×{replay:.3g} (epoch e draws the views and embeddings of cached epoch e mod {cache.epochs})."
        )
    return {
        "epochs": cache.epochs,
        "trained_epochs": epochs,
        "replayed": round(replay, 3),
        "dtype": cache.manifest["dtype"],
        "teacher_dtype": cache.manifest["teacher_dtype"],
        "teacher_weights_sha256": cache.manifest["teacher_weights_sha256"],
    }

"""Class-balanced, seeded subsets: what every "use N images" option draws (evaluation splits,
the online kNN monitor, ``max_train_samples`` of a training source, ONNX verification and
calibration) and the 1% / 10% label protocols. Never the first N rows: an imagefolder (ImageNet's
too) is sorted by class, so those would be one class.

One sampler, :func:`_draw_per_class`, takes a seeded draw of each class's quota; the two public
functions differ only in the quotas: :func:`balanced_subset` spreads ``n`` images equally over the
classes, :func:`label_subset` keeps the same ``fraction`` of each class."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["balanced_subset", "label_subset", "subset_record"]


def _draw_per_class(
    labels: np.ndarray, classes: np.ndarray, quota: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Sorted indices of ``quota[i]`` images of each ``classes[i]``, drawn without replacement by
    ``rng`` class after class (classes in ascending order, a quota of 0 draws nothing)."""
    keep = [rng.choice(np.flatnonzero(labels == c), q, replace=False) for c, q in zip(classes, quota) if q]
    return np.sort(np.concatenate(keep))


def balanced_subset(labels: np.ndarray | torch.Tensor, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of a class-balanced, seeded draw of ``n`` of ``labels``: every class gets
    ``n // classes`` (the remainder goes to classes drawn at random); a class with fewer images
    gives all it has and its share is spread over the others."""
    labels = np.asarray(labels)
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}.")
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.zeros(len(classes), dtype=int)
    left, open_ = n, np.ones(len(classes), dtype=bool)
    while left > 0:  # water-filling: equal shares, capped at each class's size
        share, extra = divmod(left, int(open_.sum()))
        room = counts - quota
        grant = np.where(open_, np.minimum(room, share), 0)
        if extra:
            can_take = np.flatnonzero(open_ & (room > grant))
            grant[rng.choice(can_take, min(extra, len(can_take)), replace=False)] += 1
        quota += grant
        left -= int(grant.sum())
        open_ &= quota < counts
    return _draw_per_class(labels, classes, quota, rng)


def label_subset(labels: np.ndarray | torch.Tensor, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded draw of ``fraction`` of each class of ``labels`` (at least one
    image each): the 1% / 10% label protocols."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.maximum(1, np.round(fraction * counts).astype(int))
    return _draw_per_class(labels, classes, quota, np.random.default_rng(seed))


def subset_record(labels: np.ndarray, keep: np.ndarray, seed: int) -> dict[str, Any]:
    """How a subset was drawn, for result rows: method, seed, size of the whole split and the
    images kept per class."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels[keep], return_counts=True)
    return {
        "drawn": "class-balanced random draw",
        "seed": int(seed),
        "of": int(len(labels)),
        "per_class": {str(c.item()): int(k) for c, k in zip(classes, counts)},
    }

"""Weighted kNN on frozen features, after Wu et al. 2018 (InstDisc), as the MoCo and SEED monitors
use it: cosine similarities to the k nearest training features, votes weighted by
``exp(sim / τ)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seed_hf.models.losses import check_temperature

__all__ = ["knn_accuracy", "topk_accuracy", "weighted_knn_predict"]


@torch.no_grad()
def weighted_knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    k: int = 200,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Class scores ``(n_test, num_classes)`` of the weighted kNN classifier.

    Features are L2-normalised; test features are processed ``chunk_size`` rows at a time,
    so memory is ``chunk_size × n_train`` (1.28M × 1024 fp32 ≈ 5 GB: lower it for ImageNet).
    """
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}.")
    check_temperature("knn_temperature", temperature)  # named as run_eval.py's flag
    num_classes = num_classes or int(train_labels.max()) + 1
    k = min(k, train_features.shape[0])
    train = F.normalize(train_features.float(), dim=1)
    scores = []
    for start in range(0, test_features.shape[0], chunk_size):
        test = F.normalize(test_features[start : start + chunk_size].float(), dim=1)
        sims, idx = (test @ train.T).topk(k, dim=1)  # c x k
        weights = (sims / temperature).exp()
        votes = torch.zeros(test.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
        votes.scatter_add_(1, train_labels[idx], weights)
        scores.append(votes)
    return torch.cat(scores)


def topk_accuracy(
    scores: torch.Tensor, labels: torch.Tensor, topk: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """Top-k accuracies in percent from class scores ``(n, classes)``."""
    out = {}
    for k in topk:
        k_eff = min(k, scores.shape[1])
        hit = (scores.topk(k_eff, dim=1).indices == labels[:, None]).any(dim=1)
        out[f"top{k}"] = 100.0 * hit.float().mean().item()
    return out


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 200,
    temperature: float = 0.07,
) -> dict[str, float]:
    """Weighted kNN top-1 / top-5 (percent)."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    scores = weighted_knn_predict(train_features, train_labels, test_features, k, temperature, num_classes)
    return topk_accuracy(scores, test_labels)

"""Frozen-feature evaluation: batched feature extraction, weighted kNN and a linear probe.

Weighted kNN follows Wu et al. 2018 (InstDisc), as used by MoCo / SEED monitors: cosine
similarities to the k nearest training features, votes weighted by ``exp(sim / τ)``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .backbones import pooled_features
from .losses import check_temperature

__all__ = [
    "EncoderSpec",
    "load_encoder",
    "extract_features",
    "weighted_knn_predict",
    "knn_accuracy",
    "linear_probe",
    "topk_accuracy",
]


@dataclass
class EncoderSpec:
    """A frozen feature extractor and the preprocessing it was trained with."""

    name: str
    module: nn.Module | None  # None: raw pixels
    in_chans: int
    image_size: int
    mean: list[float]
    std: list[float]
    num_parameters: int = 0


class _PooledBackbone(nn.Module):
    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return pooled_features(self.backbone, pixel_values)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def load_encoder(name_or_path: str) -> EncoderSpec:
    """Loads the backbone to evaluate from a seed_hf run (MoCo encoder / SEED student) or a
    timm-format folder (an exported student). ``"pixels"`` evaluates raw pixels."""
    if name_or_path == "pixels":
        return EncoderSpec("pixels", None, 1, 28, [0.0], [1.0])
    path = Path(name_or_path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{name_or_path!r} is not a model folder with a config.json.")
    config = json.loads(config_file.read_text())
    model_type = config.get("model_type")
    if model_type == "seed_moco":
        from .moco import load_query_encoder

        backbone, _, c = load_query_encoder(path)
    elif model_type == "seed_distillation":
        from .modeling_seed import SeedForDistillation

        model = SeedForDistillation.from_pretrained(path)
        backbone, c = model.student, model.config
    else:
        import timm

        backbone = timm.create_model(f"local-dir:{path}", pretrained=True, num_classes=0)
        cfg = config.get("pretrained_cfg", {})
        in_chans, size = cfg.get("input_size", (3, 224, 224))[0], cfg.get("input_size", (3, 224, 224))[-1]
        spec = EncoderSpec(
            str(path),
            _PooledBackbone(backbone).eval(),
            in_chans,
            size,
            list(cfg.get("mean")),
            list(cfg.get("std")),
        )
        spec.num_parameters = _count(backbone)
        return spec
    return EncoderSpec(
        str(path),
        _PooledBackbone(backbone).eval(),
        c.in_chans,
        c.image_size,
        list(c.image_mean),
        list(c.image_std),
        _count(backbone),
    )


@torch.no_grad()
def extract_features(
    encoder: nn.Module | None,
    dataset: Dataset,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    desc: str = "features",
    batch_transform=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs ``encoder`` over ``dataset`` (items with ``pixel_values`` and ``labels``).

    ``batch_transform`` is applied to each stacked batch ``(b, c, h, w)`` (torchvision v2
    transforms accept batches): much faster than per-sample transforms for small images.
    Returns ``(features (n, d) float32 on CPU, labels (n,) long)``; ``encoder=None`` flattens pixels.
    """
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    if encoder is not None:
        encoder = encoder.to(device).eval()
    feats, labels = [], []
    for batch in tqdm(loader, desc=desc, leave=False):
        x = batch["pixel_values"]
        if batch_transform is not None:
            x = batch_transform(x)
        x = x.to(device)
        out = x.flatten(1) if encoder is None else encoder(x)
        feats.append(out.float().cpu())
        labels.append(batch["labels"])
    return torch.cat(feats), torch.cat(labels)


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
    check_temperature("temperature", temperature)
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


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    epochs: int = 100,
    batch_size: int = 1024,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-5,
    seed: int = 0,
) -> dict[str, float]:
    """Logistic regression on frozen, cached, standardised features (AdamW, cosine LR).

    Returns top-1 / top-5 (percent) on the test features.
    """
    generator = torch.Generator().manual_seed(seed)
    mean, std = train_features.mean(0), train_features.std(0).clamp_min(1e-6)
    x_train, x_test = (train_features - mean) / std, (test_features - mean) / std
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    torch.manual_seed(seed)
    classifier = nn.Linear(x_train.shape[1], num_classes)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=learning_rate, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(x_train) / batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in tqdm(range(epochs), desc="linear probe", leave=False):
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(classifier(x_train[idx]), train_labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    with torch.no_grad():
        return topk_accuracy(classifier(x_test), test_labels)


def label_subset(labels: np.ndarray | torch.Tensor, fraction: float, seed: int = 0) -> np.ndarray:
    """Indices of a class-balanced ``fraction`` of the labels (the 1% / 10% protocols)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep.append(rng.choice(idx, max(1, int(round(fraction * len(idx)))), replace=False))
    return np.sort(np.concatenate(keep))

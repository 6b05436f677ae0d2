"""The online kNN monitor of training: weighted-kNN top-1 of the model being trained, on labelled
images, at each evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from seed_hf.data.decode import collate_batch
from seed_hf.evaluation.knn import knn_accuracy

__all__ = ["KnnMonitor"]


@dataclass
class KnnMonitor:
    """The online kNN monitor: weighted-kNN top-1 of a model's pooled features on labelled
    datasets (items with ``pixel_values`` and ``labels``), computed on every rank from
    ``gather_for_metrics`` (no rank-0-only collective, so DDP cannot deadlock)."""

    train_dataset: Any
    eval_dataset: Any
    k: int = 200
    temperature: float = 0.07
    batch_size: int = 256
    _loaders: dict = field(default_factory=dict, init=False, repr=False)

    @torch.no_grad()
    def _features(
        self, model: nn.Module, dataset, accelerator, to_input
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        # prepared once per dataset: accelerate keeps every prepared loader, so re-preparing at each
        # evaluation would pile them up
        if id(dataset) not in self._loaders:
            self._loaders[id(dataset)] = accelerator.prepare(
                DataLoader(dataset, batch_size=self.batch_size, collate_fn=collate_batch, shuffle=False)
            )
        features: dict[str, list[torch.Tensor]] = {}
        labels = []
        for batch in self._loaders[id(dataset)]:
            out = model.get_features(to_input(batch["pixel_values"]))
            for name, value in (out if isinstance(out, dict) else {"": out}).items():
                features.setdefault(name, []).append(accelerator.gather_for_metrics(value.float()).cpu())
            labels.append(accelerator.gather_for_metrics(batch["labels"]).cpu())
        return {k: torch.cat(v) for k, v in features.items()}, torch.cat(labels)

    def evaluate(
        self, model: nn.Module, accelerator, prefix: str = "eval", to_input=lambda x: x
    ) -> dict[str, float]:
        """``{prefix}_knn_top1`` (``_<student>`` per student of a group) of ``model`` in eval mode."""
        was_training = model.training
        model.eval()
        try:
            train_features, train_labels = self._features(model, self.train_dataset, accelerator, to_input)
            test_features, test_labels = self._features(model, self.eval_dataset, accelerator, to_input)
        finally:
            model.train(was_training)
        metrics = {}
        for name, train in train_features.items():
            accuracy = knn_accuracy(
                train, train_labels, test_features[name], test_labels, self.k, self.temperature
            )
            metrics[f"{prefix}_knn_top1" + (f"_{name}" if name else "")] = accuracy["top1"]
        return metrics

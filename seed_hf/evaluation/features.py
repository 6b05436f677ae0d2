"""Frozen features as a Hub user gets them: the evaluation preprocessing, the encoders evaluated
(run folders, exported students, raw pixels) and batched feature extraction.

Preprocessing is timm's evaluation transform built from a ``data_config`` (the
``pretrained_cfg`` an exported student carries): the exact transform ``AutoImageProcessor``,
``pipeline("image-feature-extraction")`` and ``timm.data.create_transform`` apply, so the numbers
measured on these features are the numbers a Hub user reproduces.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from seed_hf.data.decode import SKIPPED_KEY, collate_batch, convert_image
from seed_hf.models.backbones import pooled_features

__all__ = [
    "EVAL_INTERPOLATION",
    "PIXEL_BASELINES",
    "EncoderSpec",
    "PooledBackbone",
    "eval_data_config",
    "eval_transform",
    "extract_features",
    "load_encoder",
]

logger = logging.getLogger(__name__)

EVAL_INTERPOLATION = "bilinear"
# raw pixels: cosine kNN on [0, 1] pixels; centred: minus the train split's mean image
PIXEL_BASELINES = ("pixels", "pixels_centred")


def eval_data_config(
    in_chans: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_pct: float = 1.0,
    interpolation: str = EVAL_INTERPOLATION,
) -> dict[str, Any]:
    """timm ``data_config`` of the evaluation transform: resize the short side to
    ``image_size / crop_pct``, centre-crop ``image_size``, normalise. Exports write it as their
    ``pretrained_cfg`` and evaluation builds its transform from it: one definition for both."""
    return {
        "input_size": (int(in_chans), int(image_size), int(image_size)),
        "interpolation": interpolation,
        "mean": tuple(float(m) for m in mean),
        "std": tuple(float(s) for s in std),
        "crop_pct": float(crop_pct),
        "crop_mode": "center",
    }


def eval_transform(data_config: dict[str, Any]) -> Callable:
    """``timm.data.create_transform(**data_config)`` on PIL images, converted first to the
    channels the model takes as training converts them (:func:`convert_image`: ``L`` for 1
    channel, ``RGB`` for 3, a 16-bit image scaled by its maximum rather than clipped to white)."""
    from timm.data import create_transform

    transform = create_transform(**data_config, is_training=False)
    in_chans = data_config["input_size"][0]

    def apply(image):
        return transform(convert_image(image, in_chans))

    return apply


@dataclass
class EncoderSpec:
    """A frozen feature extractor and the preprocessing it is evaluated with.

    ``module`` is ``None`` for the pixel baselines (``data_config`` None: the image as a
    ``[0, 1]`` tensor at its own size)."""

    name: str
    module: nn.Module | None
    data_config: dict[str, Any] | None
    num_parameters: int = 0


class PooledBackbone(nn.Module):
    """A timm backbone as ``pixel_values (n, c, h, w) → pooled features (n, pooled_width)``."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return pooled_features(self.backbone, pixel_values)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def load_encoder(name_or_path: str) -> EncoderSpec:
    """Loads the backbone to evaluate: a seed_hf MoCo run / teacher folder (query encoder), a
    SEED run (student), or a timm-format folder (an exported student, with its own
    ``pretrained_cfg``). ``"pixels"`` / ``"pixels_centred"`` evaluate raw pixels."""
    if name_or_path in PIXEL_BASELINES:
        return EncoderSpec(name_or_path, None, None)
    path = Path(name_or_path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{name_or_path!r} is not a model folder with a config.json.")
    config = json.loads(config_file.read_text())
    model_type = config.get("model_type")
    if model_type == "seed_moco":
        from seed_hf.models.modeling_moco import load_query_encoder

        backbone, _, c = load_query_encoder(path)
    elif model_type == "seed_distillation":
        from seed_hf.models.modeling_seed import SeedForDistillation

        model = SeedForDistillation.from_pretrained(path)
        backbone, c = model.student, model.config
    else:  # a timm-format folder: evaluate it exactly as timm / transformers users load it
        import timm
        from timm.data import resolve_model_data_config

        backbone = timm.create_model(f"local-dir:{path}", pretrained=True, num_classes=0)
        data_config = resolve_model_data_config(backbone)
        return EncoderSpec(str(path), PooledBackbone(backbone).eval(), data_config, _count(backbone))
    data_config = eval_data_config(c.in_chans, c.image_size, c.image_mean, c.image_std)
    return EncoderSpec(str(path), PooledBackbone(backbone).eval(), data_config, _count(backbone))


def _collate_or_count(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """:func:`collate_batch`, or only the count of a batch none of whose images decoded."""
    if all(e.get("pixel_values") is None for e in examples):
        return {SKIPPED_KEY: torch.tensor([len(examples)])}
    return collate_batch(examples)


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
    """Runs ``encoder`` over ``dataset`` (items with ``pixel_values`` and ``labels``, e.g.
    :class:`~seed_hf.evaluation.labelled.LabelledImages`).

    ``batch_transform`` is applied to each stacked batch ``(b, c, h, w)`` (torchvision v2
    transforms accept batches). Returns ``(features (n, d) float32 on CPU, labels (n,) long)``;
    ``encoder=None`` flattens pixels. Images that cannot be decoded are left out of both (each
    named in the log) and their number is logged.
    """
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False, collate_fn=_collate_or_count
    )
    if encoder is not None:
        encoder = encoder.to(device).eval()
    feats, labels = [], []
    skipped = 0
    for batch in tqdm(loader, desc=desc, leave=False):
        skipped += int(batch[SKIPPED_KEY].sum()) if SKIPPED_KEY in batch else 0
        if "pixel_values" not in batch:  # every image of this batch was undecodable
            continue
        x = batch["pixel_values"]
        if batch_transform is not None:
            x = batch_transform(x)
        x = x.to(device)
        out = x.flatten(1) if encoder is None else encoder(x)
        feats.append(out.float().cpu())
        labels.append(batch["labels"])
    if skipped:
        logger.warning(
            f"{desc}: left out {skipped} undecodable image(s) of {len(dataset)} (named above): the features "
            f"and labels hold the other {len(dataset) - skipped}."
        )
    if not feats:
        raise ValueError(f"{desc}: none of the {len(dataset)} images could be decoded (named above).")
    return torch.cat(feats), torch.cat(labels)

"""Verification of an ONNX graph against timm's PyTorch features of the same folder: the images
it is verified on (the folder's own preprocessing) and the comparison.

Verification is relative to the features' scale: the max abs difference between onnxruntime and
PyTorch divided by the largest feature magnitude of PyTorch must stay within ``rtol`` (a network
whose features reach 1e9 is exact to 1e-7 and still differs by 1e2 in absolute terms).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seed_hf.export.onnx_graph import EXTRA_HINT, run_session

__all__ = [
    "DEFAULT_RTOL",
    "VERIFY_BATCH",
    "VERIFY_SINGLES",
    "OnnxVerificationError",
    "folder_config",
    "folder_transform",
    "pixel_values",
    "sample_images",
    "verification_pixels",
    "verify_graph",
]

# largest accepted max |onnxruntime - PyTorch| / max |PyTorch feature|: far above the rounding of a
# correct fp32 export, far below the difference one wrong weight makes
DEFAULT_RTOL = 1e-4
VERIFY_BATCH = 64
VERIFY_SINGLES = 16  # of those, checked one image at a time too (each a PyTorch + onnxruntime call)


class OnnxVerificationError(ValueError):
    """The exported graph does not give timm's PyTorch features within ``rtol`` of their scale."""


def folder_config(folder: Path) -> dict[str, Any]:
    """``config.json`` of a timm-format folder, or a FileNotFoundError naming ``folder``."""
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if "architecture" not in config or "pretrained_cfg" not in config:
        raise FileNotFoundError(
            f"folder {str(folder)!r} is not a timm-format folder (config.json with architecture and "
            "pretrained_cfg, written by seed_hf.export.hub.export_student / export_encoder)."
        )
    return config


def folder_transform(folder: str | os.PathLike) -> tuple[Callable, dict[str, Any]]:
    """The evaluation transform a user rebuilds from a folder's ``pretrained_cfg`` (timm's
    ``resolve_data_config`` + ``create_transform``, after ``convert("RGB")``) and its data config."""
    from timm.data import resolve_data_config

    from seed_hf.evaluation.features import eval_transform

    data_config = resolve_data_config(pretrained_cfg=folder_config(Path(folder))["pretrained_cfg"])
    return eval_transform(data_config), data_config


def sample_images(n: int = VERIFY_BATCH, seed: int = 0) -> list:
    """``n`` real photos, offline: seeded random crops of scikit-image's sample images (colour and
    grayscale, 100-1400 px), as PIL images in their own mode."""
    from PIL import Image

    try:
        from skimage import data
    except ImportError:
        raise ImportError(
            f"The default verification images are scikit-image's sample photos: {EXTRA_HINT}."
        ) from None
    names = ("astronaut", "coffee", "chelsea", "rocket", "camera", "moon", "coins", "clock", "hubble_deep_field",
             "immunohistochemistry", "retina", "page", "grass", "brick", "colorwheel", "cell")  # fmt: skip
    photos = [Image.fromarray(getattr(data, name)()) for name in names]
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        photo = photos[i % len(photos)]
        w, h = photo.size
        side = int(min(w, h) * rng.uniform(0.3, 1.0))  # crops at many scales: varied feature statistics
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        images.append(photo.crop((x, y, x + side, y + side)))
    return images


def pixel_values(images, transform: Callable, indices: Sequence[int] | None = None) -> np.ndarray:
    """``(n, c, h, w)`` float32 of ``images`` (PIL images, uint8 arrays or a ``datasets`` column)."""
    from seed_hf.evaluation.labelled import LabelledImages

    dataset = LabelledImages(images, np.zeros(len(images), dtype=np.int64), transform)
    indices = range(len(images)) if indices is None else indices
    return torch.stack([dataset[int(i)]["pixel_values"] for i in indices]).numpy()


def verification_pixels(
    images: Sequence | None, eval_data, transform: Callable, seed: int
) -> tuple[np.ndarray, str]:
    """The preprocessed images a graph is verified on and what they are: ``images`` when given,
    else :data:`VERIFY_BATCH` class-balanced evaluation images of ``eval_data``, else as many crops
    of scikit-image's sample photos. Refuses fewer than :data:`VERIFY_SINGLES`."""
    from seed_hf.data.subsets import balanced_subset

    if images is not None:
        pixels, verified_on = pixel_values(images, transform), f"{len(images)} given images"
    elif eval_data is not None:
        keep = balanced_subset(eval_data.eval_labels, VERIFY_BATCH, seed)
        pixels = pixel_values(eval_data.eval_images, transform, keep)
        verified_on = f"{len(keep)} class-balanced images of {eval_data.name} ({eval_data.eval_split} split)"
    else:
        pixels, verified_on = (
            pixel_values(sample_images(VERIFY_BATCH, seed), transform),
            "64 crops of scikit-image's sample photos",
        )
    if len(pixels) < VERIFY_SINGLES:
        given = (
            # eval_data: the scripts' --onnx_* labelled data, named as their flags
            "the evaluation split of --onnx_dataset_name / --onnx_train_dir"
            if images is None and eval_data is not None
            else "`images`"
        )
        raise ValueError(
            f"The graphs are verified on at least {VERIFY_SINGLES} images: {given} holds {len(pixels)}."
        )
    return pixels, verified_on


def verify_graph(
    session, model: nn.Module, pixels: np.ndarray, rtol: float, folder: str | os.PathLike, verified_on: str
) -> tuple[dict[str, float], float, np.ndarray]:
    """Compares ``session`` (onnxruntime) with ``model`` (PyTorch) on ``pixels``, at batch 1 (the
    first :data:`VERIFY_SINGLES` images one by one) and as one batch, each side with its own kernels
    per size. Returns ``(max abs difference per batch size, feature scale, PyTorch features of the
    batch)``; a difference above ``rtol`` times the scale raises :class:`OnnxVerificationError`
    naming the figures, ``folder`` and the images (``verified_on``)."""
    with torch.no_grad():
        reference = model(torch.from_numpy(pixels)).numpy()
        singles = [model(torch.from_numpy(pixels[i : i + 1])).numpy() for i in range(VERIFY_SINGLES)]
    diffs = {
        "batch_1": max(
            float(np.abs(run_session(session, pixels[i : i + 1]) - single).max())
            for i, single in enumerate(singles)
        ),
        f"batch_{len(pixels)}": float(np.abs(run_session(session, pixels) - reference).max()),
    }
    scale = float(np.abs(reference).max())  # NaN features: every comparison below fails
    for batch, diff in diffs.items():
        if not diff <= rtol * scale:
            relative = diff / scale if scale > 0 else float("inf")
            raise OnnxVerificationError(
                f"ONNX export of {folder} failed verification: onnxruntime vs timm PyTorch features at "
                f"{batch.replace('_', ' ')}: max abs difference {diff:.3g}, {relative:.3g} of the largest "
                f"feature magnitude {scale:.3g} > rtol={rtol:g} ({verified_on})."
            )
    return diffs, scale, reference

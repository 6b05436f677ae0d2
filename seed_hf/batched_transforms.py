"""Batched SSL augmentation on tensors: one call augments a whole batch on its device (GPU).

The CPU presets (:func:`seed_hf.data.build_ssl_transform`) run per image in dataloader
workers; at small resolutions or on a fast GPU the per-image Python cost dominates. Here the
same operations run on a ``(n, c, h, w)`` batch with **per-sample** random parameters:

* RandomResizedCrop: torchvision's sampling (10 tries of area ∈ scale·H·W, log-uniform aspect
  ratio, then the centre-crop fallback), vectorised; resampled with ``torchvision.ops.roi_align``
  (bilinear, averaging ``ceil(crop / output)`` samples per output pixel when shrinking, a
  box filter close to antialiased resize).
* ColorJitter (brightness, contrast, saturation, hue; per-sample random order as torchvision),
  RandomGrayscale, Gaussian blur (per-sample σ), horizontal flip.

Input: uint8 or float ``(n, c, h, w)`` in [0, 255] / [0, 1]; output: float ``(n, c, size, size)``
normalised with ``mean``/``std``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

__all__ = ["BatchedSSLTransform", "random_resized_crop_boxes", "batched_color_jitter"]

_LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None, device) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(low, high, generator=generator)


def random_resized_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    attempts: int = 10,
) -> torch.Tensor:
    """Per-sample crop boxes ``(n, 4)`` as ``(x1, y1, x2, y2)`` in pixels, drawn as
    ``torchvision.transforms.RandomResizedCrop.get_params`` does (vectorised over samples)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    target_area = area * torch.empty(n, attempts, device=device).uniform_(*scale, generator=generator)
    aspect = torch.exp(torch.empty(n, attempts, device=device).uniform_(*log_ratio, generator=generator))
    w = torch.sqrt(target_area * aspect).round()
    h = torch.sqrt(target_area / aspect).round()
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(valid.any(1), valid.float().argmax(1), torch.full((n,), -1, device=device))
    idx = first.clamp_min(0).unsqueeze(1)
    w, h = w.gather(1, idx).squeeze(1), h.gather(1, idx).squeeze(1)
    # fallback: the whole image cropped to the closest allowed aspect ratio, centred
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = float(width), float(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = float(round(height * max(ratio))), float(height)
    else:
        fw, fh = float(width), float(height)
    found = first >= 0
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))
    u = torch.rand(n, 2, device=device, generator=generator)
    top = torch.where(found, torch.floor(u[:, 0] * (height - h + 1)), torch.floor((height - h) / 2))
    left = torch.where(found, torch.floor(u[:, 1] * (width - w + 1)), torch.floor((width - w) / 2))
    return torch.stack([left, top, left + w, top + h], dim=1)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp_(0, 1)


def _adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotates the hue of RGB ``x`` in [0, 1] by ``shift`` (turns, in [-0.5, 0.5]) via HSV."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    h = (h + shift.view(-1, 1, 1)) % 1.0
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    v = maxc
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    choices_r = torch.stack([v, q, p, p, t, v], 1)
    choices_g = torch.stack([t, v, v, q, p, p], 1)
    choices_b = torch.stack([p, p, t, v, v, q], 1)
    idx = i.unsqueeze(1)
    return torch.cat([c.gather(1, idx) for c in (choices_r, choices_g, choices_b)], dim=1)


def batched_color_jitter(
    x: torch.Tensor,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
    hue: float = 0.0,
    p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """torchvision's ColorJitter on a batch in [0, 1], per-sample factors and op order, applied
    to each sample with probability ``p``."""
    n, device = x.shape[0], x.device
    apply = torch.rand(n, device=device, generator=generator) < p
    factors = [
        _uniform(n, max(0.0, 1 - brightness), 1 + brightness, generator, device) if brightness else None,
        _uniform(n, max(0.0, 1 - contrast), 1 + contrast, generator, device) if contrast else None,
        _uniform(n, max(0.0, 1 - saturation), 1 + saturation, generator, device) if saturation else None,
        _uniform(n, -hue, hue, generator, device) if hue else None,
    ]
    order = torch.rand(n, 4, device=device, generator=generator).argsort(1)  # a random permutation each
    out = x
    for position in range(4):  # whole-batch ops selected per sample: no host syncs
        for op, factor in enumerate(factors):
            if factor is None or (op >= 2 and x.shape[1] != 3):  # saturation/hue: RGB only
                continue
            mask = (apply & (order[:, position] == op)).view(-1, 1, 1, 1)
            if op == 0:
                changed = _blend(out, torch.zeros_like(out), factor)
            elif op == 1:
                changed = _blend(out, _grayscale(out).mean(dim=(1, 2, 3), keepdim=True), factor)
            elif op == 2:
                changed = _blend(out, _grayscale(out), factor)
            else:
                changed = _adjust_hue(out, factor)
            out = torch.where(mask, changed, out)
    return out


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample σ ``(n,)`` (reflect padding, as torchvision)."""
    n, c, h, w = x.shape
    half = kernel_size // 2
    t = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t.view(1, -1) / sigma.view(-1, 1)) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n·c, k)
    y = x.reshape(1, n * c, h, w)
    y = F.pad(y, (half, half, half, half), mode="reflect")
    y = F.conv2d(y, kernel.view(n * c, 1, 1, kernel_size), groups=n * c)
    y = F.conv2d(y, kernel.view(n * c, 1, kernel_size, 1), groups=n * c)
    return y.view(n, c, h, w)


@dataclass
class BatchedSSLTransform:
    """A preset of :func:`seed_hf.data.build_ssl_transform` applied to a whole batch at once.

    Args:
        image_size: output side.
        mean, std: normalisation of the output.
        scale: RandomResizedCrop area range.
        jitter: ``(brightness, contrast, saturation, hue)`` of ColorJitter.
        jitter_p: probability of the colour jitter.
        grayscale_p: probability of RandomGrayscale.
        blur_p: probability of the Gaussian blur (σ ∈ [0.1, 2.0] at 224 px, scaled with the size).
        flip_p: probability of the horizontal flip.
    """

    image_size: int
    mean: Sequence[float]
    std: Sequence[float]
    scale: tuple[float, float] = (0.2, 1.0)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    flip_p: float = 0.5

    @classmethod
    def from_preset(cls, preset: str, image_size: int, mean, std) -> BatchedSSLTransform:
        """``moco_v2`` or ``grayscale_small`` (the presets the CPU path names the same)."""
        if preset == "moco_v2":
            return cls(image_size, mean, std)
        if preset == "grayscale_small":
            return cls(image_size, mean, std, (0.3, 1.0), (0.4, 0.4, 0.0, 0.0), 0.8, 0.0, 0.0)
        raise ValueError(f"batched preset must be 'moco_v2' or 'grayscale_small', got {preset!r}.")

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if images.ndim != 4:
            raise ValueError(f"images must be (n, c, h, w), got shape {tuple(images.shape)}.")
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        n, c, h, w = x.shape
        device = x.device
        boxes = random_resized_crop_boxes(n, h, w, self.scale, generator=generator, device=device)
        rois = torch.cat([torch.arange(n, device=device, dtype=x.dtype).unsqueeze(1), boxes.to(x.dtype)], 1)
        x = roi_align(x, rois, (self.image_size, self.image_size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        if any(self.jitter) and self.jitter_p > 0:
            x = batched_color_jitter(x, *self.jitter, p=self.jitter_p, generator=generator)
        if self.grayscale_p > 0 and c == 3:
            gray = torch.rand(n, device=device, generator=generator) < self.grayscale_p
            x = torch.where(gray.view(-1, 1, 1, 1), _grayscale(x).expand(-1, 3, -1, -1), x)
        if self.blur_p > 0:
            blur = torch.rand(n, device=device, generator=generator) < self.blur_p
            sigma = _uniform(n, 0.1, 2.0, generator, device) * self.image_size / 224
            kernel = max(3, int(round(0.1 * self.image_size)) | 1)
            x = torch.where(blur.view(-1, 1, 1, 1), _gaussian_blur(x, sigma.clamp_min(1e-3), kernel), x)
        if self.flip_p > 0:
            flip = torch.rand(n, device=device, generator=generator) < self.flip_p
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        mean = torch.tensor(list(self.mean), device=device).view(1, -1, 1, 1)
        std = torch.tensor(list(self.std), device=device).view(1, -1, 1, 1)
        return (x - mean) / std

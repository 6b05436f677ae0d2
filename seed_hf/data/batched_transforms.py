"""Batched SSL augmentation on tensors: one call augments a whole batch on its device (GPU).

The CPU presets (:func:`seed_hf.data.transforms.build_ssl_transform`) run per image in dataloader
workers; at small resolutions or on a fast GPU the per-image Python cost dominates. Here the
same operations run on a batch with **per-sample** random parameters:

* RandomResizedCrop: torchvision's sampling (10 tries of area ∈ scale·H·W, log-uniform aspect
  ratio, then the centre-crop fallback), vectorised, from each image's own ``(H, W)``;
  resampled with ``torchvision.ops.roi_align`` (bilinear, averaging ``ceil(crop / output)``
  samples per output pixel when shrinking, a box filter close to antialiased resize).
* ColorJitter (brightness, contrast, saturation, hue; per-sample random order as torchvision),
  RandomGrayscale, Gaussian blur (per-sample σ), horizontal flip, in the preset's order.

Presets: :meth:`BatchedSSLTransform.from_preset` reads :data:`seed_hf.data.augmentation.PRESETS`,
the same table as the per-image path (flip commutes with the pixel-wise colour ops and the
symmetric blur, so only grayscale-before-jitter is kept of a preset's order).

Input: a uint8 or float batch ``(n, c, h, w)`` in [0, 255] / [0, 1], or a list of uint8
``(c, h_i, w_i)`` images of different sizes (decoded JPEGs, :mod:`seed_hf.data.gpu_input`); output:
float ``(n, c, size, size)`` normalised with ``mean``/``std``.

The parameters follow the CPU presets' distributions, not their RNG stream: torchvision draws
per image and per op, here each parameter is drawn for the whole batch at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from seed_hf.data.augmentation import PRESETS, AugmentationSpec, blur_kernel_size

__all__ = ["BatchedSSLTransform", "random_resized_crop_boxes", "batched_color_jitter", "BATCHED_PRESETS"]

_LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None, device) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(low, high, generator=generator)


def random_resized_crop_boxes(
    n: int,
    height: int | torch.Tensor,
    width: int | torch.Tensor,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    attempts: int = 10,
) -> torch.Tensor:
    """Per-sample crop boxes ``(n, 4)`` as ``(x1, y1, x2, y2)`` in pixels, drawn as
    ``torchvision.transforms.RandomResizedCrop.get_params`` does (vectorised over samples).

    ``height`` / ``width``: one image size for all samples, or each sample's own as ``(n,)``
    tensors. Random numbers are drawn in float32 as torchvision draws them; the box arithmetic
    runs in float64 as torchvision's Python floats do, so that ``round`` ties agree."""
    img_h, img_w = (
        torch.full((n,), float(side), dtype=torch.float64, device=device)
        if isinstance(side, (int, float))
        else side.to(device=device, dtype=torch.float64).expand(n)
        for side in (height, width)
    )
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    fraction = torch.empty(n, attempts, device=device).uniform_(*scale, generator=generator)
    aspect = torch.exp(torch.empty(n, attempts, device=device).uniform_(*log_ratio, generator=generator))
    target_area = (img_h * img_w).unsqueeze(1) * fraction.double()
    w = torch.sqrt(target_area * aspect.double()).round()
    h = torch.sqrt(target_area / aspect.double()).round()
    valid = (w > 0) & (w <= img_w.unsqueeze(1)) & (h > 0) & (h <= img_h.unsqueeze(1))
    found = valid.any(1)
    idx = valid.float().argmax(1, keepdim=True)  # the first valid attempt
    w, h = w.gather(1, idx).squeeze(1), h.gather(1, idx).squeeze(1)
    # fallback: the whole image cropped to the closest allowed aspect ratio, centred
    in_ratio = img_w / img_h
    low, high = min(ratio), max(ratio)
    fw = torch.where(in_ratio > high, (img_h * high).round(), img_w)
    fh = torch.where(in_ratio < low, (img_w / low).round(), img_h)
    w, h = torch.where(found, w, fw), torch.where(found, h, fh)
    u = torch.rand(n, 2, device=device, generator=generator).double()
    top = torch.where(found, torch.floor(u[:, 0] * (img_h - h + 1)), torch.floor((img_h - h) / 2))
    left = torch.where(found, torch.floor(u[:, 1] * (img_w - w + 1)), torch.floor((img_w - w) / 2))
    return torch.stack([left, top, left + w, top + h], dim=1).float()


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
    s = torch.where(
        maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc)
    )
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


# the presets of seed_hf.data.augmentation.PRESETS that have a batched version (from_preset reads
# PRESETS itself; this mapping names them for the command line)
BATCHED_PRESETS: dict[str, AugmentationSpec] = {name: spec for name, spec in PRESETS.items() if spec.batched}

_DEFAULT = PRESETS["moco_v2"]  # BatchedSSLTransform's field defaults


@dataclass
class BatchedSSLTransform:
    """A preset of :func:`seed_hf.data.transforms.build_ssl_transform` applied to a whole batch at once.

    Args:
        image_size: output side.
        mean, std: normalisation of the output.
        scale: RandomResizedCrop area range.
        jitter: ``(brightness, contrast, saturation, hue)`` of ColorJitter.
        jitter_p: probability of the colour jitter.
        grayscale_p: probability of RandomGrayscale.
        blur_p: probability of the Gaussian blur (kernel 10% of the side, as the CPU presets:
            ``seed_hf.data.augmentation.blur_kernel_size``).
        flip_p: probability of the horizontal flip.
        grayscale_first: RandomGrayscale before the jitter (``moco_v1``) instead of after it.
        blur_sigma: range of the blur's per-sample σ.

    The defaults are ``moco_v2``'s; :meth:`from_preset` takes every field from
    ``seed_hf.data.augmentation.PRESETS``, the table the per-image path reads too.
    """

    image_size: int
    mean: Sequence[float]
    std: Sequence[float]
    scale: tuple[float, float] = _DEFAULT.scale
    jitter: tuple[float, float, float, float] = _DEFAULT.jitter
    jitter_p: float = _DEFAULT.jitter_p
    grayscale_p: float = _DEFAULT.grayscale_p
    blur_p: float = _DEFAULT.blur_p
    flip_p: float = _DEFAULT.flip_p
    grayscale_first: bool = _DEFAULT.grayscale_first
    blur_sigma: tuple[float, float] = _DEFAULT.blur_sigma

    @classmethod
    def from_preset(
        cls, preset: str, image_size: int, mean, std, scale: tuple[float, float] | None = None
    ) -> BatchedSSLTransform:
        """The batched twin of ``build_ssl_transform(preset, image_size, mean, std, scale)``: every
        preset of ``seed_hf.data.augmentation.PRESETS`` marked ``batched`` (all but ``none``)."""
        spec = PRESETS.get(preset)
        if spec is None or not spec.batched:
            batched = tuple(name for name, s in PRESETS.items() if s.batched)
            raise ValueError(f"batched preset must be one of {batched}, got {preset!r}.")
        fields = spec.batched_fields()
        if scale is not None:
            fields["scale"] = tuple(scale)
        return cls(image_size, mean, std, **fields)

    def crop_boxes(
        self,
        heights: int | torch.Tensor,
        widths: int | torch.Tensor,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """RandomResizedCrop boxes ``(n, 4)`` (x1, y1, x2, y2) for images of ``(heights, widths)``
        (ints, or ``(n,)`` tensors of each image's own size)."""
        return random_resized_crop_boxes(n, heights, widths, self.scale, generator=generator, device=device)

    def resample(self, images: torch.Tensor | Sequence[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        """Crops ``boxes`` ``(n, 4)`` out of ``images`` and resizes them to ``image_size``.

        ``images``: a batch ``(n, c, h, w)`` (uint8 in [0, 255] or float in [0, 1]) or a list of
        ``(c, h_i, w_i)`` uint8 images. Returns float ``(n, c, size, size)`` in [0, 1].

        Images of one size share one ``roi_align`` call; no image is padded, so every bilinear tap
        reads the sample's own image, exactly as a per-image call would (ImageNet's few common sizes
        make the groups large). ``boxes`` may live on the host: all groups' boxes travel in one
        non-blocking copy (a blocking one would wait for the GPU's queue).
        """
        size = (self.image_size, self.image_size)
        if isinstance(images, torch.Tensor):
            rows = [list(range(len(images)))]
            batches = [images]
        else:
            by_shape: dict[tuple[int, ...], list[int]] = {}
            for i, image in enumerate(images):
                by_shape.setdefault(tuple(image.shape), []).append(i)
            rows = list(by_shape.values())
            batches = [
                torch.stack([images[i] for i in r]) if len(r) > 1 else images[r[0]].unsqueeze(0) for r in rows
            ]
        order = torch.tensor([i for r in rows for i in r])
        index_in_group = torch.cat([torch.arange(len(r)) for r in rows])
        if len(rows) > 1:  # grouped order (boxes of a list live on the host)
            boxes = boxes[order.to(boxes.device, non_blocking=True)]
        rois = torch.cat(
            [index_in_group.to(boxes.device, boxes.dtype, non_blocking=True).unsqueeze(1), boxes], 1
        )
        device = batches[0].device
        rois = rois.to(device, torch.float32, non_blocking=True)
        starts = [0, *torch.tensor([len(r) for r in rows]).cumsum(0).tolist()]
        pooled = [
            roi_align(batch.float(), rois[a:b], size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
            for batch, a, b in zip(batches, starts[:-1], starts[1:])
        ]
        pooled = pooled[0] if len(pooled) == 1 else torch.cat(pooled)
        if len(rows) > 1:  # back to batch order
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(len(order))
            pooled = pooled[inverse.to(device, non_blocking=True)]
        return pooled / 255.0 if batches[0].dtype == torch.uint8 else pooled

    def augment(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Colour jitter, grayscale, blur and flip with per-sample parameters, then the
        normalisation: ``(n, c, s, s)`` float in [0, 1] → normalised float ``(n, c, s, s)``."""
        n, device = x.shape[0], x.device
        if self.grayscale_first:
            x = self._random_grayscale(x, generator)
        if any(self.jitter) and self.jitter_p > 0:
            x = batched_color_jitter(x, *self.jitter, p=self.jitter_p, generator=generator)
        if not self.grayscale_first:
            x = self._random_grayscale(x, generator)
        if self.blur_p > 0:
            blur = torch.rand(n, device=device, generator=generator) < self.blur_p
            sigma = _uniform(n, *self.blur_sigma, generator, device)
            x = torch.where(
                blur.view(-1, 1, 1, 1), _gaussian_blur(x, sigma, blur_kernel_size(self.image_size)), x
            )
        if self.flip_p > 0:
            flip = torch.rand(n, device=device, generator=generator) < self.flip_p
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        scale, shift = self._normalisation(device)
        return torch.addcmul(shift, x, scale)

    def _random_grayscale(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self.grayscale_p <= 0 or x.shape[1] != 3:
            return x
        gray = torch.rand(x.shape[0], device=x.device, generator=generator) < self.grayscale_p
        return torch.where(gray.view(-1, 1, 1, 1), _grayscale(x).expand(-1, 3, -1, -1), x)

    def _normalisation(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1/std, −mean/std)`` as ``(1, c, 1, 1)`` tensors on ``device``, built once per device
        (a fresh host→device copy per batch would block the host on the GPU's queue)."""
        cache = self.__dict__.setdefault("_normalisation_cache", {})
        if device not in cache:
            mean, std = torch.tensor(list(self.mean)), torch.tensor(list(self.std))
            cache[device] = (
                (1 / std).view(1, -1, 1, 1).to(device),
                (-mean / std).view(1, -1, 1, 1).to(device),
            )
        return cache[device]

    @torch.no_grad()
    def __call__(
        self,
        images: torch.Tensor | Sequence[torch.Tensor],
        generator: torch.Generator | None = None,
        crop_generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Augments a batch ``(n, c, h, w)`` or a list of ``(c, h_i, w_i)`` uint8 images (each
        cropped from its own size) → normalised float ``(n, c, image_size, image_size)``.

        ``generator`` draws the pixel ops' parameters on the images' device. Crop boxes of a
        batch tensor are drawn there too (with ``crop_generator``, default ``generator``); those of
        a list on the host from the images' shapes (host metadata: no device sync), with
        ``crop_generator`` (a CPU generator; default torch's global one).
        """
        if isinstance(images, torch.Tensor):
            if images.ndim != 4:
                raise ValueError(f"images must be (n, c, h, w), got shape {tuple(images.shape)}.")
            n, _, h, w = images.shape
            boxes = self.crop_boxes(h, w, n, crop_generator or generator, images.device)
        else:
            if not images or any(image.ndim != 3 for image in images):
                raise ValueError("images must be a non-empty list of (c, h, w) tensors.")
            sizes = torch.tensor([image.shape[-2:] for image in images])
            boxes = self.crop_boxes(sizes[:, 0], sizes[:, 1], len(images), crop_generator)
        return self.augment(self.resample(images, boxes), generator)

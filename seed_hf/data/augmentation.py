"""The augmentation presets, defined once: :data:`PRESETS` maps each preset's name to an
:class:`AugmentationSpec`.

Both augmentation paths read their parameters from this table and nowhere else: the per-image
pipeline of :func:`seed_hf.data.transforms.build_ssl_transform` (opencv and torchvision backends)
and the batched GPU one of :meth:`seed_hf.data.batched_transforms.BatchedSSLTransform.from_preset`.
The public names ``AUGMENTATION_PRESETS`` (transforms) and ``BATCHED_PRESETS`` (batched_transforms)
are derived from it. The module also holds the blur kernel size of both paths
(:func:`blur_kernel_size`), the names of the views a multi-view transform returns
(:data:`VIEW_KEYS`) and the small crops' defaults (:data:`SMALL_CROP_SIZE`, :data:`SMALL_CROP_SCALE`).
It imports nothing of seed_hf, so that every data module may import it.

Presets (crop scale, then ops in order; jitter = brightness/contrast/saturation/hue, its four ops
in random order as torchvision's ``ColorJitter`` does):

* ``moco_v2``: scale (0.2, 1); jitter 0.4/0.4/0.4/0.1 p=0.8; grayscale p=0.2; blur p=0.5; flip.
* ``moco_v1``: scale (0.2, 1); grayscale p=0.2; jitter 0.4/0.4/0.4/0.4 always; flip.
* ``simclr`` / ``swav``: scale (0.08, 1) / (0.14, 1); flip; jitter 0.8/0.8/0.8/0.2 p=0.8;
  grayscale p=0.2; blur p=0.5 (SimCLR's strength).
* ``seed_simclr``: what the official SEED code (jacobswan1/SEED ``tools/utils.py`` ``simclr_aug``,
  used by ``main.py`` for SimCLR teachers) actually runs: ``moco_v1``.
* ``seed_swav``: the official SEED ``swav_aug`` (SwAV teachers, ``main.py`` and
  ``main_small-patch.py``; ``swav_small_aug`` with the small-crop scale): ``moco_v2`` with scale
  (0.14, 1), in MoCo-v2's op order.
* ``grayscale_small``: 28-32 px single-channel data: scale (0.3, 1); flip; brightness/contrast
  0.4 p=0.8; no hue / saturation, no grayscale, no blur.
* ``none``: resize the shorter side + centre crop, no random op (per-image path only).

In the batched path flip commutes with the pixel-wise colour ops and the symmetric blur, so its
place in a preset's order does not change the distribution; grayscale before jitter (``moco_v1``)
does, and is kept (``BatchedSSLTransform.grayscale_first``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = [
    "AugmentationSpec",
    "PRESETS",
    "SMALL_CROP_SCALE",
    "SMALL_CROP_SIZE",
    "VIEW_KEYS",
    "blur_kernel_size",
]


VIEW_KEYS = ("pixel_values", "pixel_values_k")
"""Batch keys of the first and second view of a multi-view transform (per-image and batched)."""

SMALL_CROP_SIZE = 96
"""Default resolution of the small crops (SwAV's multi-crop, SEED's small-patch variant)."""

SMALL_CROP_SCALE = (0.05, 0.14)
"""Default ``RandomResizedCrop`` area range of the small crops (the official SEED ``swav_small_aug``)."""

OPS = ("crop", "center_crop", "jitter", "grayscale", "blur", "flip")
"""The op names an :attr:`AugmentationSpec.order` may hold."""


def blur_kernel_size(image_size: int) -> int:
    """Gaussian blur kernel side of both paths: 10% of ``image_size``, at least 3, odd."""
    kernel = max(3, int(0.1 * image_size))
    return kernel if kernel % 2 == 1 else kernel + 1


@dataclass(frozen=True)
class AugmentationSpec:
    """One augmentation preset's parameters, read by the per-image and the batched path.

    An op whose probability is 0 (or whose jitter strengths are all 0) is left out of the
    pipeline; one whose probability is 1 runs unconditionally (no ``RandomApply`` draw).

    Attributes:
        order: the ops in the per-image pipeline's order, out of ``"crop"`` (RandomResizedCrop
            with ``scale``), ``"center_crop"`` (deterministic resize of the shorter side + centre
            crop), ``"jitter"``, ``"grayscale"``, ``"blur"`` and ``"flip"``. Ops listed here but
            with probability 0 are skipped; the batched path only keeps whether ``"grayscale"``
            comes before ``"jitter"``.
        scale: RandomResizedCrop area range (fraction of the image); a caller's ``scale``
            argument overrides it. Unused without ``"crop"``.
        jitter: ColorJitter ``(brightness, contrast, saturation, hue)`` strengths: factors drawn
            from ``[max(0, 1 - s), 1 + s]`` for the first three, a hue shift from ``[-s, s]``.
        jitter_p: probability of the colour jitter.
        grayscale_p: probability of RandomGrayscale.
        blur_p: probability of the Gaussian blur.
        blur_sigma: range of the blur's σ, drawn uniformly per image (kernel side:
            :func:`blur_kernel_size`).
        flip_p: probability of the horizontal flip.
        batched: whether ``BatchedSSLTransform.from_preset`` (the batched GPU path) supports the
            preset; ``False`` for per-image-only presets (``none``).
    """

    order: tuple[str, ...] = ("crop", "jitter", "grayscale", "blur", "flip")
    scale: tuple[float, float] = (0.2, 1.0)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    flip_p: float = 0.5
    batched: bool = True

    def __post_init__(self) -> None:
        unknown = [op for op in self.order if op not in OPS]
        if unknown or len(set(self.order)) != len(self.order):
            raise ValueError(f"order must hold distinct ops out of {OPS}, got {self.order!r}.")

    @property
    def grayscale_first(self) -> bool:
        """RandomGrayscale before the colour jitter (``moco_v1``) instead of after it."""
        order = self.order
        return "grayscale" in order and "jitter" in order and order.index("grayscale") < order.index("jitter")

    def batched_fields(self) -> dict:
        """The fields of ``BatchedSSLTransform`` this spec sets (all but size and normalisation)."""
        if not self.batched:
            raise ValueError("this preset has no batched version.")
        names = ("scale", "jitter", "jitter_p", "grayscale_p", "blur_p", "blur_sigma", "flip_p")
        return {name: getattr(self, name) for name in names} | {"grayscale_first": self.grayscale_first}

    def replace(self, **changes) -> AugmentationSpec:
        """A copy with ``changes`` applied (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


_MOCO_V2 = AugmentationSpec()
_MOCO_V1 = AugmentationSpec(
    order=("crop", "grayscale", "jitter", "flip"), jitter=(0.4, 0.4, 0.4, 0.4), jitter_p=1.0, blur_p=0.0
)
_SIMCLR = AugmentationSpec(
    order=("crop", "flip", "jitter", "grayscale", "blur"), scale=(0.08, 1.0), jitter=(0.8, 0.8, 0.8, 0.2)
)

PRESETS: dict[str, AugmentationSpec] = {
    "moco_v2": _MOCO_V2,
    "moco_v1": _MOCO_V1,
    "simclr": _SIMCLR,
    "swav": _SIMCLR.replace(scale=(0.14, 1.0)),
    "seed_simclr": _MOCO_V1,
    "seed_swav": _MOCO_V2.replace(scale=(0.14, 1.0)),
    "grayscale_small": AugmentationSpec(
        order=("crop", "flip", "jitter"),
        scale=(0.3, 1.0),
        jitter=(0.4, 0.4, 0.0, 0.0),
        grayscale_p=0.0,
        blur_p=0.0,
    ),
    "none": AugmentationSpec(
        order=("center_crop",),
        scale=(0.3, 1.0),
        jitter=(0.0, 0.0, 0.0, 0.0),
        jitter_p=0.0,
        grayscale_p=0.0,
        blur_p=0.0,
        flip_p=0.0,
        batched=False,
    ),
}
"""Every augmentation preset by name, in the order ``AUGMENTATION_PRESETS`` lists them."""

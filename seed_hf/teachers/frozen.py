"""The frozen wrapper every teacher is served through: :class:`FrozenTeacher`.

Whatever its kind (a timm backbone with an optional projection head, a transformers vision model,
a seed_hf run), a teacher maps ``pixel_values`` to unit embeddings and never trains: parameters
without grad, eval mode that ``.train()`` cannot undo, ``torch.no_grad`` forwards. The wrapper also
adapts the student's inputs to the teacher (channels, normalisation, resolution), folds BatchNorm
for inference, and gives the patch features the local term distils from the same forward.
:func:`seed_hf.teachers.loading.load_teacher` builds one from a spec.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seed_hf.models.backbones import feature_map, pooled_features, pooled_width
from seed_hf.teachers.record import TeacherRecord

__all__ = ["FrozenTeacher"]


class _ForwardFeatures(nn.Module):
    """``backbone.forward_features`` as a module's ``forward``, so that torch.fx traces (and fuses)
    the feature map rather than the pooled output."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(pixel_values)


class FrozenTeacher(nn.Module):
    """A frozen embedding model: ``pixel_values (n, c, h, w) → unit vectors (n, embed_dim)``.

    Parameters never require grad, the module stays in eval mode (BatchNorm running stats)
    even when ``.train()`` is called, and ``forward`` runs under ``torch.no_grad``.
    When the data has 1 channel and the backbone expects 3, the channel is repeated.
    ``forward(pixel_values, return_patches=True)`` (:meth:`forward_with_patches`) also returns the
    patch features the local term distils, from the same forward.

    Args:
        backbone (`nn.Module`): timm backbone with ``forward_features``/``forward_head``.
        head (`nn.Module`, *optional*): projection applied to the pooled features.
        in_chans (`int`): channels the backbone expects.
        description (`str`): provenance, recorded in the student's config.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module | None,
        in_chans: int,
        description: str = "",
        record: TeacherRecord | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head if head is not None else nn.Identity()
        self.in_chans = in_chans
        self.description = description
        # provenance (load_teacher fills it; a module given directly is "module")
        self.record = record or TeacherRecord(kind="module", source=description or type(backbone).__name__)
        # resolution the inputs are resized to before the backbone (None: as they come)
        self.input_size: int | None = None
        self.fused_backbone: nn.Module | None = None
        # BN-folded forward_features (optimize_for_inference(feature_map=True)): feature map and pooled
        # embedding from one forward, for the local term
        self.fused_features: nn.Module | None = None
        # normalisation the teacher expects (None: the data's); see set_data_normalization
        self.expected_mean: list[float] | None = None
        self.expected_std: list[float] | None = None
        self.register_buffer("input_scale", None, persistent=False)
        self.register_buffer("input_shift", None, persistent=False)
        self.requires_grad_(False)
        super().train(False)
        with torch.no_grad():
            self.embed_dim = self._infer_embed_dim(head)

    def _infer_embed_dim(self, head: nn.Module | None) -> int:
        if head is None:
            return pooled_width(self.backbone)
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
        return linears[-1].out_features if linears else pooled_width(self.backbone)

    @property
    def normalization(self) -> dict[str, list[float]] | None:
        """The normalisation the teacher expects (``{"mean", "std"}``, the shape of
        ``TeacherRecord.normalization``; None: the data's), for run records."""
        if self.expected_mean is None or self.expected_std is None:
            return None
        return {"mean": list(self.expected_mean), "std": list(self.expected_std)}

    def train(self, mode: bool = True) -> FrozenTeacher:
        return super().train(False)  # always eval: frozen BN statistics, no dropout

    def set_data_normalization(self, mean: list[float], std: list[float]) -> None:
        """Inputs arrive normalised with the data's ``mean``/``std``; when the teacher was trained
        with other statistics (CLIP, say), re-normalise: x' = (x·std + mean − mean_T) / std_T."""
        if self.expected_mean is None or self.expected_std is None:
            return
        mean_d, std_d = torch.tensor(mean).expand(self.in_chans), torch.tensor(std).expand(self.in_chans)
        mean_t, std_t = torch.tensor(self.expected_mean), torch.tensor(self.expected_std)
        if torch.allclose(mean_d, mean_t) and torch.allclose(std_d, std_t):
            return
        device = next(self.parameters()).device
        self.input_scale = (std_d / std_t).view(1, -1, 1, 1).to(device)
        self.input_shift = ((mean_d - mean_t) / std_t).view(1, -1, 1, 1).to(device)

    @torch.no_grad()
    def optimize_for_inference(
        self, channels_last: bool = True, probe: torch.Tensor | None = None, feature_map: bool = False
    ) -> FrozenTeacher:
        """Folds BatchNorm into the preceding convolutions (``torch.fx`` conv-bn fusion; the teacher
        is frozen, so this is exact up to rounding) and switches to channels_last. Falls back to the
        eager backbone when the model cannot be traced or the fused output differs (> 1e-3).

        ``feature_map=True`` (the local term) fuses ``forward_features`` instead of the pooled
        forward: :meth:`forward_with_patches` then pools that map, one fused forward for both."""
        from torch.fx.experimental.optimization import fuse

        if channels_last:
            self.to(memory_format=torch.channels_last)
        if (self.fused_features if feature_map else self.fused_backbone) is not None:
            return self
        try:
            # GraphModule of forward_features (feature map) or of forward() (pooled, num_classes=0)
            fused = fuse(_ForwardFeatures(self.backbone) if feature_map else self.backbone)
            probe = probe if probe is not None else torch.randn(2, self.in_chans, 64, 64)
            probe = probe.to(next(self.backbone.parameters()).device)
            reference = (
                self.backbone.forward_features(probe)
                if feature_map
                else pooled_features(self.backbone, probe)
            )
            if (fused(probe) - reference).abs().max() > 1e-3 * reference.abs().max().clamp_min(1.0):
                return self
        except Exception:  # not traceable: keep the eager backbone
            return self
        if feature_map:
            self.fused_features = fused
        else:
            self.fused_backbone = fused
        return self

    def forward_with_patches(
        self, pixel_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """``(embeds, patches, grid)`` from one forward: the unit embeddings ``(n, embed_dim)`` of
        :meth:`forward`, the backbone's patch features ``(n, rows·cols, width)`` (before any
        projection head, not normalised; row-major over the grid) and ``grid = (rows, cols)``.

        Patches: a timm CNN's last ``forward_features`` map ``(n, c, h, w)`` → ``(n, h·w, c)``; a timm
        ViT's ``forward_features`` tokens without its ``num_prefix_tokens`` (CLS, registers); a
        transformers teacher's ``last_hidden_state`` tokens after CLS and register tokens, or its 4-D
        feature map. The embedding pools that same map (``forward_head``), so it equals ``forward``'s.

        Raises:
            ValueError: the backbone has no feature map (no ``forward_features`` nor
                ``forward_with_patches``), or its tokens form no grid.
        """
        return self(pixel_values, return_patches=True)

    def _patch_features(
        self, pixel_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """``(pooled features, patches (n, p, width), grid)`` of the prepared inputs, one backbone forward."""
        backbone = self.backbone
        if hasattr(backbone, "forward_with_patches"):  # TransformersVisionBackbone
            return backbone.forward_with_patches(pixel_values)
        if not (hasattr(backbone, "forward_features") and hasattr(backbone, "forward_head")):
            raise ValueError(
                f"The teacher's backbone ({type(backbone).__name__}) exposes no patch features, which the local "
                "term (local_loss_weight > 0) distils: use a timm backbone (forward_features / forward_head) or one "
                "with forward_with_patches(pixel_values) -> (pooled, patches (n, p, width), (rows, cols))."
            )
        features = (self.fused_features or backbone.forward_features)(pixel_values)
        pooled = backbone.forward_head(features, pre_logits=True)
        grid = feature_map(backbone, features, tuple(pixel_values.shape[-2:]))
        return pooled, grid.flatten(2).transpose(1, 2), (int(grid.shape[-2]), int(grid.shape[-1]))

    @torch.no_grad()
    def forward(
        self, pixel_values: torch.Tensor, return_patches: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Unit embeddings ``(n, embed_dim)``; with ``return_patches`` the tuple of
        :meth:`forward_with_patches` (through ``__call__``, so hooks and ``compile`` see one forward)."""
        if pixel_values.shape[1] != self.in_chans:
            if pixel_values.shape[1] == 1:
                pixel_values = pixel_values.expand(-1, self.in_chans, -1, -1)
            else:
                raise ValueError(
                    f"The teacher expects {self.in_chans}-channel images, got {pixel_values.shape[1]}."
                )
        if self.input_scale is not None:
            pixel_values = pixel_values * self.input_scale + self.input_shift
        if self.input_size is not None and pixel_values.shape[-2:] != (self.input_size, self.input_size):
            pixel_values = F.interpolate(
                pixel_values, size=(self.input_size, self.input_size), mode="bilinear", antialias=True
            )
        if return_patches:
            features, patches, grid = self._patch_features(pixel_values)
            return F.normalize(self.head(features).float(), dim=1), patches, grid
        if self.fused_backbone is not None:
            features = self.fused_backbone(pixel_values)
        elif self.fused_features is not None:
            features = self.backbone.forward_head(self.fused_features(pixel_values), pre_logits=True)
        elif hasattr(self.backbone, "forward_features"):
            features = pooled_features(self.backbone, pixel_values)
        else:
            features = self.backbone(pixel_values)
        return F.normalize(self.head(features).float(), dim=1)

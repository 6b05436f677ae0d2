"""The SEED distillation loss, and the optional local (patch-similarity) term.

Reference:
    - [0] SEED: Self-supervised Distillation for Visual Representation, Fang et al., ICLR 2021,
      https://arxiv.org/abs/2101.04731 (official code: github.com/jacobswan1/SEED)
    - [1] LightlyTrain ``distillationv3`` (``method="distillation"``'s default since LightlyTrain 0.15.0,
      https://docs.lightly.ai/train/0.15.0/pretrain_distill/methods/distillation.html): the queue KL
      plus a KL between each image's patch-to-patch similarity matrices of teacher and student
      (lightly-ai/lightly-train ``src/lightly_train/_methods/distillationv3/distillationv3_loss.py``,
      ``DistillationV3Loss``; ``temperature_local=0.07``, ``loss_local_weight=1.0``)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LOSS_VARIANTS",
    "LocalSimilarityLoss",
    "SeedLoss",
    "local_similarity_loss",
    "seed_logits",
    "seed_loss",
    "soft_cross_entropy",
]

LOSS_VARIANTS = ("official", "batch_keys")


def check_temperature(name: str, value: float) -> None:
    """Refuses a temperature ≤ 0, naming it as the flag that sets it (``--{name}``: the scripts'
    flags are named as the parameters they set)."""
    if not value > 0:
        raise ValueError(f"--{name} must be > 0, got {value}.")


def seed_logits(
    student_embeds: torch.Tensor,
    teacher_embeds: torch.Tensor,
    queue: torch.Tensor,
    variant: str = "official",
    batch_teacher_embeds: torch.Tensor | None = None,
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Similarities of student and teacher embeddings to the dictionary D⁺, in fp32.

    n = batch size, c = embedding width, k = queue size, g = global batch size.

    Args:
        student_embeds: ``(n, c)`` student projections z^S.
        teacher_embeds: ``(n, c)`` teacher embeddings z^T of the same images.
        queue: ``(k, c)`` queued teacher embeddings.
        variant: ``"official"`` (D⁺ = own key ∪ queue) or ``"batch_keys"`` (D⁺ = every
            key of the global batch ∪ queue).
        batch_teacher_embeds: ``(g, c)`` teacher embeddings of the global batch (only for
            ``"batch_keys"``; defaults to ``teacher_embeds``, i.e. one process).
        normalize: L2-normalise the embeddings first (idempotent for unit vectors).

    Returns:
        ``(student_sims, teacher_sims)``, each ``(n, 1 + k)`` for ``"official"`` (column 0
        is the own key) or ``(n, g + k)`` for ``"batch_keys"``. Not divided by temperatures.
    """
    if variant not in LOSS_VARIANTS:
        raise ValueError(f"loss variant must be one of {LOSS_VARIANTS}, got {variant!r}.")
    if student_embeds.shape != teacher_embeds.shape:
        raise ValueError(
            "student and teacher embeddings must have the same shape, got "
            f"{tuple(student_embeds.shape)} and {tuple(teacher_embeds.shape)}: the projection head "
            "output width (projection_dim) must equal the teacher embedding width."
        )
    if queue.ndim != 2 or queue.shape[1] != student_embeds.shape[1]:
        raise ValueError(f"queue must have shape (k, {student_embeds.shape[1]}), got {tuple(queue.shape)}.")
    # fp32 even under autocast: tau_T = 1e-4 gives logits of 1e4, which overflow fp16.
    with torch.autocast(device_type=student_embeds.device.type, enabled=False):
        s = student_embeds.float()
        t = teacher_embeds.float()
        q = queue.float()
        if normalize:
            s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
        if variant == "official":
            keys = q
            own_s = (s * t).sum(dim=1, keepdim=True)  # n x 1
            own_t = (t * t).sum(dim=1, keepdim=True)  # n x 1
        else:
            batch = t if batch_teacher_embeds is None else batch_teacher_embeds.float()
            if normalize:
                batch = F.normalize(batch, dim=1)
            keys = torch.cat([batch, q], dim=0)  # (g + k) x c
        # one GEMM for student and teacher: (2n x c) @ (c x keys)
        sims = torch.cat([s, t], dim=0) @ keys.T
        s_sims, t_sims = sims.split(s.shape[0], dim=0)
        if variant == "official":
            s_sims = torch.cat([own_s, s_sims], dim=1)
            t_sims = torch.cat([own_t, t_sims], dim=1)
    return s_sims, t_sims


def seed_loss(
    student_embeds: torch.Tensor,
    teacher_embeds: torch.Tensor,
    queue: torch.Tensor,
    student_temperature: float = 0.2,
    teacher_temperature: float = 0.01,
    variant: str = "official",
    batch_teacher_embeds: torch.Tensor | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """Mean SEED loss over the batch; see :class:`SeedLoss` for the formula.

    Shapes: ``student_embeds``/``teacher_embeds`` ``(n, c)``, ``queue`` ``(k, c)``,
    ``batch_teacher_embeds`` ``(g, c)``. Returns a scalar fp32 tensor.
    """
    check_temperature("student_temperature", student_temperature)
    check_temperature("teacher_temperature", teacher_temperature)
    s_sims, t_sims = seed_logits(
        student_embeds, teacher_embeds, queue, variant, batch_teacher_embeds, normalize
    )
    return soft_cross_entropy(s_sims / student_temperature, t_sims / teacher_temperature)


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """``mean_i -Σ_j softmax(teacher_logits)_ij · log_softmax(student_logits)_ij``, in fp32.

    Shapes: both ``(n, m)``; returns a scalar.
    """
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        # the teacher's distribution is a target, never differentiated (the official code computes it under
        # no_grad): with one GEMM for both sides (seed_logits) autograd would otherwise run a softmax backward
        # and a twice-as-large GEMM backward through it, slowed ~15x by the denormals of the targets below
        targets = F.softmax(teacher_logits.detach().float(), dim=1)
        # probabilities below the smallest normal float (~1e-38; 60 % of them at tau_T 0.01) weigh nothing
        # in the loss, but denormal operands make every multiply that touches them ~100x slower on x86
        targets = torch.where(targets >= torch.finfo(targets.dtype).tiny, targets, 0.0)
        log_probs = F.log_softmax(student_logits.float(), dim=1)
        return -(targets * log_probs).sum(dim=1).mean()


class SeedLoss(nn.Module):
    """SEED: the student mimics the teacher's similarity distribution over a dictionary.

    - [0] SEED, Fang et al., ICLR 2021, https://arxiv.org/abs/2101.04731 (Eq. 2–4)

    For each image i, with unit-norm teacher embedding z^T_i, student projection z^S_i and
    queue D = [d_1 … d_K] of teacher embeddings, let D⁺ = [z^T_i, d_1, …, d_K]. Then

    .. math::

        p^T_i = \\mathrm{softmax}(z^T_i \\cdot D^+ / \\tau_T), \\qquad
        p^S_i = \\mathrm{softmax}(z^S_i \\cdot D^+ / \\tau_S), \\qquad
        L = \\frac{1}{N} \\sum_i -\\sum_j p^T_{ij} \\log p^S_{ij}

    ``variant="batch_keys"`` (SEED_ICLR21 re-implementation) puts all G teacher keys of the
    global batch in D⁺ instead of only the own key. Both softmaxes run in fp32.

    Args:
        student_temperature (`float`, *optional*, defaults to 0.2): τ_S.
        teacher_temperature (`float`, *optional*, defaults to 0.01): τ_T. The official code
            uses 1e-4 (a nearly one-hot target); 0.01 is the re-implementation's setting.
        variant (`str`, *optional*, defaults to `"official"`): `"official"` or `"batch_keys"`.

    Raises:
        ValueError: a temperature ≤ 0 or an unknown variant.

    Examples:
        >>> loss_fn = SeedLoss()
        >>> s, t = torch.randn(8, 128), torch.randn(8, 128)
        >>> queue = torch.nn.functional.normalize(torch.randn(1024, 128), dim=1)
        >>> loss_fn(s, t, queue).shape
        torch.Size([])
    """

    def __init__(
        self,
        student_temperature: float = 0.2,
        teacher_temperature: float = 0.01,
        variant: str = "official",
    ):
        super().__init__()
        check_temperature("student_temperature", student_temperature)
        check_temperature("teacher_temperature", teacher_temperature)
        if variant not in LOSS_VARIANTS:
            raise ValueError(f"variant must be one of {LOSS_VARIANTS}, got {variant!r}.")
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.variant = variant

    def forward(
        self,
        student_embeds: torch.Tensor,
        teacher_embeds: torch.Tensor,
        queue: torch.Tensor,
        batch_teacher_embeds: torch.Tensor | None = None,
        return_logits: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """
        Shape:
            student_embeds: (batch_size, embedding_size), unit norm or not (normalised here)
            teacher_embeds: (batch_size, embedding_size), unit norm or not (normalised here)
            queue: (queue_size, embedding_size), unit norm
            batch_teacher_embeds: (global_batch_size, embedding_size), ``batch_keys`` only
            output: scalar; with ``return_logits`` also the student logits z^S·D⁺/τ_S,
                (batch_size, 1 + queue_size) or (batch_size, global_batch_size + queue_size)
        """
        if not return_logits:
            return seed_loss(
                student_embeds,
                teacher_embeds,
                queue,
                self.student_temperature,
                self.teacher_temperature,
                self.variant,
                batch_teacher_embeds,
            )
        s_sims, t_sims = seed_logits(
            student_embeds, teacher_embeds, queue, self.variant, batch_teacher_embeds
        )
        logits = s_sims / self.student_temperature
        return soft_cross_entropy(logits, t_sims / self.teacher_temperature), logits


def local_similarity_loss(
    student_patches: torch.Tensor,
    teacher_patches: torch.Tensor,
    student_temperature: float = 0.07,
    teacher_temperature: float = 0.07,
) -> torch.Tensor:
    """Mean KL between the teacher's and the student's patch-to-patch similarity distributions;
    see :class:`LocalSimilarityLoss` for the formula.

    Shapes: ``student_patches`` ``(n, p, c_s)``, ``teacher_patches`` ``(n, p, c_t)`` (the same p
    patches of the same n images, in the same order; the widths may differ). Returns a scalar
    fp32 tensor.
    """
    check_temperature("local_student_temperature", student_temperature)
    check_temperature("local_teacher_temperature", teacher_temperature)
    same_patches = student_patches.shape[:2] == teacher_patches.shape[:2]
    if student_patches.ndim != 3 or teacher_patches.ndim != 3 or not same_patches:
        raise ValueError(
            "student and teacher patches must be (images, patches, width) with the same images and patches, got "
            f"{tuple(student_patches.shape)} and {tuple(teacher_patches.shape)}: resize the student's feature map "
            "to the teacher's grid first (seed_hf.models.backbones.resize_feature_map)."
        )
    # fp32 even under autocast, like the global term: the softmaxes of logits up to 1/τ
    with torch.autocast(device_type=student_patches.device.type, enabled=False):
        s = F.normalize(student_patches.float(), dim=-1)
        t = F.normalize(teacher_patches.float(), dim=-1)
        # each image's (p, p) cosine-similarity matrix: in each model's own space, so the widths need not match
        s_logits = (s @ s.transpose(1, 2)) / student_temperature
        t_logits = (t @ t.transpose(1, 2)) / teacher_temperature
        log_p_s = F.log_softmax(s_logits, dim=-1)
        log_p_t = F.log_softmax(t_logits, dim=-1)
        # KL(p_T || p_S) per row, averaged over the n·p rows (images × patches)
        return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1).mean()


class LocalSimilarityLoss(nn.Module):
    """Local term: the student mimics, within each image, how similar the teacher finds each
    patch to every other patch.

    - [1] LightlyTrain ``distillationv3``, default ``method="distillation"`` since LightlyTrain 0.15.0
      (https://docs.lightly.ai/train/0.15.0/pretrain_distill/methods/distillation.html; lightly-train
      ``_methods/distillationv3/distillationv3_loss.py``, the ``local_loss`` of ``DistillationV3Loss``)

    For image i, with teacher patch features T_i (P × D_T) and student patch features S_i (P × D_S)
    of the same P grid cells (the student's feature map resized to the teacher's grid), each row
    L2-normalised:

    .. math::

        q^T_i = \\mathrm{softmax}_{row}(T_i T_i^\\top / \\tau_T), \\qquad
        q^S_i = \\mathrm{softmax}_{row}(S_i S_i^\\top / \\tau_S), \\qquad
        L_{local} = \\frac{1}{N P} \\sum_i \\sum_m \\mathrm{KL}(q^T_{i,m} \\,\\|\\, q^S_{i,m})

    Rows m are patches (the diagonal, self-similarity, is kept, as in [1]); both softmaxes run
    in fp32. Similarities are compared in each model's own space, so D_S need not equal D_T and no
    projection is learned ([1] first maps the student's patches with a learned linear layer to
    D_T; an identity here). KL differs from the soft cross-entropy by the teacher's entropy, a
    constant for the student: same gradients, but 0 at a perfect match. In SEED the total loss is
    ``L_SEED + local_loss_weight · L_local`` ([1] sums its queue KL and this term, weight 1.0).

    Args:
        student_temperature (`float`, *optional*, defaults to 0.07): τ_S ([1]: 0.07).
        teacher_temperature (`float`, *optional*, defaults to 0.07): τ_T ([1]: 0.07, the same
            ``temperature_local`` for both).

    Raises:
        ValueError: a temperature ≤ 0, or patches of different images / grids.

    Examples:
        >>> loss_fn = LocalSimilarityLoss()
        >>> student, teacher = torch.randn(8, 16, 576), torch.randn(8, 16, 512)  # 4×4 grids
        >>> loss_fn(student, teacher).shape
        torch.Size([])
    """

    def __init__(self, student_temperature: float = 0.07, teacher_temperature: float = 0.07):
        super().__init__()
        check_temperature("local_student_temperature", student_temperature)
        check_temperature("local_teacher_temperature", teacher_temperature)
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature

    def forward(self, student_patches: torch.Tensor, teacher_patches: torch.Tensor) -> torch.Tensor:
        """
        Shape:
            student_patches: (batch_size, num_patches, student_width), unit norm or not (normalised here)
            teacher_patches: (batch_size, num_patches, teacher_width), unit norm or not (normalised here)
            output: scalar
        """
        return local_similarity_loss(
            student_patches, teacher_patches, self.student_temperature, self.teacher_temperature
        )

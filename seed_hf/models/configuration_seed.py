"""SEED configuration."""

from __future__ import annotations

from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers import PreTrainedConfig

from seed_hf.data.augmentation import SMALL_CROP_SCALE, SMALL_CROP_SIZE
from seed_hf.models.losses import LOSS_VARIANTS, check_temperature

__all__ = ["SeedConfig", "SMALL_QUEUE_KEYS", "default_normalization"]

# which small-crop teacher keys enter the small queue: the official code's first crop of each
# image, or every crop
SMALL_QUEUE_KEYS = ("first_crop", "all_crops")


class SeedConfig(PreTrainedConfig):
    r"""
    Configuration of a [`SeedForDistillation`] model: a timm student, its projection head, the
    queue of teacher embeddings and the SEED loss. Defaults follow the paper
    (arXiv:2101.04731): ResNet-18 student, 128-d embeddings, K = 65536, τ_S = 0.2.

    Args:
        student_architecture (`str`, *optional*, defaults to `"resnet18"`):
            Any `timm.list_models()` name of the student backbone.
        student_model_args (`dict`, *optional*, defaults to `{}`):
            Extra keyword arguments for `timm.create_model` (e.g. `{"drop_path_rate": 0.1}`).
        in_chans (`int`, *optional*, defaults to 3):
            Number of input channels of the student (1 for grayscale data).
        image_size (`int`, *optional*, defaults to 224):
            Training resolution (square), recorded for export and input validation.
        projection_dim (`int`, *optional*, defaults to 128):
            Output width of the projection head; must equal the teacher embedding width.
        head_hidden_dim (`int`, *optional*, defaults to `None`):
            Hidden width of the Linear-ReLU-Linear head; `None` uses the backbone's pooled
            width (official code). The paper reports +2.3 top-1 for ResNet-18 with 2048.
        queue_size (`int`, *optional*, defaults to 65536):
            K, the number of queued teacher embeddings. Must be ≥ the global batch size.
        student_temperature (`float`, *optional*, defaults to 0.2):
            τ_S of the student softmax.
        teacher_temperature (`float`, *optional*, defaults to 0.01):
            τ_T of the teacher softmax. The official code uses 1e-4 (nearly one-hot target);
            0.01 is the SEED_ICLR21 re-implementation's setting.
        loss_variant (`str`, *optional*, defaults to `"official"`):
            `"official"` (D⁺ = own key ∪ queue) or `"batch_keys"` (D⁺ = global batch keys ∪ queue).
        num_small_crops (`int`, *optional*, defaults to 0):
            Extra small crops per image (official SEED with SwAV teachers: 6). Each small crop is
            distilled like the main view, against a second queue of small-crop teacher embeddings.
        small_crop_size (`int`, *optional*, defaults to 96):
            Resolution of the small crops.
        small_crop_scale (`list[float]`, *optional*, defaults to `None`):
            RandomResizedCrop area range of the small crops (`None`: the official [0.05, 0.14]).
        small_queue_size (`int`, *optional*, defaults to `None`):
            Size of the small-crop queue (`None`: `queue_size`, as in the official code); must hold
            the small-crop keys of one global batch.
        small_queue_keys (`str`, *optional*, defaults to `"first_crop"`):
            Small-crop teacher keys enqueued after each step: `"first_crop"` (official: the first
            small crop of each image, one key per image, so with `small_queue_size=None` the small
            queue fills in lockstep with the main queue, same size and pointer) or `"all_crops"`
            (all `num_small_crops` keys of each image).
        local_loss_weight (`float`, *optional*, defaults to 0.0):
            Weight of the local term ([`~seed_hf.models.losses.LocalSimilarityLoss`], LightlyTrain distillationv3's
            default since 0.15.0): the KL between each image's patch-to-patch similarity matrices of the
            teacher (its last feature map, or a ViT's patch tokens) and of the student (its last feature map
            resized to the teacher's grid); `loss = SEED loss + local_loss_weight × local loss`. 0 turns it
            off: no feature maps are computed, the loss and step are today's. LightlyTrain uses 1.0. Only the
            main view gets it (not the small crops).
        local_student_temperature (`float`, *optional*, defaults to 0.07):
            τ of the student's patch-similarity softmax (LightlyTrain: 0.07).
        local_teacher_temperature (`float`, *optional*, defaults to 0.07):
            τ of the teacher's patch-similarity softmax (LightlyTrain: 0.07, the same as the student's).
        queue_seed (`int`, *optional*, defaults to 0):
            Seed of the queue's random initial content.
        image_mean (`list[float]`, *optional*, defaults to `None`):
            Per-channel normalisation mean of the training data (`None`: ImageNet's, or 0.5 for
            one channel); written into exported students.
        image_std (`list[float]`, *optional*, defaults to `None`):
            Per-channel normalisation std of the training data (`None`: as `image_mean`).
        teacher_name_or_path (`str`, *optional*, defaults to `None`):
            Provenance only: the teacher spec the student was distilled from.
        teacher_ssl_method (`str`, *optional*, defaults to `None`):
            Provenance only: how the teacher was trained (`"moco_v2"`, `"swav"`, ...).
        teacher (`dict`, *optional*, defaults to `None`):
            Provenance only: the [`~seed_hf.teachers.record.TeacherRecord`] of the teacher the student
            was distilled from (kind, source, checkpoint, layout, fingerprint, embedding, resolution,
            license), written by the trainer from the teacher it ran; read by the cards.

    Example:

    ```python
    >>> from seed_hf import SeedConfig, SeedForDistillation
    >>> config = SeedConfig(student_architecture="resnet18", queue_size=4096)
    >>> model = SeedForDistillation(config)
    >>> model.config.queue_size
    4096
    ```
    """

    model_type = "seed_distillation"
    # MocoConfig's names for the same knobs: code reads `config.architecture` of either model
    attribute_map = {"architecture": "student_architecture", "model_args": "student_model_args"}

    def __init__(
        self,
        student_architecture: str = "resnet18",
        student_model_args: dict[str, Any] | None = None,
        in_chans: int = 3,
        image_size: int = 224,
        projection_dim: int = 128,
        head_hidden_dim: int | None = None,
        queue_size: int = 65536,
        student_temperature: float = 0.2,
        teacher_temperature: float = 0.01,
        loss_variant: str = "official",
        num_small_crops: int = 0,
        small_crop_size: int = SMALL_CROP_SIZE,
        small_crop_scale: list[float] | None = None,
        small_queue_size: int | None = None,
        small_queue_keys: str = "first_crop",
        local_loss_weight: float = 0.0,
        local_student_temperature: float = 0.07,
        local_teacher_temperature: float = 0.07,
        queue_seed: int = 0,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        teacher_name_or_path: str | None = None,
        teacher_ssl_method: str | None = None,
        teacher: dict[str, Any] | None = None,
        **kwargs,
    ):
        check_temperature("student_temperature", student_temperature)
        check_temperature("teacher_temperature", teacher_temperature)
        for name, value in (
            ("queue_size", queue_size),
            ("projection_dim", projection_dim),
            ("in_chans", in_chans),
            ("image_size", image_size),
        ):
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if head_hidden_dim is not None and head_hidden_dim <= 0:
            raise ValueError(f"head_hidden_dim must be a positive integer or None, got {head_hidden_dim}.")
        if loss_variant not in LOSS_VARIANTS:
            raise ValueError(f"loss_variant must be one of {LOSS_VARIANTS}, got {loss_variant!r}.")
        self.student_architecture = student_architecture
        self.student_model_args = dict(student_model_args or {})
        self.in_chans = in_chans
        self.image_size = image_size
        self.projection_dim = projection_dim
        self.head_hidden_dim = head_hidden_dim
        self.queue_size = queue_size
        self.student_temperature = float(student_temperature)
        self.teacher_temperature = float(teacher_temperature)
        self.loss_variant = loss_variant
        if num_small_crops < 0:
            raise ValueError(f"num_small_crops must be ≥ 0, got {num_small_crops}.")
        # checked even without small crops: a 0 would otherwise only fail in OpenCV once they are on
        if not (isinstance(small_crop_size, int) and small_crop_size > 0):
            raise ValueError(f"small_crop_size must be a positive integer, got {small_crop_size!r}.")
        small_crop_scale = (
            list(SMALL_CROP_SCALE) if small_crop_scale is None else [float(v) for v in small_crop_scale]
        )
        if len(small_crop_scale) != 2 or not 0 < small_crop_scale[0] <= small_crop_scale[1] <= 1:
            raise ValueError(f"small_crop_scale must be [min, max] within (0, 1], got {small_crop_scale}.")
        if small_queue_size is not None and small_queue_size <= 0:
            raise ValueError(f"small_queue_size must be a positive integer or None, got {small_queue_size}.")
        self.num_small_crops = num_small_crops
        self.small_crop_size = small_crop_size
        self.small_crop_scale = small_crop_scale
        if small_queue_keys not in SMALL_QUEUE_KEYS:
            raise ValueError(f"small_queue_keys must be one of {SMALL_QUEUE_KEYS}, got {small_queue_keys!r}.")
        self.small_queue_size = small_queue_size
        self.small_queue_keys = small_queue_keys
        if not local_loss_weight >= 0:
            raise ValueError(f"local_loss_weight must be ≥ 0 (0: off), got {local_loss_weight}.")
        check_temperature("local_student_temperature", local_student_temperature)
        check_temperature("local_teacher_temperature", local_teacher_temperature)
        self.local_loss_weight = float(local_loss_weight)
        self.local_student_temperature = float(local_student_temperature)
        self.local_teacher_temperature = float(local_teacher_temperature)
        self.queue_seed = queue_seed
        self.image_mean, self.image_std = default_normalization(in_chans, image_mean, image_std)
        self.teacher_name_or_path = teacher_name_or_path
        self.teacher_ssl_method = teacher_ssl_method
        self.teacher = dict(teacher) if teacher else None
        super().__init__(**kwargs)


def default_normalization(
    in_chans: int, mean: list[float] | None = None, std: list[float] | None = None
) -> tuple[list[float], list[float]]:
    """ImageNet statistics for 3 channels, 0.5/0.5 otherwise, unless given; validated."""
    if mean is None:
        mean = list(IMAGENET_DEFAULT_MEAN) if in_chans == 3 else [0.5] * in_chans
    if std is None:
        std = list(IMAGENET_DEFAULT_STD) if in_chans == 3 else [0.5] * in_chans
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if len(mean) != in_chans or len(std) != in_chans:
        raise ValueError(f"image_mean/image_std need {in_chans} values (in_chans), got {mean} and {std}.")
    if any(s <= 0 for s in std):
        raise ValueError(f"image_std must be > 0, got {std}.")
    return mean, std

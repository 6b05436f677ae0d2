"""seed_hf: SEED self-supervised distillation (arXiv:2101.04731) on the Hugging Face stack."""

from transformers import AutoConfig, AutoModel

from .configuration_seed import SeedConfig
from .data import (
    ArrayImageDataset,
    MultiViewTransform,
    build_ssl_transform,
    collate_batch,
    load_fashion_mnist,
    load_image_dataset,
)
from .distributed import all_gather_no_grad
from .losses import SeedLoss, seed_logits, seed_loss
from .moco import MocoConfig, MocoForPretraining, MocoOutput
from .modeling_seed import SeedForDistillation, SeedOutput, SeedPreTrainedModel
from .multi_student import SeedGroupOutput, SeedStudentGroup
from .queue import EmbeddingQueue
from .teachers import FrozenTeacher, load_teacher
from .trainer import KnnMonitor, MocoTrainer, SeedTrainer, SeedTrainingArguments

__version__ = "0.1.0"

AutoConfig.register(SeedConfig.model_type, SeedConfig, exist_ok=True)
AutoModel.register(SeedConfig, SeedForDistillation, exist_ok=True)
AutoConfig.register(MocoConfig.model_type, MocoConfig, exist_ok=True)
AutoModel.register(MocoConfig, MocoForPretraining, exist_ok=True)

__all__ = [
    "SeedConfig",
    "SeedForDistillation",
    "SeedPreTrainedModel",
    "SeedOutput",
    "SeedLoss",
    "seed_loss",
    "seed_logits",
    "EmbeddingQueue",
    "MocoConfig",
    "MocoForPretraining",
    "MocoOutput",
    "SeedStudentGroup",
    "SeedGroupOutput",
    "FrozenTeacher",
    "load_teacher",
    "SeedTrainer",
    "KnnMonitor",
    "MocoTrainer",
    "SeedTrainingArguments",
    "ArrayImageDataset",
    "MultiViewTransform",
    "build_ssl_transform",
    "collate_batch",
    "load_fashion_mnist",
    "load_image_dataset",
    "all_gather_no_grad",
]

"""seed_hf: SEED self-supervised distillation (arXiv:2101.04731) on the Hugging Face stack.

The public API: configs, models and their outputs, trainers and their arguments, teachers,
the loss and queue, training data and augmentation, and export to the Hub. Everything else
is reachable through its module (``seed_hf.evaluation``, ``seed_hf.runs``, ...).
"""

from transformers import AutoConfig, AutoModel

from .configuration_moco import MocoConfig
from .configuration_seed import SeedConfig
from .data import (
    ArrayImageDataset,
    MultiViewTransform,
    SeededRowDataset,
    TrainData,
    TrainSource,
    build_ssl_transform,
    build_train_dataset,
    collate_batch,
    load_fashion_mnist,
)
from .evaluation import KnnMonitor
from .hub import export_moco_encoder, export_student, push_student_to_hub
from .losses import LocalSimilarityLoss, SeedLoss, local_similarity_loss, seed_loss
from .modeling_moco import MocoForPretraining, MocoOutput, MocoPreTrainedModel, MocoQueryEncoder
from .modeling_seed import SeedForDistillation, SeedOutput, SeedPreTrainedModel
from .multi_student import SeedGroupOutput, SeedStudentGroup
from .onnx_export import export_onnx
from .queue import EmbeddingQueue
from .teacher_cache import CachedTeacherDataset, TeacherCache
from .teacher_cache_writer import write_teacher_cache
from .teachers import FrozenTeacher, load_teacher, weights_fingerprint
from .trainer import MocoTrainer, SeedTrainer
from .training_args import SeedTrainingArguments

__version__ = "0.1.0"

AutoConfig.register(SeedConfig.model_type, SeedConfig, exist_ok=True)
AutoModel.register(SeedConfig, SeedForDistillation, exist_ok=True)
AutoConfig.register(MocoConfig.model_type, MocoConfig, exist_ok=True)
AutoModel.register(MocoConfig, MocoForPretraining, exist_ok=True)

__all__ = [
    # configs, models, outputs
    "SeedConfig",
    "SeedForDistillation",
    "SeedPreTrainedModel",
    "SeedOutput",
    "SeedStudentGroup",
    "SeedGroupOutput",
    "MocoConfig",
    "MocoForPretraining",
    "MocoPreTrainedModel",
    "MocoQueryEncoder",
    "MocoOutput",
    # loss and queue
    "SeedLoss",
    "seed_loss",
    "LocalSimilarityLoss",
    "local_similarity_loss",
    "EmbeddingQueue",
    # teachers
    "load_teacher",
    "weights_fingerprint",
    "FrozenTeacher",
    "TeacherCache",
    "CachedTeacherDataset",
    "write_teacher_cache",
    # training
    "SeedTrainer",
    "MocoTrainer",
    "SeedTrainingArguments",
    "KnnMonitor",
    # data and augmentation
    "TrainSource",
    "TrainData",
    "build_train_dataset",
    "build_ssl_transform",
    "MultiViewTransform",
    "ArrayImageDataset",
    "SeededRowDataset",
    "collate_batch",
    "load_fashion_mnist",
    # export
    "export_student",
    "export_moco_encoder",
    "push_student_to_hub",
    "export_onnx",
]

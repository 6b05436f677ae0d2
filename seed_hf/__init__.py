"""seed_hf: SEED self-supervised distillation (arXiv:2101.04731) on the Hugging Face stack.

The public API: configs, models and their outputs, trainers and their arguments, teachers,
the loss and queue, training data and augmentation, and export to the Hub. Everything else
is reachable through its module (``seed_hf.evaluation.probe``, ``seed_hf.training.run_folder``, ...).
"""

from transformers import AutoConfig, AutoModel

from seed_hf.data import (
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
from seed_hf.evaluation.monitor import KnnMonitor
from seed_hf.export.hub import export_moco_encoder, export_student, push_student_to_hub
from seed_hf.export.onnx_export import export_onnx
from seed_hf.models.configuration_moco import MocoConfig
from seed_hf.models.configuration_seed import SeedConfig
from seed_hf.models.embedding_queue import EmbeddingQueue
from seed_hf.models.losses import LocalSimilarityLoss, SeedLoss, local_similarity_loss, seed_loss
from seed_hf.models.modeling_moco import MocoForPretraining, MocoOutput, MocoPreTrainedModel, MocoQueryEncoder
from seed_hf.models.modeling_seed import SeedForDistillation, SeedOutput, SeedPreTrainedModel
from seed_hf.models.multi_student import SeedGroupOutput, SeedStudentGroup
from seed_hf.teachers.cache import CachedTeacherDataset, TeacherCache
from seed_hf.teachers.cache_writer import write_teacher_cache
from seed_hf.teachers.fingerprint import weights_fingerprint
from seed_hf.teachers.frozen import FrozenTeacher
from seed_hf.teachers.loading import load_teacher
from seed_hf.training.arguments import SeedTrainingArguments
from seed_hf.training.moco_trainer import MocoTrainer
from seed_hf.training.seed_trainer import SeedTrainer

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

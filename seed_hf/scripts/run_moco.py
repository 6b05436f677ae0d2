#!/usr/bin/env python
"""MoCo-v2 pretraining (Chen et al. 2020, https://arxiv.org/abs/2003.04297) with seed_hf.

It trains SEED teachers and the paper's "small student trained by SSL alone" baseline.

    accelerate launch examples/run_moco.py --architecture resnet50 --dataset_name timm/imagenet-1k-wds \
        --streaming --max_steps 1000000 --per_device_train_batch_size 64 --output_dir moco-r50

With no dataset argument it trains on Fashion-MNIST (apt-get install -y dataset-fashion-mnist).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from transformers import set_seed

from seed_hf import MocoConfig, MocoForPretraining, MocoTrainer, SeedTrainingArguments
from seed_hf.cli import (
    DataTrainingArguments,
    build_device_input,
    build_knn_monitor,
    build_script_dataset,
    check_hub_arguments,
    parse_script_args,
    script_parser,
    setup_logging,
    train_and_save,
)
from seed_hf.training.distributed import shutdown_distributed
from seed_hf.training.run_folder import RunFolder
from seed_hf.training.run_recipe import run_recipe


@dataclass
class ModelArguments:
    """The MoCo-v2 encoder and its hyperparameters (None: MocoConfig's default)."""

    architecture: str = field(default="resnet50", metadata={"help": "timm architecture of the encoder."})
    model_args: str | None = field(
        default=None, metadata={"help": "JSON dict of extra timm.create_model args."}
    )
    projection_dim: int = field(default=128, metadata={"help": "Embedding width."})
    head_hidden_dim: int | None = field(default=None, metadata={"help": "Hidden width of the MLP head."})
    queue_size: int = field(default=65536, metadata={"help": "Number of negative keys K."})
    contrastive_temperature: float = field(default=0.2, metadata={"help": "InfoNCE temperature τ."})
    momentum: float = field(default=0.999, metadata={"help": "Key encoder momentum."})
    key_bn_splits: int = field(
        default=1, metadata={"help": "Shuffle-BN sub-batches of the key encoder per process."}
    )


def main(argv: list[str] | None = None) -> dict:
    parser = script_parser((ModelArguments, DataTrainingArguments, SeedTrainingArguments))
    return pretrain(*parse_script_args(parser, argv))


def pretrain(
    model_args: ModelArguments, data_args: DataTrainingArguments, training_args: SeedTrainingArguments
) -> dict:
    logger = setup_logging(training_args)
    check_hub_arguments(training_args)
    # fresh, resumed or finished; refused when in use (one writer per folder) or of another recipe
    run = RunFolder.of(training_args).lock(training_args.should_save)
    run.decide()
    set_seed(training_args.seed)

    data = data_args.train_data()  # resolution, channels, normalisation: derived once, passed on
    config = MocoConfig(
        architecture=model_args.architecture,
        model_args=json.loads(model_args.model_args) if model_args.model_args else None,
        in_chans=data.in_chans,
        image_size=data.image_size,
        projection_dim=model_args.projection_dim,
        head_hidden_dim=model_args.head_hidden_dim,
        queue_size=model_args.queue_size,
        contrastive_temperature=model_args.contrastive_temperature,
        momentum=model_args.momentum,
        key_bn_splits=model_args.key_bn_splits,
        image_mean=data.mean,
        image_std=data.std,
    )
    recipe = run_recipe(data, training_args.seed, [config])  # run_info.json's; a resume must match it
    run.check_recipe([config], recipe, training_args)
    if run.finished:  # its results, now that it is found of the same recipe
        return run.results
    model = MocoForPretraining(config)
    train_dataset = build_script_dataset(data, training_args, config, num_views=2)
    # --data_device cuda: the workers pass JPEG bytes, decoded and augmented on the GPU by the trainer
    device_transform, data_collator = build_device_input(data, config, training_args, num_views=2)
    logger.info(
        f"MoCo-v2 {config.architecture}, lr {training_args.learning_rate:.4g}, dataset {type(train_dataset).__name__}"
    )

    trainer = MocoTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=data_collator,
        knn_monitor=build_knn_monitor(data_args, config.image_mean, config.image_std, data.image_size),
        device_transform=device_transform,
    )
    metrics = train_and_save(trainer, run.checkpoint, run_info={"method": "moco_v2", **recipe})
    return metrics


def cli(argv: list[str] | None = None) -> None:
    """The command line (``seed-hf``, ``python -m``, ``examples/run_moco.py``): a refusal prints its message
    alone and exits with status 1."""
    from seed_hf.cli.script import run_script

    run_script(lambda: main(argv), cleanup=shutdown_distributed)


if __name__ == "__main__":
    cli()

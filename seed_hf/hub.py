"""Export distilled students as timm-format Hub repos and publish them.

The folder (``config.json`` + ``model.safetensors`` + ``README.md``) loads without seed_hf and
without ``trust_remote_code`` through ``transformers`` (as ``timm_wrapper``: ``AutoModel``,
``AutoImageProcessor``, ``pipeline("image-feature-extraction")``) and through
``timm.create_model("hf-hub:org/name" or "local-dir:path", pretrained=True)``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from .modeling_seed import SeedForDistillation

__all__ = ["export_student", "render_model_card", "upload_plan", "push_student_to_hub", "EXPORT_FILES"]

logger = logging.getLogger(__name__)

EXPORT_FILES = ("README.md", "config.json", "model.safetensors")
TEMPLATE = Path(__file__).with_name("templates") / "student_card.md"


def _load_student(model_or_dir: SeedForDistillation | str | os.PathLike) -> SeedForDistillation:
    if isinstance(model_or_dir, SeedForDistillation):
        return model_or_dir
    path = Path(model_or_dir)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is not a SeedForDistillation folder or checkpoint (no config.json)."
        )
    return SeedForDistillation.from_pretrained(path)


def export_student(
    model_or_dir: SeedForDistillation | str | os.PathLike,
    out_dir: str | os.PathLike,
    eval_results: str | os.PathLike | list[dict] | None = None,
    training_summary: dict[str, Any] | None = None,
    repo_id: str | None = None,
    crop_pct: float = 1.0,
    interpolation: str = "bicubic",
) -> Path:
    """Writes the student backbone as a timm-format folder with a model card.

    Args:
        model_or_dir: a trained [`SeedForDistillation`] or a folder/checkpoint holding one.
        out_dir: destination folder (created; existing export files are overwritten).
        eval_results: evaluation JSON path (or its parsed list) from ``run_eval.py``; only its
            numbers go into the card's model-index.
        training_summary: recipe facts for the card (epochs, batch size, dataset, steps).
        repo_id: Hub id used in the card's usage snippets.
        crop_pct / interpolation: preprocessing recorded in ``pretrained_cfg``.

    Returns:
        The output folder.
    """
    from timm.models import save_for_hf

    model = _load_student(model_or_dir)
    config = model.config
    backbone = model.student.eval()
    in_chans, mean, std = config.in_chans, list(config.image_mean), list(config.image_std)
    if in_chans == 1:
        # every loader (pipeline, AutoImageProcessor, timm transforms) feeds RGB: export a 3-channel
        # model whose first conv averages the channels; on gray images (R=G=B) it equals the student
        backbone, in_chans, mean, std = _grayscale_to_rgb(backbone, config), 3, mean * 3, std * 3
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = config.image_size
    data_config = {
        "input_size": (in_chans, size, size),
        "mean": tuple(mean),
        "std": tuple(std),
        "crop_pct": crop_pct,
        "interpolation": interpolation,
        "crop_mode": "center",
    }
    pretrained_cfg = {"tag": "seed", "num_classes": 0, "license": "apache-2.0", **data_config}
    save_for_hf(
        backbone,
        str(out),
        model_config={"pretrained_cfg": pretrained_cfg},
        model_args={"in_chans": in_chans, **config.student_model_args},
        safe_serialization=True,
        data_config=data_config,
    )
    _fix_config_for_transformers(out / "config.json", pretrained_cfg)
    results = _read_results(eval_results)
    card = render_model_card(config, results, training_summary or {}, repo_id or f"your-org/{out.name}")
    card.save(out / "README.md")
    return out


def _grayscale_to_rgb(backbone: torch.nn.Module, config) -> torch.nn.Module:
    """Copy of a 1-channel timm backbone taking 3 channels: first-conv weight repeated / 3."""
    from .backbones import create_backbone

    rgb = create_backbone(config.student_architecture, 3, config.student_model_args)
    first_conv = backbone.pretrained_cfg.get("first_conv")
    state = dict(backbone.state_dict())
    key = f"{first_conv}.weight"
    if key not in state or state[key].shape[1] != 1:
        raise ValueError(f"Cannot find the 1-channel first conv ({key!r}) of {config.student_architecture}.")
    state[key] = state[key].repeat(1, 3, 1, 1) / 3
    rgb.load_state_dict(state)
    return rgb.eval()


def _fix_config_for_transformers(config_path: Path, pretrained_cfg: dict[str, Any]) -> None:
    """transformers' TimmWrapperModel passes num_classes itself: a second one in model_args fails with
    "multiple values for keyword argument 'num_classes'". Also pin the preprocessing explicitly."""
    cfg = json.loads(config_path.read_text())
    cfg.get("model_args", {}).pop("num_classes", None)
    cfg["num_classes"] = 0
    for inherited in ("origin_url", "paper_ids", "paper_name", "hf_hub_id", "url", "classifier"):
        cfg.get("pretrained_cfg", {}).pop(inherited, None)  # the architecture default's, not ours
    cfg.setdefault("pretrained_cfg", {}).update(
        {k: list(v) if isinstance(v, tuple) else v for k, v in pretrained_cfg.items()}
    )
    config_path.write_text(json.dumps(cfg, indent=2) + "\n")


def _read_results(eval_results) -> list[dict]:
    if eval_results is None:
        return []
    if isinstance(eval_results, (str, os.PathLike)):
        eval_results = json.loads(Path(eval_results).read_text())
    return list(eval_results if isinstance(eval_results, list) else [eval_results])


def render_model_card(config, results: list[dict], training: dict[str, Any], repo_id: str):
    """``huggingface_hub.ModelCard`` from ``model_cards/``-style template: metadata, measured
    results (absent ones are left out), teacher, recipe, usage and citation."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    # the training set is only named when known: never assume one (results name their own)
    dataset = training.get("dataset")
    # kNN and linear probe get distinct metric names/configs so the Hub groups them apart
    metric_specs = (
        (
            "knn_top1",
            "knn",
            lambda r: f"kNN top-1 (k={r.get('knn_k', 200)}, τ={r.get('knn_temperature', 0.07)})",
        ),
        ("linear_top1", "linear_probe", lambda r: "linear probe top-1"),
    )
    eval_results = [
        EvalResult(
            task_type="image-classification",
            dataset_type=r.get("dataset") or dataset or "unknown",
            dataset_name=r.get("dataset") or dataset or "unknown",
            metric_type="accuracy",
            metric_value=round(float(r[key]), 2),
            metric_name=name(r),
            metric_config=config_name,
        )
        for r in results
        for key, config_name, name in metric_specs
        if key in r
    ]
    card_data = ModelCardData(
        library_name="timm",
        pipeline_tag="image-feature-extraction",
        license="apache-2.0",
        tags=["timm", "transformers", "image-feature-extraction", "self-supervised", "distillation", "seed"],
        datasets=[dataset] if dataset else None,
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results or None,
    )
    results_table = "\n".join(
        f"| {r.get('dataset') or dataset or 'unknown'} | {r['knn_top1']:.2f} | "
        + (f"{r['linear_top1']:.2f}" if "linear_top1" in r else "—")
        + " |"
        for r in results
        if "knn_top1" in r
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        repo_id=repo_id,
        architecture=config.student_architecture,
        in_chans=config.in_chans,
        image_size=config.image_size,
        teacher=config.teacher_name_or_path or "unknown",
        teacher_ssl_method=config.teacher_ssl_method or "unknown",
        queue_size=config.queue_size,
        student_temperature=config.student_temperature,
        teacher_temperature=config.teacher_temperature,
        loss_variant=config.loss_variant,
        projection_dim=config.projection_dim,
        epochs=training.get("epochs", "—"),
        steps=training.get("steps", "—"),
        batch_size=training.get("batch_size", "—"),
        results_table=results_table or "| — | not evaluated | — |",
        mean=config.image_mean,
        std=config.image_std,
    )


def upload_plan(folder: str | os.PathLike) -> list[str]:
    """The exact files ``push_student_to_hub`` uploads (the export files present in ``folder``)."""
    folder = Path(folder)
    missing = [name for name in ("config.json", "model.safetensors") if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} is not an exported student: missing {missing}. Run export_student first."
        )
    return [name for name in EXPORT_FILES if (folder / name).is_file()]


def push_student_to_hub(
    folder: str | os.PathLike, repo_id: str, token: str | None = None, private: bool = False
) -> str:
    """Uploads exactly :func:`upload_plan` of ``folder`` with ``HfApi().upload_folder``.

    (timm's own push helper rewrites config.json in a form transformers cannot load.) The token
    is never logged. Returns the commit URL.
    """
    from huggingface_hub import HfApi

    files = upload_plan(folder)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            allow_patterns=files,
            commit_message="Upload SEED student",
        )
    except Exception as error:  # network, auth: one clear message, token never included
        raise RuntimeError(
            f"Could not push {folder} to the Hub repo {repo_id!r}: {type(error).__name__}. Check the network and "
            "that you are logged in (`hf auth login` or HF_TOKEN); the folder is complete and can be uploaded later."
        ) from None
    logger.info(f"Pushed {files} to {repo_id}")
    return str(getattr(info, "commit_url", info))

"""Model cards of exported encoders.

A card says what the run and the evaluation recorded, bound to the weights it describes:
:func:`results_for` keeps only the evaluation rows measured on those weights, the teacher comes
from the typed record in the student's config, and facts that were not recorded are left out,
never guessed. The list of the models this repository ships, whose cards are re-rendered from it,
is the script layer's (:mod:`tools.manifest`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from seed_hf.models.backbones import pooled_width
from seed_hf.teachers.record import TeacherRecord, more_permissive
from seed_hf.training.run_folder import RUN_INFO_FILE, STUDENTS_DIR, TRAINER_STATE_NAME

__all__ = [
    "render_model_card",
    "describe_teacher",
    "teacher_facts",
    "moco_facts",
    "student_license",
    "results_for",
    "run_summary",
    "teacher_card_facts",
    "TEMPLATE",
    "METHODS",
]

logger = logging.getLogger(__name__)

TEMPLATE = Path(__file__).with_name("templates") / "model_card.md"
METHODS = {"seed": "SEED distillation", "moco_v2": "MoCo-v2"}


def run_summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    """What a seed_hf run recorded about itself, for cards: ``run_info.json`` (data, augmentation,
    resolution) and ``trainer_state.json`` (steps, epochs, batch size). A checkpoint folder reads
    the run's ``run_info.json`` one level up. Missing files give missing keys, never guesses."""
    run_dir = Path(run_dir)
    # students/<name> of a multi-student run: the run's files are two levels up
    root = run_dir.parent.parent if run_dir.parent.name == STUDENTS_DIR else run_dir
    summary: dict[str, Any] = {}
    for folder in dict.fromkeys((root.parent, root, run_dir)):
        info = folder / RUN_INFO_FILE
        if info.is_file():
            summary.update(json.loads(info.read_text()))
    state_file = next(
        (f for f in (run_dir / TRAINER_STATE_NAME, root / TRAINER_STATE_NAME) if f.is_file()), None
    )
    if state_file is not None:
        state = json.loads(state_file.read_text())
        summary.update(
            steps=state.get("global_step"),
            epochs=round(state["epoch"], 2) if state.get("epoch") is not None else None,
            batch_size=state.get("train_batch_size"),
        )
    summary.pop("teacher", None)  # the student's config records the teacher it really used
    summary.pop("teacher_checkpoint", None)
    summary.pop("teacher_sha256", None)
    summary.pop("source_id", None)  # what a resume compares, not a fact for readers
    summary.pop("student_configs", None)
    return {k: v for k, v in summary.items() if v is not None}


def describe_teacher(name_or_path: str | None, ssl_method: str | None = None) -> dict[str, str | None]:
    """What a card may say about a teacher spec (``FrozenTeacher.description`` or a user spec):
    ``{"name", "method", "base_model"}``. Local paths are reduced to their folder name (a card
    never carries a file system path); ``base_model`` is set only for Hub ids."""
    if not name_or_path:
        return {"name": None, "method": ssl_method, "base_model": None}
    spec, method, base_model = str(name_or_path), ssl_method, None
    prefix, _, rest = spec.partition(":")
    if prefix in ("moco_v2", "seed") and rest:
        spec, method = rest, method or prefix
    elif prefix == "transformers" and rest:
        spec, method = rest, method or "transformers"
    checkpoint = None
    if "@" in spec:
        spec, checkpoint = spec.split("@", 1)
    if spec.startswith(("hf-hub:", "hf_hub:", "hf:")):
        base_model = spec.split(":", 1)[1]
    elif spec.startswith("local-dir:") or os.sep in spec or Path(spec).exists():
        spec = Path(spec.removeprefix("local-dir:")).name + " (local folder)"
    elif method == "transformers" and "/" in spec:
        base_model = spec
    name = spec + (f" with weights {Path(checkpoint).name}" if checkpoint else "")
    return {"name": name, "method": method, "base_model": base_model}


def teacher_facts(config) -> dict[str, Any]:
    """What a student's card says about its teacher (``name``, ``method``, ``base_model``,
    ``license``, ``license_source``, ``image_size``): from the typed record the trainer wrote
    (``config.teacher``), or, for students trained before it existed, from the spec string."""
    if getattr(config, "teacher", None):
        record = TeacherRecord.from_dict(config.teacher)
        return {
            "name": record.name,
            "method": config.teacher_ssl_method or record.ssl_method or record.kind,
            "base_model": record.hub_id,
            "license": record.license,
            "license_source": record.license_source,
            "image_size": record.image_size,
        }
    return {**describe_teacher(config.teacher_name_or_path, config.teacher_ssl_method), "license": None}


def student_license(declared: str | None, teacher_license: str | None) -> str:
    """The license an export declares: ``declared``, else the teacher's, else ``"other"``; warns
    when ``declared`` grants more than the teacher's license allows (or the teacher's is unknown)."""
    if declared is None:
        return teacher_license or "other"
    if more_permissive(declared, teacher_license):
        logger.warning(
            f"The export declares license {declared!r}, but its teacher's license is "
            f"{repr(teacher_license) if teacher_license else 'not recorded'}: a student distilled from a teacher "
            "inherits the terms of the teacher's weights. Check them before you publish (e.g. MoCo-v2 and SwAV "
            "checkpoints are CC-BY-NC 4.0)."
        )
    return declared


def results_for(
    eval_results, *models: str | os.PathLike | None, fingerprints: Collection[str | None] | None = None
) -> list[dict]:
    """The rows of an evaluation JSON (path or parsed list) whose ``model`` is one of ``models``
    (same resolved path or same folder name) and, when ``fingerprints`` is given, whose
    ``weights_sha256`` is one of them: a row measured on other weights at the same path (an
    earlier step of the run, an older export) is dropped with a warning that says why, so that a
    card never shows the results of other weights. Warns when no row is left."""
    if eval_results is None:
        return []
    rows = (
        json.loads(Path(eval_results).read_text())
        if isinstance(eval_results, (str, os.PathLike))
        else eval_results
    )
    rows = list(rows if isinstance(rows, list) else [rows])
    targets = {str(m) for m in models if m is not None}
    resolved = {str(Path(t).resolve()) for t in targets}

    def matches(row: dict) -> bool:
        model = str(row.get("model", ""))
        return model in targets or str(Path(model).resolve()) in resolved

    matched = [r for r in rows if matches(r)]
    if fingerprints is not None:
        accepted = {f for f in fingerprints if f}
        kept = [r for r in matched if r.get("weights_sha256") in accepted]
        for r in matched:
            if r not in kept:
                why = (
                    "it records no weights_sha256"
                    if not r.get("weights_sha256")
                    else f"it measured weights {r['weights_sha256']}, these are {sorted(accepted) or 'unhashed'}"
                )
                logger.warning(
                    f"Dropped the result row of {r.get('model')} (label fraction {r.get('label_fraction', 1.0):g}): "
                    f"{why}. Re-evaluate these weights with `seed-hf eval` (run_eval.py)."
                )
        matched = kept
    if rows and not matched:
        logger.warning(
            f"No row of the evaluation results matches {sorted(targets)}"
            + (" and these weights" if fingerprints is not None else "")
            + f" (rows: {[r.get('model') for r in rows]}); the card gets no results. Evaluate this model with `seed-hf eval` (run_eval.py)."
        )
    return matched


def moco_facts(config) -> dict[str, Any]:
    """Card facts every MoCo-v2 model has (exported encoder or seed_hf teacher folder)."""
    return {
        "method": "moco_v2",
        "queue_size": config.queue_size,
        "contrastive_temperature": config.contrastive_temperature,
        "moco_momentum": config.momentum,
        "projection_dim": config.projection_dim,
        "train_in_chans": config.in_chans,
    }


def _article(word: str) -> str:
    return "an" if str(word)[:1].lower() in "aeiou" else "a"


def render_model_card(facts: dict[str, Any], results: list[dict], repo_id: str, license: str = "apache-2.0"):
    """``huggingface_hub.ModelCard`` of an exported encoder from what the run and the evaluation
    recorded (``facts``: method, architecture, training data and recipe, teacher; ``results``:
    rows of ``run_eval.py``). Facts that were not recorded are left out, never guessed."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    method = facts.get("method", "seed")
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}.")
    dataset = facts.get("dataset")
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
            dataset_split=r.get("eval_split"),
            metric_type="accuracy",
            metric_value=round(float(r[key]), 2),
            metric_name=name(r),
            metric_config=config_name
            + (f"_{r['label_fraction']:g}_labels" if r.get("label_fraction", 1.0) < 1 else ""),
        )
        for r in results
        for key, config_name, name in metric_specs
        if key in r
    ]
    teacher = facts.get("teacher") or {}
    tags = ["timm", "transformers", "image-feature-extraction", "self-supervised"]
    tags += ["distillation", "seed"] if method == "seed" else ["moco", "contrastive-learning"]
    card_data = ModelCardData(
        library_name="timm",
        pipeline_tag="image-feature-extraction",
        license=license,
        tags=tags,
        datasets=[dataset] if dataset and "/" in dataset else None,
        base_model=teacher.get("base_model") if method == "seed" else None,
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        repo_id=repo_id,
        method=method,
        method_name=METHODS[method],
        article=_article(facts.get("architecture", "")),
        facts=facts,
        teacher=teacher,
        results=results,
        license=license,
    )


def teacher_card_facts(folder: str | os.PathLike, training: dict[str, Any] | None = None) -> dict[str, Any]:
    """Card facts of a seed_hf MoCo-v2 teacher folder (query encoder + head, ``load_teacher``
    format) from its config and what its training recorded (``training``: steps, batch size,
    epochs, dataset, device)."""
    from seed_hf.evaluation.features import EVAL_INTERPOLATION
    from seed_hf.models.modeling_moco import load_query_encoder

    encoder, _, config = load_query_encoder(folder)
    training = dict(training or {})
    return {
        **moco_facts(config),
        "format": "seed_hf_teacher",
        "architecture": config.architecture,
        "feature_dim": pooled_width(encoder),
        "export_in_chans": config.in_chans,
        "image_size": config.image_size,
        "mean": [round(m, 4) for m in config.image_mean],
        "std": [round(v, 4) for v in config.image_std],
        "interpolation": EVAL_INTERPOLATION,
        **{
            k: v
            for k, v in training.items()
            if k in ("dataset", "dataset_split", "steps", "batch_size", "epochs", "augmentation", "compute")
        },
    }

"""Export distilled students as timm-format Hub repos and publish them (their cards:
:mod:`seed_hf.export.cards`).

The folder (``config.json`` + ``model.safetensors`` + ``README.md``) loads without seed_hf and
without ``trust_remote_code`` through ``transformers`` (as ``timm_wrapper``: ``AutoModel``,
``AutoImageProcessor``, ``pipeline("image-feature-extraction")``) and through
``timm.create_model("hf-hub:org/name" or "local-dir:path", pretrained=True)``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seed_hf.export.atomic import atomic_folder
from seed_hf.export.cards import (
    moco_facts,
    render_model_card,
    results_for,
    student_license,
    teacher_facts,
)
from seed_hf.export.hub_weights import (
    export_copy,
    fix_config_for_transformers,
    grayscale_to_rgb,
    reparameterized_form,
)
from seed_hf.export.onnx_export import export_onnx
from seed_hf.export.onnx_graph import ONNX_FILES
from seed_hf.models.backbones import pooled_width
from seed_hf.models.modeling_seed import SeedForDistillation
from seed_hf.teachers.fingerprint import weights_fingerprint

__all__ = [
    "export_student",
    "export_encoder",
    "export_moco_encoder",
    "ExportRecord",
    "upload_plan",
    "push_student_to_hub",
    "EXPORT_FILES",
]

logger = logging.getLogger(__name__)

EXPORT_FILES = ("README.md", "config.json", "model.safetensors", *ONNX_FILES)  # onnx/: when exported


@dataclass(frozen=True)
class ExportRecord:
    """What an export wrote, handed to its ``on_exported`` hook once the folder is in place.

    Attributes:
        folder: the exported folder.
        facts: the facts its card was rendered from (method, teacher, training, input format, onnx).
        license: the license of the weights (card metadata and ``pretrained_cfg``).
        repo_id: the Hub id in the card's usage snippets, when one was given.
    """

    folder: Path
    facts: dict[str, Any]
    license: str
    repo_id: str | None


def _load_student(model_or_dir: SeedForDistillation | str | os.PathLike) -> SeedForDistillation:
    if isinstance(model_or_dir, SeedForDistillation):
        return model_or_dir
    path = Path(model_or_dir)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is not a SeedForDistillation folder or checkpoint (no config.json)."
        )
    return SeedForDistillation.from_pretrained(path)


def export_encoder(
    backbone: torch.nn.Module,
    out_dir: str | os.PathLike,
    architecture: str,
    model_args: dict[str, Any],
    in_chans: int,
    image_size: int,
    mean: list[float],
    std: list[float],
    card_facts: dict[str, Any],
    results: list[dict] | None = None,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    on_exported: Callable[[ExportRecord], None] | None = None,
    results_source: tuple[Any, tuple, Collection[str | None]] | None = None,
    onnx: dict[str, Any] | None = None,
) -> Path:
    """Writes a timm backbone as a timm-format folder (``config.json`` + ``model.safetensors``)
    with a model card. Its ``pretrained_cfg`` is :func:`~seed_hf.evaluation.features.eval_data_config`:
    the exact preprocessing of seed_hf's evaluation, which timm, ``AutoImageProcessor`` and the
    pipeline rebuild. A 1-channel backbone is exported as a 3-channel one whose first conv
    averages the channels (every Hub loader feeds RGB; on gray images it gives the same features).
    ``on_exported`` is called with the :class:`ExportRecord` once the folder is in place (a
    repository that ships several models records them there). ``results_source=(eval_results, models, fingerprints)``
    selects the card's rows with :func:`~seed_hf.export.cards.results_for` from the rows of ``models`` measured on the
    ``fingerprints`` or on the exported folder's own weights (instead of passing ``results``).
    ``onnx`` (keyword arguments of :func:`~seed_hf.export.onnx_export.export_onnx`, ``{}`` for its
    defaults) adds the verified ``onnx/`` graphs, and what the export measured goes into the card.

    What is written is a copy: the live ``backbone`` keeps its mode, device and memory format (a
    channels_last model's 3-channel weights are not contiguous, which safetensors refuses; the copy
    is contiguous). A reparameterizable architecture (RepVGG, MobileOne, FastViT, ...) is written in
    its fused inference form when timm rebuilds that form from ``config.json``
    (``model_args["inference_mode"] = True``, e.g. FastViT); otherwise in its training form, and the
    card says that ``timm.utils.reparameterize_model`` fuses it (the ONNX graph is fused either way).

    The folder is written next to ``out_dir`` and renamed into place when complete: an existing
    ``out_dir`` is replaced as a whole, and an interrupted export leaves it as it was."""
    from timm.models import save_for_hf

    from seed_hf.evaluation.features import eval_data_config

    backbone = export_copy(backbone)
    if in_chans == 1:
        backbone, in_chans, mean, std = (
            grayscale_to_rgb(backbone, architecture, model_args),
            3,
            mean * 3,
            std * 3,
        )
    backbone, model_args, reparameterized = reparameterized_form(backbone, architecture, model_args, in_chans)
    out = Path(out_dir)
    # written beside out_dir and renamed into place: a killed export leaves the previous folder (or
    # none), never one that looks complete and is not
    with atomic_folder(out) as tmp:
        data_config = eval_data_config(in_chans, image_size, mean, std)
        pretrained_cfg = {
            "tag": card_facts.get("method", "seed"),
            "num_classes": 0,
            "license": license,
            **data_config,
        }
        save_for_hf(
            backbone,
            str(tmp),
            model_config={"pretrained_cfg": pretrained_cfg},
            model_args={"in_chans": in_chans, **model_args},
            safe_serialization=True,
            data_config=data_config,
        )
        fix_config_for_transformers(tmp / "config.json", pretrained_cfg)
        sha256 = weights_fingerprint(tmp)  # config and weights are final: hashed once
        facts = {
            **card_facts,
            "architecture": architecture,
            "feature_dim": pooled_width(backbone),
            "export_in_chans": in_chans,
            "image_size": image_size,
            "mean": [round(m, 4) for m in mean],
            "std": [round(v, 4) for v in std],
            "interpolation": data_config["interpolation"],
            "format": "timm",
            **({"reparameterized": reparameterized} if reparameterized else {}),
        }
        if results_source is not None:  # only rows measured on exactly these weights (or the run's)
            eval_results, models, fingerprints = results_source
            results = results_for(eval_results, *models, out, fingerprints={*fingerprints, sha256})
        if onnx is not None:  # verified against these very weights, before the card is written
            facts["onnx"] = export_onnx(tmp, **onnx)
        card = render_model_card(facts, results or [], repo_id or f"your-org/{out.name}", license)
        card.save(tmp / "README.md")
        if (out / "model.safetensors").is_file() and (previous := weights_fingerprint(out)) != sha256:
            logger.warning(
                f"{out} held the export of other weights or config (sha256 {previous}): replaced by this one "
                f"({sha256})."
            )
    if on_exported is not None:
        on_exported(ExportRecord(out, facts, license, repo_id))
    return out


def export_student(
    model_or_dir: SeedForDistillation | str | os.PathLike,
    out_dir: str | os.PathLike,
    eval_results: str | os.PathLike | list[dict] | None = None,
    training_summary: dict[str, Any] | None = None,
    repo_id: str | None = None,
    license: str | None = None,
    on_exported: Callable[[ExportRecord], None] | None = None,
    onnx: dict[str, Any] | None = None,
) -> Path:
    """Exports a SEED student backbone (see :func:`export_encoder`) with its card.

    Args:
        model_or_dir: a trained [`SeedForDistillation`] or a folder/checkpoint holding one.
        out_dir: destination folder (created; existing export files are overwritten).
        eval_results: evaluation JSON (path or parsed list) of ``run_eval.py``: only the rows of
            this student (matched by ``model``: the run folder or the export folder) go into the card.
        training_summary: what the run recorded (``dataset``, ``steps``, ``epochs``, ``batch_size``).
        repo_id: Hub id used in the card's usage snippets.
        license: license of the weights (card metadata and ``pretrained_cfg``). Default: the
            teacher's, when its record states one, else ``"other"`` with a note in the card. A license
            more permissive than the teacher's (or over a teacher of unknown license) is warned about.
        on_exported: called with the :class:`ExportRecord` once the folder is in place.
        onnx: keyword arguments of :func:`~seed_hf.export.onnx_export.export_onnx` (``{}``: its defaults)
            to add the verified ``onnx/`` graphs; None: no ONNX export.
    """
    model = _load_student(model_or_dir)
    config = model.config
    teacher = teacher_facts(config)
    license = student_license(license, teacher.get("license"))
    facts = {
        "method": "seed",
        **(training_summary or {}),
        "teacher": teacher,
        "queue_size": config.queue_size,
        "student_temperature": config.student_temperature,
        "teacher_temperature": config.teacher_temperature,
        "loss_variant": config.loss_variant,
        # the local term, when the student was trained with it (off: the card names the SEED loss alone)
        **(
            {
                "local_loss_weight": config.local_loss_weight,
                "local_student_temperature": config.local_student_temperature,
                "local_teacher_temperature": config.local_teacher_temperature,
            }
            if config.local_loss_weight
            else {}
        ),
        "projection_dim": config.projection_dim,
        "train_in_chans": config.in_chans,
    }
    source = None if isinstance(model_or_dir, SeedForDistillation) else model_or_dir
    return _export_with_config(
        model.student,
        config,
        facts,
        source,
        out_dir,
        eval_results,
        repo_id,
        license,
        on_exported,
        onnx=onnx,
    )


def export_moco_encoder(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    eval_results: str | os.PathLike | list[dict] | None = None,
    training_summary: dict[str, Any] | None = None,
    repo_id: str | None = None,
    license: str | None = None,
    on_exported: Callable[[ExportRecord], None] | None = None,
    onnx: dict[str, Any] | None = None,
) -> Path:
    """Exports the query encoder of a MoCo-v2 run (the paper's "student trained by SSL alone"
    baseline, or a teacher) as a timm-format folder with a MoCo-v2 card."""
    from seed_hf.models.modeling_moco import load_query_encoder

    encoder, _, config = load_query_encoder(run_dir)
    license = license or "apache-2.0"  # trained without a teacher: the user's own weights
    facts = {**(training_summary or {}), **moco_facts(config)}
    return _export_with_config(
        encoder,
        config,
        facts,
        run_dir,
        out_dir,
        eval_results,
        repo_id,
        license,
        on_exported,
        onnx=onnx,
    )


def _export_with_config(
    backbone, config, facts, source, out_dir, eval_results, repo_id, license, on_exported, onnx=None
) -> Path:
    """:func:`export_encoder` with the input format of a SEED or MoCo config; card rows are the
    evaluation rows of ``source`` (the run folder, with its weights as they are now) or of the
    export folder (with the exported weights)."""
    return export_encoder(
        backbone,
        out_dir,
        config.architecture,
        dict(config.model_args),
        config.in_chans,
        config.image_size,
        list(config.image_mean),
        list(config.image_std),
        facts,
        None,
        repo_id,
        license,
        on_exported,
        results_source=(
            eval_results,
            (source, out_dir),
            {weights_fingerprint(str(source)) if source else None},
        )
        if eval_results is not None
        else None,
        onnx=onnx,
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

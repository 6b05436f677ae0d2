"""Loading a teacher from its spec: :func:`load_teacher` reads what ``name_or_path`` names, loads it
with the loader of its kind and returns a :class:`~seed_hf.teachers.frozen.FrozenTeacher` with its
provenance (:class:`~seed_hf.teachers.record.TeacherRecord`).

Supported specs (``load_teacher(name_or_path, checkpoint=...)``):

* a folder written by seed_hf (``MocoForPretraining`` run or Trainer checkpoint → query
  encoder + MLP head; ``SeedForDistillation`` → student + head);
* a timm architecture name with local weights in ``checkpoint``: a timm/safetensors state
  dict, or a MoCo v1/v2 checkpoint (``module.encoder_q.*`` keys, MLP head kept);
* a timm architecture name with a SimCLR, SwAV (``prototypes`` dropped) or official SEED
  checkpoint: keys are converted to timm names, the projection head is rebuilt
  (:mod:`seed_hf.teachers.checkpoint_layouts`);
* a transformers vision model (``hf:facebook/dinov2-base`` or a local folder), loaded as the class
  its config names: ViT / DINOv2 / DINOv3 (CLS or pooled), ConvNeXt / ResNet / DINOv3-ConvNeXt
  (pooled), CLIP / SigLIP (image embeds, else pooled), any feature map (average-pooled);
  re-normalised to the statistics of its ``preprocessor_config.json`` (or ``teacher_image_mean``
  / ``teacher_image_std``; without either it is refused) (:mod:`seed_hf.teachers.transformers_backbone`);
* ``hf-hub:org/name`` or a bare timm name with ``pretrained=True`` (needs network).

Only safetensors or ``torch.load(weights_only=True)`` are used: no pickle execution.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from seed_hf.models.backbones import create_backbone
from seed_hf.teachers.checkpoint_layouts import (
    LAYOUT_METHODS,
    checkpoint_license,
    head_from_state,
    load_state_dict_file,
    load_strict,
    split_checkpoint,
)
from seed_hf.teachers.fingerprint import folder_model_type, weights_fingerprint
from seed_hf.teachers.frozen import FrozenTeacher
from seed_hf.teachers.record import TeacherRecord, card_license, local_name
from seed_hf.teachers.transformers_backbone import (
    TransformersVisionBackbone,
    processor_normalization,
    vision_model_class,
)
from seed_hf.training.progress import quiet_loading

__all__ = ["load_teacher"]

logger = logging.getLogger(__name__)


def load_teacher(
    name_or_path: str,
    checkpoint: str | os.PathLike | None = None,
    in_chans: int | None = None,
    model_args: dict[str, Any] | None = None,
    pretrained: bool | None = None,
    use_head: bool = True,
    embedding: str = "auto",
    allow_random: bool = False,
    teacher_image_mean: list[float] | None = None,
    teacher_image_std: list[float] | None = None,
    teacher_image_size: int | None = None,
    sha256: str | None = None,
) -> FrozenTeacher:
    """Builds a [`FrozenTeacher`] from a spec (see the module docstring), with its provenance in
    ``teacher.record`` (:class:`~seed_hf.teachers.record.TeacherRecord`).

    Args:
        name_or_path: a seed_hf folder, a timm name, or ``hf-hub:org/name``.
        checkpoint: weights for a timm name (safetensors, timm state dict or MoCo checkpoint); refused
            for a seed_hf or transformers folder, which loads its own weights.
        in_chans: input channels of a timm teacher (default 3).
        model_args: extra ``timm.create_model`` arguments of a timm teacher; refused for others.
        pretrained: download timm's weights (default: only when no ``checkpoint`` is given and
            the spec is ``hf-hub:``).
        use_head: keep the checkpoint's (or seed_hf folder's) projection head (SEED distils after it:
            128-d for MoCo-v2 and SwAV); False distils the pooled backbone features.
        embedding: for transformers models (refused for others): ``"auto"`` (CLIP: image embeds;
            others: pooler output), ``"cls"`` (CLS token after the final norm), ``"mean"`` (mean patch
            token), ``"pooler"``.
        allow_random: accept a timm architecture without weights (no ``checkpoint``, not
            ``pretrained``): a randomly initialised teacher, for tests and smoke runs only.
        teacher_image_mean, teacher_image_std: the normalisation the teacher was trained with
            (one value or one per channel); inputs are re-normalised to it. Default: a transformers
            teacher's image processor (required then), the data's for other teachers.
        teacher_image_size: resize the teacher's inputs to this resolution (e.g. the one it was
            trained at, ``teacher.record.image_size``) when the student trains at another; default:
            the teacher sees the student's views as they are.
        sha256: the weights' fingerprint when the caller has just computed it
            (`weights_fingerprint(name_or_path, checkpoint)`, e.g. to refuse a run folder of
            another teacher before loading): recorded as is instead of reading the weights twice.

    Raises:
        FileNotFoundError: ``checkpoint`` or the folder (or its config.json) is missing, or a
            transformers teacher has no preprocessor_config.json and no ``teacher_image_mean``.
        ValueError: unknown architecture, keys that do not match it, a pickled model as
            ``checkpoint``, a timm architecture without weights (unless ``allow_random``), or an
            argument the teacher's kind cannot honour (named by its flag, e.g. ``--teacher_checkpoint``
            for a seed_hf folder).
    """
    if (teacher_image_mean is None) != (teacher_image_std is None):
        raise ValueError(
            "Pass both teacher_image_mean and teacher_image_std (the teacher's normalisation), or neither; "
            f"got teacher_image_mean={teacher_image_mean}, teacher_image_std={teacher_image_std}."
        )
    with quiet_loading():  # no per-call "Loading weights" bars from transformers (seed_hf.training.progress)
        teacher = _load_teacher(
            name_or_path,
            checkpoint,
            in_chans,
            model_args,
            pretrained,
            use_head,
            embedding,
            allow_random,
            explicit_normalization=teacher_image_mean is not None,
        )
    if teacher_image_mean is not None:
        teacher.expected_mean, teacher.expected_std = _explicit_normalization(
            teacher_image_mean, teacher_image_std, teacher.in_chans
        )
    if teacher_image_size is not None:
        if not (isinstance(teacher_image_size, int) and teacher_image_size > 0):
            raise ValueError(f"teacher_image_size must be a positive integer, got {teacher_image_size!r}.")
        teacher.input_size = teacher_image_size
    record = teacher.record
    record.sha256 = sha256 if sha256 is not None else weights_fingerprint(str(name_or_path), checkpoint)
    record.embed_dim = teacher.embed_dim
    record.normalization = teacher.normalization
    record.resized_to = teacher.input_size
    return teacher


def _explicit_normalization(
    mean: list[float], std: list[float], in_chans: int
) -> tuple[list[float], list[float]]:
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    for name, values in (("teacher_image_mean", mean), ("teacher_image_std", std)):
        if len(values) not in (1, in_chans):
            raise ValueError(f"{name} needs 1 or {in_chans} values (the teacher's channels), got {values}.")
    if any(s <= 0 for s in std):
        raise ValueError(f"teacher_image_std must be > 0, got {std}.")
    return mean * (in_chans // len(mean)), std * (in_chans // len(std))


def _load_teacher(
    name_or_path: str,
    checkpoint: str | os.PathLike | None,
    in_chans: int | None,
    model_args: dict[str, Any] | None,
    pretrained: bool | None,
    use_head: bool,
    embedding: str,
    allow_random: bool,
    explicit_normalization: bool,
) -> FrozenTeacher:
    """The loader of the spec's kind: a seed_hf, timm-format or transformers folder, ``hf:`` (transformers
    on the Hub), else a timm architecture (a name or ``hf-hub:``)."""
    path = Path(name_or_path)
    model_type = folder_model_type(path) if path.is_dir() else None
    transformers_spec = None  # (the spec as given, what transformers loads)
    if model_type is not None:
        if model_type in ("seed_moco", "seed_distillation"):
            chans = json.loads((path / "config.json").read_text()).get("in_chans", 3)
            method = "MoCo" if model_type == "seed_moco" else "SEED"
            _refuse_ignored(
                str(path),
                f"a seed_hf {method} folder loads its own architecture and weights and distils its projection "
                "head (use_head=False: its pooled backbone features)",
                {
                    f"--teacher_checkpoint {str(checkpoint)!r}": checkpoint is not None,
                    f"--teacher_model_args {model_args}": bool(model_args),
                    f"--teacher_embedding {embedding}": embedding != "auto",
                    f"in_chans={in_chans} (it takes {chans})": in_chans not in (None, chans),
                    "pretrained=False": pretrained is False,
                },
            )
            return _load_seed_hf_folder(path, model_type, use_head)
        if model_type == "timm_wrapper":  # a timm-format folder, e.g. an exported student
            name_or_path = f"local-dir:{path}"
            pretrained = True
        else:  # a transformers vision model folder (ViT, DINOv2, CLIP, ...)
            transformers_spec = (str(path), str(path))
    elif path.is_dir() and not _is_timm_name(str(name_or_path)):
        raise FileNotFoundError(_folder_without_config(path))
    elif str(name_or_path).startswith("hf:"):  # a transformers model on the Hub: hf:facebook/dinov2-base
        transformers_spec = (str(name_or_path), str(name_or_path)[3:])
    elif os.sep in str(name_or_path) and not str(name_or_path).startswith(("hf-hub:", "hf_hub:")):
        raise FileNotFoundError(
            f"teacher_name_or_path {str(name_or_path)!r} is no folder (it does not exist). Pass a seed_hf "
            "run folder, a timm name (with teacher_checkpoint for local weights), hf-hub:org/name (timm) or "
            "hf:org/name (transformers)."
        )
    if transformers_spec is not None:
        shown, loaded = transformers_spec
        _refuse_ignored(
            shown,
            "a transformers model loads its own architecture and weights",
            {"--teacher_checkpoint": checkpoint is not None, "--teacher_model_args": bool(model_args)},
        )
        return _load_transformers_teacher(loaded, embedding, not explicit_normalization)
    timm_kind = (
        "a timm teacher distils its checkpoint's projection head or its pooled features (use_head=False)"
    )
    _refuse_ignored(str(name_or_path), timm_kind, {f"--teacher_embedding {embedding}": embedding != "auto"})
    return _load_timm_teacher(
        name_or_path, checkpoint, in_chans, model_args, pretrained, use_head, allow_random
    )


def _refuse_ignored(spec: str, kind: str, arguments: dict[str, bool]) -> None:
    """Refuses the first given argument (named as its flag) that a teacher of ``kind`` cannot honour:
    loading it anyway would silently distil another teacher than the one asked for."""
    for argument, given in arguments.items():
        if given:
            raise ValueError(f"{argument} cannot apply to teacher_name_or_path {spec!r}: {kind}. Drop it.")


def _load_timm_teacher(
    name_or_path: str,
    checkpoint: str | os.PathLike | None,
    in_chans: int | None,
    model_args: dict[str, Any] | None,
    pretrained: bool | None,
    use_head: bool,
    allow_random: bool,
) -> FrozenTeacher:
    """A timm architecture (a name, ``hf-hub:org/name`` or an exported ``local-dir:``) with timm's
    weights or a ``checkpoint`` in any layout of :mod:`seed_hf.teachers.checkpoint_layouts`."""
    is_hub = str(name_or_path).startswith(("hf-hub:", "hf_hub:", "local-dir:"))
    if pretrained is None:
        pretrained = checkpoint is None and is_hub
    backbone = create_backbone(
        str(name_or_path), in_chans or 3, model_args, "teacher_name_or_path", pretrained=pretrained
    )
    random_weights = checkpoint is None and not pretrained
    if random_weights and not allow_random:
        # after create_backbone, so that a misspelt name gets its close-name suggestions first
        raise ValueError(
            f"teacher_name_or_path={str(name_or_path)!r} is a timm architecture without weights: SEED would "
            "distil a randomly initialised teacher. Pass its weights with --teacher_checkpoint PATH (timm, "
            "MoCo, SimCLR, SwAV or SEED checkpoint), a timm Hub model as hf-hub:org/name (e.g. "
            "hf-hub:timm/resnet50.a1_in1k), a transformers model as hf:org/name, or a seed_hf run folder. "
            "--allow_random_teacher (allow_random=True) distils a random teacher on purpose (smoke tests)."
        )
    head, layout = None, None
    if checkpoint is not None:
        state = load_state_dict_file(checkpoint)
        layout, backbone_state, head_state = split_checkpoint(state)
        head = head_from_state(head_state if use_head else {})
        load_strict(
            backbone,
            backbone_state,
            f"--teacher_checkpoint {str(checkpoint)!r} ({layout} layout)",
            architecture=str(name_or_path),
        )
    description = f"{name_or_path}" + (f"@{checkpoint}" if checkpoint else "")
    spec = str(name_or_path)
    local = spec.startswith("local-dir:")
    hub_id = spec.split(":", 1)[1] if spec.startswith(("hf-hub:", "hf_hub:")) else None
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    # the pretrained_cfg describes the weights only when they are its own (Hub or exported folder)
    own_cfg = checkpoint is None and pretrained
    license, license_source = None, None
    if checkpoint is not None and (layout_license := checkpoint_license(layout)):
        license, license_source = layout_license, f"published {layout} checkpoints"
    elif own_cfg and cfg.get("license"):
        license, license_source = str(cfg["license"]).lower(), "pretrained_cfg"
    elif local and (card := card_license(spec.removeprefix("local-dir:"))):
        license, license_source = card, "model card"
    record = TeacherRecord(
        kind="timm",
        source=local_name(spec) if local else (hub_id or spec),
        hub_id=hub_id,
        checkpoint=Path(checkpoint).name if checkpoint else None,
        layout=layout,
        ssl_method=LAYOUT_METHODS.get(layout),
        embedding="head" if head is not None else "pooled",
        image_size=int(cfg["input_size"][-1]) if own_cfg and cfg.get("input_size") else None,
        license=license,
        license_source=license_source,
        random_weights=random_weights,
    )
    return FrozenTeacher(
        backbone, head, in_chans or 3, description + (" (random weights)" if random_weights else ""), record
    )


def _load_seed_hf_folder(path: Path, model_type: str, use_head: bool = True) -> FrozenTeacher:
    """The query encoder + head of a MoCo folder or the student + head of a SEED one; without the
    head (``use_head=False``) the teacher gives the backbone's pooled features, the head's input."""
    license = card_license(path)
    if model_type == "seed_moco":
        from seed_hf.models.modeling_moco import load_query_encoder

        encoder, head, config = load_query_encoder(path)
        method, backbone, in_chans = "moco_v2", encoder, config.in_chans
    else:
        from seed_hf.models.modeling_seed import SeedForDistillation

        seed = SeedForDistillation.from_pretrained(path)
        method, backbone, head, config, in_chans = (
            "seed",
            seed.student,
            seed.head,
            seed.config,
            seed.config.in_chans,
        )
        license = license or (seed.config.teacher or {}).get("license")  # a student inherits its teacher's
    head = head if use_head else None
    record = TeacherRecord(
        kind="seed_hf",
        source=local_name(path),
        ssl_method=method,
        embedding="head" if use_head else "pooled",
        image_size=config.image_size,
        license=license,
        license_source="model card" if license else None,
    )
    return FrozenTeacher(backbone, head, in_chans, f"{method}:{path}", record)


def _load_transformers_teacher(
    name_or_path: str, embedding: str, read_normalization: bool = True
) -> FrozenTeacher:
    model, loading = vision_model_class(name_or_path).from_pretrained(name_or_path, output_loading_info=True)
    # a classification checkpoint loaded as its base model has no trained pooler: never distil a random one
    untrained_pooler = any(key.split(".")[0] == "pooler" for key in loading.get("missing_keys", ()))
    backbone = TransformersVisionBackbone(model, embedding, use_pooler=not untrained_pooler)
    local = os.path.isdir(name_or_path)
    vision_config = getattr(model.config, "vision_config", None) or model.config
    size = getattr(vision_config, "image_size", None)
    license, license_source = (
        (card_license(name_or_path), "model card") if local else _hub_card_license(name_or_path)
    )
    record = TeacherRecord(
        kind="transformers",
        source=local_name(name_or_path) if local else name_or_path,
        hub_id=None if local else name_or_path,
        embedding=f"{type(model).__name__}: {embedding}",
        image_size=int(size[0] if isinstance(size, (list, tuple)) else size) if size else None,
        license=license,
        license_source=license_source if license else None,
    )
    teacher = FrozenTeacher(backbone, None, backbone.in_chans, f"transformers:{name_or_path}", record)
    if read_normalization:  # else load_teacher applies the statistics it was given
        teacher.expected_mean, teacher.expected_std = processor_normalization(name_or_path)
    return teacher


def _hub_card_license(repo_id: str) -> tuple[str | None, str | None]:
    """The license of a Hub repo's model card (needs the network, or the HF cache)."""
    try:
        from huggingface_hub import ModelCard

        value = ModelCard.load(repo_id).data.to_dict().get("license")
    except Exception as error:  # offline, no card: the license stays unknown (the card says so)
        logger.info(f"the license of {repo_id!r} could not be read from its model card: {error}")
        return None, None
    return (str(value).lower(), "Hub model card") if value else (None, None)


def _is_timm_name(name: str) -> bool:
    import timm

    return timm.is_model(name.split(".", 1)[0])


def _folder_without_config(path: Path) -> str:
    """Why a folder without config.json is no teacher, and what to pass instead."""
    message = (
        f"teacher_name_or_path {str(path)!r} is a folder without a config.json: not a seed_hf run, "
        "timm-format or transformers model folder."
    )
    checkpoints = sorted(
        (p for p in path.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    weights = sorted(
        p.name for p in path.iterdir() if p.suffix in (".safetensors", ".pth", ".pt", ".bin", ".tar")
    )
    if checkpoints:
        message += f" It holds Trainer checkpoints: pass the last one, {str(checkpoints[-1])!r}."
    elif weights:
        message += (
            f" For its weights ({weights[0]}) pass the timm architecture as teacher_name_or_path and "
            f"--teacher_checkpoint {str(path / weights[0])!r}."
        )
    return message

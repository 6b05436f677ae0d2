"""Published self-supervised checkpoints → timm backbone + projection head.

One table, :data:`CHECKPOINT_LAYOUTS`, describes each published layout (MoCo v1/v2, official
SEED, SwAV, SimCLR): the keys that identify it and how its keys map to timm names. Detection
(:func:`detect_checkpoint_layout`) and conversion (:func:`split_checkpoint`) both read it, as
timm's ``checkpoint_filter_fn``\\ s do for their architectures. Both see the keys without the
wrappers of the training code (DDP's ``module.``, ``torch.compile``'s ``_orig_mod.``), removed by
timm's ``clean_state_dict`` as timm's own checkpoint loading does. torchvision ResNet names equal
timm's, so the encoders need no renaming beyond their prefixes.

Files are read with ``timm.models.load_state_dict(weights_only=True)``: safetensors or torch
files, never pickled code.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.models import clean_state_dict, load_state_dict
from torch import nn

__all__ = [
    "CheckpointLayout",
    "CHECKPOINT_LAYOUTS",
    "LAYOUT_METHODS",
    "checkpoint_license",
    "load_state_dict_file",
    "detect_checkpoint_layout",
    "split_checkpoint",
    "head_from_state",
    "load_strict",
]

WRAPPER_PREFIXES = ("backbone.", "encoder.")
CLASSIFIER_PREFIXES = ("fc.", "head.fc.", "classifier.")
StateDict = dict[str, torch.Tensor]


def _is_mlp_head(head_state: StateDict) -> bool:
    """True for an ``nn.Sequential`` head with hidden layers (≥ 2 Linear weights), as SimCLR and
    MoCo-v2 projection heads have; a single Linear (an ImageNet ``fc``) is a classifier."""
    linears = [
        k
        for k, v in head_state.items()
        if k.split(".", 1)[0].isdigit() and k.endswith("weight") and v.ndim == 2
    ]
    return len(linears) >= 2


def _wrapped_head(state: StateDict, head_prefix: str) -> StateDict:
    """The ``fc.``/``head.`` keys under a ``backbone.``/``encoder.`` wrapper prefix."""
    out = {}
    for key, value in state.items():
        for wrapper in WRAPPER_PREFIXES:
            if key.startswith(wrapper + head_prefix):
                out[key[len(wrapper + head_prefix) :]] = value
    return out


def _wrapped_mlp_head(state: StateDict) -> bool:
    """SimCLR code that keeps its projection MLP as the encoder's ``fc``/``head``."""
    return any(k.startswith(WRAPPER_PREFIXES) for k in state) and any(
        _is_mlp_head(_wrapped_head(state, p)) for p in ("fc.", "head.")
    )


@dataclass(frozen=True)
class CheckpointLayout:
    """How one published layout stores its encoder and projection head.

    Attributes:
        name: moco, seed, swav or simclr.
        markers: key prefixes whose presence identifies the layout.
        encoder_prefixes: prefixes of the encoder's keys, removed (first match wins).
        head_prefixes: prefixes of the projection head inside the encoder's keys, by preference.
        dropped: encoder sub-modules that are not part of the embedding (SwAV's prototypes).
        also_matches: an extra test for layouts without a distinctive key.
        method: the self-supervised method of the checkpoints published in this layout.
        license: the license of the checkpoints published in this layout (their repositories':
            facebookresearch/moco and /swav CC-BY-NC 4.0, google-research/simclr Apache 2.0), None
            where it is not known; a user's own checkpoint of the same layout may differ.
    """

    name: str
    markers: tuple[str, ...]
    encoder_prefixes: tuple[str, ...]
    head_prefixes: tuple[str, ...]
    dropped: tuple[str, ...] = ()
    also_matches: Callable[[StateDict], bool] | None = None
    method: str | None = None
    license: str | None = None

    def matches(self, state: StateDict) -> bool:
        """Whether ``state`` (keys cleaned by ``clean_state_dict``) is in this layout."""
        if any(k.startswith(self.markers) for k in state):
            return True
        return self.also_matches is not None and self.also_matches(state)


# in detection order: the first layout that matches names the checkpoint
CHECKPOINT_LAYOUTS = (
    CheckpointLayout(
        "moco",
        ("encoder_q.",),
        ("encoder_q.",),
        ("fc.",),
        method="moco",
        license="cc-by-nc-4.0",
    ),
    CheckpointLayout("seed", ("student.",), ("student.",), ("fc.",), method="seed"),
    CheckpointLayout(
        "swav",
        ("prototypes.",),
        ("",),
        ("projection_head.",),
        ("prototypes.",),
        method="swav",
        license="cc-by-nc-4.0",
    ),  # fmt: skip
    CheckpointLayout(
        "simclr",
        ("projection_head.", "projector."),
        ("backbone.", "encoder.", ""),
        ("projection_head.", "projector.", "fc.", "head."),
        also_matches=_wrapped_mlp_head,
        method="simclr",
        license="apache-2.0",
    ),
)
LAYOUT_METHODS = {layout.name: layout.method for layout in CHECKPOINT_LAYOUTS}


def checkpoint_license(layout: str | None) -> str | None:
    """The license of published checkpoints of ``layout`` (:data:`CHECKPOINT_LAYOUTS`), if known."""
    return next((c.license for c in CHECKPOINT_LAYOUTS if c.name == layout), None)


# keys of the training wrapper that are not the query encoder (MoCo's key encoder and queue, SEED's teacher)
_TRAINING_STATE = ("encoder_k.", "teacher.")


def load_state_dict_file(path: str | os.PathLike) -> StateDict:
    """Reads a safetensors file, or a torch file with ``weights_only=True`` (no pickled code), and
    unwraps a ``state_dict`` / ``model`` entry (timm's ``load_state_dict``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher_checkpoint {str(path)!r} does not exist.")
    try:
        state = load_state_dict(str(path), use_ema=False, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError) as error:
        # timm re-raises torch's UnpicklingError as a RuntimeError that suggests weights_only=False,
        # which would run the file's pickled code: name the safe formats instead
        if not isinstance(error, pickle.UnpicklingError) and not isinstance(
            error.__cause__, pickle.UnpicklingError
        ):
            raise
        raise ValueError(_pickled_object_message(path)) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors.")
    return state


def _pickled_object_message(path: Path) -> str:
    try:  # the classes the file would need to unpickle, e.g. timm.models.resnet.ResNet
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:
        needed = []
    needed = sorted(needed, key=lambda name: name.startswith("torch."))  # the model's own classes first
    shown = f" (it needs {', '.join(needed[:3])}{', ...' if len(needed) > 3 else ''})" if needed else ""
    return (
        f"teacher_checkpoint {str(path)!r} holds pickled Python objects{shown}, not only tensors: e.g. a whole "
        "model saved with torch.save(model). seed_hf loads weights only and never runs a file's pickled code. "
        "Save `model.state_dict()` or safetensors instead: torch.save(model.state_dict(), 'weights.pth') or "
        "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')."
    )


def detect_checkpoint_layout(state: StateDict) -> str:
    """Names the SSL checkpoint layout of a state dict: moco, seed, swav, simclr or plain.

    Keys under ``backbone.``/``encoder.`` are SimCLR only with a projection head: a
    ``projection_head.``/``projector.`` module, or an ``fc``/``head`` with hidden layers. A plain
    timm / torchvision state dict saved under such a prefix keeps its classifier (a single Linear,
    e.g. ImageNet's 1000-way ``fc``), which is not a projection head: that is ``plain``.
    """
    return _layout_name(clean_state_dict(state))


def _layout_name(state: StateDict) -> str:
    """:func:`detect_checkpoint_layout` of a state dict whose keys ``clean_state_dict`` cleaned."""
    return next((layout.name for layout in CHECKPOINT_LAYOUTS if layout.matches(state)), "plain")


def _strip_wrapper(state: StateDict) -> StateDict:
    """Removes a ``backbone.``/``encoder.`` prefix shared by every key."""
    for wrapper in WRAPPER_PREFIXES:
        if state and all(k.startswith(wrapper) for k in state):
            return {k[len(wrapper) :]: v for k, v in state.items()}
    return state


def _drop_classifier(state: StateDict) -> StateDict:
    """Drops the classifier of a timm / torchvision state dict (``fc``, ``classifier``, ``head.fc``,
    a ViT's ``head``): the backbone is built with ``num_classes=0``."""
    return {
        k: v
        for k, v in state.items()
        if not k.startswith(CLASSIFIER_PREFIXES) and k not in ("head.weight", "head.bias")
    }


def split_checkpoint(state: StateDict) -> tuple[str, StateDict, StateDict]:
    """Splits a MoCo v1/v2, SimCLR, SwAV or official-SEED state dict into (layout, backbone
    state with timm names, projection-head state). Plain timm / torchvision state dicts keep
    their keys, minus the classifier (``fc``/``classifier``/``head.fc``)."""
    state = clean_state_dict(state)
    name = _layout_name(state)
    if name == "plain":
        return name, _drop_classifier(_strip_wrapper(state)), {}
    layout = next(entry for entry in CHECKPOINT_LAYOUTS if entry.name == name)
    backbone: StateDict = {}
    parts: dict[str, StateDict] = {}  # head candidates by prefix
    for key, value in state.items():
        prefix = next((p for p in layout.encoder_prefixes if key.startswith(p)), None)
        if prefix is None:  # e.g. MoCo's encoder_k / queue, SEED's teacher
            continue
        key = key[len(prefix) :]
        if key.startswith(layout.dropped + _TRAINING_STATE) or key in ("queue", "queue_ptr"):
            continue
        if name == "simclr" and key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        head_prefix = next((p for p in layout.head_prefixes if key.startswith(p)), None)
        if head_prefix is not None:
            parts.setdefault(head_prefix, {})[key[len(head_prefix) :]] = value
        else:
            backbone[key] = value
    head: StateDict = {}
    for head_prefix in layout.head_prefixes:  # in order of preference
        part = parts.get(head_prefix)
        if not part:
            continue
        explicit = name != "simclr" or head_prefix in ("projection_head.", "projector.")
        if not head and (explicit or _is_mlp_head(part)):
            head = part
        else:  # e.g. a classifier next to the projection head: not part of the embedding
            backbone.update({f"{head_prefix}{k}": v for k, v in part.items()})
    return name, _drop_classifier(backbone), head


def head_from_state(head_state: dict[str, torch.Tensor]) -> nn.Module | None:
    """Rebuilds a projection head from its state dict: ``nn.Sequential`` indices whose weight is
    2-D are Linear layers, those with running statistics BatchNorm1d, and the gaps ReLUs
    (MoCo-v2 ``0,2``; SwAV ``0 Linear, 1 BN, 3 Linear``). A bare ``weight``/``bias`` is one Linear."""
    if not head_state:
        return None
    if "weight" in head_state:  # MoCo v1 / a single linear projection
        out_dim, in_dim = head_state["weight"].shape
        head: nn.Module = nn.Linear(in_dim, out_dim, bias="bias" in head_state)
    else:
        indices = sorted({int(k.split(".", 1)[0]) for k in head_state if k.split(".", 1)[0].isdigit()})
        if not indices or len(indices) != len({k.split(".", 1)[0] for k in head_state}):
            raise ValueError(f"Unrecognised projection-head keys {sorted(head_state)[:10]}.")
        layers: list[nn.Module] = []
        for i in range(indices[-1] + 1):
            weight = head_state.get(f"{i}.weight")
            if f"{i}.running_mean" in head_state:
                layers.append(nn.BatchNorm1d(head_state[f"{i}.running_mean"].shape[0]))
            elif weight is not None and weight.ndim == 2:
                layers.append(nn.Linear(weight.shape[1], weight.shape[0], bias=f"{i}.bias" in head_state))
            else:
                layers.append(nn.ReLU(inplace=True))
        head = nn.Sequential(*layers)
    load_strict(head, head_state, "the projection head")
    return head


def _preview(items: list[str], limit: int = 5) -> str:
    return f"{items[:limit]}" + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str, architecture: str = "") -> None:
    """``load_state_dict(strict=True)``, with one line listing missing, unexpected and mis-shaped keys
    instead of torch's multi-line size-mismatch dump."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k}: {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or misshaped:
        target = f"the architecture {architecture!r}" if architecture else "the architecture"
        problems = [
            f"{name} keys {_preview(keys)}"
            for name, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
            if keys
        ]
        message = f"{what} does not match {target}: {', '.join(problems)}"
        message += " (shapes: checkpoint vs model)." if misshaped else "."
        if any(k.startswith("pos_embed") or ".position_embeddings" in k for k in misshaped):
            message += (
                " A position embedding of another length: the weights were trained at another resolution or "
                'patch size; build the model at theirs through --teacher_model_args (`model_args`, e.g. {"img_size": 64}).'
            )
        elif architecture:
            message += " Weights of another architecture? Name the one they were trained with in --teacher_name_or_path."
        raise ValueError(message)
    module.load_state_dict(state)

"""Teachers: the frozen models SEED distils from.

* :mod:`.loading`: :func:`load_teacher`, a teacher of any kind from its spec (seed_hf run folders,
  timm models with timm's weights or a published checkpoint, transformers vision models, Hub ids);
* :mod:`.frozen`: :class:`FrozenTeacher`, the frozen wrapper every teacher is served through;
* :mod:`.transformers_backbone`: :class:`TransformersVisionBackbone`, a transformers vision model as
  a pooled-embedding backbone;
* :mod:`.checkpoint_layouts`: the table of published self-supervised checkpoint layouts (MoCo, SEED,
  SwAV, SimCLR) and their conversion to timm names;
* :mod:`.record`: :class:`TeacherRecord`, the teacher's provenance and license;
* :mod:`.fingerprint`: :func:`weights_fingerprint`, the SHA-256 of a model's local weights;
* the teacher cache: embeddings of every view computed once (:mod:`.cache_writer`) and served to
  training (:mod:`.cache`).

The public names are re-exported lazily (PEP 562): ``from seed_hf.teachers import load_teacher``
imports :mod:`.loading` on first use, so importing this package imports none of its modules and
the library's modules, which import from the defining module, never go through it.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module of this package that defines it
_DEFINED_IN = {
    "CachedTeacherDataset": "cache",
    "FrozenTeacher": "frozen",
    "TeacherCache": "cache",
    "TeacherRecord": "record",
    "TransformersVisionBackbone": "transformers_backbone",
    "load_teacher": "loading",
    "weights_fingerprint": "fingerprint",
    "write_teacher_cache": "cache_writer",
}

__all__ = sorted(_DEFINED_IN)


def __getattr__(name: str) -> Any:
    if name not in _DEFINED_IN:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_DEFINED_IN[name]}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

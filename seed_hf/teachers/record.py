"""What a distilled student records about its teacher: one typed record, written once into the
student's config (``SeedConfig.teacher``) and the run's ``run_info.json``, read by the cards.

The license and the resolution of a teacher come from where they are stated: the checkpoint
layout table for published checkpoints, ``pretrained_cfg`` of timm models, the model card of a
folder or Hub repo, a seed_hf teacher's config. What is not stated stays ``None`` (the card then
says "not recorded" and the export's license is ``other``), never a guess.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

__all__ = [
    "TeacherRecord",
    "card_license",
    "more_permissive",
    "PERMISSIVE_LICENSES",
]

logger = logging.getLogger(__name__)

# licenses that allow commercial use and re-licensing of derived weights
PERMISSIVE_LICENSES = frozenset(
    {
        "apache-2.0",
        "mit",
        "bsd",
        "bsd-2-clause",
        "bsd-3-clause",
        "cc0-1.0",
        "cc-by-4.0",
        "cc-by-sa-4.0",
        "openrail",
    }
)


@dataclass
class TeacherRecord:
    """Provenance of a frozen teacher.

    Attributes:
        kind: ``"seed_hf"`` (a seed_hf MoCo-v2 / SEED folder), ``"timm"``, ``"transformers"`` or
            ``"module"`` (an ``nn.Module`` given directly).
        source: the Hub id, timm name or local folder *name* (a card never carries a file system path).
        hub_id: the Hub repository when the teacher comes from the Hub (the card's ``base_model``).
        checkpoint: file name of the weights given separately (``teacher_checkpoint``).
        layout: the published checkpoint layout detected (``moco``, ``seed``, ``swav``, ``simclr``, ``timm``).
        ssl_method: how the teacher was trained (``moco_v2``, ``swav``, ...), when known or given.
        sha256: fingerprint of the local weights (``weights_fingerprint``), None for Hub ids.
        embedding: what the teacher's embedding is (``"head"``: after its projection head,
            ``"pooled"``, or a transformers choice: ``image_embeds``, ``pooler``, ``cls``, ``mean``).
        embed_dim: width of the embedding.
        image_size: the resolution the teacher was trained or is meant to run at, when stated.
        license: the teacher weights' license, when stated.
        license_source: where ``license`` was read.
        normalization: ``{"mean", "std"}`` the teacher's inputs are re-normalised to (None: the data's).
        resized_to: the resolution the teacher's inputs are resized to (``teacher_image_size``; None:
            the student's views as they are).
        random_weights: a randomly initialised teacher (smoke tests only).
    """

    kind: str
    source: str
    hub_id: str | None = None
    checkpoint: str | None = None
    layout: str | None = None
    ssl_method: str | None = None
    sha256: str | None = None
    embedding: str | None = None
    embed_dim: int | None = None
    image_size: int | None = None
    license: str | None = None
    license_source: str | None = None
    normalization: dict[str, list[float]] | None = None
    resized_to: int | None = None
    random_weights: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TeacherRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def name(self) -> str:
        """How a card names the teacher: source, its weights file, "(random weights)"."""
        name = self.source + (f" with weights {self.checkpoint}" if self.checkpoint else "")
        return name + (" (random weights)" if self.random_weights else "")


def local_name(name_or_path: str | os.PathLike) -> str:
    """A local folder as its name and "(local folder)": what a card may say of it."""
    return Path(str(name_or_path).removeprefix("local-dir:")).name + " (local folder)"


def card_license(folder: str | os.PathLike) -> str | None:
    """The ``license`` of a folder's model card (``README.md`` front matter), if it states one."""
    readme = Path(folder) / "README.md"
    if not readme.is_file():
        return None
    try:
        from huggingface_hub import ModelCard

        value = ModelCard.load(readme).data.to_dict().get("license")
    except Exception as error:  # an unreadable card states nothing
        logger.debug(f"could not read the license of {readme}: {error}")
        return None
    return str(value).lower() if value else None


def more_permissive(student: str | None, teacher: str | None) -> bool:
    """True when ``student`` grants more than ``teacher`` allows: a permissive student license
    over a teacher whose license is unknown, non-permissive or non-commercial."""
    student, teacher = (str(v).lower() if v else None for v in (student, teacher))
    if student is None or student == teacher:
        return False
    if student in PERMISSIVE_LICENSES:
        return teacher not in PERMISSIVE_LICENSES
    return False

#!/usr/bin/env python
"""Re-renders the model card of every model this repository ships (``make cards``).

The models are listed in ``model_cards/models.json`` (written when the study, the demo and
``make teacher`` export them): each entry names the folder, the evaluation JSON its results come
from and the facts its run recorded. The cards land in the model folders (``README.md``) and in
``model_cards/<name>.md``; ``tests/test_model_cards.py`` checks they are in sync.

    python tools/render_model_cards.py
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from manifest import render_manifest_cards, upsert_manifest_entry
from transformers import HfArgumentParser

from seed_hf.export.cards import teacher_card_facts


@dataclass
class CardArguments:
    manifest: str = field(
        default="model_cards/models.json", metadata={"help": "Manifest of the shipped models."}
    )
    teacher: str | None = field(
        default="pretrained/fmnist-mocov2-resnet18",
        metadata={
            "help": "The shipped teacher folder (its entry is rebuilt from results/teacher/); '' skips it."
        },
    )
    teacher_results: str = field(
        default="results/teacher/eval_results.json", metadata={"help": "Evaluation JSON of the teacher."}
    )
    teacher_training: str = field(
        default="results/teacher/training.json", metadata={"help": "What the teacher's training recorded."}
    )


def main(argv: list[str] | None = None) -> list[Path]:
    (args,) = HfArgumentParser(CardArguments).parse_args_into_dataclasses(
        sys.argv[1:] if argv is None else argv
    )
    if args.teacher:
        training = (
            json.loads(Path(args.teacher_training).read_text())
            if Path(args.teacher_training).is_file()
            else {}
        )
        facts = {**teacher_card_facts(args.teacher, training), "folder": args.teacher}
        upsert_manifest_entry(
            args.manifest,
            {
                "name": Path(args.teacher).name,
                "folder": args.teacher,
                "results": args.teacher_results if Path(args.teacher_results).is_file() else None,
                "aliases": [],
                "facts": facts,
                "repo_id": None,
                "license": "apache-2.0",
            },
        )
    cards = render_manifest_cards(args.manifest)
    for card in cards:
        print(f"rendered {card}")
    return cards


if __name__ == "__main__":
    main()

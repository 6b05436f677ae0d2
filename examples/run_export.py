#!/usr/bin/env python
"""Export a SEED student as a timm-format Hub folder (loads with AutoModel, the
image-feature-extraction pipeline and timm, no seed_hf needed) and optionally push it.

    python examples/run_export.py --student_dir outputs/demo/student --output_dir exported/seed-mnv3 \
        --eval_results outputs/demo/eval_results.json --push_to_hub --hub_model_id org/seed-mnv3
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from seed_hf.hub import export_student, push_student_to_hub, upload_plan


@dataclass
class ExportArguments:
    student_dir: str = field(metadata={"help": "SeedForDistillation run folder or checkpoint."})
    output_dir: str = field(metadata={"help": "Where to write the timm-format folder."})
    eval_results: str | None = field(
        default=None, metadata={"help": "run_eval.py JSON; its student row goes into the card."}
    )
    hub_model_id: str | None = field(default=None, metadata={"help": "org/name on the Hub."})
    push_to_hub: bool = field(
        default=False, metadata={"help": "Upload the folder with HfApi().upload_folder."}
    )
    hub_token: str | None = field(
        default=None, metadata={"help": "Token (default: the logged-in one / HF_TOKEN)."}
    )
    hub_private_repo: bool = field(default=False, metadata={"help": "Create a private repo."})


def student_results(eval_results: str | None, student_dir: str) -> list[dict]:
    """The rows of an evaluation JSON that belong to this student (matched by path)."""
    if not eval_results:
        return []
    rows = json.loads(Path(eval_results).read_text())
    target = Path(student_dir).resolve()
    return [r for r in rows if Path(r["model"]).resolve() == target] or []


def training_summary(student_dir: str) -> dict:
    state_file = Path(student_dir) / "trainer_state.json"
    args_file = Path(student_dir) / "train_results.json"
    summary = {}
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        summary.update(
            steps=state.get("global_step"),
            epochs=round(state.get("epoch", 0), 2),
            batch_size=state.get("train_batch_size"),
        )
    if args_file.is_file():
        summary["train_loss"] = json.loads(args_file.read_text()).get("train_loss")
    return summary


def main(argv: list[str] | None = None) -> Path:
    (args,) = HfArgumentParser(ExportArguments).parse_args_into_dataclasses(
        sys.argv[1:] if argv is None else argv
    )
    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id org/name.")
    folder = export_student(
        args.student_dir,
        args.output_dir,
        eval_results=student_results(args.eval_results, args.student_dir),
        training_summary=training_summary(args.student_dir),
        repo_id=args.hub_model_id,
    )
    print(f"Exported {upload_plan(folder)} to {folder}")
    if args.push_to_hub:
        print(
            push_student_to_hub(
                folder, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo
            )
        )
    return folder


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Export a SEED student as a timm-format Hub folder (loads with AutoModel, the
image-feature-extraction pipeline and timm, no seed_hf needed) and optionally push it.

    python examples/run_export.py --student_dir outputs/demo/student --output_dir exported/seed-mnv3 \
        --eval_results outputs/demo/eval_results.json --push_to_hub --hub_model_id org/seed-mnv3

``--onnx`` adds onnx/model.onnx (verified against PyTorch), ``--onnx_int8`` also
onnx/model_int8.onnx with its quality against fp32 in the card (seed_hf.export.onnx_export), measured on
the student's own data: the ``--onnx_*`` labelled data, or Fashion-MNIST for a run that trained
on it. An int8 graph below the quality bar is not written (the rest of the folder is) and the
script exits with an error naming the figures.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from seed_hf.cli import OnnxArguments, onnx_export_options, parse_script_args, script_parser
from seed_hf.cli.script import int8_refusals
from seed_hf.export.cards import run_summary
from seed_hf.export.hub import (
    ExportRecord,
    export_moco_encoder,
    export_student,
    push_student_to_hub,
    upload_plan,
)
from seed_hf.training.run_folder import STUDENTS_DIR


@dataclass
class ExportArguments:
    student_dir: str = field(
        metadata={
            "help": "SEED run folder or checkpoint (SeedForDistillation), or a MoCo-v2 run / teacher folder. A "
            "multi-student run folder exports each students/<name> to output_dir/<name>."
        }
    )
    output_dir: str = field(metadata={"help": "Where to write the timm-format folder."})
    eval_results: str | None = field(
        default=None,
        metadata={"help": "run_eval.py JSON; the rows of this model (matched by path) go into the card."},
    )
    license: str | None = field(
        default=None,
        metadata={
            "help": "License of the exported weights (card metadata). Default: a SEED student takes its teacher's "
            "license where the teacher's record states one, else 'other' (with a note in the card); a MoCo-v2 model "
            "(trained without a teacher) apache-2.0. A license more permissive than the teacher's is warned about."
        },
    )
    hub_model_id: str | None = field(default=None, metadata={"help": "org/name on the Hub."})
    push_to_hub: bool = field(
        default=False, metadata={"help": "Upload the folder with HfApi().upload_folder."}
    )
    hub_token: str | None = field(
        default=None, metadata={"help": "Token (default: the logged-in one / HF_TOKEN)."}
    )
    hub_private_repo: bool = field(default=False, metadata={"help": "Create a private repo."})


def student_folders(student_dir: str) -> dict[str, Path]:
    """``{name: folder}`` to export: the folder itself, or each ``students/<name>`` of a multi-student
    run (whose parent folder holds no model of its own)."""
    folder = Path(student_dir)
    if (folder / "config.json").is_file():
        return {"": folder}
    students = sorted(p.parent for p in (folder / STUDENTS_DIR).glob("*/config.json"))
    if not students:
        raise FileNotFoundError(
            f"--student_dir {student_dir!r} holds no model (no config.json) and no {STUDENTS_DIR}/<name>/ of a "
            "multi-student run: pass a SEED or MoCo run folder, one of its checkpoint-N folders, or a teacher folder."
        )
    return {p.name: p for p in students}


def parse_args(argv: list[str] | None = None) -> tuple[ExportArguments, OnnxArguments]:
    """The script's arguments (``sys.argv[1:]`` when ``argv`` is None)."""
    return parse_script_args(script_parser((ExportArguments, OnnxArguments)), argv)


def main(
    argv: list[str] | None = None, on_exported: Callable[[ExportRecord], None] | None = None
) -> list[Path]:
    """Exports (and pushes) each student of ``--student_dir``; returns the folders written.
    ``on_exported`` is called with the :class:`ExportRecord` of each folder once it is in place, before
    an int8 refusal ends the script (a repository that ships models records them there)."""
    args, onnx_args = parse_args(argv)
    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id org/name.")
    # before any export: a missing onnx extra, or --onnx_int8 without the student's own data, stops here
    onnx = onnx_export_options(onnx_args, run_summary(args.student_dir).get("dataset"))
    students = student_folders(args.student_dir)
    folders, onnx_records = [], {}

    def exported(record: ExportRecord) -> None:
        if on_exported is not None:
            on_exported(record)
        onnx_records[str(record.folder)] = record.facts.get("onnx")

    for name, student_dir in students.items():  # a multi-student run: output_dir/<name>, repo id <id>-<name>
        output_dir = Path(args.output_dir) / name if name else Path(args.output_dir)
        repo_id = f"{args.hub_model_id}-{name}" if args.hub_model_id and name else args.hub_model_id
        model_type = json.loads((student_dir / "config.json").read_text()).get("model_type")
        export = export_moco_encoder if model_type == "seed_moco" else export_student

        folder = export(
            student_dir,
            output_dir,
            eval_results=args.eval_results,
            training_summary=run_summary(student_dir),
            repo_id=repo_id,
            license=args.license,
            on_exported=exported,
            onnx=onnx,
        )
        print(f"Exported {upload_plan(folder)} to {folder}")
        if args.push_to_hub:
            print(push_student_to_hub(folder, repo_id, token=args.hub_token, private=args.hub_private_repo))
        folders.append(folder)
    refusal = int8_refusals(onnx_records)
    if refusal:
        raise SystemExit(refusal)
    return folders


def cli(argv: list[str] | None = None) -> None:
    """The command line (``seed-hf``, ``python -m``, ``examples/run_export.py``): a refusal prints its message
    alone and exits with status 1."""
    from seed_hf.cli.script import run_script

    run_script(lambda: main(argv))


if __name__ == "__main__":
    cli()

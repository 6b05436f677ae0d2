#!/usr/bin/env python
"""Run an export script and record what it wrote as a model this repository ships, in the
shipped-models manifest (``model_cards/models.json``, :mod:`manifest`): the step of ``make
ship-demo``, ``make study`` and ``make onnx-record``.

    python tools/ship_model.py --manifest model_cards/models.json --manifest_name NAME \\
        run_export.py --student_dir RUN --output_dir FOLDER --eval_results RESULTS.json
    python tools/ship_model.py --manifest model_cards/models.json --manifest_name NAME \\
        run_export_onnx.py --folder FOLDER --onnx_int8

``run_export.py``: the exported folder becomes (or replaces) entry ``--manifest_name`` (default:
the folder's name), its card rows to come from the script's ``--eval_results``.
``run_export_onnx.py``: ``--folder`` must be the folder entry ``--manifest_name`` records; the
export's record goes into that entry's card facts (``onnx``) and every card of the manifest is
re-rendered. ``--onnx_int8`` is calibrated on Fashion-MNIST when the entry records that the student
was trained on it. Both record before an int8 refusal ends the script (its message, exit status 1).
The scripts are the installed ones (``seed_hf.scripts``); everything after the script's name is
its own arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from manifest import add_entry_facts, manifest_entry, render_manifest_cards, shipped_model_recorder

from seed_hf.scripts import run_export, run_export_onnx

SCRIPTS = ("run_export.py", "run_export_onnx.py")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run run_export.py or run_export_onnx.py and record the export in the shipped-models manifest.",
    )
    parser.add_argument(
        "--manifest", required=True, help="Shipped-models manifest (model_cards/models.json)."
    )
    parser.add_argument(
        "--manifest_name",
        default=None,
        help="Entry of --manifest: the model's card name (run_export.py: default the exported folder's name; "
        "run_export_onnx.py: required, the entry that records --folder).",
    )
    parser.add_argument("script", choices=SCRIPTS, help="The export script to run.")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="The script's own arguments.")
    return parser


def ship_export(manifest: str, manifest_name: str | None, script_args: list[str]) -> list[Path]:
    """``run_export.py`` on ``script_args``, its folder recorded as entry ``manifest_name`` of
    ``manifest`` (default: the folder's name) with its card rows from ``--eval_results``."""
    args, _ = run_export.parse_args(script_args)
    if len(run_export.student_folders(args.student_dir)) > 1:
        raise ValueError(
            "--manifest records one model: export the students of a multi-student run one by one."
        )
    output_dir = Path(args.output_dir)
    recorder = shipped_model_recorder(manifest, manifest_name or output_dir.name, args.eval_results)
    return run_export.main(script_args, on_exported=recorder)


def ship_onnx(manifest: str, manifest_name: str | None, script_args: list[str]) -> dict[str, Any]:
    """``run_export_onnx.py`` on ``script_args`` for the folder of entry ``manifest_name``: the
    record goes into the entry's card facts and the manifest's cards are re-rendered."""
    if not manifest_name:
        raise ValueError("--manifest_name is required with run_export_onnx.py (the entry of --folder).")
    args, _ = run_export_onnx.parse_args(script_args)
    # checked before the export: the entry must record this very folder
    entry = manifest_entry(manifest, manifest_name, args.folder)

    def record(onnx: dict[str, Any]) -> None:
        add_entry_facts(manifest, manifest_name, onnx=onnx)
        for card in render_manifest_cards(manifest):
            print(f"rendered {card}")

    return run_export_onnx.main(
        script_args, on_exported=record, training_dataset=entry["facts"].get("dataset")
    )


def main(argv: list[str] | None = None) -> list[Path] | dict[str, Any]:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    ship = ship_export if args.script == "run_export.py" else ship_onnx
    return ship(args.manifest, args.manifest_name, args.script_args)


if __name__ == "__main__":
    from seed_hf.cli.script import run_script

    run_script(main)  # a refusal: its message alone, exit status 1

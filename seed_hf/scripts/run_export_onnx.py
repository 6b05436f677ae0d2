#!/usr/bin/env python
"""Add verified ONNX graphs to an already exported timm-format folder (no run folder needed):
``onnx/model.onnx`` and, with ``--onnx_int8``, ``onnx/model_int8.onnx`` (seed_hf.export.onnx_export).

    python examples/run_export_onnx.py --folder results/demo/student --onnx_int8 \
        --manifest model_cards/models.json --manifest_name seed-demo-mobilenetv3-small-fmnist

With ``--manifest`` the record (files, opset, exporter, max abs differences, int8 quality against
fp32) goes into that entry's card facts and the shipped cards are re-rendered from the manifest.
Without it the folder's card is left as it is (it was rendered without ``onnx/``): export from the
run folder with ``run_export.py --onnx`` to get a card that lists it.

``--onnx_int8`` is calibrated and measured on the student's own data: the ``--onnx_*`` labelled
data, or Fashion-MNIST when the ``--manifest`` entry records that the student was trained on it.
An int8 graph below the quality bar (seed_hf.export.onnx_export.INT8_QUALITY_BAR) is not written: the
fp32 graph and the record are, and the script exits with an error naming the figures.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from seed_hf.cli import OnnxArguments, flags_in_errors, onnx_export_options
from seed_hf.cli.script import ONNX_FLAGS, int8_refusals
from seed_hf.export.onnx_export import export_onnx
from tools.manifest import add_entry_facts, manifest_entry, render_manifest_cards


@dataclass
class FolderArguments:
    folder: str = field(metadata={"help": "Exported timm-format folder (config.json + model.safetensors)."})
    manifest: str | None = field(
        default=None,
        metadata={"help": "Shipped-models manifest whose --manifest_name entry gets the ONNX facts."},
    )
    manifest_name: str | None = field(
        default=None, metadata={"help": "Entry of --manifest (the folder's card)."}
    )


def main(argv: list[str] | None = None) -> dict:
    args, onnx_args = HfArgumentParser((FolderArguments, OnnxArguments)).parse_args_into_dataclasses(
        sys.argv[1:] if argv is None else argv
    )
    onnx_args.onnx = True  # the point of this script
    if args.manifest and not args.manifest_name:
        raise ValueError("--manifest needs --manifest_name (the entry of --folder).")
    training_dataset = None
    if args.manifest:  # checked before the export: the entry must record this very folder
        with flags_in_errors(FolderArguments):
            training_dataset = manifest_entry(args.manifest, args.manifest_name, args.folder)["facts"].get(
                "dataset"
            )
    options = onnx_export_options(onnx_args, training_dataset)
    with flags_in_errors(aliases=ONNX_FLAGS):  # export_onnx names its parameters: say the flags
        record = export_onnx(args.folder, **options)
    print(json.dumps({k: v for k, v in record.items() if k != "files"}, indent=1))
    print(f"Wrote {[f['path'] for f in record['files']]} to {args.folder}")
    if args.manifest:
        add_entry_facts(args.manifest, args.manifest_name, onnx=record)
        for card in render_manifest_cards(args.manifest):
            print(f"rendered {card}")
    else:
        print(
            f"The card {args.folder}/README.md was rendered without onnx/ and is left as it is: pass --manifest "
            "(a shipped model), or export from the run folder with run_export.py --onnx, to get a card that lists it."
        )
    refusal = int8_refusals({args.folder: record})
    if refusal:
        raise SystemExit(refusal)
    return record



def cli(argv: list[str] | None = None) -> None:
    """The command line (``seed-hf``, ``python -m``, ``examples/run_export_onnx.py``): a refusal prints its message
    alone and exits with status 1."""
    from seed_hf.cli.script import run_script

    run_script(lambda: main(argv))


if __name__ == "__main__":
    cli()

#!/usr/bin/env python
"""Add verified ONNX graphs to an already exported timm-format folder (no run folder needed):
``onnx/model.onnx`` and, with ``--onnx_int8``, ``onnx/model_int8.onnx`` (seed_hf.export.onnx_export).

    python examples/run_export_onnx.py --folder exported/seed-effb0 --onnx_int8 --onnx_train_dir data/train \
        --onnx_validation_dir data/val

The folder's card is left as it is (it was rendered without ``onnx/``): export from the run folder
with ``run_export.py --onnx`` to get a card that lists it. ``main``'s ``on_exported`` hook receives
the record (files, opset, exporter, max abs differences, int8 quality against fp32), e.g. for a
repository that re-renders the cards of the models it ships.

``--onnx_int8`` is calibrated and measured on the student's own data: the ``--onnx_*`` labelled
data, or Fashion-MNIST when ``main``'s ``training_dataset`` (what the student's run recorded) is
``fashion_mnist``. An int8 graph below the quality bar (seed_hf.export.onnx_int8.INT8_QUALITY_BAR) is
not written: the fp32 graph and the record are, and the script exits with an error naming the figures.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from seed_hf.cli import OnnxArguments, onnx_export_options, parse_script_args, script_parser
from seed_hf.cli.script import int8_refusals
from seed_hf.export.onnx_export import export_onnx


@dataclass
class FolderArguments:
    folder: str = field(metadata={"help": "Exported timm-format folder (config.json + model.safetensors)."})


def parse_args(argv: list[str] | None = None) -> tuple[FolderArguments, OnnxArguments]:
    """The script's arguments (``sys.argv[1:]`` when ``argv`` is None)."""
    return parse_script_args(script_parser((FolderArguments, OnnxArguments)), argv)


def main(
    argv: list[str] | None = None,
    on_exported: Callable[[dict[str, Any]], None] | None = None,
    training_dataset: str | None = None,
) -> dict[str, Any]:
    """Exports the graphs of ``--folder``; returns the export's record. ``on_exported`` is called with
    the record once ``onnx/`` is in place, before an int8 refusal ends the script. ``training_dataset``
    is the data the student was trained on as its run recorded it (``fashion_mnist`` lets
    ``--onnx_int8`` calibrate on Fashion-MNIST without ``--onnx_*`` data flags)."""
    args, onnx_args = parse_args(argv)
    onnx_args.onnx = True  # the point of this script
    options = onnx_export_options(onnx_args, training_dataset)
    record = export_onnx(args.folder, **options)
    print(json.dumps({k: v for k, v in record.items() if k != "files"}, indent=1))
    print(f"Wrote {[f['path'] for f in record['files']]} to {args.folder}")
    if on_exported is not None:
        on_exported(record)
    else:
        print(
            f"The card {args.folder}/README.md is left as the export rendered it and does not list the graphs written "
            "now: export from the run folder with `seed-hf export --onnx` (run_export.py) to get a card that lists them."
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

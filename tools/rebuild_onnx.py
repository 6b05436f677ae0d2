#!/usr/bin/env python
"""Rebuild the ONNX graphs of the models this repository ships and check them against their records
(``make onnx``).

The repository commits the weights, not the graphs: ``model_cards/models.json`` keeps, for each
model with ``onnx/``, the record of the export that measured its card's figures (files with their
sha256, max abs difference to PyTorch, int8 cosine and kNN). For every such entry the folder's
``config.json`` and ``model.safetensors`` are copied into ``--work_dir/<name>/model`` beside a
manifest of that entry alone, exported there by ``run_export_onnx.py`` with ``--export_flags`` and
recorded into that manifest (``ship_model.py``: the step of ``make ship-demo`` / ``make study``, whose
flags ``make`` passes),
and the new record is checked against the recorded one (``tools.manifest.check_onnx_rebuild``):
byte-identical graphs pass; other bytes pass when the export settings and data are the recorded
ones and the kNN top-1 figures are within ``ONNX_REBUILD_TOLERANCE``. A rebuild that passes becomes
``<folder>/onnx/``; one that does not stays in the work dir, and the script names the reasons and
exits with status 1. The shipped manifest and cards are not written.

    python tools/rebuild_onnx.py                   # make onnx
    python tools/rebuild_onnx.py --record          # make onnx-record

``--record`` measures and records anew instead (after a change of the export or of its stack): each
folder is exported in place and recorded in ``--manifest``, as ``make ship-demo`` / ``make study`` do,
and the cards are re-rendered from the new records.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from manifest import (
    OnnxRebuildCheck,
    check_onnx_rebuild,
    entry_folder,
    manifest_entry,
    onnx_entries,
    upsert_manifest_entry,
)
from ship_model import ship_onnx
from transformers import HfArgumentParser

from seed_hf.teachers.fingerprint import weights_fingerprint


@dataclass
class RebuildArguments:
    manifest: str = field(
        default="model_cards/models.json", metadata={"help": "Manifest of the shipped models."}
    )
    names: list[str] | None = field(
        default=None,
        metadata={
            "help": "Entries to rebuild (default: every entry that records onnx/); with --record, any entry."
        },
    )
    work_dir: str = field(
        default="outputs/onnx_rebuild",
        metadata={"help": "Where the graphs are rebuilt and checked before they are moved into the folders."},
    )
    export_flags: str = field(
        default="--onnx_int8",
        metadata={
            "help": "Flags of run_export_onnx.py, as make ship-demo / make study pass them (give them as "
            "--export_flags='--onnx_int8 ...')."
        },
    )
    record: bool = field(
        default=False,
        metadata={"help": "Export in place and record the new figures in --manifest instead of checking."},
    )


def _export(manifest: str | Path, name: str, argv: list[str]) -> str | None:
    """run_export_onnx.py on ``argv``, recorded as entry ``name`` of ``manifest``; the message it
    exits with when the int8 graph is refused (the fp32 graph and the record are written first),
    else None."""
    try:
        ship_onnx(str(manifest), name, argv)
    except SystemExit as refusal:
        if refusal.code in (None, 0):
            raise
        print(refusal.code, file=sys.stderr)
        return str(refusal.code)
    return None


def main(argv: list[str] | None = None) -> dict[str, OnnxRebuildCheck | dict]:
    """Rebuilds (or with ``--record`` records) each entry's graphs; returns, per entry name, the
    check of its rebuild (or its new record)."""
    (args,) = HfArgumentParser(RebuildArguments).parse_args_into_dataclasses(
        sys.argv[1:] if argv is None else argv
    )
    entries = {e["name"]: e for e in onnx_entries(args.manifest)}
    if args.record and args.names:  # a model of the manifest gains graphs: any entry may be named
        entries = {e["name"]: e for e in json.loads(Path(args.manifest).read_text())}
    unknown = sorted(set(args.names or []) - set(entries))
    if unknown:
        what = "are not entries of" if args.record else "record no onnx/ in"
        raise ValueError(f"--names {unknown} {what} {args.manifest}: {sorted(entries)}.")
    flags = shlex.split(args.export_flags)
    results: dict[str, OnnxRebuildCheck | dict] = {}
    for name in args.names or sorted(entries):
        entry, folder = entries[name], entry_folder(args.manifest, entries[name])
        if args.record:  # make ship-demo's / make study's step, in place
            _export(args.manifest, name, ["--folder", str(folder), *flags])
            results[name] = manifest_entry(args.manifest, name)["facts"]["onnx"]
            continue
        recorded = entry["facts"]["onnx"]
        if weights_fingerprint(str(folder)) != recorded.get("source_weights_sha256"):
            results[name] = OnnxRebuildCheck(
                identical=False,
                problems=[
                    f"the record is of weights {recorded.get('source_weights_sha256')}, {folder} holds "
                    f"{weights_fingerprint(str(folder))}: record its graphs anew (make onnx-record)"
                ],
            )
            continue
        # the same step in a scratch repository: a copy of the folder's weights and a manifest of
        # this entry alone, so the record and cards it writes leave the shipped ones as they are
        work = Path(args.work_dir) / name
        shutil.rmtree(work, ignore_errors=True)
        (work / "model").mkdir(parents=True)
        for file in ("config.json", "model.safetensors"):
            shutil.copyfile(folder / file, work / "model" / file)
        scratch = work / "model_cards" / "models.json"
        facts = {k: v for k, v in entry["facts"].items() if k != "onnx"}
        upsert_manifest_entry(scratch, {**entry, "folder": "model", "results": None, "facts": facts})
        print(f"== {name}: rebuilding {folder}/onnx/ in {work}/model")
        _export(scratch, name, ["--folder", str(work / "model"), *flags])
        check = check_onnx_rebuild(recorded, manifest_entry(scratch, name)["facts"].get("onnx") or {})
        results[name] = check
        print("\n".join(f"  {line}" for line in check.figures))
        if check.problems:
            print(
                f"== {name}: {folder}/onnx/ left as it was ({'; '.join(check.problems)}); the rebuild is in {work}"
            )
            continue
        shutil.rmtree(folder / "onnx", ignore_errors=True)
        shutil.move(work / "model" / "onnx", folder / "onnx")
        shutil.rmtree(work)
        how = (
            "byte-identical to the recorded graphs"
            if check.identical
            else "within the tolerance of the record"
        )
        print(f"== {name}: {folder}/onnx/ rebuilt, {how}")
    return results


if __name__ == "__main__":
    results = main()
    failed = {n: c.problems for n, c in results.items() if isinstance(c, OnnxRebuildCheck) and c.problems}
    refused = [n for n, r in results.items() if isinstance(r, dict) and "int8_refused" in r]
    if failed:
        sys.exit(
            "The rebuilt ONNX graphs do not match their records in the manifest:\n"
            + "\n".join(f"  {name}: {'; '.join(problems)}" for name, problems in failed.items())
        )
    if refused:
        sys.exit(f"int8 refused for {', '.join(refused)}: recorded without it (see above).")

"""The repository's own list of the models it ships (``model_cards/models.json``) and the cards
re-rendered from it (``make cards``).

Each entry is ``{"name", "folder", "results", "aliases", "facts", "repo_id", "license"}``, paths
relative to the repository root (the manifest's parent's parent). An export reaches it through
the library's ``on_exported`` hook (:func:`shipped_model_recorder`, which ``ship_model.py`` hands to
``run_export.py``), a benchmark or an ONNX export adds its record to an entry's facts
(:func:`add_entry_facts`), and :func:`render_manifest_cards`
writes every card from the facts and the results file each entry names. A user's export never
needs it: it belongs to a repository that ships several models and keeps their cards in step.

The repository commits the weights of its models but not their ONNX graphs (``<folder>/onnx/`` is
git-ignored, so the tracked tree stays small enough to travel to an accelerator machine): an
entry's ``facts["onnx"]`` is the record of the export that measured the card's figures (its
``files`` give the sha256 of the graphs that export wrote), marked ``rebuilt_by`` ``make onnx``,
which rebuilds the graphs from the weights and checks them against it (:func:`check_onnx_rebuild`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seed_hf.export.atomic import atomic_write_text
from seed_hf.export.cards import render_model_card, results_for
from seed_hf.export.hub import ExportRecord
from seed_hf.teachers.fingerprint import weights_fingerprint

__all__ = [
    "ONNX_REBUILD",
    "ONNX_REBUILD_TOLERANCE",
    "OnnxRebuildCheck",
    "add_entry_facts",
    "check_onnx_rebuild",
    "entry_folder",
    "manifest_entry",
    "onnx_entries",
    "render_manifest_cards",
    "shipped_model_recorder",
    "upsert_manifest_entry",
]

ONNX_REBUILD = "make onnx"  # what rebuilds a shipped model's onnx/ from its committed weights
# A rebuilt graph whose bytes differ from the recorded one (the exporter folds BatchNorm into the
# convolutions with the CPU's float kernels: an Intel Xeon and an AMD EPYC round some folded weights
# 1 ulp apart) stands for it when its export verified it against PyTorch again and its weighted-kNN
# top-1 figures are within these points of the recorded ones. int8 kNN moves more across CPUs than
# fp32 (u8 x s8 products saturate on x86 CPUs without VNNI); cosines are shown, not checked.
ONNX_REBUILD_TOLERANCE = {"fp32_top1": 0.1, "int8_top1": 0.5}


def _root(manifest: str | os.PathLike) -> Path:
    return Path(manifest).resolve().parent.parent


def _entries(manifest: str | os.PathLike) -> list[dict[str, Any]]:
    return json.loads(Path(manifest).read_text()) if Path(manifest).is_file() else []


def render_manifest_cards(
    manifest: str | os.PathLike, cards_dir: str | os.PathLike | None = None
) -> list[Path]:
    """(Re)renders the card of every entry of ``manifest`` from its facts and the rows of its
    results JSON measured on the folder's weights as they are now: writes ``<folder>/README.md``
    and ``<cards_dir>/<name>.md`` (``cards_dir``: the manifest's folder). Returns the card files."""
    manifest = Path(manifest)
    root = _root(manifest)
    cards_dir = Path(cards_dir) if cards_dir is not None else manifest.parent
    written = []
    for entry in _entries(manifest):
        folder = root / entry["folder"]
        results = []
        if entry.get("results"):
            results = results_for(
                root / entry["results"],
                entry["folder"],
                root / entry["folder"],
                *entry.get("aliases", []),
                fingerprints={weights_fingerprint(str(folder))},
            )
        card = render_model_card(
            entry["facts"],
            results,
            entry.get("repo_id") or f"your-org/{folder.name}",
            entry.get("license", "apache-2.0"),
        )
        card.save(folder / "README.md")
        card.save(cards_dir / f"{entry['name']}.md")
        written.append(cards_dir / f"{entry['name']}.md")
    return written


def upsert_manifest_entry(manifest: str | os.PathLike, entry: dict[str, Any]) -> None:
    """Adds or replaces (by ``name``) one entry of ``manifest``; ONNX graphs it records are marked
    ``rebuilt_by`` :data:`ONNX_REBUILD` (the repository does not commit them)."""
    manifest = Path(manifest)
    onnx = entry.get("facts", {}).get("onnx")
    if onnx and onnx.get("files"):
        onnx["rebuilt_by"] = ONNX_REBUILD
    entries = [e for e in _entries(manifest) if e["name"] != entry["name"]] + [entry]
    atomic_write_text(
        manifest, json.dumps(sorted(entries, key=lambda e: e["name"]), indent=2, default=str) + "\n"
    )


def manifest_entry(
    manifest: str | os.PathLike, name: str, folder: str | os.PathLike | None = None
) -> dict[str, Any]:
    """The entry ``name`` of ``manifest``; with ``folder``, checked to record that very folder.

    Raises:
        ValueError: naming ``manifest_name`` (the entry is missing) or ``folder`` (another one)."""
    entries = {e["name"]: e for e in _entries(manifest)}
    if name not in entries:
        raise ValueError(f"`manifest_name` {name!r} is not in {manifest}: {sorted(entries)}.")
    entry = entries[name]
    if folder is not None and (_root(manifest) / entry["folder"]).resolve() != Path(folder).resolve():
        raise ValueError(
            f"`manifest_name` {name!r} records {_root(manifest) / entry['folder']}, not `folder` {folder}."
        )
    return entry


def add_entry_facts(manifest: str | os.PathLike, name: str, **facts: Any) -> dict[str, Any]:
    """Adds ``facts`` (e.g. ``onnx=``, ``speed=``) to the card facts of entry ``name``; returns it."""
    entry = manifest_entry(manifest, name)
    entry["facts"].update(facts)
    upsert_manifest_entry(manifest, entry)
    return entry


def shipped_model_recorder(
    manifest: str | os.PathLike, name: str, results_file: str | os.PathLike | None
) -> Callable[[ExportRecord], None]:
    """An ``on_exported`` hook for :func:`seed_hf.export.hub.export_student` and its siblings: records the
    exported folder as entry ``name`` of ``manifest``, its card rows to come from ``results_file``."""

    def record(export: ExportRecord) -> None:
        root = _root(manifest)
        upsert_manifest_entry(
            manifest,
            {
                "name": name,
                "folder": os.path.relpath(export.folder.resolve(), root),
                "results": os.path.relpath(Path(results_file).resolve(), root) if results_file else None,
                "aliases": [],
                "facts": export.facts,
                "repo_id": export.repo_id,
                "license": export.license,
            },
        )

    return record


def entry_folder(manifest: str | os.PathLike, entry: dict[str, Any]) -> Path:
    """The folder of ``entry`` (the manifest holds it relative to the repository root)."""
    return _root(manifest) / entry["folder"]


def onnx_entries(manifest: str | os.PathLike) -> list[dict[str, Any]]:
    """The entries of ``manifest`` that record ONNX graphs (``facts["onnx"]["files"]``)."""
    return [e for e in _entries(manifest) if (e["facts"].get("onnx") or {}).get("files")]


@dataclass
class OnnxRebuildCheck:
    """A rebuilt ONNX record against the recorded one (:func:`check_onnx_rebuild`)."""

    identical: bool  # every recorded file rebuilt with its recorded sha256, and no other file
    problems: list[str] = field(default_factory=list)  # empty: the rebuild stands for the record
    figures: list[str] = field(default_factory=list)  # recorded -> rebuilt, one line per figure


def _files(record: dict[str, Any]) -> dict[str, str]:
    return {f["path"]: f["sha256"] for f in record.get("files", [])}


def _int8(record: dict[str, Any]) -> dict[str, Any]:
    """The int8 figures of an ONNX record, kept or refused (``int8_refused``)."""
    return record.get("int8") or record.get("int8_refused") or {}


def _knn(record: dict[str, Any]) -> dict[str, Any]:
    return _int8(record).get("knn") or {}


def check_onnx_rebuild(
    recorded: dict[str, Any], rebuilt: dict[str, Any], tolerance: dict[str, float] | None = None
) -> OnnxRebuildCheck:
    """Whether ``rebuilt`` (the record of a new export, :func:`seed_hf.export.onnx_export.export_onnx`)
    stands for ``recorded`` (an entry's ``facts["onnx"]``).

    Both must be of the same weights and list the same files. Byte-identical files are the recorded
    graphs, whatever the figures measured on this CPU. Other bytes pass when the export settings
    and evaluation data are the recorded ones and each weighted-kNN top-1 is within ``tolerance``
    (default :data:`ONNX_REBUILD_TOLERANCE`) of the recorded one; the fp32 graph was verified
    against PyTorch by the export itself (it raises otherwise)."""
    tolerance = ONNX_REBUILD_TOLERANCE if tolerance is None else tolerance
    check = OnnxRebuildCheck(identical=False)
    old, new = _files(recorded), _files(rebuilt)
    if not old:
        check.problems.append("the record lists no ONNX file")
    if rebuilt.get("source_weights_sha256") != recorded.get("source_weights_sha256"):
        check.problems.append(
            f"the record is of weights {recorded.get('source_weights_sha256')}, the folder's are "
            f"{rebuilt.get('source_weights_sha256')}: record its graphs anew (make onnx-record)"
        )
    if missing := sorted(set(old) - set(new)):
        refused = rebuilt.get("int8_refused")
        check.problems.append(
            f"not rebuilt: {', '.join(missing)}"
            + (f" (int8 refused on this machine: {'; '.join(refused['shortfalls'])})" if refused else "")
        )
    if extra := sorted(set(new) - set(old)):
        check.problems.append(f"rebuilt but not recorded: {', '.join(extra)}")
    check.identical = bool(old) and old == new
    for path in sorted(set(old) & set(new)):
        same = "identical" if old[path] == new[path] else "differs"
        check.figures.append(f"{path}: sha256 {old[path]} -> {new[path]} ({same})")
    for key in ("max_abs_diff", "versions"):
        check.figures.append(f"{key}: {recorded.get(key)} -> {rebuilt.get(key)}")
    cosines = [_int8(r).get("cosine_to_fp32") for r in (recorded, rebuilt)]
    check.figures.append(f"int8 cosine to fp32: {cosines[0]} -> {cosines[1]}")
    old_knn, new_knn = _knn(recorded), _knn(rebuilt)
    for key in ("fp32_top1", "int8_top1"):
        if key in old_knn:
            check.figures.append(f"kNN {key}: {old_knn[key]} -> {new_knn.get(key)}")
    if check.identical or check.problems:
        return check
    # other bytes: the same export of the same data, and figures within the tolerance
    settings = ["exporter", "opset", "input", "output", "verified_on", "reparameterized"]
    for key in settings:
        if recorded.get(key) != rebuilt.get(key):
            check.problems.append(
                f"{key} {recorded.get(key)!r} was recorded, the rebuild has {rebuilt.get(key)!r}"
            )
    for key in ("method", "calibration"):
        old_value, new_value = (_int8(r).get(key) for r in (recorded, rebuilt))
        if old_value != new_value:
            check.problems.append(f"int8 {key} {old_value!r} was recorded, the rebuild has {new_value!r}")
    for key in ("dataset", "eval_split", "k", "temperature", "num_train", "num_eval"):
        if old_knn.get(key) != new_knn.get(key):
            check.problems.append(
                f"kNN {key} {old_knn.get(key)!r} was recorded, the rebuild has {new_knn.get(key)!r}"
            )
    for key, limit in tolerance.items():
        if key in old_knn and not abs(new_knn.get(key, float("nan")) - old_knn[key]) <= limit:
            check.problems.append(
                f"kNN {key} {new_knn.get(key)} is more than {limit} from the recorded {old_knn[key]}"
            )
    return check

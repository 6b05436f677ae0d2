"""The repository's own list of the models it ships (``model_cards/models.json``) and the cards
re-rendered from it (``make cards``).

Each entry is ``{"name", "folder", "results", "aliases", "facts", "repo_id", "license"}``, paths
relative to the repository root (the manifest's parent's parent). An export reaches it through
the library's ``on_exported`` hook (:func:`shipped_model_recorder`), a benchmark or an ONNX export
adds its record to an entry's facts (:func:`add_entry_facts`), and :func:`render_manifest_cards`
writes every card from the facts and the results file each entry names. A user's export never
needs it: it belongs to a repository that ships several models and keeps their cards in step.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..cards import render_model_card, results_for
from ..hub import ExportRecord
from ..teachers import weights_fingerprint

__all__ = [
    "add_entry_facts",
    "manifest_entry",
    "render_manifest_cards",
    "shipped_model_recorder",
    "upsert_manifest_entry",
]


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
    """Adds or replaces (by ``name``) one entry of ``manifest``."""
    manifest = Path(manifest)
    entries = [e for e in _entries(manifest) if e["name"] != entry["name"]] + [entry]
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps(sorted(entries, key=lambda e: e["name"]), indent=2, default=str) + "\n")


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
    """An ``on_exported`` hook for :func:`seed_hf.hub.export_student` and its siblings: records the
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

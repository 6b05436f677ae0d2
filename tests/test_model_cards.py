"""The cards in model_cards/ are the rendered cards of the models the repository ships, in sync
with the results JSON they were rendered from (``make cards`` regenerates them)."""

import json
from pathlib import Path

import pytest

from seed_hf.cards import results_for
from seed_hf.cli.manifest import render_manifest_cards

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "model_cards" / "models.json"
ENTRIES = json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else []


def test_every_shipped_model_has_a_card():
    assert ENTRIES, "model_cards/models.json lists no shipped model"
    names = {e["name"] for e in ENTRIES}
    assert {p.stem for p in (ROOT / "model_cards").glob("*.md")} - {"README"} == names
    for entry in ENTRIES:
        assert (ROOT / entry["folder"] / "config.json").is_file(), entry["folder"]
        assert (ROOT / entry["folder"] / "README.md").is_file(), entry["folder"]


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_card_is_in_sync_with_its_results(entry, tmp_path, monkeypatch):
    from huggingface_hub import ModelCard

    monkeypatch.chdir(ROOT)  # results JSON rows name models by repository-relative paths
    card = ModelCard.load(ROOT / "model_cards" / f"{entry['name']}.md")
    assert card.data.to_dict() == ModelCard.load(ROOT / entry["folder"] / "README.md").data.to_dict()
    rows = (
        results_for(ROOT / entry["results"], entry["folder"], *entry.get("aliases", []))
        if entry.get("results")
        else []
    )
    measured = [round(float(r[k]), 2) for r in rows for k in ("knn_top1", "linear_top1") if k in r]
    assert [e.metric_value for e in card.data.eval_results or []] == measured
    assert str(ROOT) not in card.text and "/tmp/" not in card.text  # no local paths
    # re-rendering from the manifest gives exactly the committed card
    manifest = tmp_path / "model_cards" / "models.json"
    manifest.parent.mkdir()
    for e in [entry]:
        moved = {
            **e,
            "folder": str(ROOT / e["folder"]),
            "results": e.get("results") and str(ROOT / e["results"]),
        }
        manifest.write_text(json.dumps([moved]))
    folder_card = (ROOT / entry["folder"] / "README.md").read_text()
    try:
        (rendered,) = render_manifest_cards(manifest, tmp_path / "cards")
        assert rendered.read_text() == (ROOT / "model_cards" / f"{entry['name']}.md").read_text()
    finally:  # render_manifest_cards also rewrote the folder's README: restore it byte for byte
        (ROOT / entry["folder"] / "README.md").write_text(folder_card)


def test_an_export_recorded_through_its_hook_renders_the_same_card(tmp_path):
    """``shipped_model_recorder`` (the script layer) gets the export's record through the library's
    ``on_exported`` hook; the card re-rendered from the manifest is the exported folder's card, and
    facts added later (ONNX, speed) reach the card; a missing entry is named."""
    from helpers import tiny_student

    from seed_hf.cli.manifest import add_entry_facts, manifest_entry, shipped_model_recorder
    from seed_hf.hub import ExportRecord, export_student

    manifest = tmp_path / "model_cards" / "models.json"
    records = []
    recorder = shipped_model_recorder(manifest, "tiny", None)
    folder = export_student(
        tiny_student(), tmp_path / "tiny", on_exported=lambda r: (records.append(r), recorder(r))
    )
    (record,) = records
    assert isinstance(record, ExportRecord) and record.folder == folder and record.facts["method"] == "seed"
    entry = manifest_entry(manifest, "tiny", folder)
    assert entry["folder"] == "tiny" and entry["license"] == record.license
    exported_card = (folder / "README.md").read_text()
    (rendered,) = render_manifest_cards(manifest)
    assert rendered.read_text() == exported_card
    add_entry_facts(manifest, "tiny", speed={"machine": "a test machine", "rows": []})
    assert json.loads(manifest.read_text())[0]["facts"]["speed"]["machine"] == "a test machine"
    with pytest.raises(ValueError, match=r"`manifest_name` 'other' is not in .*\['tiny'\]"):
        manifest_entry(manifest, "other")
    with pytest.raises(ValueError, match="records .*, not `folder`"):
        manifest_entry(manifest, "tiny", tmp_path / "elsewhere")

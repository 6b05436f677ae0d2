"""The cards in model_cards/ are the rendered cards of the models the repository ships, in sync
with the results JSON they were rendered from (``make cards`` regenerates them)."""

import json
from pathlib import Path

import pytest

from seed_hf.cards import render_manifest_cards, results_for

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

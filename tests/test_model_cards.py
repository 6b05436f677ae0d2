"""The cards in model_cards/ are the rendered cards of the models the repository ships, in sync
with the results JSON they were rendered from (``make cards`` regenerates them); they list only
files the repository tracks or ``make onnx`` rebuilds, and the tracked tree stays small enough for
an accelerator machine."""

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import requires_fashion_mnist

from seed_hf.export.cards import results_for
from tools.manifest import ONNX_REBUILD, check_onnx_rebuild, render_manifest_cards

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "model_cards" / "models.json"
ENTRIES = json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else []
# the accelerator machine takes a working tree of at most 64 MiB: the tracked files keep 8 MiB of it
# for what a session adds (a virtual environment's links, build outputs, logs)
TRACKED_TREE_LIMIT_MIB = 56


def _tracked_files() -> list[str]:
    """The repository's tracked paths (``git ls-files``); skips outside a git checkout."""
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    if Path(top.stdout.strip()).resolve() != ROOT:
        pytest.skip(f"{ROOT} is not the root of its git checkout")
    return [p for p in listed.stdout.decode().split("\0") if p]


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

    from seed_hf.export.hub import ExportRecord, export_student
    from tools.manifest import add_entry_facts, manifest_entry, shipped_model_recorder

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


def test_ship_model_records_what_the_installed_export_script_wrote(tmp_path, monkeypatch):
    """``tools/ship_model.py`` (make ship-demo's step) runs the installed ``run_export.py``, which
    knows nothing of the manifest, and records its folder through the script's ``on_exported``
    hook, the card rows to come from the script's ``--eval_results``; a multi-student run is
    refused before anything is exported, and ``run_export_onnx.py`` needs the entry's name."""
    from helpers import tiny_student

    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    import ship_model

    run = tmp_path / "run"
    tiny_student().save_pretrained(run)
    manifest = tmp_path / "model_cards" / "models.json"
    results = tmp_path / "results" / "eval.json"
    results.parent.mkdir()
    results.write_text("[]")  # run_eval.py's rows: none yet
    script = [
        "--student_dir",
        str(run),
        "--output_dir",
        str(tmp_path / "student"),
        "--eval_results",
        str(results),
    ]
    (folder,) = ship_model.main(["--manifest", str(manifest), "run_export.py", *script])
    (entry,) = json.loads(manifest.read_text())
    assert (entry["name"], entry["folder"], entry["results"]) == ("student", "student", "results/eval.json")
    assert folder == tmp_path / "student" and entry["facts"]["method"] == "seed"
    (tmp_path / "multi" / "students").mkdir(parents=True)
    for name in ("a", "b"):
        tiny_student().save_pretrained(tmp_path / "multi" / "students" / name)
    with pytest.raises(ValueError, match="--manifest records one model"):
        ship_model.main(
            ["--manifest", str(manifest), "run_export.py", "--student_dir", str(tmp_path / "multi"),
             "--output_dir", str(tmp_path / "out")]
        )  # fmt: skip
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="--manifest_name is required"):
        ship_model.main(["--manifest", str(manifest), "run_export_onnx.py", "--folder", str(folder)])


def test_tracked_tree_fits_a_gpu_run():
    """The accelerator machine takes at most 64 MiB of working tree: the tracked files (what a
    session's checkout carries there) stay within TRACKED_TREE_LIMIT_MIB."""
    sizes = {p: (ROOT / p).lstat().st_size for p in _tracked_files() if (ROOT / p).is_file()}
    total = sum(sizes.values())
    largest = ", ".join(f"{p} {n / 2**20:.1f}" for p, n in sorted(sizes.items(), key=lambda kv: -kv[1])[:6])
    assert total <= TRACKED_TREE_LIMIT_MIB * 2**20, (
        f"the tracked files hold {total / 2**20:.1f} MiB > {TRACKED_TREE_LIMIT_MIB} MiB; largest (MiB): {largest}"
    )


def _card_files(card: Path) -> list[str]:
    """The files a card's ``Files:`` line lists."""
    lines = [line for line in card.read_text().splitlines() if line.startswith("Files: ")]
    return [
        name for line in lines for name in re.findall(r"`([^`]+)`", line.split(" (`onnx/` rebuilt by")[0])
    ]


def _recipe(makefile: str, target: str) -> str:
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert match, f"the Makefile has no {target} target"
    return match.group(1)


def test_cards_list_only_tracked_or_rebuilt_files():
    """Every file a shipped model's card lists is tracked, or is an ONNX graph its manifest record
    says ``make onnx`` rebuilds (not tracked); ``make onnx`` rebuilds with the flags ``make
    ship-demo`` and ``make study`` record the graphs with."""
    tracked = set(_tracked_files())
    entries = {e["folder"]: e for e in ENTRIES}
    folders = {str(Path(p).parent) for p in tracked if p.endswith("/config.json")}
    cards = [f for f in folders if f"{f}/README.md" in tracked] + [
        f"model_cards/{e['name']}.md" for e in ENTRIES
    ]
    assert set(entries) <= folders
    for card in cards:
        entry = entries.get(card) or next((e for e in ENTRIES if card == f"model_cards/{e['name']}.md"), None)
        folder = entry["folder"] if entry else card
        onnx = (entry or {}).get("facts", {}).get("onnx") or {}
        rebuilt = (
            {f["path"] for f in onnx.get("files", [])} if onnx.get("rebuilt_by") == ONNX_REBUILD else set()
        )
        path = ROOT / card if card.endswith(".md") else ROOT / card / "README.md"
        listed = _card_files(path)
        if entry and entry["facts"].get("format") != "seed_hf_teacher":
            assert listed, f"{path} has no Files line"
        for name in listed:
            name = name.split(" ")[0]
            assert f"{folder}/{name}" in tracked or name in rebuilt, (
                f"{path} lists {name}: neither tracked nor rebuilt"
            )
        for name in rebuilt:
            assert f"{folder}/{name}" not in tracked, (
                f"{folder}/{name} is tracked: its record says it is rebuilt"
            )
        if onnx.get("files"):
            assert onnx.get("rebuilt_by") == ONNX_REBUILD, (
                f"{entry['name']} records graphs no target rebuilds"
            )
            assert f"(`onnx/` rebuilt by `{ONNX_REBUILD}`)" in path.read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "tools/rebuild_onnx.py" in _recipe(makefile, "onnx")
    assert "$(ONNX_EXPORT_FLAGS)" in _recipe(makefile, "onnx")
    for target in ("ship-demo", "study"):
        exports = [line for line in _recipe(makefile, target).splitlines() if "run_export_onnx.py" in line]
        assert exports and all("$(ONNX_EXPORT_FLAGS)" in line for line in exports), target


RECORD = {  # an export_onnx record, as a manifest keeps it
    "exporter": "torchscript",
    "opset": 17,
    "input": {"name": "pixel_values", "shape": ["batch", 3, 64, 64]},
    "output": {"name": "pooler_output", "shape": ["batch", 1024]},
    "max_abs_diff": {"batch_1": 6e-06, "batch_64": 7e-06},
    "verified_on": "64 class-balanced images of fashion_mnist (test split)",
    "source_weights_sha256": "87cda477aec1ee3c",
    "versions": {"torch": "2.14.1", "onnx": "1.23.2", "onnxruntime": "1.32.0"},
    "int8": {
        "method": "static QDQ",
        "calibration": "256 class-balanced images of fashion_mnist (train split)",
        "cosine_to_fp32": {"mean": 0.99, "min": 0.97},
        "knn": {
            "dataset": "fashion_mnist",
            "eval_split": "test",
            "k": 200,
            "temperature": 0.07,
            "num_train": 60000,
            "num_eval": 10000,
            "fp32_top1": 83.43,
            "int8_top1": 83.09,
        },
    },  # fmt: skip
    "files": [
        {"path": "onnx/model.onnx", "size_mb": 5.8, "sha256": "6e8e6da7750d8a0a"},
        {"path": "onnx/model_int8.onnx", "size_mb": 1.77, "sha256": "5f1b626b3974885b"},
    ],
}


def _rebuilt(**changes) -> dict:
    """RECORD with other bytes, and ``changes`` (``"int8.knn.int8_top1": 83.5``) applied."""
    record = copy.deepcopy(RECORD)
    for f in record["files"]:
        f["sha256"] = "0" * 16
    for key, value in changes.items():
        *parents, last = key.split(".")
        target = record
        for parent in parents:
            target = target[parent]
        if value is None:
            del target[last]
        else:
            target[last] = value
    return record


@pytest.mark.parametrize(
    "changes, problem",
    [
        ({}, None),  # other bytes, same figures: another CPU's rounding
        ({"int8.knn.int8_top1": 83.5, "int8.cosine_to_fp32": {"mean": 0.95, "min": 0.8}}, None),
        ({"int8.knn.int8_top1": 83.7}, "kNN int8_top1 83.7 is more than 0.5 from the recorded 83.09"),
        ({"int8.knn.fp32_top1": 83.6}, "kNN fp32_top1 83.6 is more than 0.1 from the recorded 83.43"),
        ({"int8.method": "dynamic"}, "int8 method 'static QDQ' was recorded, the rebuild has 'dynamic'"),
        ({"int8.knn.num_eval": 50}, "kNN num_eval 10000 was recorded, the rebuild has 50"),
        ({"opset": 18}, "opset 17 was recorded, the rebuild has 18"),
        (
            {"source_weights_sha256": "0000"},
            "the record is of weights 87cda477aec1ee3c, the folder's are 0000: record its graphs anew (make onnx-record)",
        ),
        (
            {
                "files": RECORD["files"][:1],
                "int8": None,
                "int8_refused": {"shortfalls": ["mean cosine 0.9 < 0.98"]},
            },
            "not rebuilt: onnx/model_int8.onnx (int8 refused on this machine: mean cosine 0.9 < 0.98)",
        ),
    ],
)
def test_a_rebuilt_onnx_record_is_checked_against_the_recorded_one(changes, problem):
    """check_onnx_rebuild (make onnx): byte-identical graphs are the recorded ones; other bytes pass
    with the same export settings and data and kNN top-1 within the tolerance; every shortfall is
    named with both figures."""
    assert check_onnx_rebuild(RECORD, copy.deepcopy(RECORD)).identical
    assert check_onnx_rebuild(RECORD, copy.deepcopy(RECORD)).problems == []
    check = check_onnx_rebuild(RECORD, _rebuilt(**changes))
    assert not check.identical
    assert check.problems == ([problem] if problem else [])
    assert "kNN int8_top1: 83.09 -> " + str(_knn_int8(changes)) in check.figures
    if "files" not in changes:
        assert "onnx/model.onnx: sha256 6e8e6da7750d8a0a -> 0000000000000000 (differs)" in check.figures


def _knn_int8(changes: dict):
    return changes.get("int8.knn.int8_top1", None if "int8" in changes else 83.09)


def test_an_extra_rebuilt_file_or_an_empty_record_is_named():
    rebuilt = copy.deepcopy(RECORD)
    rebuilt["files"].append({"path": "onnx/other.onnx", "size_mb": 1.0, "sha256": "ab"})
    assert check_onnx_rebuild(RECORD, rebuilt).problems == ["rebuilt but not recorded: onnx/other.onnx"]
    assert "the record lists no ONNX file" in check_onnx_rebuild({}, RECORD).problems


@requires_fashion_mnist
def test_make_onnx_rebuilds_and_checks_a_recorded_folder(tmp_path, monkeypatch):
    """rebuild_onnx.py (make onnx) on a tiny shipped model: --record records its graphs as make
    ship-demo does; a rebuild then writes byte-identical graphs into the folder and leaves the
    manifest and card as they are; against a record it does not match, it names the figure and
    leaves the folder's onnx/ alone."""
    pytest.importorskip("onnxruntime")
    from helpers import tiny_student

    from seed_hf.export.hub import export_student
    from tools.manifest import shipped_model_recorder

    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    import rebuild_onnx

    manifest = tmp_path / "model_cards" / "models.json"
    student = tiny_student(student_architecture="mobilenetv3_small_100", in_chans=1, image_size=32)
    export_student(student, tmp_path / "student", on_exported=shipped_model_recorder(manifest, "tiny", None))
    flags = [
        "--manifest",
        str(manifest),
        "--work_dir",
        str(tmp_path / "work"),
        "--export_flags=--onnx_int8 --onnx_fashion_mnist_dir /usr/share/datasets/fashion-mnist "
        "--onnx_max_train_samples 200 --onnx_max_eval_samples 50",
    ]
    with pytest.raises(ValueError, match=r"--names \['other'\] record no onnx/"):
        rebuild_onnx.main([*flags, "--names", "other"])
    recorded = rebuild_onnx.main([*flags, "--record", "--names", "tiny"])["tiny"]
    assert recorded["rebuilt_by"] == ONNX_REBUILD and recorded["files"]
    graphs = {f["path"]: (tmp_path / "student" / f["path"]).read_bytes() for f in recorded["files"]}
    shipped = {p: p.read_bytes() for p in (manifest, tmp_path / "student" / "README.md")}
    assert "(`onnx/` rebuilt by `make onnx`)" in shipped[tmp_path / "student" / "README.md"].decode()
    for path in graphs:
        (tmp_path / "student" / path).unlink()

    (check,) = rebuild_onnx.main(flags).values()
    assert check.identical and check.problems == []
    assert {p: (tmp_path / "student" / p).read_bytes() for p in graphs} == graphs
    assert {p: p.read_bytes() for p in shipped} == shipped and not (tmp_path / "work" / "tiny").exists()

    entries = json.loads(manifest.read_text())
    entries[0]["facts"]["onnx"]["files"][0]["sha256"] = "0" * 16
    entries[0]["facts"]["onnx"]["opset"] = 16
    manifest.write_text(json.dumps(entries))
    script = subprocess.run(  # what make onnx runs: a rebuild unlike its record fails the target
        [sys.executable, str(ROOT / "tools" / "rebuild_onnx.py"), *flags],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    assert {p: (tmp_path / "student" / p).read_bytes() for p in graphs} == graphs  # left alone
    assert (tmp_path / "work" / "tiny" / "model" / "onnx").is_dir()  # the rebuild, for a look
    assert script.returncode == 1 and "tiny: opset 16 was recorded, the rebuild has 17" in script.stderr

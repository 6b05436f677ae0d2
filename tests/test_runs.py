"""A run folder's decision (RunFolder: fresh, resume, finished, refused), its checkpoints (which one a
run resumes from and which ones it removes) and a pipeline's recipe kept with it."""

import json
from types import SimpleNamespace

import pytest

from seed_hf.cli.runs import resolve_checkpoint
from seed_hf.training.run_folder import (
    COMPLETE_MARKER,
    PIPELINE_RECIPE_FILE,
    RunFolder,
    RunFolderRefused,
    remove_incomplete_checkpoints,
)


def _checkpoint(output_dir, step: int, finished: bool = True, marked: bool = False):
    path = output_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")
    if finished:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if marked:
        (path / COMPLETE_MARKER).write_text(json.dumps({"global_step": step}))
    return path


def _resolve(output_dir, resume=None):
    return resolve_checkpoint(
        SimpleNamespace(resume_from_checkpoint=resume, output_dir=str(output_dir), overwrite_output_dir=False)
    )


def test_checkpoints_without_markers_of_another_program_are_resumed_not_deleted(tmp_path, caplog):
    """A run folder written before completion markers (or by a plain Trainer): its finished
    checkpoints are resumed from and kept; only a save that never finished is removed."""
    _checkpoint(tmp_path, 500)
    _checkpoint(tmp_path, 1000)
    _checkpoint(tmp_path, 1500, finished=False)  # killed while saving
    assert _resolve(tmp_path).endswith("checkpoint-1000")
    assert "completion marker" in caplog.text
    assert remove_incomplete_checkpoints(str(tmp_path)) == ["checkpoint-1500"]
    assert (tmp_path / "checkpoint-500").is_dir() and (tmp_path / "checkpoint-1000").is_dir()
    # an explicit older checkpoint keeps the newer ones too
    assert remove_incomplete_checkpoints(str(tmp_path), keep=str(tmp_path / "checkpoint-500")) == []
    assert (tmp_path / "checkpoint-1000").is_dir()


def test_marked_checkpoints_still_decide(tmp_path):
    """With markers, an unmarked newer checkpoint is an interrupted save, even with its trainer state."""
    _checkpoint(tmp_path, 2, marked=True)
    _checkpoint(tmp_path, 4)  # trainer_state.json written, killed before every process finished
    assert _resolve(tmp_path).endswith("checkpoint-2")
    assert remove_incomplete_checkpoints(str(tmp_path)) == ["checkpoint-4"]
    assert (tmp_path / "checkpoint-2").is_dir()


def test_a_checkpoint_written_again_loses_its_old_marker_before_the_save(tmp_path):
    """--overwrite_output_dir over an older run (or a resume from an older checkpoint) saves into an
    existing, marked checkpoint-N: a kill half-way through that save must not leave it marked."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from seed_hf.training.callbacks import CheckpointCompletionCallback

    old = _checkpoint(tmp_path, 2, marked=True)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    callback, state = CheckpointCompletionCallback(), TrainerState(global_step=2)
    callback.on_step_end(args, state, TrainerControl(should_save=False))
    assert (old / COMPLETE_MARKER).is_file()  # no save at this step: untouched
    callback.on_step_end(args, state, TrainerControl(should_save=True))
    assert not (old / COMPLETE_MARKER).exists()  # the Trainer writes into it next
    callback.on_save(args, state, TrainerControl())
    assert (old / COMPLETE_MARKER).is_file()


def test_the_decision_on_a_folder(tmp_path):
    """fresh (nothing there, or only what a run records before its first step), resume (a complete
    checkpoint), finished (the requested length reached: its results), refused (files of no run; a
    run of another teacher)."""
    run_dir = tmp_path / "run"
    assert RunFolder(run_dir, max_steps=4).decide() == "fresh"
    run_dir.mkdir()
    (run_dir / "run_info.json").write_text(json.dumps({"teacher_sha256": "aaa"}))
    (run_dir / PIPELINE_RECIPE_FILE).write_text("{}")
    assert RunFolder(run_dir, max_steps=4).decide(teacher_sha256="aaa") == "fresh"
    with pytest.raises(RunFolderRefused, match="distilled from another teacher") as refused:
        RunFolder(run_dir, max_steps=4).decide(teacher_sha256="bbb")
    assert refused.value.differences == {"teacher weights sha256": ("aaa", "bbb")}
    assert RunFolder(run_dir, overwrite=True).decide(teacher_sha256="bbb") == "fresh"
    _checkpoint(run_dir, 2, marked=True)
    run = RunFolder(run_dir, max_steps=4)
    assert run.decide() == "resume" and run.checkpoint.endswith("checkpoint-2")
    (run_dir / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    (run_dir / "train_results.json").write_text(json.dumps({"train_loss": 1.5}))
    run = RunFolder(run_dir, max_steps=4)
    assert run.decide() == "finished" and run.results == {"train_loss": 1.5} and run.checkpoint is None
    assert RunFolder(run_dir, max_steps=8).decide() == "resume"  # a longer run: trained on
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a run")
    with pytest.raises(ValueError, match="already exists and is not empty"):
        RunFolder(foreign).decide()


def test_a_pipeline_moves_a_run_of_another_recipe_aside(tmp_path):
    """RunFolder.claim (the Fashion-MNIST study's stages): the same recipe is resumed, another recipe
    or other teacher weights move the folder aside (never over an earlier one), naming what differs."""

    def recipe(tau=0.01, sha="old"):
        return {"teacher_temperature": tau, "max_steps": 10, "_teacher_weights_sha256": sha}

    run = tmp_path / "seed_student"
    assert RunFolder(run).claim(recipe()) == (None, [])  # nothing there
    (run / "checkpoint-5").mkdir()  # interrupted: the recipe was recorded before it started
    assert RunFolder(run).claim(recipe()) == (None, [])  # same recipe: resumed
    assert (run / "checkpoint-5").is_dir()

    moved, differences = RunFolder(run).claim(recipe(tau=0.0001))
    assert moved.name.startswith("seed_student.recipe-") and (moved / "checkpoint-5").is_dir()
    assert not (run / "checkpoint-5").exists()
    assert differences == ["--teacher_temperature 0.01 → 0.0001"]
    # trained again with τ_T 1e-4; then `make teacher` rebuilds the teacher
    moved_again, differences = RunFolder(run).claim(recipe(tau=0.0001, sha="new"))
    assert moved_again != moved and moved_again.is_dir()
    assert differences == ["teacher weights sha256 old → new"]
    assert json.loads((run / PIPELINE_RECIPE_FILE).read_text()) == recipe(tau=0.0001, sha="new")

    # a run folder without a recorded recipe (an older study) is not vouched for: moved aside, never over another
    for expected in ("moco_student.recipe-unrecorded", "moco_student.recipe-unrecorded-2"):
        (tmp_path / "moco_student").mkdir(exist_ok=True)  # claim left it holding its recipe: dropped below
        moved, differences = RunFolder(tmp_path / "moco_student").claim({})
        assert moved.name == expected and "no recipe recorded" in differences[0]
        (tmp_path / "moco_student" / PIPELINE_RECIPE_FILE).unlink()

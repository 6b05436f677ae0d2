"""A run folder's checkpoints: which one a run resumes from and which ones it removes."""

import json
from types import SimpleNamespace

from seed_hf.cli.runs import resolve_checkpoint
from seed_hf.training.run_folder import COMPLETE_MARKER, remove_incomplete_checkpoints


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

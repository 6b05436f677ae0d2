"""SIGTERM / SIGUSR1 (what SLURM and Kubernetes send before they kill) make a run finish its optimizer
step, save a complete checkpoint of it and exit with PREEMPTED_EXIT_CODE; the re-run resumes from that
checkpoint and ends bit-for-bit where an uninterrupted run ends (weights, BN statistics and queue)."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerControl, TrainerState

from seed_hf.training.callbacks import (
    PREEMPTED_EXIT_CODE,
    PREEMPTION_SIGNALS,
    CheckpointCompletionCallback,
    PreemptionCallback,
    TrainingPreempted,
)
from seed_hf.training.run_folder import COMPLETE_MARKER

SCRIPT = Path(__file__).with_name("preempt_train.py")
ROOT = Path(__file__).resolve().parents[1]
STEPS = 9


def _run(out: Path, *signal_at, nproc: int = 1) -> subprocess.CompletedProcess:
    """preempt_train.py into ``out`` (``signal_at``: signal name and step), in 1 process or ``nproc`` gloo ones."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    launcher = [sys.executable]
    if nproc > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launcher += ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}"]
    cmd = [*launcher, str(SCRIPT), str(out), str(STEPS), *map(str, signal_at)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _final_state(out: Path) -> dict:
    return torch.load(out / "final.pt")


def _assert_preempted_at(
    out: Path, result: subprocess.CompletedProcess, name: str, step: int, ranks: int = 1
):
    output = result.stdout[-3000:] + result.stderr[-3000:]
    assert f"Preempted by {name}: training stopped after step {step} of {STEPS}" in result.stderr, output
    for rank in range(ranks):  # every rank stopped at the same step, with the documented code
        record = json.loads((out / f"preempted-rank{rank}.json").read_text())
        assert (record["step"], record["code"], record["signal"]) == (step, PREEMPTED_EXIT_CODE, name), record
    assert (out / f"checkpoint-{step}" / COMPLETE_MARKER).is_file(), sorted(os.listdir(out))
    assert not any((out / f"checkpoint-{s}").exists() for s in range(step + 1, STEPS + 1))
    # train_and_save wrote nothing that claims a finished run
    for name in ("model.safetensors", "train_results.json", "trainer_state.json", "final.pt"):
        assert not (out / name).exists(), name


def _assert_same_end(out: Path, expected: dict, resumed_from: str) -> None:
    final = _final_state(out)
    assert Path(final["resumed_from"]).name == resumed_from
    assert final["state"].keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(final["state"][name], value), name  # weights, BN stats, the queue and its pointer


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    result = _run(out)
    assert result.returncode == 0, result.stderr[-3000:]
    return _final_state(out)["state"]


@pytest.mark.parametrize("name,step", [("SIGTERM", 5), ("SIGUSR1", 3)])
def test_signal_saves_the_step_exits_and_resumes_to_the_uninterrupted_end(
    tmp_path, uninterrupted, name, step
):
    """The signal arrives inside step ``step`` (odd: not a save_steps=2 checkpoint; 5 ends an epoch)."""
    result = _run(tmp_path, name, step)
    assert result.returncode == PREEMPTED_EXIT_CODE, result.stderr[-3000:]
    _assert_preempted_at(tmp_path, result, name, step)
    resumed = _run(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_end(tmp_path, uninterrupted, f"checkpoint-{step}")


@pytest.fixture(scope="module")
def two_processes_stopped(tmp_path_factory):
    """A 2-process (gloo) run whose rank 0 alone receives SIGTERM inside step 5."""
    out = tmp_path_factory.mktemp("ddp_stopped")
    return out, _run(out, "SIGTERM", 5, nproc=2)


def test_two_processes_stop_together_when_only_rank_0_is_signalled(two_processes_stopped):
    out, result = two_processes_stopped
    # torchrun itself exits 1 when a worker exits non-zero; it reports each worker's code
    log = result.stderr[-3000:]
    # torchrun tears the other worker down (SIGTERM) once the first exits: on a loaded machine that can
    # reach a worker between its clean save and its own exit (-15); at least one exits 75, none otherwise
    codes = [int(c) for c in re.findall(r"exitcode  : (-?\d+)", result.stderr)]
    assert result.returncode != 0 and PREEMPTED_EXIT_CODE in codes, log
    assert len(codes) == 2 and set(codes) <= {PREEMPTED_EXIT_CODE, -15}, log
    _assert_preempted_at(out, result, "SIGTERM", 5, ranks=2)


@pytest.mark.slow
def test_two_processes_resume_to_the_uninterrupted_end(tmp_path, two_processes_stopped):
    stopped, _ = two_processes_stopped
    result = _run(tmp_path, nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = _run(stopped, nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_end(stopped, _final_state(tmp_path)["state"], "checkpoint-5")


@pytest.fixture
def handlers():
    """Restores this process's handlers of the preemption signals after the test."""
    saved = {s: signal.getsignal(s) for s in PREEMPTION_SIGNALS}
    yield saved
    for s, handler in saved.items():
        signal.signal(s, handler)


def _args(tmp_path) -> SimpleNamespace:
    return SimpleNamespace(output_dir=str(tmp_path), save_strategy="steps")


def test_callback_stops_at_the_step_end_and_raises_a_system_exit(tmp_path, handlers):
    callback, state, control = (
        PreemptionCallback(),
        TrainerState(global_step=2, max_steps=9),
        TrainerControl(),
    )
    callback.on_train_begin(_args(tmp_path), state, control)
    callback.on_step_end(_args(tmp_path), state, control)
    assert not (control.should_save or control.should_training_stop)  # no signal yet
    os.kill(os.getpid(), signal.SIGUSR1)  # caught: the process goes on
    state.global_step = 3
    callback.on_step_end(_args(tmp_path), state, control)
    assert control.should_save and control.should_training_stop
    control.should_save = True  # save_strategy="epoch" at the epoch end that follows the break
    callback.on_epoch_end(_args(tmp_path), state, control)
    assert not control.should_save  # the step's checkpoint is already written
    with pytest.raises(TrainingPreempted) as stop:
        callback.on_train_end(_args(tmp_path), state, control)
    assert (stop.value.code, stop.value.step, stop.value.signal_name) == (PREEMPTED_EXIT_CODE, 3, "SIGUSR1")
    assert stop.value.checkpoint is None  # nothing was saved in this unit test
    assert not isinstance(stop.value, Exception)  # `except Exception` in user code does not swallow it


def test_signal_in_the_last_step_lets_the_run_finish(tmp_path, handlers):
    callback, state = PreemptionCallback(), TrainerState(global_step=9, max_steps=9)
    control = TrainerControl()
    callback.on_train_begin(_args(tmp_path), state, control)
    os.kill(os.getpid(), signal.SIGTERM)
    control.should_training_stop = True  # DefaultFlowCallback: max_steps reached
    callback.on_step_end(_args(tmp_path), state, control)
    assert not control.should_save
    callback.on_train_end(_args(tmp_path), state, control)  # no TrainingPreempted: the run is complete
    assert {s: signal.getsignal(s) for s in PREEMPTION_SIGNALS} == handlers  # the previous handlers are back


def test_trainers_install_it_before_the_completion_marker(tmp_path):
    """CheckpointCompletionCallback.on_step_end removes a stale marker only when the step saves: the
    preemption callback must have set should_save by then."""
    sys.path.insert(0, str(Path(__file__).parent))
    from helpers import TensorImages, tiny_student, tiny_teacher

    from seed_hf import SeedTrainer, SeedTrainingArguments

    args = SeedTrainingArguments(output_dir=str(tmp_path), max_steps=1, use_cpu=True, report_to="none")
    trainer = SeedTrainer(
        model=tiny_student(), teacher=tiny_teacher(), args=args, train_dataset=TensorImages(8)
    )
    kinds = [type(c) for c in trainer.callback_handler.callbacks]
    assert kinds.index(PreemptionCallback) < kinds.index(CheckpointCompletionCallback)

"""A run killed with SIGKILL and resumed ends exactly where an uninterrupted run ends."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seed_hf.training.run_folder import COMPLETE_MARKER

SCRIPT = Path(__file__).with_name("kill_train.py")
ROOT = Path(__file__).resolve().parents[1]


def _run(out: Path, max_steps: int, kill_at: int = -1, mode: str = "none", source: str = "array") -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SCRIPT), str(out), str(max_steps), str(kill_at), mode, source]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600).returncode


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    assert _run(out, 9) == 0
    return torch.load(out / "final.pt")["state"]


@pytest.mark.parametrize(
    "mode,kill_at,expected_resume", [("step", 7, "checkpoint-6"), ("save", 6, "checkpoint-4")]
)
def test_sigkill_then_resume_matches_uninterrupted_run(
    tmp_path, uninterrupted, mode, kill_at, expected_resume
):
    assert _run(tmp_path, 9, kill_at, mode) == -signal.SIGKILL
    if mode == "save":  # the half-written checkpoint has no completion marker
        assert (tmp_path / "checkpoint-6" / "model.safetensors").is_file()
        assert not (tmp_path / "checkpoint-6" / COMPLETE_MARKER).exists()
        assert (tmp_path / "checkpoint-4" / COMPLETE_MARKER).is_file()
    assert _run(tmp_path, 9) == 0
    final = torch.load(tmp_path / "final.pt")
    assert Path(final["resumed_from"]).name == expected_resume
    for name, value in uninterrupted.items():
        assert torch.equal(final["state"][name], value), name  # weights, BN stats and the queue, bit for bit


def test_map_style_datasets_source_resumes_bit_identical(tmp_path_factory):
    """JPEG rows of a `datasets.Dataset` through 2 dataloader workers: per-sample seeded views."""
    straight, killed = tmp_path_factory.mktemp("rows_straight"), tmp_path_factory.mktemp("rows_killed")
    assert _run(straight, 9, source="rows") == 0
    assert _run(killed, 9, 7, "step", source="rows") == -signal.SIGKILL
    assert _run(killed, 9, source="rows") == 0
    final, expected = torch.load(killed / "final.pt"), torch.load(straight / "final.pt")["state"]
    assert Path(final["resumed_from"]).name == "checkpoint-6"
    for name, value in expected.items():
        assert torch.equal(final["state"][name], value), name

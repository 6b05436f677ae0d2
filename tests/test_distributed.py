"""Two gloo processes on CPU against one process with the same global batch and seed."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("ddp_train.py")
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(
    out: Path, nproc: int, variant: str, steps: int = 5, global_batch: int = 16, extra: tuple = ()
) -> None:
    out.mkdir(parents=True)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if nproc == 1:
        cmd = [sys.executable, str(SCRIPT)]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            f"--master_port={_free_port()}",
            str(SCRIPT),
        ]
    result = subprocess.run(
        cmd + [str(out), str(global_batch), str(steps), variant, *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.parametrize("variant", ["official", "batch_keys"])
def test_two_processes_match_one_process(tmp_path, variant):
    _run(tmp_path / "one", 1, variant)
    _run(tmp_path / "two", 2, variant)
    one = json.loads((tmp_path / "one" / "losses.json").read_text())
    two = json.loads((tmp_path / "two" / "losses.json").read_text())
    assert two["world_size"] == 2 and len(one["losses"]) == len(two["losses"]) == 5
    max_diff = max(abs(a - b) for a, b in zip(one["losses"], two["losses"]))
    print(f"[{variant}] max abs loss difference 1 vs 2 processes: {max_diff:.3e}")
    assert max_diff < 1e-4, (one["losses"], two["losses"])

    rank0 = torch.load(tmp_path / "two" / "rank0.pt")
    rank1 = torch.load(tmp_path / "two" / "rank1.pt")
    single = torch.load(tmp_path / "one" / "rank0.pt")
    assert torch.equal(rank0["queue"], rank1["queue"])  # identical queues on both ranks
    assert rank0["ptr"] == rank1["ptr"] == single["ptr"] == 5 * 16 % 40
    assert torch.allclose(rank0["queue"], single["queue"], atol=1e-5)
    assert torch.allclose(rank0["head"], single["head"], atol=1e-4)


def test_knn_monitor_under_two_processes_does_not_deadlock(tmp_path):
    _run(tmp_path / "one", 1, "official", steps=4, extra=("knn",))
    _run(tmp_path / "two", 2, "official", steps=4, extra=("knn",))  # a deadlock would hit the timeout
    one = json.loads((tmp_path / "one" / "losses.json").read_text())
    two = json.loads((tmp_path / "two" / "losses.json").read_text())
    assert len(two["knn_top1"]) == 2
    # every test image is counted once (gather_for_metrics drops the padding): same accuracy as 1 process
    assert two["knn_top1"] == pytest.approx(one["knn_top1"], abs=1e-6)

"""The installed ``seed-hf`` command: every script behind one command, each ``--help`` the script's own
complete help, a refusal one line and exit 1, ``python -m seed_hf`` (what ``accelerate launch -m`` runs) the
same, and the files the installed package needs declared as its package data."""

from __future__ import annotations

import configparser
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import HfArgumentParser

from seed_hf.cli.main import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _script_flags(module_name: str) -> set[str]:
    """Every ``--flag`` the script's own parser declares (its dataclasses, found in the module)."""
    module = importlib.import_module(module_name)
    seen = []
    original = HfArgumentParser.__init__

    def record(self, dataclass_types=None, **kwargs):
        seen.append(self)
        original(self, dataclass_types, **kwargs)

    HfArgumentParser.__init__ = record
    try:
        with pytest.raises(SystemExit):
            module.main(["--help"])
    finally:
        HfArgumentParser.__init__ = original
    return {flag for parser in seen for action in parser._actions for flag in action.option_strings}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_prints_its_scripts_complete_help(command, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the command names itself in sys.argv[0]
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: seed-hf {command} ")
    flags = _script_flags(COMMANDS[command][0])
    assert len(flags) > 3
    missing = sorted(flag for flag in flags if flag not in out)
    assert not missing, f"seed-hf {command} --help lacks {missing}"


def test_no_or_an_unknown_command_lists_the_commands(capsys):
    for argv in ([], ["distil"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert all(name in err for name in COMMANDS) or "required" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_python_dash_m_seed_hf_runs_a_command_and_refuses_in_one_line(tmp_path):
    """``python -m seed_hf`` is what ``accelerate launch -m seed_hf`` starts in every process."""
    done = subprocess.run(
        [sys.executable, "-m", "seed_hf", "eval", "--models", str(tmp_path / "missing")],
        env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "missing" in last
    assert "Traceback" not in done.stderr


def test_the_package_data_the_installed_package_reads_is_declared():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    patterns = config["options.package_data"]["seed_hf"].replace(",", " ").split()
    declared = {path for pattern in patterns for path in (ROOT / "seed_hf").glob(pattern)}
    assert declared, patterns
    needed = {p for p in (ROOT / "seed_hf").rglob("*") if p.is_file() and p.suffix not in {".py", ".pyc"}}
    needed |= {
        p for p in (ROOT / "seed_hf" / "evaluation" / "metrics").rglob("*.py") if p.parent.name != "metrics"
    }
    assert needed <= declared, f"not installed with the package: {sorted(map(str, needed - declared))}"
    entry_points = config["options.entry_points"]["console_scripts"]
    assert "seed-hf = seed_hf.cli.main:main" in entry_points

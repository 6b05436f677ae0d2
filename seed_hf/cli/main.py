"""``seed-hf``: one console command for the installed scripts (as TRL's ``trl sft``), so a ``pip install``
user runs what a clone runs with ``examples/run_*.py``::

    seed-hf distill --teacher_name_or_path resnet50 --student_architecture efficientnet_b0 ...
    accelerate launch -m seed_hf distill ...        # several processes, mixed precision
    seed-hf eval --models outputs/student --linear_probe

Each command runs its script's ``cli`` (``seed_hf/scripts/``), what ``python -m seed_hf.scripts.<script>`` and
``examples/<script>.py`` run, so ``seed-hf <command> --help`` is the script's own complete help and a refusal
prints one line and exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "distill": ("seed_hf.scripts.run_seed", "distil a frozen teacher into a student (SEED)"),
    "moco": ("seed_hf.scripts.run_moco", "pretrain with MoCo-v2 (teachers, the SSL-only baseline)"),
    "cache": (
        "seed_hf.scripts.run_teacher_cache",
        "run a teacher once and store its embeddings of every view",
    ),
    "eval": ("seed_hf.scripts.run_eval", "kNN and linear probe on frozen features"),
    "export": ("seed_hf.scripts.run_export", "export a student as a Hub folder (timm, AutoModel, pipeline)"),
    "onnx": ("seed_hf.scripts.run_export_onnx", "add verified ONNX graphs to an exported folder"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seed-hf",
        description="SEED self-supervised distillation on the Hugging Face stack. "
        "`seed-hf <command> --help` lists a command's flags.",
    )
    commands = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name, (module, summary) in COMMANDS.items():
        commands.add_parser(name, help=f"{summary} ({module})", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Runs ``seed-hf <command> [flags]``: the command's script with its flags."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:  # no or an unknown command: argparse's help or error (exit 2)
        _parser().parse_args(argv)
        return
    script = importlib.import_module(COMMANDS[argv[0]][0])
    sys.argv = [f"seed-hf {argv[0]}", *argv[1:]]  # the script's usage line names the command
    script.cli(argv[1:])


if __name__ == "__main__":
    main()

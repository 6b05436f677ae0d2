"""The example scripts' command line: an ``HfArgumentParser`` of their argument dataclasses with
an explicit ``--recipe FILE`` flag (:func:`script_parser`), and the parse that expands recipe files
into flags (:func:`parse_script_args`)."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import sys
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

from seed_hf.cli.arguments import DataTrainingArguments

__all__ = ["RECIPE_FLAG", "parse_script_args", "script_parser"]

RECIPE_FLAG = "--recipe"
# flags renamed to the parameter they set (CHANGELOG, issue 31): named in the refusal of the old spelling
RENAMED_FLAGS = {
    "--temperature": "--contrastive_temperature",
    "--moco_temperature": "--contrastive_temperature",
    "--cache_epochs": "--epochs",
    "--cache_dtype": "--dtype",
    "--cache_shard_rows": "--shard_rows",
    "--fmnist_dir": "--fashion_mnist_dir",
}
_RECIPE_HELP = (
    "A recipe file: a JSON object of flag names (without '--') to values, e.g. recipes/*.json; keys "
    "starting with '_' are comments. May be given several times; flags on the command line override "
    "its values wherever they stand."
)


def script_parser(dataclass_types: Any) -> HfArgumentParser:
    """``HfArgumentParser`` of ``dataclass_types`` with the ``--recipe FILE`` flag (shown by
    ``--help``; :func:`parse_script_args` expands it)."""
    parser = HfArgumentParser(dataclass_types, allow_abbrev=False)  # flags in full: `--rec` is no `--recipe`
    parser.add_argument(
        RECIPE_FLAG, metavar="FILE", action="append", default=argparse.SUPPRESS, help=_RECIPE_HELP
    )
    return parser


def parse_script_args(parser: HfArgumentParser, argv: list[str] | None = None) -> tuple:
    """The dataclasses of ``parser`` from the command line, with each ``--recipe FILE`` read as
    the flags it holds: ``run_seed.py --recipe recipes/x.json --max_steps 2``. Command-line flags
    override a recipe's values wherever they stand (the recipes' flags are parsed first); as
    transformers' own ``args_file_flag``, a separate parser takes ``--recipe`` out first.

    Raises:
        SystemExit: with a message and no traceback, for a recipe that is missing, is not valid
            JSON (file, line and column named) or has a key that is no flag (close names given).
        ValueError: ``--eval_strategy`` without the kNN monitor, or arguments no flag takes.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe_parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    recipe_parser.add_argument(RECIPE_FLAG, action="append", default=[])
    recipes, rest = recipe_parser.parse_known_args(argv)
    flags = [flag for recipe in recipes.recipe for flag in _recipe_flags(parser, recipe)]
    *parsed, unused = parser.parse_args_into_dataclasses(flags + rest, return_remaining_strings=True)
    if unused:
        recipe_hint = any(str(token).lower().endswith(".json") for token in unused)
        raise ValueError(
            f"Arguments no flag takes: {unused}."
            + (f" A recipe file is passed as {RECIPE_FLAG} FILE." if recipe_hint else "")
            + _flag_hints(parser, unused)
        )
    parsed = tuple(p for p in parsed if not isinstance(p, argparse.Namespace))  # --recipe's, when added
    _check_evaluation(parsed)
    return parsed


def _flag_hints(parser: HfArgumentParser, unused: list[str]) -> str:
    """`` --old is now --new.`` for a renamed flag, `` Did you mean --x?`` for a close spelling."""
    known = {f"--{name}" for name in _field_names(parser)} | {RECIPE_FLAG}
    hints = []
    for token in (str(t).split("=", 1)[0] for t in unused if str(t).startswith("--")):
        if RENAMED_FLAGS.get(token) in known:
            hints.append(f"{token} is now {RENAMED_FLAGS[token]}")
        elif close := difflib.get_close_matches(token, sorted(known), n=2):
            hints.append(f"{token}: did you mean {' or '.join(close)}?")
    return (" " + "; ".join(hints) + ".") if hints else ""


def _check_evaluation(parsed: tuple) -> None:
    """Refuses ``--eval_strategy`` steps / epoch without the kNN monitor, the scripts' only
    evaluation (the Trainer would ask for an ``eval_dataset`` the scripts have no flag for)."""
    strategy = next((a.eval_strategy for a in parsed if hasattr(a, "eval_strategy")), None)
    data = next((a for a in parsed if isinstance(a, DataTrainingArguments)), None)
    if data is None or strategy is None or strategy == "no" or data.knn_monitor_samples:
        return
    raise ValueError(
        f"--eval_strategy {getattr(strategy, 'value', strategy)} evaluates with the online kNN monitor, which "
        "--knn_monitor_samples 0 (the default) turns off: pass --knn_monitor_samples N (N labelled train images, "
        "N//5 evaluation images, from --knn_dataset_name or --knn_train_dir / --knn_validation_dir; default "
        "Fashion-MNIST), or drop --eval_strategy."
    )


def _field_names(parser: HfArgumentParser) -> list[str]:
    """The fields of the parser's dataclasses: the script's flags without '--'."""
    return sorted({f.name for kind in parser.dataclass_types for f in dataclasses.fields(kind) if f.init})


def _recipe_flags(parser: HfArgumentParser, path: str) -> list[str]:
    """A recipe file as command-line flags, its keys checked against the fields of the parser's
    dataclasses (the flags' names)."""
    try:
        recipe = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SystemExit(f"error: recipe file {path!r} does not exist.") from None
    except json.JSONDecodeError as error:
        raise SystemExit(
            f"error: recipe {path}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}."
        ) from None
    if not isinstance(recipe, dict):
        raise SystemExit(
            f"error: recipe {path} must hold a JSON object of flag names to values, got a {type(recipe).__name__}."
        )
    names = _field_names(parser)
    unknown = [key for key in recipe if not key.startswith("_") and key not in names]
    if unknown:
        named = []
        for key in unknown:
            close = difflib.get_close_matches(key, names, n=3)
            named.append(f"{key!r}" + (f" (close: {', '.join(close)})" if close else ""))
        raise SystemExit(
            f"error: recipe {path}: unknown key{'s' if len(unknown) > 1 else ''} {'; '.join(named)}. Keys are "
            "the script's flags without '--' (see --help); keys starting with '_' are comments."
        )
    flags: list[str] = []
    for key, value in recipe.items():
        if key.startswith("_") or value is None:
            continue
        flags.append(f"--{key}")
        values = value if isinstance(value, list) else [value]
        # a JSON object (e.g. student_model_args) is passed on as JSON, as the flag takes it on the command line
        flags.extend(json.dumps(v) if isinstance(v, dict) else str(v) for v in values)
    return flags

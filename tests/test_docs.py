"""The README and the documentation site (docs/, mkdocs.yml) against the code: the README stays short,
every link, repository path, module name, Makefile target and script flag they mention exists, every
module of seed_hf is in the module map, the README's demo table is what results/ recorded, and the
site builds with no warning."""

import argparse
import ast
import glob
import importlib
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
import unicodedata
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
MODULE_MAP = ROOT / "docs" / "design.md"
README_MAX_LINES = 200

# the first part of a repository path the documents may name (outputs/, runs/ and caches are made by runs)
REPO_DIRS = ("seed_hf", "tools", "examples", "benchmarks", "results", "recipes", "model_cards", "tests")
REPO_DIRS += ("pretrained", "docs")
REPO_FILES = {
    "Makefile",
    "setup.cfg",
    "pyproject.toml",
    "constraints.txt",
    "constraints-oldest.txt",
    "mkdocs.yml",
    "README.md",
    "CHANGELOG.md",
}
# a path after these flags is written by the command, not read
OUTPUT_FLAGS = {"--output_dir", "--output_json", "--output_file", "--export_dir", "--work_dir", "--photo_dir"}
# flags of other programs the documents quote: accelerate launch, torchrun, SLURM, pip
EXTERNAL_FLAGS = {
    "--multi_gpu",
    "--num_processes",
    "--num_machines",
    "--machine_rank",
    "--main_process_ip",
    "--main_process_port",
    "--mixed_precision",
    "--cpu",
    "--nproc_per_node",
    "--shutdown_timeout",
    "--signals_to_handle",
    "--signal",
}
# programs whose own flags the documents quote in their command lines (`ruff format --check`)
EXTERNAL_PROGRAMS = {"ruff", "mkdocs", "pip", "pytest", "git", "torchrun", "sbatch", "scontrol"}


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _split_code(text: str) -> tuple[str, list[str], list[str]]:
    """(prose without fenced blocks, the fenced blocks, the inline code spans of the prose)."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.M | re.S)
    spans = [s for _, s in re.findall(r"(`+)(.+?)\1", prose)]
    return prose, blocks, spans


def _slug(heading: str) -> str:
    """The anchor of a heading as MkDocs (python-markdown's toc) writes it."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(path: Path) -> set[str]:
    prose, _, _ = _split_code(_text(path))
    return {_slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*$", prose, flags=re.M)}


def test_readme_is_short():
    lines = _text(README).splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_exists(page):
    prose, _, _ = _split_code(_text(page))
    missing = []
    for target in re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", prose):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            missing.append(target)
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            missing.append(f"{target} (no such heading)")
    assert not missing, f"{page.name}: broken links {missing}"


def _tokens(code: str) -> list[list[str]]:
    """The commands of a code block or span, each as its shell words."""
    code = code.replace("\\\n", " ")
    commands = []
    for line in code.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line)  # a comment
        for part in re.split(r"&&|\|\||;|\|", line):
            try:
                words = shlex.split(part)
            except ValueError:
                words = part.split()
            if words:
                commands.append(words)
    return commands


def _repo_path(word: str) -> str | None:
    word = word.strip("'\"").rstrip(".,;:)")
    word = re.sub(r"^\(", "", word)
    head = word.split("/", 1)[0]
    if word in REPO_FILES or (head in REPO_DIRS and "/" in word):
        return re.sub(r"<[^>]*>", "*", word)
    return None


def _mentioned_paths(text: str) -> set[str]:
    _, blocks, spans = _split_code(text)
    paths = set()
    for code in [*blocks, *spans]:
        for words in _tokens(code):
            for before, word in zip(["", *words], words, strict=False):
                if before.split("=")[0] in OUTPUT_FLAGS:
                    continue
                for piece in word.split("="):
                    path = _repo_path(piece)
                    if path:
                        paths.add(path)
    return paths


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_path_exists(page):
    missing = sorted(p for p in _mentioned_paths(_text(page)) if not glob.glob(str(ROOT / p)))
    assert not missing, f"{page.name} names paths that do not exist: {missing}"


@cache
def _module_names(module_file: Path) -> set[str]:
    """The names a module defines or imports at its top level (without importing it)."""
    names = set()
    for node in ast.parse(module_file.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {alias.asname or alias.name.split(".")[0] for alias in node.names}
    return names


def _module_file(dotted: str) -> Path | None:
    path = ROOT / dotted.replace(".", "/")
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _resolves(dotted: str) -> bool:
    """``seed_hf.a.b.Name``: the longest prefix that is a module, then a name that module defines."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        module = _module_file(".".join(parts[:end]))
        if module is not None:
            return end == len(parts) or parts[end] in _module_names(module)
    return False


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_seed_hf_name_exists(page):
    """Dotted names (``seed_hf.training.callbacks.PREEMPTED_EXIT_CODE``) and ``from seed_hf... import``
    lines of the code blocks name modules and objects that exist."""
    _, blocks, spans = _split_code(_text(page))
    wrong = set()
    for code in [*blocks, *spans]:
        for dotted in re.findall(r"\bseed_hf(?:\.[A-Za-z_]\w*)+", code):
            if not _resolves(dotted):
                wrong.add(dotted)
        imports = re.findall(r"from (seed_hf[\w.]*) import \(([\w\s,]+)\)", code)
        imports += re.findall(r"from (seed_hf[\w.]*) import ([\w ,]+)$", code, flags=re.M)
        for module, names in imports:
            for name in filter(None, (n.strip() for n in names.split(","))):
                if not _resolves(f"{module}.{name}"):
                    wrong.add(f"from {module} import {name}")
    assert not wrong, f"{page.name} names what seed_hf does not have: {sorted(wrong)}"


def _makefile_targets_and_variables() -> tuple[set[str], set[str]]:
    text = _text(ROOT / "Makefile")
    targets = set(re.findall(r"^([\w-]+):(?!=)", text, flags=re.M))
    variables = set(re.findall(r"^(?:export\s+)?(\w+)\s*\??=", text, flags=re.M))
    return targets, variables


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_make_target_and_variable_exists(page):
    targets, variables = _makefile_targets_and_variables()
    _, blocks, spans = _split_code(_text(page))
    wrong = []
    for code in [*blocks, *spans]:
        for words in _tokens(code):
            if words[0] != "make":
                continue
            for word in words[1:]:
                if "=" in word and word.split("=")[0] not in variables:
                    wrong.append(word)
                elif "=" not in word and not word.startswith("-") and word not in targets:
                    wrong.append(f"make {word}")
    assert not wrong, f"{page.name}: no such Makefile target or variable: {wrong}"


@cache
def _example_flags() -> dict[str, frozenset[str]]:
    """Every option string of each examples/*.py script, read from the parser whose help
    ``examples/<script>.py --help`` prints (the script runs in this process, as ``python`` runs it)."""
    flags = {}
    for script in sorted((ROOT / "examples").glob("*.py")):
        seen = []
        original, argv = argparse.ArgumentParser.print_help, sys.argv
        argparse.ArgumentParser.print_help = lambda self, file=None, seen=seen: seen.append(self)
        sys.argv = [str(script), "--help"]
        try:
            with pytest.raises(SystemExit):
                runpy.run_path(str(script), run_name="__main__")
        finally:
            argparse.ArgumentParser.print_help, sys.argv = original, argv
        assert seen, f"{script.name} --help printed no parser's help"
        flags[script.name] = frozenset(seen[0]._option_string_actions)
    return flags


@cache
def _source_flags(script: Path) -> frozenset[str]:
    """The flags of a benchmarks/ or tools/ script: its ``"--name"`` literals and its dataclass fields
    (read by ``HfArgumentParser``), without importing it."""
    text = _text(script)
    flags = set(re.findall(r"[\"'](--[\w-]+)[\"']", text))
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef) and any("dataclass" in ast.dump(d) for d in node.decorator_list):
            flags |= {f"--{n.target.id}" for n in node.body if isinstance(n, ast.AnnAssign)}
    return frozenset(flags | {"--help", "-h"})


def _script_of(word: str) -> tuple[str, Path] | None:
    """('example' | 'source', the script) for a word naming a script of this repository."""
    if not word.endswith(".py"):
        return None
    path = ROOT / word
    if path.parent == ROOT / "examples" or "/" not in word and (ROOT / "examples" / word).is_file():
        return "example", ROOT / "examples" / Path(word).name
    if path.parent in (ROOT / "benchmarks", ROOT / "tools") and path.is_file():
        return "source", path
    return None


def _flags_used(text: str) -> tuple[list[tuple[str, str]], set[str]]:
    """([(script, flag)] of command lines that run a script, {flags quoted outside such a command})."""
    _, blocks, spans = _split_code(text)
    in_commands, loose = [], set()
    for code in [*blocks, *spans]:
        for words in _tokens(code):
            program = Path(words[0]).name
            if program.startswith("python") and "-m" in words[:-1]:
                program = words[words.index("-m") + 1]
            if program in EXTERNAL_PROGRAMS:
                continue
            script = None
            for word in words:
                found = _script_of(word)
                if found:
                    script = word
                    continue
                flag = word.split("=")[0]
                if not re.fullmatch(r"--[A-Za-z][\w-]*", flag):
                    continue
                if script:
                    in_commands.append((script, flag))
                else:
                    loose.add(flag)
    return in_commands, loose


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_flag_of_a_command_line_is_a_flag_of_its_script(page):
    commands, loose = _flags_used(_text(page))
    examples = _example_flags()
    wrong = []
    for script, flag in commands:
        kind, path = _script_of(script)
        known = examples[path.name] if kind == "example" else _source_flags(path)
        if flag not in known:
            wrong.append(f"{script} {flag}")
    every_flag = set().union(*examples.values(), EXTERNAL_FLAGS)
    for script in [*(ROOT / "benchmarks").glob("*.py"), *(ROOT / "tools").glob("*.py")]:
        every_flag |= _source_flags(script)
    # a prefix (`--knn_` options) is a prefix of some flag
    prefixes = {f for f in loose if f.endswith("_") and any(g.startswith(f) for g in every_flag)}
    wrong += [f"{flag} (no script has it)" for flag in sorted(loose - every_flag - prefixes)]
    assert not wrong, f"{page.name}: flags that do not exist: {wrong}"


def test_every_seed_hf_module_is_in_the_module_map():
    text = _text(MODULE_MAP)
    modules = sorted((ROOT / "seed_hf").rglob("*.py"))
    missing = []
    for module in modules:
        path = module.relative_to(ROOT)
        # a package is named by its folder (`seed_hf/models/`) or its __init__.py
        if f"`{path}`" not in text and not (module.name == "__init__.py" and f"`{path.parent}/`" in text):
            missing.append(str(path))
    assert not missing, f"docs/design.md's module map lacks {missing}"


def _recorded_row(results: str, model: str) -> dict:
    rows = json.loads((ROOT / results).read_text())
    return next(r for r in rows if r["model"] == model and r["label_fraction"] == 1.0)


def test_the_readme_demo_table_is_what_results_recorded():
    """Each row of the README's demo table gives the kNN and linear-probe top-1 of the rows it names,
    as results/ recorded them (rounded to 2 decimals)."""
    recorded = {
        "MoCo-v2 teacher": ("results/teacher/eval_results.json", "pretrained/fmnist-mocov2-resnet18"),
        "raw pixels": ("results/teacher/eval_results.json", "pixels"),
        "centred pixels": ("results/teacher/eval_results.json", "pixels_centred"),
        "SEED student": ("results/demo/eval_results.json", "results/demo/student"),
        "MoCo-v2 alone": (
            "results/demo/moco_baseline/eval_results.json",
            "results/demo/moco_baseline/student",
        ),
    }
    table = [line for line in _text(README).splitlines() if re.match(r"\|.*\| [\d.*]+ \| [\d.*]+ \|$", line)]
    assert len(table) == len(recorded), table
    for line in table:
        label, knn, linear = (c.strip().strip("*") for c in line.strip("|").split("|"))
        key = next(k for k in recorded if k in label)
        row = _recorded_row(*recorded[key])
        assert (float(knn), float(linear)) == (round(row["knn_top1"], 2), round(row["linear_top1"], 2)), line


def test_the_docs_site_builds_without_warnings(tmp_path):
    """``make docs``' build: a warning (broken link, missing page, unknown anchor) fails it."""
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs / mkdocs-material not installed (the dev extra); make docs builds the site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    assert (tmp_path / "site" / "index.html").is_file()


def test_the_link_checker_finds_broken_links(tmp_path):
    """The checks above can fail: a broken link, a missing path and an unknown flag are caught."""
    page = tmp_path / "page.md"
    page.write_text(
        "[gone](nowhere.md) `seed_hf/no_such_module.py`\n\n"
        "```bash\npython examples/run_seed.py --no_such_flag 1\n```\n"
    )
    prose, _, _ = _split_code(_text(page))
    assert re.findall(r"\]\(([^)]+)\)", prose) == ["nowhere.md"] and not (tmp_path / "nowhere.md").exists()
    assert "seed_hf/no_such_module.py" in _mentioned_paths(_text(page))
    assert not (ROOT / "seed_hf" / "no_such_module.py").exists()
    assert ("examples/run_seed.py", "--no_such_flag") in _flags_used(_text(page))[0]
    assert "--no_such_flag" not in _example_flags()["run_seed.py"]
    assert not _resolves("seed_hf.training.callbacks.NoSuchName") and _resolves("seed_hf.training.callbacks")

"""A training run's folder and the one decision every script takes on it (:class:`RunFolder`):
train from the start, resume from a checkpoint, report a finished run, or refuse (another live run
holds the folder; it holds a run of another model, recipe or teacher), and the names of the files a
run leaves (``run_info.json``, ``students/``). Its complete checkpoints are in
:mod:`seed_hf.training.checkpoints`, its one writer in :mod:`seed_hf.training.run_lock`, what a
resume must match in :mod:`seed_hf.training.run_recipe` (all importable from here).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
from functools import cached_property
from pathlib import Path
from typing import Any

from transformers.trainer import TRAINER_STATE_NAME  # the Trainer writes it last into checkpoint-N

from seed_hf.training.checkpoints import (
    COMPLETE_MARKER,
    checkpoint_dir,
    is_complete_checkpoint,
    last_complete_checkpoint,
    remove_incomplete_checkpoints,
)
from seed_hf.training.run_lock import RUN_LOCK_SUFFIX, RunFolderInUseError, lock_run_folder, run_lock_files
from seed_hf.training.run_recipe import (
    GLOBAL_BATCH_KEY,
    OPTIMIZATION_KEY,
    RUN_INFO_FILE,
    RunFolderRefused,
    check_same_recipe,
    check_same_shapes,
    global_batch,
    optimization_recipe,
)
from seed_hf.training.step_choice import STEP_CHOICE_FILE

__all__ = [
    "COMPLETE_MARKER",
    "PIPELINE_RECIPE_FILE",
    "RunFolder",
    "RunFolderInUseError",
    "RunFolderRefused",
    "checkpoint_dir",
    "RUN_INFO_FILE",
    "RUN_LOCK_SUFFIX",
    "run_lock_files",
    "lock_run_folder",
    "STUDENTS_DIR",
    "TRAINER_STATE_NAME",
    "is_complete_checkpoint",
    "last_complete_checkpoint",
    "remove_incomplete_checkpoints",
]

logger = logging.getLogger(__name__)

# a multi-student run saves each student into output_dir/students/<name>
STUDENTS_DIR = "students"


# what a run leaves in its folder besides its checkpoints: what a later run would resume or report
# (state, results, run record) and its outputs (final model, students, export)
PREVIOUS_RUN_FILES = (
    TRAINER_STATE_NAME,
    "train_results.json",
    "all_results.json",
    "eval_results.json",
    RUN_INFO_FILE,
    "config.json",
    "model.safetensors",
    "training_args.bin",
    STEP_CHOICE_FILE,
    STUDENTS_DIR,
    "export",
)
# the recipe a pipeline of runs (tools/run_fmnist_study.py) launched a folder's run with: a recipe
# file of the scripts (flags without "--"; "_" keys, comments to the scripts, name what else the
# run depends on), written before the run starts
PIPELINE_RECIPE_FILE = "pipeline_recipe.json"


class RunFolder:
    """A run folder and the decision on it, taken once (:attr:`status`) for every script:

    * ``"fresh"``: nothing to resume, the run trains from its first step;
    * ``"resume"``: it resumes from :attr:`checkpoint` (``resume_from_checkpoint``, or the last
      complete checkpoint of the folder);
    * ``"finished"``: a run there already reached the requested length (``max_steps``, or the same
      ``num_train_epochs``): resuming would train 0 steps and overwrite its results with zeros, so
      the script returns :attr:`results` instead;
    * refused: a ``ValueError`` for a non-empty folder without checkpoint, :class:`RunFolderInUseError`
      from :meth:`lock`, :class:`RunFolderRefused` from :meth:`decide` / :meth:`check_recipe`
      (another teacher, model or recipe).

    ``overwrite`` (``--overwrite_output_dir``) makes every folder fresh; :meth:`start` then removes
    the previous run's files as training starts. A pipeline that launches runs (the Fashion-MNIST
    study) keeps each run's folder to its recipe with :meth:`claim`.

    What ``run_seed.py`` does (``run_moco.py`` without a teacher)::

        run = RunFolder.of(training_args).lock(training_args.should_save)
        run.decide(teacher_sha256=fingerprint)  # refuses another teacher before it is loaded
        ...  # the teacher, the students' configs
        run.check_recipe(configs, run_recipe(data, training_args.seed, configs), training_args)
        if run.finished:
            return run.results
        ...  # the trainer
        train_and_save(trainer, run.checkpoint, run_info)  # RunFolder.start records run_info first
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        *,
        overwrite: bool = False,
        resume_from_checkpoint: str | bool | None = None,
        max_steps: int = -1,
        num_train_epochs: float | None = None,
    ):
        self.output_dir = Path(output_dir)
        self.overwrite = overwrite
        self.resume_from_checkpoint = resume_from_checkpoint
        self.max_steps = max_steps
        self.num_train_epochs = num_train_epochs

    @classmethod
    def of(cls, training_args) -> RunFolder:
        """The run folder of a script's ``TrainingArguments`` (its ``output_dir`` and the flags that decide)."""
        return cls(
            training_args.output_dir,
            overwrite=training_args.overwrite_output_dir,
            resume_from_checkpoint=training_args.resume_from_checkpoint,
            max_steps=training_args.max_steps,
            num_train_epochs=training_args.num_train_epochs,
        )

    def lock(self, is_main_process: bool = True) -> RunFolder:
        """:func:`lock_run_folder`: one writer per folder, a second run into it refused."""
        lock_run_folder(self.output_dir, is_main_process)
        return self

    @property
    def recorded(self) -> dict[str, Any]:
        """What the run in the folder recorded when it started (``run_info.json``; empty: none)."""
        info = self.output_dir / RUN_INFO_FILE
        return json.loads(info.read_text()) if info.is_file() else {}

    @cached_property
    def status(self) -> str:
        """``"fresh"``, ``"resume"`` or ``"finished"``; raises on a non-empty folder without checkpoint."""
        return "finished" if self.results is not None else "resume" if self.checkpoint else "fresh"

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @cached_property
    def results(self) -> dict | None:
        """The train results of the finished run in the folder (None: no such run, or ``overwrite``)."""
        state_file, results_file = (
            self.output_dir / TRAINER_STATE_NAME,
            self.output_dir / "train_results.json",
        )
        if self.overwrite or not (state_file.is_file() and results_file.is_file()):
            return None
        state = json.loads(state_file.read_text())
        step = state.get("global_step", 0)
        if self.max_steps > 0:
            target = self.max_steps
        elif state.get("num_train_epochs") == self.num_train_epochs:
            target = state.get("max_steps")
        else:  # another length in epochs: the Trainer works out what is left
            return None
        if not target or step < target:
            return None
        logger.warning(
            f"The run in {self.output_dir} is already complete ({step} of {target} steps): nothing to train, its "
            f"results are kept. Pass a larger --max_steps to train on (its steps {step + 1}, {step + 2}, ... then "
            "follow the learning-rate schedule over the new length, as if the run had been planned that long: a "
            "cosine rises again from its end), or --overwrite_output_dir to start over."
        )
        remove_incomplete_checkpoints(str(self.output_dir))
        return json.loads(results_file.read_text())

    @cached_property
    def checkpoint(self) -> str | None:
        """The checkpoint the run resumes from (None: a fresh or finished run); refuses a non-empty
        folder without checkpoints."""
        return None if self.results is not None else self.find_checkpoint()

    def find_checkpoint(self) -> str | None:
        """``resume_from_checkpoint`` (``True``: the last complete checkpoint), else the last complete
        checkpoint of the folder (None: none, or ``overwrite``); refuses a non-empty folder without
        checkpoints (files of another program, or of a run that :meth:`start` did not record)."""
        if self.resume_from_checkpoint is not None:
            return self.resume_checkpoint(self.output_dir, self.resume_from_checkpoint)
        if not self.output_dir.is_dir() or self.overwrite:
            return None
        last = last_complete_checkpoint(str(self.output_dir))
        ours = {RUN_INFO_FILE, PIPELINE_RECIPE_FILE}  # written before the first step
        leftovers = [  # interrupted saves are removed when training starts
            p.name
            for p in self.output_dir.iterdir()
            if p.name not in ours and not (p.name.startswith("checkpoint-") and not is_complete_checkpoint(p))
        ]
        if last is None and leftovers:
            raise ValueError(
                f"Output directory ({self.output_dir}) already exists and is not empty. "
                "Use --overwrite_output_dir to overwrite it."
            )
        if last is not None:
            logger.info(f"Checkpoint detected, resuming training at {last}.")
        return last

    @staticmethod
    def resume_checkpoint(output_dir: str | os.PathLike, resume: str | bool | None) -> str | None:
        """``resume_from_checkpoint`` as a path: ``True`` (or ``"true"``) is the last complete checkpoint."""
        if resume in ("True", "true", True):
            return last_complete_checkpoint(str(output_dir))
        return resume or None

    def decide(self, teacher_sha256: str | None = None) -> str:
        """The :attr:`status` (``"fresh"``, ``"resume"`` or ``"finished"``), after refusing a
        distillation whose recorded teacher differs from ``teacher_sha256``, the fingerprint of the
        teacher now at the same path: the student would mix two teachers, or a finished student of
        the old teacher would pass for one of the new. Its model and recipe: :meth:`check_recipe`."""
        recorded = self.recorded.get("teacher_sha256")
        if not self.overwrite and None not in (teacher_sha256, recorded) and recorded != teacher_sha256:
            raise RunFolderRefused(
                f"--output_dir {self.output_dir} holds a run distilled from another teacher (sha256 {recorded}; "
                f"the teacher given now is {teacher_sha256}). Pass another --output_dir, or --overwrite_output_dir "
                "to start over there.",
                {"teacher weights sha256": (recorded, teacher_sha256)},
            )
        return self.status

    def check_recipe(self, configs: list, recipe: dict[str, Any], training_args) -> None:
        """Refuses to resume (or report) a run of another model (``configs``: one per student) or recipe
        (``recipe``: :func:`~seed_hf.training.run_recipe.run_recipe`; the batch and optimisation of
        ``training_args``). A fresh run has nothing to compare; a finished one is its own checkpoint."""
        checkpoint = str(self.output_dir) if self.finished else self.checkpoint
        if checkpoint is None:
            return
        check_same_shapes(checkpoint, configs)
        run_dir = self.output_dir if self.finished else Path(checkpoint).parent
        check_same_recipe(
            checkpoint,
            run_dir,
            configs,
            recipe,
            training_args.train_batch_size,
            global_batch(training_args),
            optimization_recipe(training_args),
        )

    def start(self, training_args, run_info: dict[str, Any] | None = None, resuming: bool = False) -> None:
        """As training starts, on the main process: with ``overwrite`` and nothing resumed, removes the
        previous run's files (now, once every check passed); writes ``run_info`` with the run's global
        batch and optimisation recipe (what a resume must match) to ``run_info.json``."""
        if not training_args.should_save:
            return
        if training_args.overwrite_output_dir and not resuming and self.output_dir.is_dir():
            clear_previous_run(self.output_dir)
        if run_info is not None:
            run_info = {
                **run_info,
                GLOBAL_BATCH_KEY: global_batch(training_args),
                OPTIMIZATION_KEY: optimization_recipe(training_args),
            }
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / RUN_INFO_FILE).write_text(json.dumps(run_info, indent=2) + "\n")

    def untrained_results(self, start_step: int | None, global_step: int) -> dict | None:
        """After ``train``: the results the run saved when it finished, when a resume from step
        ``start_step`` trained nothing (a length in epochs the run had already reached)."""
        results_file = self.output_dir / "train_results.json"
        if start_step is None or global_step != start_step or not results_file.is_file():
            return None
        logger.warning(
            f"The run in {self.output_dir} is already complete (step {start_step}): nothing was trained, "
            "its results are kept."
        )
        return json.loads(results_file.read_text())

    @property
    def pipeline_recipe_file(self) -> Path:
        return self.output_dir / PIPELINE_RECIPE_FILE

    def claim(self, recipe: dict[str, Any]) -> tuple[Path | None, list[str]]:
        """Makes the folder the run of a pipeline's ``recipe`` (:data:`PIPELINE_RECIPE_FILE`): a folder
        holding a run of another recipe, or of none recorded, is moved aside to ``<name>.recipe-<hash>``
        (never over another), never resumed or reported; then ``recipe`` is written, before the run
        starts, so that an interrupted run resumes as its own. Returns where the old run went (None:
        nothing there, or the same recipe) and what differed (``"--flag old → new"``)."""
        file = self.pipeline_recipe_file
        recorded = json.loads(file.read_text()) if file.is_file() else None
        differences = _recipe_changes(recorded, recipe)
        moved = None
        if self.output_dir.exists() and differences:
            tag = "unrecorded"
            if recorded is not None:
                tag = hashlib.sha256(json.dumps(recorded, sort_keys=True).encode()).hexdigest()[:8]
            for n in itertools.count(1):
                moved = self.output_dir.with_name(
                    f"{self.output_dir.name}.recipe-{tag}" + (f"-{n}" if n > 1 else "")
                )
                if not moved.exists():
                    break
            self.output_dir.rename(moved)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        partial = file.with_suffix(".json.partial")  # a kill while writing leaves the old file whole
        partial.write_text(json.dumps(recipe, indent=2) + "\n")
        os.replace(partial, file)
        return moved, differences if moved is not None else []


def _recipe_changes(recorded: dict | None, recipe: dict) -> list[str]:
    """What differs between two pipeline recipes, one ``"--flag old → new"`` line each (an ``_``
    key, what else the run depends on, by its name: ``"teacher weights sha256 old → new"``)."""
    if recorded is None:
        return ["no recipe recorded for it: trained before seed_hf recorded them, or by another command"]

    def shown(value: Any) -> str:
        if value is None:
            return "(unset)"
        return " ".join(map(str, value)) if isinstance(value, list) else str(value)

    def named(key: str) -> str:
        return key[1:].replace("_", " ") if key.startswith("_") else f"--{key}"

    changed = [k for k in recorded.keys() | recipe.keys() if recorded.get(k) != recipe.get(k)]
    return [
        f"{named(key)} {shown(recorded.get(key))} → {shown(recipe.get(key))}"
        for key in sorted(changed, key=lambda k: (k.startswith("_"), k))
    ]


def clear_previous_run(output_dir: str | os.PathLike) -> list[str]:
    """``--overwrite_output_dir``: removes the previous run's checkpoints, state, results and
    outputs (:data:`PREVIOUS_RUN_FILES`) from ``output_dir`` (other files stay), so that no later
    run resumes from them or reports them as its own. :meth:`RunFolder.start` calls it once every
    check has passed, as training starts. Returns the names removed, which are logged."""
    output_dir = Path(output_dir)
    removed = sorted(
        path.name
        for path in output_dir.iterdir()
        if (path.is_dir() and path.name.startswith("checkpoint-")) or path.name in PREVIOUS_RUN_FILES
    )
    for name in removed:
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    if removed:
        logger.warning(
            f"--overwrite_output_dir: removed the previous run's {', '.join(removed)} from {output_dir}."
        )
    return removed

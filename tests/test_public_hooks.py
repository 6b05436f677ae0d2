"""seed_hf extends transformers.Trainer through public methods and callbacks only: private
methods change between releases, so overriding or monkeypatching one could break training or
resume silently on a user's transformers upgrade."""

import importlib
import inspect
import pkgutil

import pytest
from helpers import TensorImages, tiny_student, tiny_teacher
from transformers import Trainer

import seed_hf
from seed_hf import MocoTrainer, SeedTrainer, SeedTrainingArguments, collate_batch
from seed_hf.training.callbacks import DatasetEpochCallback
from seed_hf.training.run_folder import COMPLETE_MARKER

PRIVATE_TRAINER_NAMES = {
    name
    for name in dir(Trainer)
    if name.startswith("_") and not (name.startswith("__") and name.endswith("__"))
}


def _seed_hf_trainer_classes() -> list[type]:
    classes = set()
    for module_info in pkgutil.walk_packages(seed_hf.__path__, "seed_hf."):
        if module_info.name.endswith("__main__"):  # `python -m seed_hf`: importing it runs the command
            continue
        module = importlib.import_module(module_info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Trainer) and obj is not Trainer and obj.__module__.startswith("seed_hf"):
                classes.add(obj)
    return sorted(classes, key=lambda c: c.__qualname__)


def test_private_trainer_names_are_known():
    assert {"_save_checkpoint", "_load_rng_state", "_get_output_dir"} <= PRIVATE_TRAINER_NAMES


def test_the_scan_finds_every_trainer_in_the_package_folders():
    assert {SeedTrainer, MocoTrainer} <= set(_seed_hf_trainer_classes())


@pytest.mark.parametrize("cls", _seed_hf_trainer_classes(), ids=lambda c: c.__qualname__)
def test_no_private_trainer_method_is_overridden(cls):
    overridden = {
        name
        for klass in cls.__mro__
        if klass.__module__.startswith("seed_hf")
        for name in vars(klass)
        if name in PRIVATE_TRAINER_NAMES
    }
    assert not overridden, f"{cls.__qualname__} overrides private Trainer methods {sorted(overridden)}"


def test_a_training_run_patches_no_private_trainer_method(tmp_path):
    """Instance attributes shadowing a Trainer method (monkeypatching) count as overrides too."""
    trainer = SeedTrainer(
        model=tiny_student(),
        teacher=tiny_teacher(),
        args=SeedTrainingArguments(
            output_dir=str(tmp_path),
            per_device_train_batch_size=8,
            max_steps=3,
            save_steps=2,
            use_cpu=True,
            report_to="none",
            disable_tqdm=True,
        ),
        train_dataset=TensorImages(32),
        data_collator=collate_batch,
    )
    trainer.train()
    assert not PRIVATE_TRAINER_NAMES & set(vars(trainer))
    assert (tmp_path / "checkpoint-2" / COMPLETE_MARKER).is_file()
    assert (tmp_path / "checkpoint-3" / COMPLETE_MARKER).is_file()


def test_epoch_callback_sets_the_epoch_the_trainer_starts():
    class Recorder:
        epochs: list = []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

    recorder = Recorder()
    callback = DatasetEpochCallback(recorder)
    for epoch in (0.0, 1.0, 2.5, None):  # fresh, after one epoch, resumed mid-epoch, unset
        callback.on_epoch_begin(None, type("S", (), {"epoch": epoch})(), None)
    assert recorder.epochs == [0, 1, 2, 0]

"""The step's autotuned choice of memory layout and student precision (seed_hf.training.step_choice): the rule,
what the trainer probes, records and reuses, and that explicit flags are kept. Timings are injected."""

import json

import pytest
import torch
from helpers import TensorImages, tiny_student, tiny_teacher
from transformers import HfArgumentParser

from seed_hf import SeedTrainer, SeedTrainingArguments, collate_batch
from seed_hf.training import step_choice, student_probe
from seed_hf.training.step_choice import (
    MARGIN,
    PRECISION_MARGIN,
    StepChoice,
    choose,
    is_noisy,
    parse_switch,
    time_candidates,
)


def _args(tmp_path, **kwargs):
    defaults = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=2, use_cpu=True, seed=0,
                    logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True)  # fmt: skip
    defaults.update(kwargs)
    return SeedTrainingArguments(**defaults)


def _trainer(tmp_path, **kwargs):
    return SeedTrainer(model=tiny_student(), teacher=tiny_teacher(), args=_args(tmp_path, **kwargs),
                       train_dataset=TensorImages(32), data_collator=collate_batch)  # fmt: skip


class FakeTimer:
    """Injected ``timed_call``: seconds per candidate name, a list cycling call after call (calls
    recorded, nothing run)."""

    def __init__(self, seconds: dict[str, float | list[float]], default: float = 1.0):
        self.seconds, self.default, self.calls = seconds, default, []

    def __call__(self, name, fn, device):
        value = self.seconds.get(name, self.default)
        if isinstance(value, list):
            value = value[self.calls.count(name) % len(value)]
        self.calls.append(name)
        return value


@pytest.fixture
def probed(monkeypatch):
    """Probe even the tests' tiny workloads, with the timings a test injects."""
    monkeypatch.setattr(step_choice, "PROBE_MIN_PIXELS", 0)

    def install(seconds, default=1.0, native_bf16=False):
        timer = FakeTimer(seconds, default)
        monkeypatch.setattr(step_choice, "timed_call", timer)
        monkeypatch.setattr(student_probe, "cpu_has_native_bf16", lambda: native_bf16)
        return timer

    return install


def test_switch_values_and_flags():
    assert [parse_switch(v, "x") for v in (None, True, False, "auto", "True", "0", "yes")] == [
        "auto", "true", "false", "auto", "true", "false", "true"]  # fmt: skip
    with pytest.raises(ValueError, match="channels_last"):
        parse_switch("sometimes", "channels_last")
    parser = HfArgumentParser(SeedTrainingArguments)
    base = ["--output_dir", "/tmp/x", "--use_cpu", "--report_to", "none"]
    for flags, expected in (
        ([], "auto"),
        (["--channels_last"], "true"),
        (["--channels_last", "False"], "false"),
    ):
        (args,) = parser.parse_args_into_dataclasses(base + flags)
        assert args.channels_last == expected, flags
    assert (
        SeedTrainingArguments(output_dir="/tmp/x", use_cpu=True, channels_last=True).channels_last == "true"
    )
    with pytest.raises(ValueError, match="student_dtype"):
        SeedTrainingArguments(output_dir="/tmp/x", use_cpu=True, student_dtype="float32", bf16=True)


def test_rule_is_deterministic_given_timings():
    # the prior stays unless another candidate beats it by more than its margin
    assert choose({"cl": [1.0, 1.0], "nchw": [0.95, 0.95]}, "cl") == "cl"
    assert choose({"cl": [1.0, 1.0], "nchw": [0.85, 0.86]}, "cl") == "nchw"
    assert choose({"cl": [1.0, 1.0], "nchw": [0.85, 0.85], "bf16": [0.5, 0.5]}, "cl") == "bf16"
    assert choose({"cl": [0.5, 0.5], "nchw": [1.0, 1.0]}, "cl") == "cl"
    # another precision needs its own, larger margin: 15% faster is not enough, 30% is
    margins = {"cl": MARGIN, "bf16": PRECISION_MARGIN}
    assert choose({"cl": [1.0, 1.0], "bf16": [0.85, 0.85]}, "cl", margins) == "cl"
    assert choose({"cl": [1.0, 1.0], "bf16": [0.7, 0.7]}, "cl", margins) == "bf16"
    # a busy machine (a candidate's calls 30% apart, or a single call) keeps the prior
    assert is_noisy({"cl": [1.0, 1.3], "nchw": [0.5, 0.5]})
    assert choose({"cl": [1.0, 1.3], "nchw": [0.5, 0.5]}, "cl") == "cl"
    assert choose({"cl": [1.0], "nchw": [0.5]}, "cl") == "cl"
    # round robin, every timed call kept, warm-up not counted
    seen = []
    times = iter([9.0, 9.0, 2.0, 3.0, 1.0, 4.0])
    result = time_candidates({"a": None, "b": None}, torch.device("cpu"), warmup=1, repeats=2, budget_s=100,
                             measure=lambda name, fn, device: (seen.append(name), next(times))[1])  # fmt: skip
    assert seen == ["a", "b", "a", "b", "a", "b"] and result == {"a": [2.0, 1.0], "b": [3.0, 4.0]}
    # a probe over budget stops after its first timed round
    seen.clear()
    time_candidates({"a": None}, torch.device("cpu"), warmup=1, repeats=3, budget_s=5.0,
                    measure=lambda name, fn, device: (seen.append(name), 10.0)[1])  # fmt: skip
    assert seen == ["a", "a"]


def test_auto_probes_chooses_records_and_reuses_on_resume(tmp_path, probed, caplog):
    # NCHW clearly faster for the student; the teacher's NCHW only 5% faster: its prior (channels_last) stays
    timer = probed({"nchw/float32": 0.5, "channels_last/float32": 1.0, "channels_last": 1.0, "nchw": 0.95})
    trainer = _trainer(tmp_path, save_strategy="steps", save_steps=1)
    with caplog.at_level("INFO", logger="seed_hf"):
        trainer.train()
    path = trainer.step_choice
    assert (path.student_channels_last, path.student_dtype, path.teacher_channels_last) == (
        False,
        "float32",
        True,
    )
    assert path.sources == {
        "student_channels_last": "probe",
        "student_dtype": "prior",
        "teacher_channels_last": "probe",
    }
    assert set(path.timings_s) == {"student", "teacher"} and path.timings_s["student"]["nchw/float32"] == 0.5
    assert {"channels_last/float32", "nchw/float32", "channels_last", "nchw"} <= set(timer.calls)
    conv = next(
        m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1
    )
    teacher_conv = next(
        m for m in trainer.teacher.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1
    )
    assert conv.weight.is_contiguous() and teacher_conv.weight.is_contiguous(
        memory_format=torch.channels_last
    )
    assert any("Training step: student NCHW (probe)" in r.getMessage() for r in caplog.records)
    for folder in (tmp_path / "checkpoint-2", tmp_path):  # every checkpoint, and the finished run
        assert (
            json.loads((folder / step_choice.STEP_CHOICE_FILE).read_text())["student_channels_last"] is False
        )

    # a resumed run keeps the recorded choice even where the probe would now choose otherwise
    timer = probed({"nchw/float32": 2.0, "channels_last/float32": 1.0, "channels_last": 1.0, "nchw": 0.1})
    resumed = _trainer(tmp_path, max_steps=3, save_strategy="steps", save_steps=1)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert (resumed.step_choice.student_channels_last, resumed.step_choice.teacher_channels_last) == (
        False,
        True,
    )
    assert set(resumed.step_choice.sources.values()) == {"resumed"} and timer.calls == []


def test_explicit_values_are_kept_and_tiny_workloads_take_the_prior(tmp_path, probed, monkeypatch):
    timer = probed({"nchw/float32": 0.1, "nchw": 0.1}, native_bf16=True)
    path = _trainer(tmp_path, channels_last=True, student_dtype="float32").resolve_step_choice()
    assert (path.student_channels_last, path.teacher_channels_last, path.student_dtype) == (
        True,
        True,
        "float32",
    )
    assert set(path.sources.values()) == {"given"} and timer.calls == []
    path = _trainer(tmp_path, channels_last="false", student_dtype="float32").resolve_step_choice()
    assert (path.student_channels_last, path.teacher_channels_last) == (False, False)
    # only what is still auto is probed: the layout is given, the precision is measured
    timer.calls.clear()
    path = _trainer(tmp_path, channels_last="false").resolve_step_choice()
    assert set(timer.calls) == {"nchw/float32", "nchw/bfloat16"} and path.sources["student_dtype"] == "probe"
    # tests' tiny batches are below PROBE_MIN_PIXELS: the prior, no probe call, independent of timing
    monkeypatch.setattr(step_choice, "PROBE_MIN_PIXELS", 10**9)
    timer.calls.clear()
    path = _trainer(tmp_path).resolve_step_choice()
    assert (path.student_channels_last, path.student_dtype, path.teacher_channels_last) == (
        True,
        "float32",
        True,
    )
    assert set(path.sources.values()) == {"prior"} and timer.calls == []


def test_probe_chooses_bf16_student_where_faster_and_loss_stays_fp32(tmp_path, probed):
    probed({"channels_last/bfloat16": 0.3, "channels_last/float32": 1.0}, native_bf16=True)
    trainer = _trainer(tmp_path)
    path = trainer.resolve_step_choice()
    assert path.student_dtype == "bfloat16" and path.sources["student_dtype"] == "probe"
    dtypes = []
    conv = next(m for m in trainer.model.student.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    trainer.train()
    assert dtypes and set(dtypes) == {torch.bfloat16}  # the student's forward ran under bf16 autocast
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the loss's logits and softmaxes stay fp32 under it
        out = trainer.model(TensorImages(8).images, teacher_embeds=torch.randn(8, 16))
    assert out.loss.dtype == torch.float32 and out.logits.dtype == torch.float32


def test_busy_machine_keeps_the_prior(tmp_path, probed):
    """Timings whose calls disagree (other jobs on the cores) do not flip the choice: the prior, and
    the log and record say the probe was noisy."""
    probed(
        {"nchw/float32": [0.2, 0.9], "channels_last/bfloat16": [0.3, 0.9], "nchw": [0.1, 0.8]},
        native_bf16=True,
    )
    path = _trainer(tmp_path).resolve_step_choice()
    assert (path.student_channels_last, path.student_dtype, path.teacher_channels_last) == (
        True,
        "float32",
        True,
    )
    assert path.noisy == ["student", "teacher"] and "noisy" in path.describe()


def test_real_probe_leaves_model_and_rng_untouched(tmp_path, monkeypatch):
    monkeypatch.setattr(step_choice, "PROBE_MIN_PIXELS", 0)
    trainer = _trainer(tmp_path)
    model = trainer.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    path = trainer.resolve_step_choice()
    assert path.sources["student_channels_last"] == "probe" and all(
        t > 0 for t in path.timings_s["student"].values()
    )
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # BN statistics, queue, weights
    assert all(p.grad is None for p in model.parameters()) and model.training


def test_step_choice_round_trip():
    path = StepChoice(student_channels_last=False, student_dtype="bfloat16", teacher_channels_last=True,
                    sources={"student_dtype": "probe"}, timings_s={"student": {"a": 1.0}}, probe_batch_size=64)  # fmt: skip
    assert StepChoice.from_dict(json.loads(json.dumps(path.to_dict()))) == path
    assert "student NCHW (prior), student bfloat16 (probe), teacher channels_last (prior)" in path.describe()

"""teacher_dtype="auto": bf16 on CPUs with native bf16, fp32 on other CPUs, the run's on GPUs."""

import pytest
import torch

from seed_hf.training import precision

# /proc/cpuinfo flag sets of real CPUs (abridged)
ICELAKE = {"fpu", "sse4_2", "avx2", "avx512f", "avx512bw", "avx512_vnni"}
COOPER_LAKE = ICELAKE | {"avx512_bf16"}
SAPPHIRE_RAPIDS = COOPER_LAKE | {"amx_tile", "amx_bf16", "amx_int8"}
AMX_ONLY = ICELAKE | {"amx_tile", "amx_bf16"}
ARM64 = {"fp", "asimd", "sve", "bf16"}  # Arm's bf16 flag: not among the x86 flags we trust


@pytest.mark.parametrize(
    "flags, native",
    [
        (ICELAKE, False),
        (COOPER_LAKE, True),
        (SAPPHIRE_RAPIDS, True),
        (AMX_ONLY, True),
        (ARM64, False),
        (set(), False),
    ],
)
def test_cpu_has_native_bf16(flags, native):
    assert precision.cpu_has_native_bf16(flags) is native


@pytest.mark.parametrize(
    "teacher_dtype, device, flags, expected",
    [
        ("auto", "cpu", COOPER_LAKE, torch.bfloat16),
        ("auto", "cpu", SAPPHIRE_RAPIDS, torch.bfloat16),
        ("auto", "cpu", ICELAKE, None),  # the run's precision: fp32 unless --bf16
        ("auto", "cuda", SAPPHIRE_RAPIDS, None),  # GPUs keep the run's mixed precision
        ("bfloat16", "cpu", ICELAKE, torch.bfloat16),
        ("float32", "cpu", SAPPHIRE_RAPIDS, torch.float32),
        ("float32", "cuda", set(), torch.float32),
    ],
)
def test_resolve_teacher_dtype(teacher_dtype, device, flags, expected):
    assert precision.resolve_teacher_dtype(teacher_dtype, device, flags) == expected


def test_resolve_teacher_dtype_rejects_unknown():
    with pytest.raises(ValueError, match="teacher_dtype"):
        precision.resolve_teacher_dtype("fp8", "cpu", set())


def test_cpu_flags_reads_proc_cpuinfo(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    real_path = precision.Path
    monkeypatch.setattr(precision, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else real_path(p))
    precision.cpu_flags.cache_clear()
    try:
        assert precision.cpu_flags() == {"fpu", "avx2", "avx512_bf16"}
        assert precision.cpu_has_native_bf16()
    finally:
        precision.cpu_flags.cache_clear()


def test_trainer_teacher_autocast_follows_the_decision(monkeypatch, tmp_path):
    """The SeedTrainer's default (auto) teacher runs in the dtype the decision function picks."""
    from test_trainer import _seed_trainer

    def autocast_dtype(module, inputs, output):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)

    for flags, dtype in ((COOPER_LAKE, torch.bfloat16), (ICELAKE, torch.float32)):
        monkeypatch.setattr(precision, "cpu_flags", lambda flags=flags: frozenset(flags))
        trainer = _seed_trainer(tmp_path)
        seen: list[torch.dtype] = []
        hook = trainer.teacher.register_forward_hook(autocast_dtype)
        embeds = trainer.teacher_embeddings(trainer._probe_input())
        hook.remove()
        assert seen == [dtype] and embeds.dtype == torch.float32

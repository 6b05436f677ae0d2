"""The optional local term (LightlyTrain distillationv3): patch-to-patch similarity KL."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import TensorImages, tiny_student, tiny_teacher

from seed_hf import (
    LocalSimilarityLoss,
    SeedConfig,
    SeedStudentGroup,
    SeedTrainer,
    SeedTrainingArguments,
    collate_batch,
)
from seed_hf.models.backbones import (
    ProjectionHead,
    create_backbone,
    feature_map,
    pooled_width,
    resize_feature_map,
)
from seed_hf.models.losses import local_similarity_loss, seed_loss
from seed_hf.teachers.frozen import FrozenTeacher
from seed_hf.teachers.transformers_backbone import TransformersVisionBackbone

SIZE = 64  # the test CNNs have stride 32: a 2×2 grid


def reference_local_loss(student, teacher, tau_s, tau_t):
    """Double loop over images and rows (patches), in Python floats, written from the formula."""

    def unit(v):
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    def softmax(z):
        top = max(z)
        e = [math.exp(x - top) for x in z]
        return [x / sum(e) for x in e]

    rows = []
    for s_img, t_img in zip(student.tolist(), teacher.tolist()):
        s_img, t_img = [unit(v) for v in s_img], [unit(v) for v in t_img]
        for m in range(len(s_img)):
            q_t = softmax([sum(a * b for a, b in zip(t_img[m], t)) / tau_t for t in t_img])
            q_s = softmax([sum(a * b for a, b in zip(s_img[m], s)) / tau_s for s in s_img])
            rows.append(sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(q_t, q_s)))
    return sum(rows) / len(rows)


@pytest.mark.parametrize("n,p,tau_s,tau_t", [(1, 1, 0.07, 0.07), (3, 4, 0.07, 0.07), (2, 9, 0.2, 0.05)])
def test_loss_matches_a_double_loop(n, p, tau_s, tau_t):
    g = torch.Generator().manual_seed(n * 10 + p)
    student = torch.randn(n, p, 7, generator=g, dtype=torch.float64)
    teacher = torch.randn(n, p, 5, generator=g, dtype=torch.float64)  # other width: similarities need none
    expected = reference_local_loss(student, teacher, tau_s, tau_t)
    assert local_similarity_loss(student, teacher, tau_s, tau_t).item() == pytest.approx(
        expected, rel=1e-5, abs=1e-7
    )
    assert LocalSimilarityLoss(tau_s, tau_t)(student, teacher).item() == pytest.approx(
        expected, rel=1e-5, abs=1e-7
    )


def test_zero_at_the_teacher_geometry_gradient_to_the_student_only_and_fp32_under_autocast():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(4, 16, 8, generator=g)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    same = (teacher @ rotation).requires_grad_()  # same similarities in another basis
    assert local_similarity_loss(same, teacher).item() == pytest.approx(0.0, abs=1e-5)
    student = torch.randn(4, 16, 12, generator=g, requires_grad=True)
    loss = local_similarity_loss(student, teacher)
    loss.backward()
    assert loss.item() > 0 and student.grad.abs().sum() > 0 and not teacher.requires_grad
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = local_similarity_loss(student.bfloat16(), teacher.bfloat16())
    assert low.dtype == torch.float32 and low.item() == pytest.approx(loss.item(), rel=0.05)
    with pytest.raises(ValueError, match="resize"):
        local_similarity_loss(torch.randn(2, 4, 3), torch.randn(2, 16, 3))
    with pytest.raises(ValueError, match="local_student_temperature"):
        LocalSimilarityLoss(student_temperature=0)


@pytest.mark.parametrize("student_grid,teacher_grid", [(4, 2), (8, 4)])
def test_student_grid_is_averaged_down_to_the_teacher_grid(student_grid, teacher_grid):
    x = torch.randn(2, 3, student_grid, student_grid)
    factor = student_grid // teacher_grid
    resized = resize_feature_map(x, (teacher_grid, teacher_grid))
    blocks = x.unfold(2, factor, factor).unfold(3, factor, factor).mean(dim=(-1, -2))  # each block's mean
    assert resized.shape == (2, 3, teacher_grid, teacher_grid)
    torch.testing.assert_close(resized, blocks)
    # upsampling (a coarser student) is bilinear; the same grid is left as it is
    up = resize_feature_map(x[..., :teacher_grid, :teacher_grid], (student_grid, student_grid))
    torch.testing.assert_close(
        up, F.interpolate(x[..., :teacher_grid, :teacher_grid], size=student_grid, mode="bilinear")
    )
    assert resize_feature_map(x, (student_grid, student_grid)) is x


def test_vit_tokens_lose_their_prefix_and_keep_row_major_order():
    vit = create_backbone("test_vit", 3, {"img_size": 32, "patch_size": 8, "reg_tokens": 2})
    assert vit.num_prefix_tokens == 3  # CLS + 2 registers
    tokens = vit.forward_features(torch.randn(2, 3, 32, 32))
    grid = feature_map(vit, tokens, (32, 32))
    assert grid.shape == (2, tokens.shape[-1], 4, 4)
    torch.testing.assert_close(grid[:, :, 1, 2], tokens[:, 3 + 1 * 4 + 2])


def _vit_teacher(size=SIZE, patch=16, dim=16):
    torch.manual_seed(1)
    backbone = create_backbone("test_vit", 3, {"img_size": size, "patch_size": patch})
    return FrozenTeacher(backbone, ProjectionHead(pooled_width(backbone), 32, dim), 3, "tiny vit")


@pytest.mark.parametrize("kind", ["cnn", "vit"])
def test_teacher_gives_embeddings_and_patches_from_one_forward(kind):
    teacher = tiny_teacher() if kind == "cnn" else _vit_teacher()
    x = torch.randn(3, 3, SIZE, SIZE)
    embeds, patches, grid = teacher.forward_with_patches(x)
    expected_grid = (2, 2) if kind == "cnn" else (4, 4)
    assert grid == expected_grid and patches.shape[:2] == (3, expected_grid[0] * expected_grid[1])
    torch.testing.assert_close(embeds, teacher(x))
    if kind == "cnn":  # the BN-folded feature map gives the same patches and embeddings
        teacher.optimize_for_inference(channels_last=True, probe=x, feature_map=True)
        assert teacher.fused_features is not None and teacher.fused_backbone is None
        fused = teacher.forward_with_patches(x)
        torch.testing.assert_close(fused[0], embeds, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fused[1], patches, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(teacher(x), embeds, rtol=1e-4, atol=1e-5)


def test_transformers_teacher_patches_skip_cls_and_register_tokens():
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel, ResNetConfig, ResNetModel

    torch.manual_seed(0)
    config = Dinov2WithRegistersConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_register_tokens=2,
    )
    vit = TransformersVisionBackbone(Dinov2WithRegistersModel(config).eval(), embedding="cls")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pooled, patches, grid = vit.forward_with_patches(x)
        hidden = vit.model(pixel_values=x, **vit.forward_kwargs).last_hidden_state
    assert grid == (4, 4)
    torch.testing.assert_close(patches, hidden[:, 3:])
    torch.testing.assert_close(pooled, vit(x))
    cnn = TransformersVisionBackbone(
        ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])).eval()
    )
    with torch.no_grad():
        pooled, patches, grid = cnn.forward_with_patches(torch.randn(2, 3, 64, 64))
    assert grid == (8, 8) and patches.shape == (2, 64, 16) and pooled.shape == (2, 16)  # stride 8


def _args(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        max_steps=2,
        use_cpu=True,
        seed=0,
        data_seed=0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    return SeedTrainingArguments(**{**defaults, **kwargs})


def _count_teacher_forwards(teacher):
    calls = []
    teacher.register_forward_hook(
        lambda m, args, kwargs, out: calls.append(kwargs.get("return_patches", False)), with_kwargs=True
    )
    return calls


@pytest.mark.parametrize("kind", ["cnn", "vit"])
def test_trainer_two_steps_with_the_local_term(tmp_path, kind):
    teacher = tiny_teacher() if kind == "cnn" else _vit_teacher()  # 2×2 grid (same as the student) or 4×4
    model = tiny_student(image_size=SIZE, local_loss_weight=0.5)
    trainer = SeedTrainer(
        model=model,
        teacher=teacher,
        args=_args(tmp_path),
        train_dataset=TensorImages(32, size=SIZE),
        data_collator=collate_batch,
    )
    calls = _count_teacher_forwards(teacher)
    trainer.train()
    assert calls == [True, True]  # one teacher forward per step, with its patches
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 2 and all(h["loss_local"] > 0 and math.isfinite(h["loss"]) for h in logged)
    if kind == "cnn":
        assert teacher.fused_features is not None  # BN folded into the feature-map forward


def test_off_by_default_changes_nothing(tmp_path):
    assert SeedConfig().local_loss_weight == 0.0
    model = tiny_student(image_size=SIZE).train()
    teacher = tiny_teacher()
    x = torch.randn(8, 3, SIZE, SIZE)
    embeds, patches, grid = teacher.forward_with_patches(x)
    queue = model.queue.embeddings.clone()
    torch.manual_seed(0)
    out = model(
        x, teacher_embeds=embeds, teacher_patches=patches, teacher_grid_size=grid
    )  # ignored at weight 0
    assert out.local_loss is None
    model.queue.embeddings.copy_(queue)
    torch.manual_seed(0)
    # today's loss, written out: SEED loss of head(pooled features) against the queue, nothing else
    expected = seed_loss(F.normalize(model.head(model.get_features(x)), dim=1), embeds, queue, 0.2, 0.01)
    assert torch.equal(out.loss, expected)
    # through the trainer: the teacher runs its pooled forward (no feature map), no loss_local is logged
    trainer = SeedTrainer(
        model=tiny_student(image_size=SIZE),
        teacher=teacher,
        args=_args(tmp_path),
        train_dataset=TensorImages(32, size=SIZE),
        data_collator=collate_batch,
    )
    calls = _count_teacher_forwards(teacher)
    trainer.train()
    assert calls == [False, False] and teacher.fused_features is None
    assert not any("loss_local" in h for h in trainer.state.log_history)


def test_training_without_teacher_patches_is_refused():
    model = tiny_student(image_size=SIZE, local_loss_weight=1.0).train()
    with pytest.raises(ValueError, match="teacher_patches"):
        model(torch.randn(4, 3, SIZE, SIZE), teacher_embeds=torch.randn(4, 16))
    model.eval()  # evaluation without patches: the SEED loss alone
    assert model(torch.randn(4, 3, SIZE, SIZE), teacher_embeds=torch.randn(4, 16)).local_loss is None
    with pytest.raises(ValueError, match="local_loss_weight"):
        SeedConfig(local_loss_weight=-1)


def test_student_group_with_the_local_term_on_for_one_student(tmp_path):
    group = SeedStudentGroup(
        {
            "on": tiny_student(image_size=SIZE, local_loss_weight=0.5),
            "off": tiny_student(image_size=SIZE, student_architecture="test_efficientnet"),
        }
    )
    teacher = tiny_teacher()
    trainer = SeedTrainer(
        model=group,
        teacher=teacher,
        args=_args(tmp_path),
        train_dataset=TensorImages(32, size=SIZE),
        data_collator=collate_batch,
    )
    calls = _count_teacher_forwards(teacher)
    trainer.train()
    assert calls == [True, True]
    last = [h for h in trainer.state.log_history if "loss" in h][-1]
    assert last["loss_local_on"] > 0 and "loss_local_off" not in last
    assert last["loss"] == pytest.approx(last["loss_on"] + last["loss_off"], rel=1e-4)

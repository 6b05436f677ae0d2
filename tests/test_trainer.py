import json

import pytest
import torch
from helpers import TensorImages, tiny_moco, tiny_student, tiny_teacher

from seed_hf import MocoTrainer, SeedForDistillation, SeedTrainer, SeedTrainingArguments, collate_batch


def _args(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        max_steps=4,
        use_cpu=True,
        seed=0,
        data_seed=0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    defaults.update(kwargs)
    return SeedTrainingArguments(**defaults)


def _seed_trainer(tmp_path, model=None, teacher=None, **kwargs):
    return SeedTrainer(
        model=model or tiny_student(),
        teacher=teacher or tiny_teacher(),
        args=_args(tmp_path, **kwargs),
        train_dataset=TensorImages(64),
        data_collator=collate_batch,
    )


def test_teacher_frozen_unchanged_and_queue_holds_teacher_keys(tmp_path):
    teacher = tiny_teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = _seed_trainer(tmp_path, teacher=teacher)
    assert not any(teacher is m or m is teacher.backbone for m in trainer.model.modules())
    optimized = {id(p) for group in trainer.create_optimizer().param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in teacher.parameters()}
    student_before = trainer.model.head[0].weight.clone()
    trainer.train()
    after = teacher.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k  # weights and BN running stats
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not torch.equal(trainer.model.head[0].weight, student_before)
    queue = trainer.model.queue
    assert int(queue.num_filled) == 32 and int(queue.ptr) == 32
    # the last enqueued keys are the teacher embeddings of the last batch
    dataset = TensorImages(64)
    all_embeds = teacher(dataset.images)
    last = queue.embeddings[24:32]
    dist = torch.cdist(last, all_embeds).min(dim=1).values
    assert dist.max() < 1e-2  # fp32 conv results vary slightly with batch size; other keys are ~1 apart
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 4 and all(0 < loss < 100 for loss in losses)
    assert trainer.state.log_history[0]["queue_fill"] == pytest.approx(8 / 40)


def test_bad_input_fails_before_the_first_step(tmp_path):
    with pytest.raises(ValueError, match="projection_dim"):
        _seed_trainer(tmp_path, teacher=tiny_teacher(dim=32))
    with pytest.raises(ValueError, match="queue_size"):
        _seed_trainer(tmp_path, per_device_train_batch_size=48)
    with pytest.raises(ValueError, match="per_device_train_batch_size"):
        _seed_trainer(tmp_path, per_device_train_batch_size=1)


def test_learning_rate_follows_linear_scaling(tmp_path):
    args = _args(tmp_path, per_device_train_batch_size=64, base_learning_rate=0.03)
    assert args.learning_rate == pytest.approx(0.03 * 64 / 256)
    assert args.optim == "sgd" and args.lr_scheduler_type == "cosine" and args.weight_decay == 1e-4


def test_resume_continues_with_same_queue_step_and_weights(tmp_path):
    straight = _seed_trainer(tmp_path / "a", max_steps=6)
    straight.train()

    first = _seed_trainer(tmp_path / "b", max_steps=6, save_strategy="steps", save_steps=3)
    # stop after the checkpoint at step 3, as if killed
    first.args.max_steps = 6
    first.add_callback(_StopAt(3))
    first.train()
    checkpoint = tmp_path / "b" / "checkpoint-3"
    assert checkpoint.is_dir()
    saved = SeedForDistillation.from_pretrained(checkpoint)
    assert int(saved.queue.ptr) == 24  # 3 steps x 8 keys, saved with the checkpoint

    resumed = _seed_trainer(tmp_path / "b", max_steps=6, save_strategy="steps", save_steps=3)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 6
    assert torch.equal(resumed.model.queue.embeddings, straight.model.queue.embeddings)
    for (name, a), b in zip(resumed.model.state_dict().items(), straight.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    state = json.loads((tmp_path / "b" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6


class _StopAt:
    def __init__(self, step):
        self.step = step

    def __getattr__(self, name):  # the other TrainerCallback hooks are no-ops
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
            control.should_save = True
        return control


def test_moco_trainer_enqueues_keys(tmp_path):
    trainer = MocoTrainer(
        model=tiny_moco(key_bn_splits=2),
        args=_args(tmp_path, max_steps=3),
        train_dataset=TensorImages(64, views=2),
        data_collator=collate_batch,
    )
    trainer.train()
    assert int(trainer.model.queue.num_filled) == 24
    assert all("queue_fill" in h for h in trainer.state.log_history if "loss" in h)


def test_validation_of_sizes_channels_and_precision(tmp_path):
    from helpers import tiny_seed_config

    from seed_hf import SeedForDistillation

    small_vit = {"depth": 1, "embed_dim": 32, "num_heads": 2}
    with pytest.raises(ValueError, match="image_size=32"):  # a 224-px ViT: refused when built
        SeedForDistillation(
            tiny_seed_config(student_architecture="vit_tiny_patch16_224", student_model_args=small_vit)
        )
    vit = SeedForDistillation(
        tiny_seed_config(
            student_architecture="vit_tiny_patch16_224",
            student_model_args={**small_vit, "img_size": 32, "patch_size": 8},
        )
    )
    vit.config.image_size = 24  # a config edited after the build: the trainer's probe forward catches it
    with pytest.raises(ValueError, match="image_size"):
        _seed_trainer(tmp_path, model=vit)
    with pytest.raises(ValueError, match="1-channel teacher"):
        _seed_trainer(tmp_path, teacher=tiny_teacher(in_chans=1))
    with pytest.raises(ValueError, match="fp16"):
        _seed_trainer(tmp_path, fp16=True)
    # 1-channel data with a 3-channel teacher: adapted (channel repeated)
    gray = tiny_student(in_chans=1)
    trainer = SeedTrainer(
        model=gray,
        teacher=tiny_teacher(),
        args=_args(tmp_path, max_steps=1),
        train_dataset=TensorImages(16, channels=1),
        data_collator=collate_batch,
    )
    trainer.train()


def test_one_teacher_feeds_several_students(tmp_path):
    from seed_hf import SeedStudentGroup

    group = SeedStudentGroup(
        {"resnet": tiny_student(), "effnet": tiny_student(student_architecture="test_efficientnet")}
    )
    teacher = tiny_teacher()
    calls = []
    teacher.register_forward_hook(lambda *args: calls.append(1))
    trainer = SeedTrainer(
        model=group,
        teacher=teacher,
        args=_args(tmp_path, max_steps=3),
        train_dataset=TensorImages(64),
        data_collator=collate_batch,
    )
    calls.clear()
    trainer.train()
    assert len(calls) == 3  # one teacher forward per step for both students
    queues = [s.queue for s in group.students.values()]
    assert torch.equal(queues[0].embeddings, queues[1].embeddings) and int(queues[0].num_filled) == 24
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged[-1]["loss"] == pytest.approx(
        logged[-1]["loss_resnet"] + logged[-1]["loss_effnet"], rel=1e-4
    )
    folders = group.save_students(tmp_path / "students")
    loaded = SeedForDistillation.from_pretrained(folders[1])
    assert loaded.config.student_architecture == "test_efficientnet"
    assert torch.equal(loaded.queue.embeddings, queues[1].embeddings)
    with pytest.raises(ValueError, match="projection_dim"):
        SeedStudentGroup({"a": tiny_student(), "b": tiny_student(projection_dim=8)})


def test_online_knn_monitor_through_evaluate(tmp_path):
    from seed_hf import KnnMonitor

    trainer = SeedTrainer(
        model=tiny_student(),
        teacher=tiny_teacher(),
        args=_args(tmp_path, max_steps=4, eval_strategy="steps", eval_steps=2),
        train_dataset=TensorImages(64),
        data_collator=collate_batch,
        knn_monitor=KnnMonitor(TensorImages(32, seed=1), TensorImages(16, seed=2), k=5, batch_size=8),
    )
    trainer.train()
    knn = [h["eval_knn_top1"] for h in trainer.state.log_history if "eval_knn_top1" in h]
    assert len(knn) == 2 and all(0 <= v <= 100 for v in knn)
    assert trainer.model.training


def test_small_patch_variant_uses_a_second_queue(tmp_path):
    from seed_hf import ArrayImageDataset, build_ssl_transform
    from seed_hf.data.transforms import MultiViewTransform

    images = (
        (torch.rand(32, 40, 40, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy()
    )
    transform = MultiViewTransform(
        build_ssl_transform("swav", 32), 1, build_ssl_transform("swav", 16, scale=(0.05, 0.14)), 3
    )
    dataset = ArrayImageDataset(images, None, transform)
    assert dataset[0]["pixel_values_small"].shape == (3, 3, 16, 16)
    for keys, filled in (("first_crop", 16), ("all_crops", 48)):  # 2 steps x 8 images (x 3 crops)
        model = tiny_student(
            num_small_crops=3, small_queue_keys=keys, small_queue_size=48 if keys == "all_crops" else None
        )
        trainer = SeedTrainer(
            model=model,
            teacher=tiny_teacher(),
            args=_args(tmp_path, max_steps=2),
            train_dataset=dataset,
            data_collator=collate_batch,
        )
        trainer.train()
        assert int(model.queue.num_filled) == 16 and int(model.small_queue.num_filled) == filled
        if keys == "first_crop":  # official: the small queue advances with the main one
            assert int(model.small_queue.ptr) == int(model.queue.ptr)
    x = torch.randn(2, 3, 32, 32)
    small = torch.randn(2, 3, 3, 16, 16)
    t, ts = torch.randn(2, 16), torch.randn(6, 16)
    with_small = model(x, teacher_embeds=t, small_pixel_values=small, small_teacher_embeds=ts).loss
    assert with_small > model(x, teacher_embeds=t).loss  # the small-crop term is added
    with pytest.raises(ValueError, match="num_small_crops"):
        tiny_student()(x, teacher_embeds=t, small_pixel_values=small, small_teacher_embeds=ts)


def test_teacher_precision_and_compiled_teacher(tmp_path):
    """teacher_dtype=bfloat16 runs the teacher in bf16 under an fp32 student (close, not equal);
    "auto" is bf16 on CPUs with native bf16, fp32 on others; compile_teacher gives the eager
    teacher's embeddings."""
    from seed_hf.training.precision import cpu_has_native_bf16

    x = TensorImages(8).images
    eager = _seed_trainer(tmp_path, teacher_dtype="float32").teacher_embeddings(x)
    bf16 = _seed_trainer(tmp_path, teacher_dtype="bfloat16").teacher_embeddings(x)
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, eager)
    assert torch.nn.functional.cosine_similarity(bf16, eager).min() > 0.99
    auto = _seed_trainer(tmp_path).teacher_embeddings(x)
    assert torch.equal(auto, bf16 if cpu_has_native_bf16() else eager)
    compiled = _seed_trainer(tmp_path, teacher_dtype="float32", compile_teacher=True).teacher_embeddings(x)
    assert torch.allclose(compiled, eager, atol=1e-4)
    with pytest.raises(ValueError, match="teacher_dtype"):
        _args(tmp_path, teacher_dtype="fp8")


def test_fp16_teacher_runs_under_fp16_autocast(tmp_path):
    """teacher_dtype=float16 (the official code's teacher precision): the teacher's layers run
    in fp16 under an fp32 student; the embeddings come back in fp32, close to fp32's."""
    x = TensorImages(8).images
    trainer = _seed_trainer(tmp_path, teacher_dtype="float16")
    head = [m for m in trainer.teacher.modules() if isinstance(m, torch.nn.Linear)][-1]  # always run
    dtypes = []
    head.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    fp16 = trainer.teacher_embeddings(x)
    assert dtypes == [torch.float16] and fp16.dtype == torch.float32
    fp32 = _seed_trainer(tmp_path, teacher_dtype="float32").teacher_embeddings(x)
    assert not torch.equal(fp16, fp32)
    assert torch.nn.functional.cosine_similarity(fp16, fp32).min() > 0.99


def test_weight_decay_on_every_parameter(tmp_path):
    """decay_all_parameters: one decayed group holding every trainable parameter (official
    torch.optim.SGD(model.parameters(), weight_decay=...)); by default biases are exempt."""
    names = {id(p): n for n, p in tiny_student().named_parameters()}

    def groups(**kwargs):
        trainer = _seed_trainer(tmp_path, weight_decay=1e-4, **kwargs)
        optimizer = trainer.create_optimizer()
        lookup = {id(p): n for n, p in trainer.model.named_parameters()}
        return {g["weight_decay"]: {lookup[id(p)] for p in g["params"]} for g in optimizer.param_groups}

    official = groups(decay_all_parameters=True)
    assert official[1e-4] == set(names.values()) and not official.get(0.0)
    default = groups()
    assert any(n.endswith("bias") for n in default[0.0]) and not any(
        n.endswith("bias") for n in default[1e-4]
    )


class _RecordingSeedTrainer(SeedTrainer):
    """Records each training batch and loss (test only: replayed by a plain loop below)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self.record.append((inputs["pixel_values"].clone(), float(loss.detach())))
        return loss


def test_plain_accelerate_loop_matches_seed_trainer(tmp_path):
    """The model owns its queue: a 20-line accelerate loop (teacher forward, model forward,
    backward, SGD step) reproduces SeedTrainer's losses, weights and queue."""
    from accelerate import Accelerator

    teacher = tiny_teacher()
    trainer = _RecordingSeedTrainer(
        model=tiny_student(),
        teacher=teacher,
        args=_args(
            tmp_path,
            max_steps=5,
            learning_rate=0.05,
            lr_scheduler_type="constant",
            weight_decay=0.0,
            optimize_teacher=False,
            teacher_dtype="float32",
            max_grad_norm=0.0,
        ),
        train_dataset=TensorImages(64),
        data_collator=collate_batch,
    )
    trainer.record = []
    trainer.train()

    accelerator = Accelerator(cpu=True)
    model = tiny_student()  # same seed: same init as the Trainer's model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    losses = []
    for pixel_values, _ in trainer.record:
        with torch.no_grad():
            teacher_embeds = teacher(pixel_values)
        loss = model(pixel_values, teacher_embeds=teacher_embeds).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())

    assert losses == pytest.approx([loss for _, loss in trainer.record], abs=1e-5)
    trained = trainer.model
    assert torch.allclose(model.queue.embeddings, trained.queue.embeddings, atol=1e-6)
    assert int(model.queue.ptr) == int(trained.queue.ptr) == 40 % model.queue.size
    for (name, a), b in zip(model.state_dict().items(), trained.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_torch_compile_trains_the_student_with_its_queue(tmp_path):
    """``--torch_compile``: inductor may save the queue buffer itself for backward, which the
    enqueue then modifies in place; the loss against the queue runs eager, the student compiled."""
    eager = _seed_trainer(tmp_path / "eager", max_steps=2, teacher_dtype="float32", optimize_teacher=False)
    eager.train()
    compiled = _seed_trainer(
        tmp_path / "compiled",
        max_steps=2,
        teacher_dtype="float32",
        optimize_teacher=False,
        torch_compile=True,
    )
    compiled.train()
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in (eager, compiled)]
    assert len(losses[1]) == 2 and losses[1] == pytest.approx(losses[0], rel=1e-4)
    assert int(compiled.model.queue.num_filled) == int(eager.model.queue.num_filled) == 16


def test_gradients_are_not_clipped_by_default_as_in_the_official_code(tmp_path):
    args = _args(tmp_path)
    assert args.max_grad_norm == 0.0
    assert _args(tmp_path, max_grad_norm=1.0).max_grad_norm == 1.0


def test_a_student_whose_channels_last_backward_crashes_trains_in_nchw(tmp_path):
    """torch's CPU backward of a strided 1x1 conv with few input channels kills the process under
    channels_last (repvgg, mobileone, fastvit stems): such a student is never probed or trained so."""
    from seed_hf.training.step_choice import channels_last_backward_hazards

    model = tiny_student(student_architecture="repvgg_a0", image_size=32)
    assert channels_last_backward_hazards(model, torch.device("cpu"))
    assert not channels_last_backward_hazards(tiny_student(), torch.device("cpu"))
    assert not channels_last_backward_hazards(model, torch.device("cuda"))
    trainer = _seed_trainer(tmp_path, model=model, max_steps=1)
    trainer.train()
    assert trainer.step_choice.student_channels_last is False
    assert trainer.step_choice.sources["student_channels_last"] == "unsafe"
    with pytest.raises(ValueError, match="channels_last=true.*crash"):
        _seed_trainer(tmp_path, model=model, max_steps=1, channels_last="true").train()


def test_a_student_built_for_another_size_is_told_its_img_size(tmp_path):
    model = tiny_student(student_architecture="levit_128s", image_size=64)  # LeViT is built for 224 px
    with pytest.raises(ValueError, match=r"student_model_args=\{\"img_size\": 64\}"):
        _seed_trainer(tmp_path, model=model, max_steps=1).train()
